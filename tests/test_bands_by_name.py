"""A dataset that declares its bands by name (bands.yaml: a 4-band uint16 `S2` raster and a `DEM` raster) and a model
trained on some of them plus a computed index (ndvi), read back by every use through the CLI: check-data, predict
(a described scene, `--bands` by name, a tile list of both rasters), evaluate, export; wrong imagery refused in one
line. Probabilities equal the training-time forward pass."""

import json, os

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from conftest import TINY, rts_seg

CHANNELS = ['red', 'green', 'blue', 'ndvi', 'relelev']


def declared_copy(src, dst):
    "A copy of a synthetic dataset with --extra, declared as a Sentinel-2-like uint16 raster and a DEM raster."
    for f in ('metadata.csv', 'splits.yaml'):
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        (dst / f).write_bytes((src / f).read_bytes())
    (dst / 'bands.yaml').write_text('S2: [blue, green, red, nir]\nDEM: [slope, relelev]\n')
    for d in ('S2', 'DEM', 'labels'):
        (dst / d).mkdir()
    for f in sorted((src / 'PLANET-RGB').glob('*.tif')):
        with (
            rasterio.open(f) as s,
            rasterio.open(src / 'EXTRA' / f.name) as e,
            rasterio.open(src / 'labels' / f.name) as l,
        ):
            p = dict(s.profile, nodata=None)
            r, g, b = s.read().astype(np.uint16) * 10
            nir = (e.read(2) * 10).astype(np.uint16)
            with rasterio.open(dst / 'S2' / f.name, 'w', **dict(p, count=4, dtype='uint16')) as d:
                d.write(np.stack([b, g, r, nir]))
            relelev = e.read(3)
            with rasterio.open(dst / 'DEM' / f.name, 'w', **dict(p, count=2, dtype='float32')) as d:
                d.write(np.stack([np.abs(np.gradient(relelev)[0]), relelev]).astype(np.float32))
            with rasterio.open(dst / 'labels' / f.name, 'w', **l.profile) as d:
                d.write(l.read())


