"""Inference at scale through the CLI: an odd-sized UTM scene with a nodata border, COGs and GeoPackages,
polygons across window seams, tile lists killed and resumed, and sharded by a batch engine's task index."""

import json, os, shutil, subprocess

import numpy as np
import pyogrio
import pyogrio.raw
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage

from conftest import rts_seg

ENGINE_VARS = (
    'BATCH_TASK_INDEX',
    'BATCH_TASK_COUNT',
    'CLOUD_RUN_TASK_INDEX',
    'CLOUD_RUN_TASK_COUNT',
    'JOB_COMPLETION_INDEX',
)
FIELDS = [
    'rts_id',
    'area_m2',
    'perimeter_m',
    'centroid_lat',
    'centroid_lon',
    'mean_prob',
    'max_prob',
    'prob_std',
    'detection_scale',
    'tile_ids',
]


def utm_scene(tiny, path):
    "The demo scene, cropped to an odd size, in UTM zone 8N, with a 23 px nodata border on the left."
    with rasterio.open(tiny['data'] / 'scenes' / 'demo_scene.tif') as s:
        img = s.read()[:, :211, :301].copy()
    img[img == 0] = 1
    img[:, :, :23] = 0
    prof = dict(
        driver='GTiff',
        width=img.shape[2],
        height=img.shape[1],
        count=3,
        dtype='uint8',
        crs='EPSG:32608',
        nodata=0,
        transform=from_origin(500_000, 7_600_000, 3, 3),
    )
    with rasterio.open(path, 'w', **prof) as d:
        d.write(img)
    return path


