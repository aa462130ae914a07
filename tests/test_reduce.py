"""The reduce stage per region (issue 21): each region from its own files, VRTs that show the COG mosaics' pixels,
per-tile polygons unioned only across tile seams, GeoParquet, a STAC catalog; `rts-seg mosaic` after a sharded
`rts-seg predict --no-mosaic`; a region task on gs:// (a real local GCS emulator) downloading its own files only."""

import json, os, shutil, socket, subprocess, time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pyogrio.raw
import pystac
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from conftest import rts_seg
from rts_seg.config import InferenceConfig
from rts_seg.infer import OutDir, TileRecorder, reduce_region, region_records, run_mosaic, write_region_index
from rts_seg.predict import OUTPUTS, write_cog

S = 32  # tile side, pixels of 2 m


def tile(d: Path, key: str, prob: np.ndarray, x: float, y: float, crs='EPSG:32608') -> dict:
    "A finished tile as the map stage leaves it: three COGs (written here, no model), then `TileRecorder`'s record."
    prof = dict(driver='GTiff', width=S, height=S, count=1, crs=crs, transform=from_origin(x, y, 2, 2))
    arrays = dict(prob=prob.astype('float32'), mask=(prob > 0.5).astype('uint8'), scale=np.ones((S, S), 'uint8'))
    r = dict(key=key, windows=1, skipped_windows=0, slump_pixels=int((prob > 0.5).sum()), valid_pixels=S * S)
    for k, a in arrays.items():
        tmp = d / f'.{key}_{k}.src.tif'
        with rasterio.open(tmp, 'w', **prof, dtype=OUTPUTS[k][0], nodata=OUTPUTS[k][1]) as f:
            f.write(a, 1)
        r[k] = str(write_cog(tmp, d / 'tiles' / f'{key}_{k}.tif', OUTPUTS[k][2]))
        tmp.unlink()
    return r


def make_run(d: Path) -> tuple[pd.DataFrame, dict]:
    "Region A: 2 x 2 tiles, a slump on their common corner (in all four) and one inside tile a00; region B: one tile."
    (d / 'tiles').mkdir(parents=True)
    yy, xx = np.mgrid[0 : 2 * S, 0 : 2 * S]
    field = np.where((yy - S) ** 2 + (xx - S) ** 2 < 10**2, 0.9, 0.05)  # across the corner
    field[4:12, 4:14] = 0.8  # inside a00, away from its edges
    out = OutDir(d)
    cfg = InferenceConfig(min_area_m2=10, mosaics='both')
    rec = TileRecorder(out, 'manifest_0of1.jsonl', cfg, {})
    recs = [
        rec.record(
            tile(d, f'a{r}{c}', field[r * S : (r + 1) * S, c * S : (c + 1) * S], 500_000 + 2 * S * c, 7e6 - 2 * S * r)
        )
        for r in range(2)
        for c in range(2)
    ]
    b = np.full((S, S), 0.05)
    b[10:20, 10:20] = 0.9
    recs.append(rec.record(tile(d, 'b00', b, 600_000, 7e6)))
    tiles = pd.DataFrame(dict(tile_id=[r['key'] for r in recs], RegionName=['A'] * 4 + ['B']))
    tiles.to_csv(d / 'tiles.csv', index=False)
    write_region_index(out, tiles, recs, 0, 1)
    (d / 'run_info.json').write_text(json.dumps(dict(model=dict(arch='Unet'), provenance=dict(config_hash='abc'))))
    return tiles, {r['key']: r for r in recs}


def polygons(gpkg) -> tuple[list, dict]:
    meta, _, wkb, vals = pyogrio.raw.read(gpkg)
    return [shapely.from_wkb(w) for w in wkb], dict(zip(meta['fields'], vals))


