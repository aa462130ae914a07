"""A tile list whose regions span two UTM zones, with a tile whose pixel size is off by float noise, through
`rts-seg predict`: one mosaic per CRS, the region's polygons in one GeoPackage, a region whose tiles really
differ named in one line, and `inference_log.json` written whatever fails; then real Sentinel-2 sites in two zones."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from rasterio.windows import Window

from conftest import ROOT, rts_seg

SITES = Path(ROOT.parent / 'shared' / 'data' / 'rts_intercomparison')
NOISY = 9.999999999999986  # a 10 m pixel size as some chips store it


def write_tile(path, img, crs, x, y, res, nodata=None):
    "A 3-band uint8 GeoTIFF, north up, its corner at (x, y)."
    prof = dict(driver='GTiff', width=img.shape[2], height=img.shape[1], count=3, dtype='uint8', crs=crs, nodata=nodata)
    with rasterio.open(path, 'w', **prof, transform=from_origin(x, y, res, res)) as d:
        d.write(img)


def predict(tiny, tiles: pd.DataFrame, imagery, out, *extra):
    "`rts-seg predict` over a tile list; the finished process."
    tiles.to_csv(Path(out).parent / f'{Path(out).name}.csv', index=False)
    return rts_seg(
        'predict',
        '--model',
        tiny['run'] / 'best.pth',
        '--tile-list',
        Path(out).parent / f'{Path(out).name}.csv',
        '--imagery',
        imagery,
        '--out',
        out,
        '--tile-size',
        64,
        *extra,
    )


def check_tiles_in_mosaic(mosaic, tiles):
    "Each tile's probabilities are the mosaic's pixels at its place: the mosaic's grid is the tiles'."
    with rasterio.open(mosaic) as m:
        for t in tiles:
            with rasterio.open(t) as a:
                col, row = ~m.transform * (a.transform.c, a.transform.f)
                assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6, (t, col, row)
                w = Window(round(col), round(row), a.width, a.height)
                assert (m.read(1, window=w) == a.read(1)).all(), t


def test_region_across_two_zones_and_float_noise(tiny, tmp_path):
    src = sorted((tiny['data'] / 'PLANET-RGB').glob('*.tif'))
    layout = [  # tile, region, CRS, west, north, pixel size; 64 px tiles
        ('z8_a', 'delta', 'EPSG:32608', 500_000, 7_600_000, 10),
        ('z8_b', 'delta', 'EPSG:32608', 500_640, 7_600_000, NOISY),
        ('z8_c', 'delta', 'EPSG:32608', 500_640, 7_599_360, NOISY),
        ('z9_a', 'delta', 'EPSG:32609', 410_000, 7_600_000, 10),
        ('z9_b', 'delta', 'EPSG:32609', 410_640, 7_600_000, 10),
        ('c_10', 'coarse', 'EPSG:32608', 600_000, 7_600_000, 10),
        ('c_20', 'coarse', 'EPSG:32608', 600_640, 7_600_000, 20),
    ]
    (tmp_path / 'img' / 'PLANET-RGB').mkdir(parents=True)
    for (t, _, crs, x, y, res), s in zip(layout, src):
        with rasterio.open(s) as a:
            write_tile(tmp_path / 'img' / 'PLANET-RGB' / f'{t}.tif', a.read(), crs, x, y, res)
    tiles = pd.DataFrame([l[:2] for l in layout], columns=['tile_id', 'RegionName'])
    out = tmp_path / 'out'
    # polygons of whole pixels (areas known); 10 m tiles for a model of 3 m pixels
    exact = ('inference.min_area_m2=0', 'inference.simplify_m=0', 'inference.pixel_size_tolerance=8')
    r = predict(tiny, tiles, tmp_path / 'img', out, *exact)
    # the region whose pixel sizes really differ: one line naming its files; the run fails, but only at the end
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith('rts-seg: error: mosaic of 1 of 2 region(s) failed: coarse:') and 'Traceback' not in r.stderr
    assert all(w in err for w in ('differ in pixel size', '10 x 10: c_10_prob.tif', '20 x 20: c_20_prob.tif')), err
    log = json.loads((out / 'inference_log.json').read_text())
    assert log['failed'] == err.removeprefix('rts-seg: error: ')
    assert log['tiles'] == dict(total=7, predicted=7, resumed=0, all_nodata=0)
    coarse, delta = log['mosaics']
    assert coarse['region'] == 'coarse' and 'c_20_prob.tif' in coarse['error'] and 'rasters' not in coarse
    # the region across two zones: one mosaic per zone, at 10 m (the noisy tiles snapped), each tile on its pixels
    assert (delta['region'], delta['tiles'], delta['crs']) == ('delta', 5, 'EPSG:32608')  # the zone of most tiles
    assert [(m['crs'], m['tiles']) for m in delta['rasters']] == [('EPSG:32608', 3), ('EPSG:32609', 2)]
    names = sorted(p.name for p in (out / 'mosaic').iterdir())
    assert names == ['delta.gpkg', 'delta.parquet'] + sorted(  # inference.mosaics=both: COGs and VRTs
        f'delta_{z}_{k}.{x}' for z in (32608, 32609) for k in ('mask', 'prob', 'scale') for x in ('tif', 'vrt')
    )
    for m, zone in zip(delta['rasters'], ('z8', 'z9')):
        with rasterio.open(m['prob']) as p:
            assert p.res == (10.0, 10.0) and p.crs.to_string() == m['crs']
        check_tiles_in_mosaic(m['prob'], sorted((out / 'tiles').glob(f'{zone}_*_prob.tif')))
        check_tiles_in_mosaic(m['mask'], sorted((out / 'tiles').glob(f'{zone}_*_mask.tif')))
    # its polygons in one GeoPackage, in zone 8; those of zone 9's tiles reprojected onto zone 9's footprint
    meta, _, wkb, fields = pyogrio.raw.read(out / 'mosaic' / 'delta.gpkg')
    f = dict(zip(meta['fields'], fields))
    assert meta['crs'] == 'EPSG:32608' and len(wkb) == delta['polygons'] > 0
    assert f['rts_id'].tolist() == list(range(1, len(wkb) + 1))
    z9 = shapely.box(410_000, 7_600_000 - 640, 411_280, 7_600_000)
    z9_in_8 = shapely.geometry.shape(transform_geom('EPSG:32609', 'EPSG:32608', z9.__geo_interface__)).buffer(1)
    zones = [{t[:2] for t in ts.split(';')} for ts in f['tile_ids']]
    assert all(len(z) == 1 for z in zones)  # the zones' tiles are kilometres apart: no polygon spans both
    in_z9 = np.array([z == {'z9'} for z in zones])
    assert in_z9.any() and not in_z9.all()
    for g, z in zip(shapely.from_wkb(wkb), in_z9):
        assert z9_in_8.contains(g) == z, (g.bounds, z)
    # each zone's area is that of its mosaic's slump pixels (100 m2 each), measured in its own zone
    for m, sel in zip(delta['rasters'], (~in_z9, in_z9)):
        with rasterio.open(m['mask']) as k:
            assert round(f['area_m2'][sel].sum()) == int((k.read(1) == 1).sum()) * 100

    # the list without the region that cannot be mosaicked, resumed: nothing predicted again, nothing failed
    r = predict(tiny, tiles[tiles.RegionName == 'delta'], tmp_path / 'img', out, '--resume', *exact)
    assert r.returncode == 0, r.stderr[-3000:]
    log2 = json.loads((out / 'inference_log.json').read_text())
    assert (log2['failed'], log2['tiles']['predicted'], log2['mosaics'][0]['polygons']) == (None, 0, delta['polygons'])
    # the region's polygons in a declared CRS (inference.polygon_crs)
    r = predict(
        tiny,
        tiles[tiles.RegionName == 'delta'],
        tmp_path / 'img',
        out,
        '--resume',
        *exact,
        'inference.polygon_crs=EPSG:32609',
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert pyogrio.read_info(out / 'mosaic' / 'delta.gpkg')['crs'] == 'EPSG:32609'


def test_log_written_when_prediction_fails(tiny, tmp_path):
    src = sorted((tiny['data'] / 'PLANET-RGB').glob('*.tif'))[:2]
    (tmp_path / 'img' / 'PLANET-RGB').mkdir(parents=True)
    with rasterio.open(src[0]) as a:
        img = a.read()
    write_tile(tmp_path / 'img' / 'PLANET-RGB' / 'good.tif', img, 'EPSG:32608', 500_000, 7_600_000, 3)
    with rasterio.open(  # no georeferencing: prediction stops at this tile
        tmp_path / 'img' / 'PLANET-RGB' / 'nogeo.tif', 'w', driver='GTiff', width=64, height=64, count=3, dtype='uint8'
    ) as d:
        d.write(img)
    tiles = pd.DataFrame(dict(tile_id=['good', 'nogeo'], RegionName='r'))
    r = predict(tiny, tiles, tmp_path / 'img', tmp_path / 'out')
    assert r.returncode == 2 and 'nogeo.tif' in r.stderr.splitlines()[-1], r.stderr[-3000:]
    log = json.loads((tmp_path / 'out' / 'inference_log.json').read_text())
    assert log['failed'].startswith('predict: ') and 'nogeo.tif' in log['failed'] and '\n' not in log['failed']
    assert log['tiles']['total'] == 2 and log['mosaics'] == []
    assert not list((tmp_path / 'out').glob('.*'))  # written atomically: no temporary file left


def rgb(path) -> tuple[np.ndarray, dict]:
    "A Sentinel-2 site's bands 3, 2, 1 (B4, B3, B2: red, green, blue) as uint8, 2-98 % stretched; 0 where nodata."
    with rasterio.open(path) as s:
        a, prof = s.read([3, 2, 1]).astype(np.float32), s.profile
    valid = (a > 0).all(0)
    lo, hi = np.percentile(a[:, valid], [2, 98], axis=1)
    out = np.clip((a - lo[:, None, None]) / (hi - lo)[:, None, None] * 254 + 1, 1, 255).astype(np.uint8)
    return np.where(valid, out, 0), prof


@pytest.mark.skipif(not SITES.exists(), reason=f'{SITES} is absent')
def test_real_sentinel2_sites_in_two_zones(tiny, tmp_path):
    "Peel (EPSG:32608), cut in two chips, one with float-noise pixels, and Bykovsky (EPSG:32652), as one region."
    (peel,) = sorted((SITES / 'Peel' / 'data').glob('S2_*.tif'))
    (byk,) = sorted((SITES / 'Bykovsky' / 'data').glob('S2_*.tif'))
    d = tmp_path / 'img' / 'PLANET-RGB'
    d.mkdir(parents=True)
    img, p = rgb(peel)
    x, y = p['transform'].c, p['transform'].f
    write_tile(d / 'peel_w.tif', img[:, :, :125], p['crs'], x, y, 10, nodata=0)
    write_tile(d / 'peel_e.tif', img[:, :, 125:], p['crs'], x + 1250, y, NOISY, nodata=0)
    img, p = rgb(byk)
    write_tile(d / 'bykovsky.tif', img, p['crs'], p['transform'].c, p['transform'].f, 10, nodata=0)
    tiles = pd.DataFrame(dict(tile_id=['peel_w', 'peel_e', 'bykovsky'], RegionName='arctic'))
    out = tmp_path / 'out'
    r = predict(tiny, tiles, tmp_path / 'img', out, 'inference.min_area_m2=0', 'inference.pixel_size_tolerance=4')
    assert r.returncode == 0, r.stderr[-3000:]
    log = json.loads((out / 'inference_log.json').read_text())
    (m,) = log['mosaics']
    assert (log['failed'], m['crs'], m['tiles']) == (None, 'EPSG:32608', 3)
    assert [(g['crs'], g['tiles']) for g in m['rasters']] == [('EPSG:32608', 2), ('EPSG:32652', 1)]
    with rasterio.open(m['rasters'][0]['prob']) as mp, rasterio.open(peel) as s:
        assert (mp.res, mp.shape, tuple(mp.bounds)) == ((10.0, 10.0), s.shape, tuple(s.bounds))  # Peel, whole again
    check_tiles_in_mosaic(m['rasters'][0]['prob'], [out / 'tiles' / f'peel_{h}_prob.tif' for h in 'we'])
    check_tiles_in_mosaic(m['rasters'][1]['prob'], [out / 'tiles' / 'bykovsky_prob.tif'])
    info = pyogrio.read_info(out / 'mosaic' / 'arctic.gpkg')
    assert info['crs'] == 'EPSG:32608' and info['features'] == m['polygons'] > 0
    meta, _, wkb, fields = pyogrio.raw.read(out / 'mosaic' / 'arctic.gpkg')
    f = dict(zip(meta['fields'], fields))
    tids, lat = f['tile_ids'], f['centroid_lat']
    assert {t.split(';')[0].split('_')[0] for t in tids} == {'peel', 'bykovsky'}
    assert 'peel_e;peel_w' in set(tids)  # slumps across the seam of the 10 m chip and the float-noise one are one
    byk_lat = lat[np.array([t == 'bykovsky' for t in tids])]
    assert ((71.5 < byk_lat) & (byk_lat < 72.5)).all()  # Bykovsky's polygons are where Bykovsky is
