"""A model trained with aux bands and another architecture, read back by every use through the CLI: predict (tile
list and scene), evaluate, and wrong imagery refused. Probabilities equal the training-time forward pass."""

import json, os

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from conftest import TINY, rts_seg


@pytest.fixture(scope='module')
def aux(tmp_path_factory):
    "synth --extra -> train FPN with extra_channels=[ndvi, re] (1 epoch) through the CLI."
    d = tmp_path_factory.mktemp('aux')
    r = rts_seg('synth', '--out', d / 'data', '--tiles', 30, '--size', 64, '--seed', 2, '--extra')
    assert r.returncode == 0, r.stderr
    (d / 'aux.yaml').write_text(TINY.format(out=d / 'run', root=d / 'data'))
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    r = rts_seg(
        'train',
        '--config',
        d / 'aux.yaml',
        'train.epochs=1',
        'data.extra_channels=[ndvi,re]',
        'model.arch=FPN',
        'model.decoder_channels=null',
        cwd=d,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(dir=d, data=d / 'data', run=d / 'run', model=d / 'run' / 'best.pth')


def training_probs(aux, tid):
    "Probabilities of the trained model on tile `tid`, read and normalised as training does (dataset, Normalizer)."
    from rts_seg.bundle import Bundle
    from rts_seg.data import Normalizer, RTSDataset

    b = Bundle.load(aux['model'])
    ds = RTSDataset(aux['data'], [tid], Normalizer(b.normalization), extra_channels=['ndvi', 're'])
    with torch.no_grad():
        logit = b.build_model()(ds[0][0][None])[0, 0]
    return torch.sigmoid(logit / b.temperature).numpy(), b


def test_bundle_records_the_aux_bands(aux):
    from rts_seg.bundle import Bundle

    b = Bundle.load(aux['model'])
    assert [(c['name'], c['source'], c['band']) for c in b.channels] == [
        ('red', 'PLANET-RGB', 1),
        ('green', 'PLANET-RGB', 2),
        ('blue', 'PLANET-RGB', 3),
        ('ndvi', 'EXTRA', 1),
        ('re', 'EXTRA', 3),
    ]
    assert set(b.normalization['groups']) == {'rgb', 'extra'} and b.model['arch'] == 'FPN' and b.tile_size == 64
    assert b.imagery['dtypes'] == {'PLANET-RGB': 'uint8', 'EXTRA': 'float32'} and b.imagery['pixel_size_m'] == 3.0
    m = json.loads((aux['run'] / 'metrics.json').read_text())
    assert {'val_r500_obj_p30', 'val_r500_map_obj_p30'} <= set(m) and 'map_obj' in m['object_metrics']


def test_tile_list_and_scene_match_the_training_forward_pass(aux, tmp_path):
    meta = pd.read_csv(aux['data'] / 'metadata.csv', keep_default_na=False)
    tiles = meta[meta.RegionName == 'peel_plateau'][['tile_id', 'RegionName']].head(4)
    tiles.to_csv(tmp_path / 'tiles.csv', index=False)
    r = rts_seg(
        'predict',
        '--model',
        aux['model'],
        '--tile-list',
        tmp_path / 'tiles.csv',
        '--imagery',
        aux['data'],
        '--out',
        tmp_path / 'tl',
    )
    assert r.returncode == 0, r.stderr[-2000:]
    log = json.loads((tmp_path / 'tl' / 'inference_log.json').read_text())
    assert (
        log['channels'] == ['red', 'green', 'blue', 'ndvi', 're']
        and log['tile_size'] == 64
        and log['min_area_m2'] == 100.0
    )
    for tid in tiles.tile_id:
        want, b = training_probs(aux, tid)
        with rasterio.open(tmp_path / 'tl' / 'tiles' / f'{tid}_prob.tif') as p:
            got = p.read(1)
        assert np.abs(got - want).max() < 1e-4, (tid, np.abs(got - want).max())
    tid = tiles.tile_id.iloc[0]
    want, _ = training_probs(aux, tid)
    r = rts_seg(
        'predict',
        '--model',
        aux['model'],
        '--scene',
        aux['data'] / 'PLANET-RGB' / f'{tid}.tif',
        '--extra',
        aux['data'] / 'EXTRA' / f'{tid}.tif',
        '--out',
        tmp_path / 'sc',
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with rasterio.open(tmp_path / 'sc' / f'{tid}_prob.tif') as p:
        assert np.abs(p.read(1) - want).max() < 1e-4
    # evaluate reads what predict wrote for the aux model
    r = rts_seg('evaluate', '--pred', tmp_path / 'tl', '--truth', aux['data'] / 'labels')
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((tmp_path / 'tl' / 'evaluation.json').read_text())
    assert (
        ev['n_images'] == 4
        and ev['min_area_m2'] == 100.0
        and ev['min_area_source'] == 'inference_log'
        and 'objects_mapped' in ev
    )


def test_wrong_imagery_is_refused_in_one_line(aux, tiny, tmp_path):
    tid = pd.read_csv(aux['data'] / 'metadata.csv', keep_default_na=False).tile_id.iloc[0]
    rgb = aux['data'] / 'PLANET-RGB' / f'{tid}.tif'
    with rasterio.open(rgb) as s:
        prof = s.profile
    s2 = tmp_path / 'sentinel2.tif'  # 10 bands of uint16, as Sentinel-2 L2A comes
    with rasterio.open(s2, 'w', **dict(prof, count=10, dtype='uint16')) as d:
        d.write(np.full((10, 64, 64), 1200, np.uint16))
    cases = [
        (['--model', aux['model'], '--scene', rgb], 'has 3 band(s); the model needs 5'),  # aux bands missing
        (['--model', tiny['run'] / 'best.pth', '--scene', s2], '10 band(s); the model needs 3'),
        (['--model', tiny['run'] / 'best.pth', '--scene', s2, '--bands', 4, 3, 2], 'uint16'),
        (
            ['--model', tiny['run'] / 'best.pth', '--scene', rgb, '--extra', aux['data'] / 'EXTRA' / f'{tid}.tif'],
            'takes no aux bands',
        ),
    ]
    for args, msg in cases:
        r = rts_seg('predict', *args, '--out', tmp_path / 'out')
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0] and 'Traceback' not in r.stderr, (
            args,
            r.stderr[-1500:],
        )
    assert (
        '--bands'
        in rts_seg('predict', '--model', tiny['run'] / 'best.pth', '--scene', s2, '--out', tmp_path / 'out').stderr
    )