def test_region_reduce_vrt_vs_cog(tmp_path):
    tiles, recs = make_run(tmp_path)
    cfg = dict(min_area_m2=10)
    (cog,) = run_mosaic(tmp_path, tmp_path / 'tiles.csv', regions=['A'], cfg=InferenceConfig(mosaics='cog', **cfg))
    gc, fc = polygons(tmp_path / 'mosaic' / 'A.gpkg')
    # the region task on its own: reads the region's index only (no raster, no GeoPackage), reduces only its region
    out = OutDir(tmp_path)
    vcfg = InferenceConfig(mosaics='vrt', **cfg)
    vrt = reduce_region(out, 'A', region_records(out, 'A', tiles), vcfg)
    index = sum(p.stat().st_size for p in (tmp_path / 'index' / 'A').glob('*.jsonl'))
    assert out.bytes_in == index + (tmp_path / 'run_info.json').stat().st_size
    assert not (tmp_path / 'mosaic' / 'B.gpkg').exists()
    gv, fv = polygons(tmp_path / 'mosaic' / 'A.gpkg')
    # the same two slumps as the whole mosaic's: the one across the corner unioned from its four tiles' pieces
    assert (cog['polygons'], vrt['polygons'], len(gv)) == (2, 2, 2)
    assert sorted(fv['tile_ids']) == sorted(fc['tile_ids']) == ['a00', 'a00;a01;a10;a11']
    for g in (gc, gv):  # one part each: the pieces of the seam slump unioned into one polygon
        assert [len(shapely.get_parts(p)) for p in g] == [1, 1]
    big_c, big_v = (g[list(f['tile_ids']).index('a00;a01;a10;a11')] for f, g in ((fc, gc), (fv, gv)))
    assert abs(big_v.area - big_c.area) <= 0.02 * big_c.area and big_v.intersection(big_c).area >= 0.97 * big_c.area
    # the slump inside a00 passes through untouched: its tile's own polygon
    inner = gv[list(fv['tile_ids']).index('a00')]
    assert any(inner.equals_exact(o, 0) for o in polygons(tmp_path / 'tiles' / 'a00.gpkg')[0])
    # the VRT: the COG mosaic's pixels (the COG is the cog run's), no pixel copied
    with rasterio.open(vrt['rasters'][0]['prob_vrt']) as v, rasterio.open(cog['rasters'][0]['prob']) as c:
        assert (v.transform, v.shape, v.crs) == (c.transform, c.shape, c.crs)
        assert (v.read(1) == c.read(1)).all()
    assert (tmp_path / 'mosaic' / 'A_prob.vrt').stat().st_size < 5000
    # GeoParquet beside the GeoPackage: WKB geometry, the fields, GeoParquet metadata with the CRS
    t = pq.read_table(vrt['parquet'])
    geo = json.loads(t.schema.metadata[b'geo'])
    assert t.num_rows == 2 and geo['primary_column'] == 'geometry' and geo['columns']['geometry']['encoding'] == 'WKB'
    assert geo['columns']['geometry']['crs']['id'] == dict(authority='EPSG', code=32608)
    assert sorted(t.column('tile_ids').to_pylist()) == sorted(fv['tile_ids'])
    # the STAC catalog: both regions linked (B's item not written yet), A's item with its assets and provenance
    cat = json.loads((tmp_path / 'stac' / 'catalog.json').read_text())
    assert [l['href'] for l in cat['links'] if l['rel'] == 'item'] == ['./A.json', './B.json']
    item = pystac.Item.from_file(str(tmp_path / 'stac' / 'A.json'))
    assert item.properties['rts_seg:provenance'] == dict(config_hash='abc') and item.properties['rts_seg:polygons'] == 2
    assert {'A_gpkg', 'A_parquet', 'A_prob_vrt', 'A_mask_vrt', 'A_scale_vrt'} <= set(item.assets)
    assert all(Path(a.get_absolute_href()).exists() for a in item.assets.values())
    w, s, e, n = item.bbox
    assert -136 < w < e < -134 and 62 < s < n < 64  # UTM 8N near 500 km E, 7000 km N: about 135 W, 63 N
    # a task's share of the regions: 1/2 takes B, the second of the sorted list
    (b,) = run_mosaic(tmp_path, tmp_path / 'tiles.csv', task='1/2', cfg=vcfg)
    assert (b['region'], b['polygons'], b['tiles']) == ('B', 1, 1)
    assert len(list(pystac.Catalog.from_file(str(tmp_path / 'stac' / 'catalog.json')).get_items())) == 2
    r = rts_seg('mosaic', '--out', tmp_path, '--tile-list', tmp_path / 'tiles.csv', '--region', 'C')
    assert r.returncode == 2 and "region 'C' is not in" in r.stderr


