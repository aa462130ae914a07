"""The RTS labelling intercomparison (Nitze et al. 2024) end to end: two sites in two UTM zones, Sentinel-2 (uint16) and
Landsat-8 (float32), labels from the experts' consensus; make-dataset, check-data, a few epochs of training, prediction
of the held-out site with named bands, and the model scored against every expert beside the experts against each
other. Skipped where ../shared/data is absent. What a few CPU epochs learn is not asserted: what must hold is."""

import glob, json, math, os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from conftest import ROOT, no_mlflow_env, rts_seg

DATA = Path(os.environ.get('RTS_SEG_INTERCOMPARISON', ROOT.parent / 'shared' / 'data' / 'rts_intercomparison'))
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f'intercomparison data not found at {DATA}')

SITES = dict(Peel='EPSG:32608', Bykovsky='EPSG:32652')
TRAIN_SITE, TEST_SITE = 'Peel', 'Bykovsky'  # trained on Peel (north: train, south: val); Bykovsky held out
# the bands both sites have, in the experiment's order (each site's README.txt): Peel's S2 holds only the first 7
SENSORS = dict(
    S2=dict(bands=[1, 2, 3, 4, 5, 6, 7], names=['blue', 'green', 'red', 're1', 're2', 're3', 'nir'], dtype='uint16'),
    L8=dict(
        bands=[1, 2, 3, 4, 5, 6, 7], names=['blue', 'green', 'red', 'nir', 'swir16', 'swir22', 'pan'], dtype='float32'
    ),
)
CHANNELS = ['red', 'green', 'blue', 'nir', 'ndvi']
TILE = 64
CONFIG = """\
output_dir: {out}
data:
  root: {root}
  channels: {channels}
  batch_size: 4
  num_workers: 0
model:
  arch: Unet
  encoder: resnet18
  encoder_weights: null
  decoder_channels: [64, 32, 16, 16, 8]
loss:
  name: focal_dice
  alpha: 0.75
train:
  epochs: 4
  base_lr: 0.003
  warmup_epochs: 0.5
  freeze_backbone_epochs: 0
  checkpoint_every: 100
"""


def scene(site, sensor):
    (f,) = glob.glob(str(DATA / site / 'data' / f'{sensor}_*.tif'))
    return Path(f)


def experts(site):
    "Each expert's polygon file for the site, by expert number."
    return {
        Path(f).parent.name: Path(f) for f in sorted(glob.glob(str(DATA / 'experts' / '*' / f'{site}_digitized.shp')))
    }


def build(sensor, out):
    "Consensus polygons of both sites in one file, then make_dataset from both scenes, regions by site and half."
    from rts_seg.make_dataset import consensus_polygons, make_dataset

    polys = out / 'consensus.gpkg'
    for site in SITES:
        consensus_polygons(
            list(experts(site).values()), scene(site, sensor), 0.5, polys, 'EPSG:4326', {'RegionName': site}
        )
    s = SENSORS[sensor]
    root = make_dataset(
        f'{DATA}/*/data/{sensor}_*.tif',
        polys,
        out / 'ds',
        tile_size=TILE,
        bands=s['bands'],
        band_names=s['names'],
        source=sensor,
        verbose=False,
    )
    # regions: each site cut in a north and a south half (tile rows), so that train and val are apart
    meta = pd.read_csv(root / 'metadata.csv', keep_default_na=False)
    row = meta.tile_id.str.rsplit('_', n=2).str[1].astype(int)
    meta['RegionName'] = meta.RegionName + np.where(row < 2, '_N', '_S')
    meta.to_csv(root / 'metadata.csv', index=False)
    splits = dict(train=[f'{TRAIN_SITE}_N'], val=[f'{TRAIN_SITE}_S'], test=[f'{TEST_SITE}_N', f'{TEST_SITE}_S'])
    (root / 'splits.yaml').write_text(yaml.safe_dump(splits, sort_keys=False))
    return root, polys


@pytest.fixture(scope='module', params=list(SENSORS))
def run(request, tmp_path_factory):
    "A dataset of one sensor from both sites, checked, and a model trained on it through the command line."
    sensor = request.param
    d = tmp_path_factory.mktemp(f'intercomparison_{sensor}')
    root, polys = build(sensor, d)
    cfg = d / 'config.yaml'
    cfg.write_text(CONFIG.format(out=d / 'run', root=root, channels=json.dumps(CHANNELS)))
    check = rts_seg('check-data', '--root', root, '--config', cfg, '--report', d / 'check.txt')
    train = rts_seg('train', '--config', cfg, cwd=d, env=no_mlflow_env())
    return dict(sensor=sensor, dir=d, root=root, polygons=polys, config=cfg, check=check, train=train)


def test_dataset_keeps_each_sensor_and_zone(run):
    root, s = run['root'], SENSORS[run['sensor']]
    assert yaml.safe_load((root / 'bands.yaml').read_text()) == {run['sensor']: s['names']}
    meta = pd.read_csv(root / 'metadata.csv', keep_default_na=False)
    crss = {}
    for t in meta.tile_id:
        with rasterio.open(root / run['sensor'] / f'{t}.tif') as i, rasterio.open(root / 'labels' / f'{t}.tif') as l:
            assert (i.count, i.dtypes[0], i.shape, l.shape) == (7, s['dtype'], (TILE, TILE), (TILE, TILE))
            assert (l.crs, l.transform) == (i.crs, i.transform)
            assert set(np.unique(l.read(1))) <= {0, 1, 255}
            crss[i.crs.to_string()] = crss.get(i.crs.to_string(), 0) + 1
    assert set(crss) == set(SITES.values())  # two UTM zones in one dataset
    # every site has consensus slumps, and each half of the training site has tiles
    assert set(meta.RegionName) == {f'{s}_{h}' for s in SITES for h in 'NS'}
    pos = meta[meta.TrainClass == 'Positive'].RegionName.str.split('_').str[0]
    assert set(pos) == set(SITES)
    # the tiles hold the scene's values as they are: a tile of the held-out site against its scene
    t = meta.tile_id[meta.RegionName == f'{TEST_SITE}_N'].iloc[0]
    with rasterio.open(root / run['sensor'] / f'{t}.tif') as i, rasterio.open(scene(TEST_SITE, run['sensor'])) as src:
        win = rasterio.windows.from_bounds(*i.bounds, src.transform).round_offsets().round_lengths()
        want = src.read(s['bands'], window=win, boundless=True, fill_value=src.nodata or 0)
        got = i.read()
        ok = np.isfinite(want).all(0)
        np.testing.assert_array_equal(got[:, ok], want[:, ok])


