"""Terrain bands from a DEM (`rts_seg.terrain`) on real files: a DEM of known answers in EPSG:3413 under the
Sentinel-2 scene of Peel (EPSG:32608; a generated UTM scene when the data is absent), `rts-seg terrain` end to end,
`make-dataset --dem` (scenes and chips) that `check-data` accepts, a model trained on terrain channels, and
`predict --dem`, with the mistakes a user can make refused in one line."""

import json, os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.transform import from_origin
from rasterio.warp import transform as warp, transform_bounds

from conftest import TINY, rts_seg

DATA = Path(__file__).resolve().parent.parent.parent / 'shared' / 'data' / 'rts_intercomparison'
S2 = DATA / 'Peel' / 'data' / 'S2_20210821T210019_20210821T210020_T08WMA.tif'
EXPERT = DATA / 'experts' / '01' / 'Peel_digitized.shp'
SLOPE = np.degrees(np.arctan(0.2))  # the plane rises 0.2 m per metre eastwards
CHANNELS = ['red', 'green', 'blue', 'relelev', 'slope']


def write_dem(path, like, res, crs='EPSG:3413', pad=1500.0, no_crs=False):
    "A DEM in `crs` at `res` around the image `like`: a plane rising 0.2 m/m eastwards in the image's CRS, a bowl and a hill (20 m, 300 m radius), a void; their centres."
    with rasterio.open(like) as s:
        icrs, b = s.crs, s.bounds
    l, bt, r, t = transform_bounds(icrs, crs, b.left - pad, b.bottom - pad, b.right + pad, b.top + pad)
    w, h = int((r - l) / res), int((t - bt) / res)
    tf = Affine(res, 0, l, 0, -res, t)
    X, Y = tf @ np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    E, N = (np.reshape(v, (h, w)) for v in warp(crs, icrs, X.ravel(), Y.ravel()))
    at = dict(
        bowl=(b.left + 800, b.top - 1250), hill=(b.left + 1800, b.top - 1250), void=(b.left + 1250, b.bottom + 400)
    )
    cone = lambda c: 20 * np.clip(1 - np.hypot(E - c[0], N - c[1]) / 300, 0, None)
    z = (300 + 0.2 * (E - b.left) - cone(at['bowl']) + cone(at['hill'])).astype(np.float32)
    z[(abs(E - at['void'][0]) < 40) & (abs(N - at['void'][1]) < 40)] = -9999
    prof = dict(driver='GTiff', width=w, height=h, count=1, dtype='float32', transform=tf, nodata=-9999)
    with rasterio.open(path, 'w', **prof, **({} if no_crs else dict(crs=crs))) as d:
        d.write(z, 1)
    return at


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    "The Peel Sentinel-2 scene and expert 01's polygons; a generated scene and polygons of the same kind without the data."
    d = tmp_path_factory.mktemp('terrain')
    if S2.exists() and EXPERT.exists():  # the expert's slumps, spread over five named regions (for the splits)
        import pyogrio

        meta, _, geom, _ = pyogrio.raw.read(EXPERT)
        regions = np.array([f'peel_{i % 5}' for i in range(len(geom))], dtype=object)
        pyogrio.raw.write(d / 'slumps.gpkg', geom, [regions], ['RegionName'], geometry_type='Polygon', crs=meta['crs'])
        return dict(dir=d, image=S2, polygons=d / 'slumps.gpkg')
    rng = np.random.default_rng(0)
    img = rng.integers(200, 3000, (4, 251, 251), dtype=np.uint16)
    prof = dict(driver='GTiff', width=251, height=251, count=4, dtype='uint16', crs='EPSG:32608', nodata=0)
    with rasterio.open(d / 'scene.tif', 'w', **prof, transform=from_origin(470890, 7550020, 10, 10)) as f:
        f.write(img)
    feats = [
        dict(
            type='Feature',
            properties=dict(RegionName=f'r{i}'),
            geometry=dict(
                type='Polygon', coordinates=[[(x, y), (x + 200, y), (x + 200, y + 150), (x, y + 150), (x, y)]]
            ),
        )
        for i, (x, y) in enumerate([(471000, 7548000), (471700, 7549200), (472500, 7548500), (472900, 7549600)])
    ]
    fc = dict(type='FeatureCollection', crs=dict(type='name', properties=dict(name='EPSG:32608')), features=feats)
    (d / 'slumps.geojson').write_text(json.dumps(fc))
    return dict(dir=d, image=d / 'scene.tif', polygons=d / 'slumps.geojson')


