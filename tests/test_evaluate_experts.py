"""evaluate's 95 % bootstrap intervals (equal to re-scoring each resample), regions resampled when known, several
truths scored against the prediction and against each other (the intercomparison's experts, real files), and
`rts-seg evaluate --model` predicting images first. Real GeoTIFFs and polygon files, real CLI runs."""

import glob, json, os, shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from scipy import ndimage

from conftest import ROOT, rts_seg
from rts_seg.evaluate import _metrics, _score, _total, _units, evaluate, resample_scores
from rts_seg.io import write_raster
from rts_seg.synthetic import make_tile

DATA = Path(os.environ.get('RTS_SEG_INTERCOMPARISON', ROOT.parent / 'shared' / 'data' / 'rts_intercomparison'))
real = pytest.mark.skipif(not DATA.is_dir(), reason=f'intercomparison data not found at {DATA}')
IOUS = [0.1, 0.3, 0.5]


def predictions(d: Path, n: int, seed: int = 5, size: int = 96) -> list:
    "`n` generated tiles: truth labels in d/truth, a blurred, shifted copy as prediction (prob, mask) in d/pred."
    rng = np.random.default_rng(seed)
    (d / 'pred').mkdir(parents=True)
    (d / 'truth').mkdir()
    items = []
    for i in range(n):
        _, lbl = make_tile(rng, (size, size), 4, 'yamal')
        shifted = np.roll(lbl == 1, i % 3, axis=1).astype(np.float32)
        prob = np.clip(ndimage.gaussian_filter(shifted, 1 + i % 2), 0, 1).astype(np.float32)
        prob[5 + i : 9 + i, 5:9] = 0.8  # a false alarm of 16 pixels
        mask = (prob > 0.5).astype(np.uint8)
        tfm = from_origin(500_000 + 1000 * i, 7_600_000, 3, 3)
        write_raster(d / 'pred' / f't{i}_prob.tif', prob, 'EPSG:32608', tfm, nodata=-1)
        write_raster(d / 'pred' / f't{i}_mask.tif', mask, 'EPSG:32608', tfm, nodata=255)
        write_raster(d / 'truth' / f't{i}.tif', lbl, 'EPSG:32608', tfm, nodata=None)
        items.append((prob, mask, lbl, 9.0))
    return items


def test_resample_scores_are_the_scores_of_the_resampled_images(tmp_path):
    "A resample's scores from summed counts equal scoring its images, duplicates and all, from their pixels."
    items = predictions(tmp_path, 5)
    s = _score(items, IOUS, 100.0)
    u = _units(s['_stats'])
    w = np.array([[2, 0, 1, 0, 2], [0, 0, 0, 5, 0], [1, 1, 1, 1, 1]])
    r = resample_scores(u, w)
    for b, counts in enumerate(w):
        again = _score([it for it, c in zip(items, counts) for _ in range(c)], IOUS, 100.0)
        assert r['pixel_iou'][b] == pytest.approx(again['pixel_iou'])
        assert r['pr_auc'][b] == pytest.approx(again['pr_auc'])
        for k, iou in enumerate(map(str, IOUS)):
            for fam in ('objects', 'objects_mapped'):
                p, rec, f1 = (v[b, k] for v in r[fam])
                o = again[fam][iou]
                assert (p, rec, f1) == pytest.approx((o['precision'], o['recall'], o['f1']), nan_ok=True)
    # the whole set once is the point estimate
    assert r['pixel_iou'][2] == pytest.approx(s['pixel_iou'])
    assert _metrics(_total(s['_stats']), IOUS, 100.0, 5)['pr_auc'] == s['pr_auc']