@pytest.fixture(scope='module')
def s2(tmp_path_factory):
    "synth --extra -> declared S2 + DEM dataset -> train with data.channels=[red, green, blue, ndvi, relelev] (1 epoch)."
    d = tmp_path_factory.mktemp('s2')
    r = rts_seg('synth', '--out', d / 'synth', '--tiles', 30, '--size', 64, '--seed', 4, '--extra')
    assert r.returncode == 0, r.stderr
    declared_copy(d / 'synth', d / 'data')
    (d / 's2.yaml').write_text(TINY.format(out=d / 'run', root=d / 'data'))
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    r = rts_seg(
        'train', '--config', d / 's2.yaml', 'train.epochs=1', f'data.channels=[{",".join(CHANNELS)}]', cwd=d, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(dir=d, data=d / 'data', run=d / 'run', model=d / 'run' / 'best.pth')


def training_probs(s2, tid):
    "Probabilities of the trained model on tile `tid`, read and normalised as training does."
    from rts_seg.bundle import Bundle
    from rts_seg.data import Normalizer, RTSDataset

    b = Bundle.load(s2['model'])
    ds = RTSDataset(s2['data'], [tid], Normalizer(b.normalization), channels=CHANNELS)
    with torch.no_grad():
        logit = b.build_model()(ds[0][0][None])[0, 0]
    return torch.sigmoid(logit / b.temperature).numpy()


def test_check_data_and_the_bundle_know_the_bands_by_name(s2, tmp_path):
    from rts_seg.bundle import Bundle

    cfg = tmp_path / 'c.yaml'
    cfg.write_text(f'data:\n  channels: [{", ".join(CHANNELS)}]\n  num_workers: 0\n  batch_size: 4\n')
    r = rts_seg('check-data', '--root', s2['data'], '--config', cfg, '--report', tmp_path / 'rep.txt', '--batches', 1)
    assert r.returncode == 0 and '0 problem(s)' in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    b = Bundle.load(s2['model'])
    assert [c['name'] for c in b.channels] == CHANNELS
    assert [c['source'] for c in b.channels] == ['S2', 'S2', 'S2', 'index', 'DEM']
    assert b.channels[3]['inputs'] == ['nir', 'red'] and b.channels[4]['band'] == 2
    assert b.imagery['bands'] == {'S2': ['blue', 'green', 'red', 'nir'], 'DEM': ['slope', 'relelev']}
    assert b.imagery['dtypes'] == {'S2': 'uint16', 'DEM': 'float32'} and b.sources == ['S2', 'DEM']
    # a chip of the wrong band count is one problem naming the declaration
    with rasterio.open(s2['data'] / 'S2' / os.listdir(s2['data'] / 'S2')[0]) as s:
        name, p, a = os.path.basename(s.name), s.profile, s.read()
    bad = tmp_path / 'bad'
    declared_copy(s2['dir'] / 'synth', bad)
    with rasterio.open(bad / 'S2' / name, 'w', **dict(p, count=3)) as d:
        d.write(a[:3])
    r = rts_seg('check-data', '--root', bad, '--config', cfg)
    assert r.returncode == 1 and '3 band(s), expected 4 (blue, green, red, nir) as bands.yaml declares' in r.stdout, (
        r.stdout
    )


def test_scenes_and_tile_lists_match_the_training_forward_pass(s2, tmp_path):
    meta = pd.read_csv(s2['data'] / 'metadata.csv', keep_default_na=False)
    tiles = meta[meta.RegionName == 'peel_plateau'][['tile_id', 'RegionName']].head(3)
    tid = tiles.tile_id.iloc[0]
    want = training_probs(s2, tid)
    with rasterio.open(s2['data'] / 'S2' / f'{tid}.tif') as s:
        a, p = s.read(), s.profile
    # the scene's bands in another order, named in its band descriptions; the DEM beside it
    with rasterio.open(tmp_path / 'described.tif', 'w', **p) as d:
        d.write(a[[3, 1, 0, 2]])
        d.descriptions = ('nir', 'green', 'blue', 'red')
    # six undescribed bands: --bands by name says which
    with rasterio.open(tmp_path / 'six.tif', 'w', **dict(p, count=6)) as d:
        d.write(np.concatenate([a[[2, 1, 0]], np.zeros_like(a[:1]), a[[3]], np.zeros_like(a[:1])]))
    dem = s2['data'] / 'DEM' / f'{tid}.tif'
    runs = {
        'described': ['--scene', tmp_path / 'described.tif', '--extra', dem],
        'named': ['--scene', tmp_path / 'six.tif', '--extra', dem, '--bands', 'red=1,green=2,blue=3,nir=5,relelev=2'],
    }
    for k, args in runs.items():
        r = rts_seg('predict', '--model', s2['model'], *args, '--out', tmp_path / k)
        assert r.returncode == 0, (k, r.stderr[-2000:])
        stem = args[1].stem
        with rasterio.open(tmp_path / k / f'{stem}_prob.tif') as q:
            assert np.abs(q.read(1) - want).max() < 1e-4, k
    # a tile list reads each source's raster of a tile from the imagery root
    tiles.to_csv(tmp_path / 'tiles.csv', index=False)
    r = rts_seg(
        'predict', '--model', s2['model'], '--tile-list', tmp_path / 'tiles.csv', '--imagery', s2['data'],
        '--out', tmp_path / 'tl',
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    log = json.loads((tmp_path / 'tl' / 'inference_log.json').read_text())
    assert log['channels'] == CHANNELS and log['min_area_m2'] == 100.0
    for t in tiles.tile_id:
        with rasterio.open(tmp_path / 'tl' / 'tiles' / f'{t}_prob.tif') as q:
            assert np.abs(q.read(1) - training_probs(s2, t)).max() < 1e-4, t
    r = rts_seg('evaluate', '--pred', tmp_path / 'tl', '--truth', s2['data'] / 'labels')
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / 'tl' / 'evaluation.json').read_text())['n_images'] == 3
    # an exported model finds the same bands by name
    r = rts_seg('export', '--model', s2['model'], '--format', 'onnx', '--out', tmp_path / 'm.onnx')
    assert r.returncode == 0, r.stderr[-2000:]
    r = rts_seg(
        'predict', '--model', tmp_path / 'm.onnx', '--scene', tmp_path / 'described.tif', '--extra', dem,
        '--out', tmp_path / 'onnx',
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    with rasterio.open(tmp_path / 'onnx' / 'described_prob.tif') as q:
        assert np.abs(q.read(1) - want).max() < 1e-3


def test_wrong_imagery_is_refused_in_one_line(s2, tmp_path):
    tid = pd.read_csv(s2['data'] / 'metadata.csv', keep_default_na=False).tile_id.iloc[0]
    with rasterio.open(s2['data'] / 'S2' / f'{tid}.tif') as s:
        a, p = s.read(), s.profile
    with rasterio.open(tmp_path / 'rgb.tif', 'w', **dict(p, count=3)) as d:  # no nir: ndvi cannot be computed
        d.write(a[:3])
    with rasterio.open(tmp_path / 'u8.tif', 'w', **dict(p, dtype='uint8')) as d:  # 8-bit, not the 16-bit of training
        d.write((a // 256).astype(np.uint8))
    dem = s2['data'] / 'DEM' / f'{tid}.tif'
    cases = [
        (['--scene', tmp_path / 'rgb.tif', '--extra', dem], 'has 3 band(s); the model needs 4 (red, green, blue, nir)'),
        (['--scene', tmp_path / 'u8.tif', '--extra', dem], 'uint8; the model was trained on uint16'),
        (['--scene', s2['data'] / 'S2' / f'{tid}.tif'], 'needs 5 (red, green, blue, relelev, nir)'),
        (['--scene', tmp_path / 'rgb.tif', '--extra', dem, '--bands', 'red=1,green=2,blue=3'], 'no band for nir'),
    ]
    for args, msg in cases:
        r = rts_seg('predict', '--model', s2['model'], *args, '--out', tmp_path / 'out')
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], (args, r.stderr[-1500:])