def test_known_answers_through_another_crs_and_resolution(scene):
    "A plane's slope within 0.1 deg, the bowl below and the hill above their surroundings, NaN in the void: from 32 m and 8 m DEMs in EPSG:3413."
    from rts_seg.terrain import TERRAIN_BANDS, terrain_like

    with rasterio.open(scene['image']) as s:
        tf = s.transform
    for res in (32, 8):
        at = write_dem(scene['dir'] / f'dem{res}.tif', scene['image'], res)
        t = terrain_like(scene['dir'] / f'dem{res}.tif', scene['image'])
        assert t.shape == (len(TERRAIN_BANDS), 251, 251) and t.dtype == np.float32
        (rb, rh, rv), (cb, ch, cv) = rasterio.transform.rowcol(tf, *zip(at['bowl'], at['hill'], at['void']))
        plane = t[1][:100, 2:40]  # north-west: away from the bowl (columns 50-110), the hill and the void
        assert np.abs(plane - SLOPE).max() < 0.1, (res, plane.min(), plane.max())
        assert np.abs(t[0][:100, 2:40]).max() < 0.05 and np.abs(t[3][:60, 2:20]).max() < 0.1  # a plane: 0
        assert t[0][rb, cb] < -2 and t[3][rb, cb] < -10, (res, t[0][rb, cb], t[3][rb, cb])  # the bowl: below
        assert t[0][rh, ch] > 2 and t[3][rh, ch] > 10, (res, t[0][rh, ch], t[3][rh, ch])  # the hill: above
        assert np.isnan(t[:, rv, cv]).all() and np.isnan(t).mean() < 0.01  # the void, and only it, is nodata
        # shade: lit from the north-west, the hill's north-west flank (0.83) is brighter than its south-east one (0.75)
        assert t[2][rh - 15, ch - 15] > t[2][rh + 15, ch + 15] + 0.05


def test_cli_terrain_writes_a_named_cog_and_refuses_in_one_line(scene):
    from rts_seg.core import RtsSegError
    from rts_seg.terrain import terrain_like, write_terrain

    d = scene['dir']
    write_dem(d / 'dem32.tif', scene['image'], 32)
    r = rts_seg('terrain', '--dem', d / 'dem32.tif', '--like', scene['image'], '--out', d / 'aux.tif')
    assert r.returncode == 0, r.stderr
    assert 'wrote relelev, slope, shade, tpi (251 x 251 px, EPSG:32608)' in r.stdout
    with rasterio.open(d / 'aux.tif') as a, rasterio.open(scene['image']) as s:
        assert a.descriptions == ('relelev', 'slope', 'shade', 'tpi') and a.dtypes[0] == 'float32'
        assert (a.crs, a.transform, a.shape) == (s.crs, s.transform, s.shape) and np.isnan(a.nodata)
        assert a.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG' and a.tags()['TERRAIN_SHADE_AZIMUTH'] == '315.0'
        assert np.nanmedian(a.read(2)[:100, 2:40]) == pytest.approx(SLOPE, abs=0.1)
        # today's EXTRA names (re, sr) are relelev and shade under those names
        write_terrain(d / 'dem32.tif', scene['image'], d / 're.tif', ['re', 'sr'], verbose=False)
        with rasterio.open(d / 're.tif') as b:
            assert b.descriptions == ('re', 'sr') and np.array_equal(b.read(), a.read([1, 3]), equal_nan=True)
    write_dem(d / 'nocrs.tif', scene['image'], 32, no_crs=True)
    r = rts_seg('terrain', '--dem', d / 'nocrs.tif', '--like', scene['image'], '--out', d / 'x.tif')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'has no CRS; assign it first (e.g. gdal_edit.py -a_srs EPSG:3413' in r.stderr and not (d / 'x.tif').exists()
    write_dem(d / 'far.tif', scene['image'], 32, pad=-1000)  # a DEM 1 km short of the image on every side
    for dem, kw, want in [
        ('far.tif', {}, f'of {scene["image"]} (overlap ('),
        ('dem32.tif', dict(bands=['slope', 'aspect']), 'unknown terrain band(s) aspect'),
        ('dem32.tif', dict(tpi_radii=(500, 100)), 'an inner radius below the outer one'),
    ]:
        with pytest.raises(RtsSegError) as e:
            terrain_like(d / dem, scene['image'], **kw)
        assert want in str(e.value), e.value