def test_intervals_in_json_summary_and_picture(tmp_path):
    "8 images: intervals around the estimates, the same with the same seed, in evaluation.json and the summary line."
    predictions(tmp_path, 8)
    r = rts_seg('evaluate', '--pred', tmp_path / 'pred', '--truth', tmp_path / 'truth', '--out', tmp_path / 'a')
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / 'a' / 'evaluation.json').read_text())
    ci = ev['ci95']
    assert (ci['unit'], ci['n'], ci['resamples'], ci['level']) == ('image', 8, 1000, 0.95)
    lo, hi = ci['pixel_iou']
    assert lo < ev['pixel_iou'] < hi and hi - lo < 0.5
    assert ci['pr_auc'][0] <= ev['pr_auc'] <= ci['pr_auc'][1]
    f1 = ev['objects_mapped']['0.3']['f1']
    assert ci['objects_mapped']['0.3']['f1'][0] <= f1 <= ci['objects_mapped']['0.3']['f1'][1]
    assert f'pixel IoU {ev["pixel_iou"]:.3f} [{lo:.3f}, {hi:.3f}]' in r.stdout
    assert 'over 1000 resamples of 8 images' in r.stdout
    assert (tmp_path / 'a' / 'pr_curve.png').stat().st_size > 5000
    # the same seed, the same intervals; another seed, others (close)
    again = evaluate(tmp_path / 'pred', tmp_path / 'truth', out=tmp_path / 'b')
    assert again['ci95']['pixel_iou'] == ci['pixel_iou']
    other = evaluate(tmp_path / 'pred', tmp_path / 'truth', out=tmp_path / 'b', seed=1)['ci95']['pixel_iou']
    assert other != ci['pixel_iou'] and abs(other[0] - lo) < 0.05


def test_one_image_has_no_interval(tmp_path):
    predictions(tmp_path, 1)
    r = rts_seg('evaluate', '--pred', tmp_path / 'pred', '--truth', tmp_path / 'truth')
    assert r.returncode == 0, r.stderr
    ci = json.loads((tmp_path / 'pred' / 'evaluation.json').read_text())['ci95']
    assert ci['n'] == 1 and ci['pixel_iou'] is None and ci['objects'] is None and 'one image' in ci['reason']
    assert 'no interval: one image' in r.stdout and '[' not in r.stdout.split('->')[0]