def test_mosaic_tasks_after_sharded_predict(tiny, tmp_path):
    "A scene list in two shards with --no-mosaic, then `rts-seg mosaic` tasks; a region with unfinished tiles is refused."
    meta = pd.read_csv(tiny['data'] / 'metadata.csv')
    meta = meta[meta.RegionName.isin(sorted(meta.RegionName.unique())[:2])].groupby('RegionName').head(3)  # 2 x 3 tiles
    # a scene list: each unit of a shard a scene where it lies (here the tiles themselves), no --imagery
    meta = meta.assign(path=[str(tiny['data'] / 'PLANET-RGB' / f'{t}.tif') for t in meta.tile_id])
    meta[['tile_id', 'RegionName', 'path']].to_csv(tmp_path / 'tiles.csv', index=False)
    out = tmp_path / 'out'
    pred = lambda *a: rts_seg(
        'predict',
        '--model',
        tiny['run'] / 'best.pth',
        '--tile-list',
        tmp_path / 'tiles.csv',
        '--out',
        out,
        '--tile-size',
        64,
        '--no-mosaic',
        *a,
    )
    mos = lambda *a: rts_seg('mosaic', '--out', out, '--tile-list', tmp_path / 'tiles.csv', *a)
    r = pred('--shard', '0/2')
    assert r.returncode == 0, r.stderr
    regions = sorted(meta.RegionName.unique())
    r = mos('--region', regions[0])
    assert r.returncode == 2 and f'region {regions[0]}: ' in r.stderr and 'not finished' in r.stderr
    r = pred('--shard', '1/2')
    assert r.returncode == 0, r.stderr
    assert not list(out.glob('mosaic/*.gpkg'))  # --no-mosaic: the last shard left the regions to the tasks
    vrt = InferenceConfig(mosaics='vrt')
    for t in ('0/2', '1/2'):  # the two tasks of the reduce job (in this process: the CLI is tested above)
        run_mosaic(out, tmp_path / 'tiles.csv', task=t, cfg=vrt)
    done = {p.stem: json.loads(p.read_text()) for p in (out / 'mosaic').glob('*.json')}
    assert sorted(done) == regions and all('error' not in d for d in done.values())
    log = json.loads((out / 'inference_log_0of2.json').read_text())
    items = {i.id: i for i in pystac.Catalog.from_file(str(out / 'stac' / 'catalog.json')).get_items()}
    assert sorted(items) == regions
    assert items[regions[0]].properties['rts_seg:normalization_hash'] == log['normalization_hash']
    for reg, d in done.items():
        assert d['tiles'] == (meta.RegionName == reg).sum() and not list((out / 'mosaic').glob(f'{reg}*.tif'))
        _, _, wkb, _ = pyogrio.raw.read(d['gpkg'])
        assert len(wkb) == d['polygons'] == pq.read_table(d['parquet']).num_rows
    # a task run again (a retried VM) writes the same
    run_mosaic(out, tmp_path / 'tiles.csv', task='0/2', cfg=vrt)
    again = {p.stem: json.loads(p.read_text()) for p in (out / 'mosaic').glob('*.json')}
    assert all(again[k]['polygons'] == done[k]['polygons'] for k in done)


@pytest.fixture
def gcs():
    "gcp-storage-emulator on a free loopback port; yields a gcsfs filesystem on it."
    import fsspec

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    emu = subprocess.Popen(
        [shutil.which('gcp-storage-emulator'), 'start', '--port', str(port), '--in-memory'],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(
        STORAGE_EMULATOR_HOST=f'http://127.0.0.1:{port}',
        FSSPEC_GS_TOKEN='anon',
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
    )
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(50):
            try:
                socket.create_connection(('127.0.0.1', port), 0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        fs = fsspec.filesystem('gs', token='anon', skip_instance_cache=True)
        fs.mkdir('rts-reduce')
        yield fs
    finally:
        emu.terminate()
        emu.wait(10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_region_task_on_gcs_downloads_its_own_files(gcs, tmp_path):
    tiles, _ = make_run(tmp_path / 'run')
    gcs.put(str(tmp_path / 'run'), 'rts-reduce/run', recursive=True)
    out = OutDir('gs://rts-reduce/run')
    res = reduce_region(out, 'B', region_records(out, 'B', tiles), InferenceConfig(mosaics='vrt', min_area_m2=10))
    # what came down: B's index and the run's provenance; not a byte of region A, nor any raster
    assert out.bytes_in == gcs.size('rts-reduce/run/index/B/0of1.jsonl') + gcs.size('rts-reduce/run/run_info.json')
    assert sorted(
        str(p.relative_to(out.local)) for p in out.local.rglob('*') if p.is_file() and 'mosaic' not in p.parts
    ) == ['index/B/0of1.jsonl', 'run_info.json', 'stac/B.json']
    for f in ('mosaic/B.gpkg', 'mosaic/B.parquet', 'mosaic/B_prob.vrt', 'stac/B.json'):
        assert gcs.exists(f'rts-reduce/run/{f}'), f
    assert res['gpkg'] == 'gs://rts-reduce/run/mosaic/B.gpkg' and res['polygons'] == 1
    # the VRT's sources are relative: read through GDAL's /vsigs/ it shows B's tile
    vrt = gcs.cat('rts-reduce/run/mosaic/B_prob.vrt').decode()
    assert '<SourceFilename relativeToVRT="1">../tiles/b00_prob.tif</SourceFilename>' in vrt