def test_check_data_passes(run):
    r = run['check']
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '0 problem(s)' in r.stdout


def test_trains_and_predicts_the_held_out_site_and_is_scored_against_each_expert(run, tmp_path):
    from rts_seg.evaluate import agreement, evaluate

    assert run['train'].returncode == 0, run['train'].stderr[-3000:]
    model = run['dir'] / 'run' / 'best.pth'
    metrics = json.loads((run['dir'] / 'run' / 'metrics.json').read_text())
    assert model.is_file() and metrics
    sensor, test_scene = run['sensor'], scene(TEST_SITE, run['sensor'])
    with rasterio.open(test_scene) as src:
        nir = SENSORS[sensor]['names'].index('nir') + 1
        crs, transform, shape = src.crs, src.transform, src.shape
    bands = f'red=3,green=2,blue=1,nir={nir}'
    out = tmp_path / 'maps'
    r = rts_seg('predict', '--model', model, '--scene', test_scene, '--out', out, '--bands', bands)
    assert r.returncode == 0, r.stderr[-3000:]
    with (
        rasterio.open(out / f'{test_scene.stem}_prob.tif') as p,
        rasterio.open(out / f'{test_scene.stem}_mask.tif') as m,
    ):
        assert (p.crs, p.transform, p.shape) == (crs, transform, shape)  # on the held-out scene's grid, in its zone
        prob, mask = p.read(1), m.read(1)
    assert ((prob >= 0) & (prob <= 1)).mean() > 0.9 and set(np.unique(mask)) <= {0, 1, 255}
    assert (out / 'inference_log.json').is_file()
    # the model against every expert of the held-out site, and the experts against each other
    by = experts(TEST_SITE)
    scores = {}
    for name, f in by.items():
        e = evaluate(out, f, out=tmp_path / f'eval_{name}')
        assert (tmp_path / f'eval_{name}' / 'evaluation.json').is_file()
        assert e['n_images'] == 1 and e['min_area_source'] == 'inference_log'
        o = e['objects_mapped']['0.3']
        assert 0 <= o['f1'] <= 1 and (math.isnan(e['pixel_iou']) or 0 <= e['pixel_iou'] <= 1)
        assert o['tp'] + o['fn'] >= 1  # every expert drew something at Bykovsky
        scores[name] = o['f1']
    assert len(scores) == len(by) == 10
    ee = agreement(by, test_scene, iou=0.3)
    off = ee.to_numpy()[~np.eye(len(by), dtype=bool)]
    assert ee.shape == (10, 10) and ((off >= 0) & (off <= 1)).all() and np.isnan(np.diag(ee.to_numpy())).all()
    print(f'{sensor}: model F1@0.3 vs experts', {k: round(v, 2) for k, v in scores.items()})
    print(f'{sensor}: expert vs expert F1@0.3 median {np.median(off):.2f} range {off.min():.2f}-{off.max():.2f}')


def test_other_sensor_is_refused_in_one_line(run, tmp_path):
    "The held-out site's scene of the other sensor, its bands named as the model wants them: refused, one line."
    assert run['train'].returncode == 0, run['train'].stderr[-3000:]
    other = 'L8' if run['sensor'] == 'S2' else 'S2'
    nir = SENSORS[other]['names'].index('nir') + 1
    r = rts_seg(
        'predict',
        '--model',
        run['dir'] / 'run' / 'best.pth',
        '--scene',
        scene(TEST_SITE, other),
        '--out',
        tmp_path,
        '--bands',
        f'red=3,green=2,blue=1,nir={nir}',
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert 'uint16' in r.stderr and 'float' in r.stderr, r.stderr  # what the scene is, what the model was trained on
    assert not list(tmp_path.glob('*_prob.tif'))


def test_scene_without_a_band_is_refused_naming_it(run, tmp_path):
    "The held-out site's scene of the model's sensor with only its red, green and blue: refused, naming nir."
    from rts_seg.io import write_raster

    assert run['train'].returncode == 0, run['train'].stderr[-3000:]
    with rasterio.open(scene(TEST_SITE, run['sensor'])) as src:
        rgb = write_raster(tmp_path / 'rgb.tif', src.read([1, 2, 3]), src.crs, src.transform, nodata=src.nodata)
    for bands in (['red=3,green=2,blue=1'], []):  # bands named, or found by the scene's band count
        out = tmp_path / f'out{len(bands)}'
        r = rts_seg(
            'predict',
            '--model',
            run['dir'] / 'run' / 'best.pth',
            '--scene',
            rgb,
            '--out',
            out,
            *(['--bands', *bands] if bands else []),
        )
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
        assert 'nir' in r.stderr, r.stderr
        assert not list(out.glob('*_prob.tif'))
