"""Ensembles and uncertainty on real files: two models trained through the CLI, averaged on a GeoTIFF scene;
the uncertainty COG, `prob_std` per polygon, the log naming every member, a mismatched member refused, and the
server answering with two models."""

import json, os, shutil

import numpy as np
import pyogrio.raw
import pytest
import rasterio

from rts_seg.bundle import Bundle
from rts_seg.predict import UNC_STEP, model_paths, predict_scene, window_starts

from conftest import rts_seg

T = 64  # windows of the tiny models' tile size; stride T: each pixel away from the far edges is in one window


@pytest.fixture(scope='module')
def pair(tiny, tmp_path_factory):
    "A second member trained through the CLI (another seed), laid out as `train --seeds` lays out its runs."
    d = tmp_path_factory.mktemp('ens')
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    r = rts_seg(
        'train', '--config', tiny['config'], 'train.epochs=1', 'train.seed=7', f'output_dir={d}/runs/seed7', env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (d / 'runs' / 'seed0').mkdir()
    shutil.copy(tiny['run'] / 'best.pth', d / 'runs' / 'seed0' / 'best.pth')
    return dict(dir=d, a=d / 'runs' / 'seed0' / 'best.pth', b=d / 'runs' / 'seed7' / 'best.pth', runs=d / 'runs')


def read(path):
    with rasterio.open(path) as s:
        return s.read(1), s.scales[0], s.nodata


def test_ensemble_is_the_mean_of_its_members_and_unc_their_spread(tiny, pair, tmp_path):
    scene = tiny['data'] / 'scenes' / 'demo_scene.tif'
    kw = dict(tile_size=T, stride=T, device='cpu')
    ra, rb = (predict_scene(m, scene, tmp_path / k, **kw) for k, m in (('a', pair['a']), ('b', pair['b'])))
    assert 'unc' not in ra and not (tmp_path / 'a' / 'demo_scene_unc.tif').exists()  # one view of one model
    assert model_paths(pair['runs']) == [str(pair['a']), str(pair['b'])]  # the folder stands for its runs
    re_ = predict_scene(pair['runs'], scene, tmp_path / 'ens', **kw)
    pa, pb, pe = (read(r['prob'])[0] for r in (ra, rb, re_))
    u, step, nd = read(re_['unc'])
    assert step == UNC_STEP and nd == 255 and u.dtype == np.uint8
    H, W = pe.shape
    cover = np.zeros(pe.shape, int)  # windows per pixel: where it is 1, max-merging merges nothing
    for y in window_starts(H, T, T):
        for x in window_starts(W, T, T):
            cover[y : y + T, x : x + T] += 1
    one = cover == 1
    assert one.sum() > 0.5 * one.size
    assert np.abs(pe - (pa + pb) / 2)[one].max() < 1e-5
    # population std of two values: |a - b| / 2, stored in steps of UNC_STEP
    assert np.abs(u * UNC_STEP - np.abs(pa - pb) / 2)[one].max() <= UNC_STEP / 2 + 1e-5
    assert (u[one] > 0).any()
    assert (u[one][np.abs(pa - pb)[one] < UNC_STEP] == 0).all()  # where the members agree: 0
    # blending is linear: the blended ensemble is the mean of the blended members everywhere
    bl = dict(kw, stride=T // 2, merge='blend')
    qa, qb, qe = (
        read(predict_scene(m, scene, tmp_path / f'bl{i}', **bl)['prob'])[0]
        for i, m in enumerate((pair['a'], pair['b'], [pair['a'], pair['b']]))
    )
    assert np.abs(qe - (qa + qb) / 2).max() < 1e-5
    # two copies of one model agree everywhere: no uncertainty, and the model's own probabilities
    shutil.copy(pair['a'], tmp_path / 'twin.pth')
    rt = predict_scene([pair['a'], tmp_path / 'twin.pth'], scene, tmp_path / 'twin', **kw)
    assert (read(rt['unc'])[0] == 0).all() and (read(rt['prob'])[0] == pa).all()
    # the ensemble's threshold: the mean of the members' calibrated ones; each member keeps its temperature
    ba, bb = Bundle.load(pair['a']), Bundle.load(pair['b'])
    assert re_['threshold'] == pytest.approx((ba.threshold + bb.threshold) / 2)
    assert re_['temperature'] == [ba.temperature, bb.temperature]
    assert [m['checkpoint'] for m in re_['members']] == [str(pair['a']), str(pair['b'])]


def test_predict_cli_ensemble_log_unc_and_prob_std(tiny, pair, tmp_path):
    scene = tiny['data'] / 'scenes' / 'demo_scene.tif'
    r = rts_seg(
        'predict',
        '--model',
        pair['a'],
        pair['b'],
        '--scene',
        scene,
        '--out',
        tmp_path / 'o',
        '--tile-size',
        T,
        '--device',
        'cpu',
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = json.loads((tmp_path / 'o' / 'inference_log.json').read_text())
    assert log['checkpoint'] == [str(pair['a']), str(pair['b'])]
    assert [(m['checkpoint'], m['normalization_hash']) for m in log['members']] == [
        (str(p), Bundle.load(p).normalization_hash) for p in (pair['a'], pair['b'])
    ]
    with rasterio.open(tmp_path / 'o' / 'demo_scene_unc.tif') as s:
        assert s.driver == 'GTiff' and s.profile['tiled'] and s.dtypes[0] == 'uint8' and s.scales[0] == UNC_STEP
        assert (s.read(1) > 0).any()
    meta, _, geoms, vals = pyogrio.raw.read(tmp_path / 'o' / 'demo_scene.gpkg')
    f = dict(zip(meta['fields'], vals))
    assert len(geoms) > 0 and 'prob_std' in f
    assert np.isfinite(f['prob_std']).all() and (f['prob_std'] >= 0).all() and (f['prob_std'] > 0).any()


def test_a_member_with_other_channels_is_refused(tiny, pair, tmp_path):
    b = Bundle.load(pair['a'])
    b.channels = [dict(c) for c in b.channels]
    b.channels[2].update(name='nir')  # same weights, another band: not the same input
    b.save(tmp_path / 'other.pth')
    scene = tiny['data'] / 'scenes' / 'demo_scene.tif'
    r = rts_seg('predict', '--model', pair['a'], tmp_path / 'other.pth', '--scene', scene, '--out', tmp_path / 'o')
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / 'other.pth') in err[0] and str(pair['a']) in err[0], err
    assert 'channels differ' in err[0]


def test_serve_with_two_models_answers(tiny, pair):
    from fastapi.testclient import TestClient

    from rts_seg.serve import create_app

    client = TestClient(create_app([str(pair['a']), str(pair['b'])], device='cpu'))
    h = client.get('/health').json()
    assert [m['checkpoint'] for m in h['members']] == [str(pair['a']), str(pair['b'])]
    with open(tiny['data'] / 'scenes' / 'demo_scene.tif', 'rb') as f:
        r = client.post('/predict', files={'file': ('demo_scene.tif', f, 'image/tiff')})
    assert r.status_code == 200, r.text
    fc = r.json()
    assert fc['type'] == 'FeatureCollection' and fc['features'] and 'prob_std' in fc['features'][0]['properties']


def test_tile_list_mosaics_the_uncertainty(tiny, pair, tmp_path):
    import pandas as pd

    from rts_seg.config import InferenceConfig
    from rts_seg.infer import run_inference

    meta = pd.read_csv(tiny['data'] / 'metadata.csv')
    region = meta.RegionName.iloc[0]
    meta[meta.RegionName == region].head(4)[['tile_id', 'RegionName']].to_csv(tmp_path / 'tiles.csv', index=False)
    cfg = InferenceConfig(tile_size=T, device='cpu')
    log = run_inference(
        [pair['a'], pair['b']], tmp_path / 'o', tile_list=tmp_path / 'tiles.csv', imagery=tiny['data'], cfg=cfg
    )
    assert [m['checkpoint'] for m in log['members']] == [str(pair['a']), str(pair['b'])]
    mos = tmp_path / 'o' / 'mosaic'
    assert (mos / f'{region}_unc.tif').is_file() and (mos / f'{region}_unc.vrt').is_file()
    t = next((tmp_path / 'o' / 'tiles').glob('*_unc.tif'))
    with rasterio.open(mos / f'{region}_unc.tif') as m, rasterio.open(t) as a:
        assert m.dtypes[0] == 'uint8' and (m.read(1, window=m.window(*a.bounds)) == a.read(1)).all()
    meta_g, _, _, vals = pyogrio.raw.read(mos / f'{region}.gpkg')
    assert 'prob_std' in meta_g['fields']