def test_regions_are_resampled_when_known(tmp_path):
    "A dataset's metadata.csv beside its labels: 6 regions drawn whole; 2 regions: images, and a note; --unit region."
    predictions(tmp_path, 12)
    names = [f't{i}' for i in range(12)]
    meta = pd.DataFrame(dict(tile_id=names, RegionName=[f'r{i // 2}' for i in range(12)]))
    meta.to_csv(tmp_path / 'metadata.csv', index=False)  # beside truth/: the dataset's
    ci = evaluate(tmp_path / 'pred', tmp_path / 'truth')['ci95']
    assert (ci['unit'], ci['n'], ci['regions_from']) == ('region', 6, str(tmp_path / 'metadata.csv'))
    by_image = evaluate(tmp_path / 'pred', tmp_path / 'truth', unit='image')['ci95']
    assert (by_image['unit'], by_image['n']) == ('image', 12) and by_image['pixel_iou'] != ci['pixel_iou']
    two = tmp_path / 'two.csv'
    meta.assign(RegionName=['north'] * 6 + ['south'] * 6).to_csv(two, index=False)
    r = rts_seg('evaluate', '--pred', tmp_path / 'pred', '--truth', tmp_path / 'truth', '--regions', two)
    assert r.returncode == 0, r.stderr
    ci = json.loads((tmp_path / 'pred' / 'evaluation.json').read_text())['ci95']
    assert (ci['unit'], ci['n']) == ('image', 12) and 'fewer than 5' in ci['note']
    forced = evaluate(tmp_path / 'pred', tmp_path / 'truth', unit='region', regions=tmp_path / 'metadata.csv')['ci95']
    assert (forced['unit'], forced['n']) == ('region', 6) and 'note' not in forced
    meta.assign(RegionName='all').to_csv(two, index=False)
    r = rts_seg(
        'evaluate', '--pred', tmp_path / 'pred', '--truth', tmp_path / 'truth', '--regions', two, '--unit', 'region'
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'at least two' in r.stderr, r.stderr


def polygons(f: Path, geoms: list, crs: str) -> Path:
    "Polygons written as a real GeoPackage."
    pyogrio.raw.write(
        f, np.array([shapely.to_wkb(g) for g in geoms], dtype=object), [], [], geometry_type='Polygon', crs=crs
    )
    return f


def test_truth_errors_and_other_crs(tmp_path):
    "Truth of another CRS is reprojected; an unreadable, a missing or a distant truth is refused naming it."
    items = predictions(tmp_path, 2)
    base = evaluate(tmp_path / 'pred', tmp_path / 'truth', out=tmp_path)
    # the labels in the polar stereographic CRS: reprojected (nearest) onto each prediction's grid
    (tmp_path / 'polar').mkdir()
    for i in range(2):
        with rasterio.open(tmp_path / 'truth' / f't{i}.tif') as s:
            from rasterio.warp import calculate_default_transform, reproject

            tfm, w, h = calculate_default_transform(s.crs, 'EPSG:3413', s.width, s.height, *s.bounds)
            y = np.full((h, w), 255, np.uint8)
            reproject(s.read(1), y, src_transform=s.transform, src_crs=s.crs, dst_transform=tfm, dst_crs='EPSG:3413')
        write_raster(tmp_path / 'polar' / f't{i}.tif', y, 'EPSG:3413', tfm, nodata=None)
    polar = evaluate(tmp_path / 'pred', tmp_path / 'polar', out=tmp_path)
    assert abs(polar['pixel_iou'] - base['pixel_iou']) < 0.1 and polar['objects']['0.1']['tp'] >= 1
    # polygons far away: refused, named; polygons in WGS84 over the tiles: fine
    with rasterio.open(tmp_path / 'pred' / 't0_prob.tif') as s:
        box = shapely.geometry.shape(transform_geom(s.crs, 'EPSG:4326', shapely.box(*s.bounds).__geo_interface__))
    far = polygons(tmp_path / 'far.gpkg', [shapely.box(10, 45, 10.01, 45.01)], 'EPSG:4326')
    near = polygons(tmp_path / 'near.gpkg', [box.buffer(-0.0001)], 'EPSG:4326')
    bad = tmp_path / 'broken.shp'
    bad.write_bytes(b'not a shapefile')
    for truth, words in (
        ([near, far], ['far.gpkg', 'does not overlap']),
        ([bad], ['broken.shp', 'cannot read']),
        ([tmp_path / 'none.gpkg'], ['none.gpkg', 'not found']),
    ):
        r = rts_seg('evaluate', '--pred', tmp_path / 'pred', '--truth', *truth)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert all(w in r.stderr for w in words), r.stderr
    ok = evaluate(tmp_path / 'pred', near, out=tmp_path)
    assert ok['n_images'] == 2 and ok['pixel_union'] > 0.9 * items[0][0].size  # all of t0 is a slump


def test_cli_argument_errors_are_one_line(tmp_path):
    predictions(tmp_path, 1)
    p, t = tmp_path / 'pred', tmp_path / 'truth'
    for args, words in (
        (['--pred', p, '--model', 'm.pth', '--truth', t], 'not both'),
        (['--model', 'm.pth', '--truth', t], '--model needs --images'),
        (['--pred', p, '--images', p, '--truth', t], '--images goes with --model'),
        (['--model', 'm.pth', '--images', p, '--truth', t], '--model needs --out'),
        (['--truth', t], 'give --pred'),
    ):
        r = rts_seg('evaluate', *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr


def experts(site: str) -> list[Path]:
    return [Path(f) for f in sorted(glob.glob(str(DATA / 'experts' / '*' / f'{site}_digitized.shp')))]


def consensus_prediction(site: str, mappers: list[Path], d: Path) -> Path:
    "A stand-in prediction on the site's Sentinel-2 grid: the share of `mappers` marking each pixel, the mask at half."
    from rts_seg.make_dataset import consensus_polygons

    (scene,) = glob.glob(str(DATA / site / 'data' / 'S2_*.tif'))
    votes, keep = consensus_polygons(mappers, scene, 0.5)
    with rasterio.open(scene) as s:
        nodata = ~s.read_masks(1).astype(bool)
        crs, tfm = s.crs, s.transform
    d.mkdir(parents=True)
    stem = Path(scene).stem
    write_raster(
        d / f'{stem}_prob.tif', np.where(nodata, -1, votes / len(mappers)).astype(np.float32), crs, tfm, nodata=-1
    )
    write_raster(d / f'{stem}_mask.tif', np.where(nodata, 255, keep).astype(np.uint8), crs, tfm, nodata=255)
    return Path(scene)


@real
def test_peel_against_six_experts_and_them_against_each_other(tmp_path):
    "Peel (12 experts): the consensus of six scored against the other six, who are scored against each other."
    from rts_seg.evaluate import compare_polygons

    ex = experts('Peel')
    assert len(ex) == 12
    scene = consensus_prediction('Peel', ex[:6], tmp_path / 'pred')
    others = ex[6:]
    # one of them in another CRS (WGS84, as a GeoPackage): reprojected onto the grid
    meta, _, geoms, _ = pyogrio.raw.read(others[0], read_geometry=True, columns=[])
    wgs = [
        shapely.geometry.shape(transform_geom(meta['crs'], 'EPSG:4326', g.__geo_interface__))
        for g in shapely.from_wkb(geoms)
    ]
    (tmp_path / '07').mkdir()
    others[0] = polygons(tmp_path / '07' / 'Peel_digitized.gpkg', wgs, 'EPSG:4326')
    r = rts_seg(
        'evaluate', '--pred', tmp_path / 'pred', '--truth', *others, '--min-area-m2', 0, '--out', tmp_path / 'ev'
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / 'ev' / 'evaluation.json').read_text())
    names = ['07', '08', '09', '10', '11', '12']
    assert list(ev['by_truth']) == names and len(ev['pairwise']) == 30 and ev['n_images'] == 1
    pw = {(p['pred'], p['truth']): p for p in ev['pairwise']}
    # pixel IoU is symmetric; each pair is compare_polygons on the scene's grid (the prediction's nodata)
    assert pw['08', '10']['pixel_iou'] == pytest.approx(pw['10', '08']['pixel_iou'])
    c = compare_polygons(ex[7], ex[9], scene, ious=IOUS)
    assert pw['08', '10']['pixel_iou'] == pytest.approx(c['pixel_iou'])
    assert pw['08', '10']['objects']['0.3']['f1'] == pytest.approx(c['objects']['0.3']['f1'])
    # the model against each truth: the one-truth evaluation's figures (07 reprojected from WGS84 as well)
    one = evaluate(tmp_path / 'pred', others[0], out=tmp_path / 'one', min_area_m2=0)
    assert ev['by_truth']['07']['pixel_iou'] == pytest.approx(one['pixel_iou'])
    assert one['ci95']['pixel_iou'] is None and isinstance(one['truth'], str) and 'standing' not in one
    direct = evaluate(tmp_path / 'pred', ex[6], out=tmp_path / 'one', min_area_m2=0)
    assert abs(direct['pixel_iou'] - one['pixel_iou']) < 0.02  # the same expert, from its own UTM file
    s = ev['standing']
    for m in ('pixel_iou', 'f1@0.3'):
        st = s[m]
        assert 0 < st['experts_range'][0] <= st['experts_median'] <= st['experts_range'][1] <= 1
        assert st['of'] == 7 and 1 <= st['rank'] <= 7
        # a consensus of six experts agrees with each other expert better than most experts agree with each other
        assert st['model_median'] >= st['experts_median'] and st['rank'] <= 2
    line = r.stdout.strip()
    assert f'F1@0.3 median {s["f1@0.3"]["experts_median"]:.3f}' in line and f'ranks {s["f1@0.3"]["rank"]} of 7' in line
    assert (tmp_path / 'ev' / 'pr_curve.png').is_file()
    print(
        'Peel: consensus of 01-06 vs 07-12: F1@0.3 median',
        round(s['f1@0.3']['model_median'], 3),
        'experts pairwise median',
        round(s['f1@0.3']['experts_median'], 3),
        'range',
        s['f1@0.3']['experts_range'],
        '; pixel IoU',
        round(s['pixel_iou']['model_median'], 3),
        'vs',
        round(s['pixel_iou']['experts_median'], 3),
    )


@real
def test_bykovsky_experts_disagree_on_where_the_slumps_are(tmp_path):
    "Bykovsky (10 experts): three mapped only the west of the scene, the others the east: pairs of zero overlap."
    ex = experts('Bykovsky')
    consensus_prediction('Bykovsky', ex, tmp_path / 'pred')
    ev = evaluate(tmp_path / 'pred', ex, out=tmp_path, min_area_m2=0)
    s = ev['standing']['pixel_iou']
    pw = pd.DataFrame(ev['pairwise']).pivot(index='pred', columns='truth', values='pixel_iou')
    assert s['experts_range'][0] == 0 and s['experts_range'][1] > 0.8  # some pairs share nothing, some nearly all
    assert (pw.loc['02'].drop('02') == 0).all()  # 02 drew west of everybody else
    print(
        'Bykovsky: pixel IoU model median',
        round(s['model_median'], 3),
        'experts median',
        s['experts_median'],
        'range',
        s['experts_range'],
    )


def test_evaluate_with_a_model(tiny, tmp_path):
    "rts-seg evaluate --model --images: predicted into out/pred as predict would, then scored against the labels."
    imgs = sorted((tiny['data'] / 'PLANET-RGB').glob('*.tif'))[::10][:3]
    r = rts_seg(
        'evaluate',
        '--model',
        tiny['run'] / 'best.pth',
        '--images',
        *imgs,
        '--truth',
        tiny['data'] / 'labels',
        '--out',
        tmp_path,
        '--device',
        'cpu',
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((tmp_path / 'evaluation.json').read_text())
    assert ev['n_images'] == 3 and ev['pred'] == str(tmp_path / 'pred')
    assert sorted(p.name for p in (tmp_path / 'pred').glob('*_prob.tif')) == sorted(f'{i.stem}_prob.tif' for i in imgs)
    log = json.loads((tmp_path / 'pred' / 'inference_log.json').read_text())
    assert ev['min_area_source'] == 'inference_log' and ev['min_area_m2'] == log['min_area_m2']
    assert ev['ci95']['regions_from'] == str(tiny['data'] / 'metadata.csv') and ev['ci95']['n'] == 3
    # the same predictions scored with --pred: the same figures
    again = evaluate(tmp_path / 'pred', tiny['data'] / 'labels', out=tmp_path / 'again')
    assert again['pixel_iou'] == ev['pixel_iou'] and again['ci95']['pixel_iou'] == ev['ci95']['pixel_iou']
    # an ensemble of the model and a copy of it: the probabilities of the model alone
    from rts_seg.config import InferenceConfig
    from rts_seg.evaluate import evaluate_model

    shutil.copy(tiny['run'] / 'best.pth', tmp_path / 'copy.pth')
    members = [tiny['run'] / 'best.pth', tmp_path / 'copy.pth']
    ens = evaluate_model(members, imgs, tiny['data'] / 'labels', tmp_path / 'ens', InferenceConfig(device='cpu'))
    for i in imgs:
        with (
            rasterio.open(tmp_path / 'pred' / f'{i.stem}_prob.tif') as a,
            rasterio.open(ens['pred'] + f'/{i.stem}_prob.tif') as b,
        ):
            np.testing.assert_allclose(b.read(1), a.read(1), atol=1e-5)
    assert ens['n_images'] == 3 and ens['pixel_iou'] == pytest.approx(ev['pixel_iou'], abs=0.01)
    # a misspelt truth is refused before anything is predicted
    r = rts_seg(
        'evaluate',
        '--model',
        tiny['run'] / 'best.pth',
        '--images',
        *imgs,
        '--truth',
        tmp_path / 'nope.gpkg',
        '--out',
        tmp_path / 'x',
    )
    assert r.returncode == 2 and 'nope.gpkg' in r.stderr and not (tmp_path / 'x' / 'pred').exists(), r.stderr


def test_several_label_folders(tmp_path):
    "Two label folders as truths: the model against each, and each against the other, on the same pixels."
    items = predictions(tmp_path, 3)
    (tmp_path / 'other').mkdir()
    ys = []
    for i, f in enumerate(sorted((tmp_path / 'truth').glob('*.tif'))):
        with rasterio.open(f) as s:
            y = ndimage.binary_dilation(s.read(1) == 1, iterations=1).astype(np.uint8)  # drawn a pixel wider
            y[:4] = 255  # and some rows left out
            write_raster(tmp_path / 'other' / f.name, y, s.crs, s.transform, nodata=None)
        ys.append((items[i][2], y))
    r = rts_seg('evaluate', '--pred', tmp_path / 'pred', '--truth', tmp_path / 'truth', tmp_path / 'other')
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / 'pred' / 'evaluation.json').read_text())
    assert list(ev['by_truth']) == ['truth', 'other'] and ev['n_images'] == 3
    pw = {(p['pred'], p['truth']): p['pixel_iou'] for p in ev['pairwise']}
    # the truths' pixel IoU, by hand: over the pixels neither ignores
    inter = sum(((a == 1) & (b == 1) & (a != 255) & (b != 255)).sum() for a, b in ys)
    union = sum((((a == 1) | (b == 1)) & (a != 255) & (b != 255)).sum() for a, b in ys)
    assert pw['truth', 'other'] == pytest.approx(inter / union) and pw['other', 'truth'] == pytest.approx(inter / union)
    one = evaluate(tmp_path / 'pred', tmp_path / 'other', out=tmp_path)
    assert ev['by_truth']['other']['pixel_iou'] == one['pixel_iou']
    assert ev['by_truth']['other']['ci95']['pixel_iou'] == one['ci95']['pixel_iou']
    assert 'ranks' in r.stdout and 'the truths against each other: pixel IoU median' in r.stdout


def test_compare_polygons_leaves_nodata_out(tmp_path):
    "Pixels where `like` has no data count nowhere, in compare_polygons as in evaluate's pairs of truths."
    from rts_seg.evaluate import compare_polygons

    tfm = from_origin(500_000, 7_600_000, 10, 10)
    img = np.ones((20, 20), np.uint16)
    img[:, :5] = 0  # nodata: a quarter of the grid
    write_raster(tmp_path / 'like.tif', img, 'EPSG:32608', tfm, nodata=0)
    whole = polygons(tmp_path / 'a.gpkg', [shapely.box(500_000, 7_599_800, 500_200, 7_600_000)], 'EPSG:32608')
    half = polygons(tmp_path / 'b.gpkg', [shapely.box(500_000, 7_599_800, 500_100, 7_600_000)], 'EPSG:32608')
    r = compare_polygons(whole, half, tmp_path / 'like.tif')
    assert (r['pixel_intersection'], r['pixel_union']) == (100, 300)  # columns 5-9 shared; 5-19 in either
    r = compare_polygons(half, whole, tmp_path / 'like.tif')
    assert (r['pixel_intersection'], r['pixel_union']) == (100, 300)