@pytest.fixture(scope='module')
def terrain_data(scene):
    "make-dataset --dem over the scene (S2 blue, green, red + DEM/), then a 1-epoch model on red, green, blue, relelev, slope."
    d = scene['dir']
    write_dem(d / 'dem_ds.tif', scene['image'], 32)
    r = rts_seg(
        'make-dataset', '--images', scene['image'], '--polygons', scene['polygons'], '--out', d / 'ds',
        '--tile-size', 64,
        '--bands', 1, 2, 3, '--band-names', 'blue', 'green', 'red', '--source', 'S2', '--dem', d / 'dem_ds.tif',
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    made = r.stdout
    (d / 'terrain.yaml').write_text(TINY.format(out=d / 'run', root=d / 'ds'))
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    r = rts_seg(
        'train',
        '--config',
        d / 'terrain.yaml',
        'train.epochs=1',
        f'data.channels=[{",".join(CHANNELS)}]',
        cwd=d,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(scene, root=d / 'ds', make_stdout=made, model=d / 'run' / 'best.pth', dem=d / 'dem_ds.tif')


def test_make_dataset_dem_is_declared_and_checked(terrain_data, tmp_path):
    root = terrain_data['root']
    assert yaml.safe_load((root / 'bands.yaml').read_text()) == {
        'S2': ['blue', 'green', 'red'],
        'DEM': ['relelev', 'slope', 'shade', 'tpi'],
    }
    tiles = sorted(p.name for p in (root / 'S2').glob('*.tif'))
    assert tiles and sorted(p.name for p in (root / 'DEM').glob('*.tif')) == tiles
    with rasterio.open(root / 'DEM' / tiles[0]) as t, rasterio.open(root / 'S2' / tiles[0]) as i:
        assert (t.crs, t.transform, t.shape) == (i.crs, i.transform, i.shape) and t.dtypes[0] == 'float32'
        assert t.descriptions == ('relelev', 'slope', 'shade', 'tpi')
    cfg = tmp_path / 'c.yaml'
    cfg.write_text(f'data:\n  channels: [{", ".join(CHANNELS)}]\n  num_workers: 0\n  batch_size: 4\n')
    r = rts_seg('check-data', '--root', root, '--config', cfg, '--report', tmp_path / 'rep.txt', '--batches', 1)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f'0 problem(s) in {root}' in r.stdout


def test_make_dataset_from_chips_with_a_dem(scene, tmp_path):
    "Chips in UTM with masks, a DEM in EPSG:3413: each chip gets its terrain in DEM/; a DEM beside the chips is refused."
    from rts_seg.core import RtsSegError
    from rts_seg.make_dataset import make_dataset_from_chips

    write_dem(tmp_path / 'dem.tif', scene['image'], 32)
    with rasterio.open(scene['image']) as s:
        crs, tf = s.crs, s.transform
    for i, (r0, c0) in enumerate([(10, 10), (120, 150)]):
        t = tf * Affine.translation(c0, r0)
        prof = dict(driver='GTiff', width=40, height=40, count=3, dtype='uint8', crs=crs, transform=t)
        (tmp_path / 'chips' / f'r{i}').mkdir(parents=True)
        with rasterio.open(tmp_path / 'chips' / f'r{i}' / f'c{i}.tif', 'w', **prof) as f:
            f.write(np.full((3, 40, 40), 100 + i, np.uint8))
        (tmp_path / 'masks').mkdir(exist_ok=True)
        with rasterio.open(tmp_path / 'masks' / f'c{i}_mask.tif', 'w', **dict(prof, count=1)) as f:
            f.write(np.eye(40, dtype=np.uint8)[None])
    args = ('make-dataset', '--chips', tmp_path / 'chips', '--masks', tmp_path / 'masks')
    r = rts_seg(*args, '--out', tmp_path / 'ds', '--dem', tmp_path / 'dem.tif')
    assert r.returncode == 0, r.stderr
    assert 'terrain: relelev, slope, shade, tpi as float32 in DEM/' in r.stdout
    assert yaml.safe_load((tmp_path / 'ds' / 'bands.yaml').read_text())['DEM'] == ['relelev', 'slope', 'shade', 'tpi']
    with rasterio.open(tmp_path / 'ds' / 'DEM' / 'c0.tif') as t:
        assert t.shape == (40, 40) and abs(np.nanmedian(t.read(2)) - SLOPE) < 0.1  # c0 lies on the plane
    write_dem(tmp_path / 'far.tif', scene['image'], 32, pad=-1000)
    with pytest.raises(RtsSegError) as e:
        make_dataset_from_chips(
            tmp_path / 'chips', tmp_path / 'ds2', masks=tmp_path / 'masks', dem=tmp_path / 'far.tif'
        )
    assert 'covers' in str(e.value) and 'c0.tif' in str(e.value) and not (tmp_path / 'ds2').exists(), e.value


def test_predict_dem_computes_the_terrain_once_and_refuses_what_it_cannot_serve(terrain_data, tmp_path):
    from rts_seg.bundle import Bundle
    from rts_seg.core import RtsSegError
    from rts_seg.terrain import predict_terrain, terrain_like

    image = terrain_data['image']
    args = ('predict', '--model', terrain_data['model'], '--scene', image, '--bands', 3, 2, 1)
    r = rts_seg(*args, '--dem', terrain_data['dem'], '--out', tmp_path / 'out')
    assert r.returncode == 0, r.stderr[-3000:]
    aux = tmp_path / 'out' / 'terrain' / f'{Path(image).stem}_terrain.tif'
    with rasterio.open(aux) as a, rasterio.open(image) as s:
        assert a.descriptions == ('relelev', 'slope') and (a.crs, a.transform, a.shape) == (s.crs, s.transform, s.shape)
        assert np.array_equal(a.read(), terrain_like(terrain_data['dem'], image, ['relelev', 'slope']), equal_nan=True)
    with rasterio.open(tmp_path / 'out' / f'{Path(image).stem}_prob.tif') as p:
        assert p.shape == (251, 251) and np.isfinite(p.read(1)).mean() > 0.9
    log = json.loads((tmp_path / 'out' / 'inference_log.json').read_text())
    assert log['channels'] == CHANNELS
    mtime = aux.stat().st_mtime_ns
    r = rts_seg(*args, '--dem', terrain_data['dem'], '--out', tmp_path / 'out', '--resume')
    assert r.returncode == 0 and f'terrain: reusing {aux}' in r.stdout and aux.stat().st_mtime_ns == mtime, r.stderr
    r = rts_seg(*args, '--dem', terrain_data['dem'], '--extra', aux, '--out', tmp_path / 'bad')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'give --dem or --extra, not both' in r.stderr and not (tmp_path / 'bad').exists()
    # a DEM beside the scene; a model of red, green, blue alone (the same bundle without its terrain channels)
    write_dem(tmp_path / 'far.tif', image, 32, pad=-1000)
    with pytest.raises(RtsSegError, match='covers'):
        predict_terrain(terrain_data['model'], [image], tmp_path / 'far.tif', tmp_path / 'bad')
    b = Bundle.load(terrain_data['model'])
    b.channels = b.channels[:3]
    b.save(tmp_path / 'rgb.pth')
    with pytest.raises(RtsSegError, match=r'takes no terrain \(its channels: red, green, blue\); drop --dem'):
        predict_terrain(tmp_path / 'rgb.pth', [image], terrain_data['dem'], tmp_path / 'bad')
    assert not (tmp_path / 'bad').exists()