def test_scene_outputs_are_cogs_and_polygons_merge_across_seams(tiny, tmp_path):
    scene = utm_scene(tiny, tmp_path / 'utm_scene.tif')
    model = tiny['run'] / 'best.pth'
    r = rts_seg(
        'predict',
        '--model',
        model,
        '--scene',
        scene,
        '--out',
        tmp_path / 'a',
        '--tile-size',
        64,
        'inference.min_area_m2=0',
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with rasterio.open(tmp_path / 'a' / 'utm_scene_prob.tif') as p:
        prob = p.read(1)
    # a threshold that makes slumps of the brightest ~5 % of the scene, so some cross window seams
    thr = float(np.quantile(prob[prob >= 0], 0.95))
    r = rts_seg(
        'predict',
        '--model',
        model,
        '--scene',
        scene,
        '--out',
        tmp_path / 'b',
        '--tile-size',
        64,
        '--threshold',
        thr,
        'inference.min_area_m2=0',
        'inference.simplify_m=0',
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / 'b'
    with rasterio.open(scene) as s:
        crs, tfm, shape = s.crs, s.transform, s.shape
    for name, dtype, nodata in (('prob', 'float32', -1), ('mask', 'uint8', 255), ('scale', 'uint8', 0)):
        with rasterio.open(out / f'utm_scene_{name}.tif') as d:
            assert (d.crs, d.transform, d.shape, d.dtypes[0], d.nodata) == (crs, tfm, shape, dtype, nodata)
            assert d.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG' and d.profile['tiled'] and d.compression is not None
            assert d.overviews(1) == [2]
            a = d.read(1)
            assert (a[:, :23] == nodata).all() and (a[:, 23:] != nodata).all()  # nodata stays nodata, and only there
    with rasterio.open(out / 'utm_scene_mask.tif') as m:
        mask = m.read(1)
    assert ((prob > thr) == (mask == 1)).all()
    info = pyogrio.read_info(out / 'utm_scene.gpkg')
    assert info['crs'] == 'EPSG:32608' and list(info['fields']) == FIELDS and info['geometry_type'] == 'MultiPolygon'
    _, _, geoms, fields = pyogrio.raw.read(out / 'utm_scene.gpkg')
    lab, n = ndimage.label(mask == 1)  # 4-connected, like the polygons
    assert len(geoms) == n > 0  # one polygon per connected slump ...
    seams = [x for x in range(64, shape[1], 32)]
    crossing = [k for k in range(1, n + 1) if any((lab[:, x - 1] == k).any() and (lab[:, x] == k).any() for x in seams)]
    assert crossing, 'no slump crosses a window seam'  # ... including those that cross window seams
    f = dict(zip(FIELDS, fields))
    assert sorted(f['area_m2'].round()) == sorted(np.bincount(lab.ravel())[1:] * 9.0)  # simplify_m=0: exact pixel areas
    assert (f['max_prob'] > thr).all() and set(f['tile_ids']) == {'utm_scene'} and set(f['detection_scale']) == {1.0}
    log = json.loads((out / 'inference_log.json').read_text())
    assert log['threshold'] == thr and log['tiles']['total'] == 1 and len(log['normalization_hash']) == 12
    assert log['skipped_windows'] == 0 and log['windows'] > 20


def engine_env(**v) -> dict:
    "The environment of a batch engine's task: none of its variables but `v` (and so none when run outside one)."
    return {**{k: x for k, x in os.environ.items() if k not in ENGINE_VARS}, **{k: str(x) for k, x in v.items()}}


def test_tile_list_killed_and_resumed_gives_identical_files(tiny, tmp_path):
    import pandas as pd

    meta = pd.read_csv(tiny['data'] / 'metadata.csv')
    meta[['tile_id', 'RegionName']].to_csv(tmp_path / 'tiles.csv', index=False)
    args = [
        'predict',
        '--model',
        tiny['run'] / 'best.pth',
        '--tile-list',
        tmp_path / 'tiles.csv',
        '--imagery',
        tiny['data'],
        '--tile-size',
        64,
        '--batch-size',
        4,
        'inference.min_area_m2=20',
    ]
    r = rts_seg(*args, '--out', tmp_path / 'whole')
    assert r.returncode == 0, r.stderr[-2000:]
    r = rts_seg(*args, '--out', tmp_path / 'killed', env={**os.environ, 'RTS_SEG_KILL_AFTER': '7'})
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])  # SIGKILL, mid-run
    assert len((tmp_path / 'killed' / 'manifest_0of1.jsonl').read_text().splitlines()) == 7
    assert not (tmp_path / 'killed' / 'mosaic').exists()
    r = rts_seg(*args, '--out', tmp_path / 'killed')
    assert r.returncode == 2 and '--resume' in r.stderr
    r = rts_seg(*args, '--out', tmp_path / 'killed', '--resume')
    assert r.returncode == 0, r.stderr[-2000:]
    log = json.loads((tmp_path / 'killed' / 'inference_log.json').read_text())
    assert log['tiles'] == dict(total=30, predicted=23, resumed=7, all_nodata=0)
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob('*') if p.is_file())
    a, b = tmp_path / 'whole', tmp_path / 'killed'
    assert files(a) == files(b)
    for f in files(a):
        if f.endswith(('.tif', '.gpkg')):
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert len(list((a / 'mosaic').glob('*.gpkg'))) == 3 and len(list((a / 'mosaic').glob('*_prob.tif'))) == 3
    with (
        rasterio.open(a / 'mosaic' / 'yamal_prob.tif') as m,
        rasterio.open(next((a / 'tiles').glob('yamal_*_prob.tif'))) as t,
    ):
        assert m.crs.to_epsg() == 3413 and (m.read(1, window=m.window(*t.bounds)) == t.read(1)).all()
    # the same list as 2 Cloud Batch tasks (`--shard auto`), started at once; task 1 is killed after one of its 15 tiles, and retried
    # (its 14 left end in a batch of 2, not of 1: on CPU a batch of one tile rounds some probabilities differently, by 1e-7)
    c = tmp_path / 'batch'
    task = [
        shutil.which('rts-seg'),
        *map(str, args),
        '--out',
        str(c),
        '--shard',
        'auto',
        '--resume',
    ]  # one command for every task
    ps = [
        subprocess.Popen(
            task,
            env=engine_env(BATCH_TASK_INDEX=k, BATCH_TASK_COUNT=2, **({'RTS_SEG_KILL_AFTER': 1} if k == 1 else {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in ps]
    assert [p.returncode for p in ps] == [0, -9], [e[-2000:] for e in errs]
    assert not (c / 'mosaic').exists()  # task 1 is unfinished
    # the engine's retry: the same command
    r = rts_seg(*task[1:], env=engine_env(BATCH_TASK_INDEX=1, BATCH_TASK_COUNT=2))
    assert r.returncode == 0 and 'shard 1/2, from Cloud Batch' in r.stdout, r.stderr[-2000:]
    logs = [json.loads((c / f'inference_log_{k}of2.json').read_text()) for k in range(2)]
    assert [(l['shard'], l['shard_source'], l['tiles']['total']) for l in logs] == [
        (f'{k}/2', 'Cloud Batch', 15) for k in range(2)
    ]
    assert (logs[0]['mosaics'], logs[1]['tiles']['resumed'], len(logs[1]['mosaics'])) == ([], 1, 3)
    # the shard's own files (manifests, logs, region indexes by shard) and the STAC items (dated) aside
    outputs = lambda d: [f for f in files(d) if not f.startswith(('manifest_', 'inference_log', 'index/', 'stac/'))]
    assert outputs(c) == outputs(a)  # exactly the files of the unsharded run ...
    for f in outputs(a):
        assert (a / f).read_bytes() == (c / f).read_bytes(), f  # ... to the byte


def test_bad_georeferencing_and_shards_are_clear_errors(tiny, tmp_path):
    with rasterio.open(tiny['data'] / 'scenes' / 'demo_scene.tif') as s:
        img = s.read()
    with rasterio.open(
        tmp_path / 'nogeo.tif', 'w', driver='GTiff', width=img.shape[2], height=img.shape[1], count=3, dtype='uint8'
    ) as d:
        d.write(img)
    r = rts_seg(
        'predict', '--model', tiny['run'] / 'best.pth', '--scene', tmp_path / 'nogeo.tif', '--out', tmp_path / 'o'
    )
    assert r.returncode == 2 and 'nogeo.tif' in r.stderr and 'Traceback' not in r.stderr
    r = rts_seg(
        'predict',
        '--model',
        tiny['run'] / 'best.pth',
        '--tile-list',
        tmp_path / 't.csv',
        '--imagery',
        tiny['data'],
        '--out',
        tmp_path / 'o',
        '--shard',
        '3/2',
    )
    assert r.returncode == 2 and '--shard' in r.stderr
    r = rts_seg(
        'predict',
        '--model',
        tiny['run'] / 'best.pth',
        '--tile-list',
        tmp_path / 't.csv',
        '--imagery',
        tiny['data'],
        '--out',
        tmp_path / 'o',
        '--shard',
        'auto',
        env=engine_env(),
    )  # outside a batch job
    assert (
        r.returncode == 2
        and len(r.stderr.splitlines()) == 1
        and all(w in r.stderr for w in ('BATCH_TASK_INDEX', 'JOB_COMPLETION_INDEX', '--shard i/n'))
    ), r.stderr


def test_tile_list_on_gcs_emulator(tiny, tmp_path):
    "gs:// in and out, against a real local GCS emulator: tiles read by windows, outputs uploaded, resumable."
    import socket, subprocess, time
    import fsspec, pandas as pd

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    emu = subprocess.Popen(
        [shutil.which('gcp-storage-emulator'), 'start', '--port', str(port), '--in-memory'],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{port}',
        'FSSPEC_GS_TOKEN': 'anon',
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
    }
    try:
        os.environ.update(
            {k: env[k] for k in ('STORAGE_EMULATOR_HOST', 'FSSPEC_GS_TOKEN', 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT')}
        )
        for _ in range(50):
            try:
                socket.create_connection(('127.0.0.1', port), 0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        fs = fsspec.filesystem('gs', token='anon', skip_instance_cache=True)
        fs.mkdir('rts-infer')
        meta = pd.read_csv(tiny['data'] / 'metadata.csv').iloc[::10]  # one tile per region
        for t in meta.tile_id:
            fs.put(str(tiny['data'] / 'PLANET-RGB' / f'{t}.tif'), f'rts-infer/data/PLANET-RGB/{t}.tif')
        fs.pipe('rts-infer/tiles.csv', meta[['tile_id', 'RegionName']].to_csv(index=False).encode())
        args = [
            'predict',
            '--model',
            tiny['run'] / 'best.pth',
            '--tile-list',
            'gs://rts-infer/tiles.csv',
            '--imagery',
            'gs://rts-infer/data',
            '--out',
            'gs://rts-infer/out',
            '--tile-size',
            64,
            'inference.min_area_m2=20',
        ]
        r = rts_seg(*args, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        names = {p.split('rts-infer/out/')[1] for p in fs.find('rts-infer/out')}
        for t in meta.tile_id:
            assert {f'tiles/{t}_prob.tif', f'tiles/{t}_mask.tif', f'tiles/{t}_scale.tif', f'tiles/{t}.gpkg'} <= names
        assert {'manifest_0of1.jsonl', 'inference_log.json'} <= names and not any(
            'partial' in n or 'tmp' in n for n in names
        )
        regions = set(meta.RegionName)
        assert {f'mosaic/{g}_{k}.tif' for g in regions for k in ('prob', 'mask', 'scale')} <= names
        with rasterio.open(f'gs://rts-infer/out/tiles/{meta.tile_id[0]}_prob.tif', opener=fs) as p:
            assert p.crs.to_epsg() == 3413 and p.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
        log = json.loads(fs.cat('rts-infer/out/inference_log.json'))
        assert log['tiles'] == dict(total=3, predicted=3, resumed=0, all_nodata=0)
        # as a Cloud Batch task runs it (rts-seg launch predict): the model from the bucket, the shard from the engine
        fs.put(str(tiny['run'] / 'best.pth'), 'rts-infer/models/best.pth')
        args[2] = 'gs://rts-infer/models/best.pth'
        batch = {**env, 'BATCH_TASK_INDEX': '0', 'BATCH_TASK_COUNT': '1', 'XDG_CACHE_HOME': str(tmp_path / 'cache')}
        r = rts_seg(*args, '--shard', 'auto', '--resume', env=batch)
        assert r.returncode == 0 and '0 predicted, 3 already done' in r.stdout, r.stderr[-2000:]
        assert [p.name for p in (tmp_path / 'cache').rglob('*.pth')] == ['best.pth']  # downloaded once, into the cache
    finally:
        for k in ('STORAGE_EMULATOR_HOST', 'FSSPEC_GS_TOKEN', 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'):
            os.environ.pop(k, None)
        emu.terminate()
        emu.wait(10)
