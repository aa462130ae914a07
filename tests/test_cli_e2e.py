"""The command line end to end, as a user runs it: synth -> train -> predict, and its error messages."""

import json, os, subprocess, sys

import mlflow
import numpy as np
import pandas as pd
import rasterio
import torch
import yaml

from conftest import rts_seg


def test_synth_writes_the_data_contract(tiny):
    root = tiny['data']
    meta = pd.read_csv(root / 'metadata.csv', keep_default_na=False)
    assert list(meta.columns) == ['tile_id', 'centroid_lat', 'centroid_lon', 'TrainClass', 'RegionName', 'UIDs']
    assert len(meta) == 30 and set(meta.TrainClass) == {'Positive', 'Negative'}
    splits = yaml.safe_load((root / 'splits.yaml').read_text())
    assert sorted(splits) == ['test', 'train', 'val'] and len({r for v in splits.values() for r in v}) == 3
    for tid, cls in zip(meta.tile_id, meta.TrainClass):
        with (
            rasterio.open(root / 'PLANET-RGB' / f'{tid}.tif') as img,
            rasterio.open(root / 'labels' / f'{tid}.tif') as lbl,
        ):
            assert (img.count, img.dtypes[0], img.crs.to_epsg()) == (3, 'uint8', 3413)
            assert (img.shape, img.transform) == (lbl.shape, lbl.transform)
            y = lbl.read(1)
        assert set(np.unique(y)) <= {0, 1, 255}
        assert (y == 1).any() == (cls == 'Positive')


def test_train_writes_its_outputs(tiny):
    run, m = tiny['run'], tiny['metrics']
    for f in ('best.pth', 'last.pth', 'config.yaml', 'normalization_stats.json', 'metrics.json', 'mlflow.db'):
        assert (run / f).is_file(), f
    assert {'val_iou', 'val_loss', 'epochs', 'seconds'} <= set(m)
    assert m['epochs'] == 1 and m['seconds'] > 0 and m['val_loss'] > 0
    assert 'val_iou' in tiny['train_stdout']
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    assert cfg['train']['epochs'] == 1  # the override is in the resolved config
    stats = json.loads((run / 'normalization_stats.json').read_text())
    assert {'dataset_version', 'computed_date', 'n_tiles_used', 'groups'} <= set(stats)
    assert stats['n_tiles_used'] == 10  # the train region only
    ckpt = torch.load(run / 'best.pth', weights_only=True)
    assert ckpt['normalization']['groups'] == stats['groups'] and ckpt['model']['arch'] == 'Unet'


def test_train_logs_to_mlflow(tiny):
    m = tiny['metrics']
    client = mlflow.MlflowClient(tracking_uri=f'sqlite:///{tiny["run"] / "mlflow.db"}')
    run = client.get_run(m['mlflow_run_id'])
    assert run.data.params['train.epochs'] == '1' and run.data.params['model.encoder'] == 'resnet18'
    assert run.data.params['system.torch'] == torch.__version__
    assert len(client.get_metric_history(run.info.run_id, 'train_loss')) == 1
    assert abs(run.data.metrics['final_val_iou'] - (m['val_iou'] or 0)) < 1e-6
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {'config.yaml', 'normalization_stats.json', 'metrics.json', 'best.pth'} <= arts


def test_tracking_uri_from_environment(tiny, tmp_path):
    env = {**os.environ, 'MLFLOW_TRACKING_URI': f'sqlite:///{tmp_path}/elsewhere.db'}
    r = rts_seg('train', '--config', tiny['config'], f'output_dir={tmp_path}/run', 'train.epochs=1', env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / 'elsewhere.db').is_file() and not (tmp_path / 'run' / 'mlflow.db').exists()


def test_python_m_train(tiny, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            '-m',
            'rts_seg.train',
            '--config',
            str(tiny['config']),
            f'output_dir={tmp_path}/run',
            'train.epochs=1',
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / 'run' / 'metrics.json').read_text())['epochs'] == 1


def test_predict_scene(tiny, tmp_path):
    scene = tiny['data'] / 'scenes' / 'demo_scene.tif'
    r = rts_seg('predict', '--model', tiny['run'] / 'best.pth', '--scene', scene, '--out', tmp_path, '--tile-size', 128)
    assert r.returncode == 0, r.stderr[-2000:]
    with (
        rasterio.open(scene) as s,
        rasterio.open(tmp_path / 'demo_scene_prob.tif') as p,
        rasterio.open(tmp_path / 'demo_scene_mask.tif') as k,
    ):
        assert (p.crs, p.transform, p.shape) == (s.crs, s.transform, s.shape)
        assert (p.dtypes[0], p.nodata, k.dtypes[0], k.nodata) == ('float32', -1, 'uint8', 255)
        prob, mask = p.read(1), k.read(1)
    assert s.shape[0] % 128 and s.shape[1] % 128  # an odd-sized scene
    assert ((prob >= 0) & (prob <= 1)).all()
    thr = json.loads((tmp_path / 'inference_log.json').read_text())['threshold']  # the model's calibrated one
    assert ((mask == 1) == (prob > thr)).all()


def test_errors_are_one_line(tiny, tmp_path):
    cases = [
        (['train', '--config', tiny['config'], 'some_unknown_key=1'], 'some_unknown_key'),
        (['train', '--config', tiny['config'], 'train.epochs=lots'], 'train.epochs'),
        (['train', '--config', tmp_path / 'missing.yaml'], 'missing.yaml'),
        (['train', '--config', tiny['config'], f'data.root={tmp_path}/nowhere'], 'nowhere'),
        (
            [
                'predict',
                '--model',
                tmp_path / 'nope.pth',
                '--scene',
                tiny['data'] / 'scenes' / 'demo_scene.tif',
                '--out',
                tmp_path,
            ],
            'nope.pth',
        ),
        (
            ['predict', '--model', tiny['run'] / 'best.pth', '--scene', tmp_path / 'nope.tif', '--out', tmp_path],
            'nope.tif',
        ),
    ]
    for args, name in cases:
        r = rts_seg(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and 'Traceback' not in r.stderr, (args, r.stderr)


def test_error_in_a_dataloader_worker_is_one_line(tiny, tmp_path):
    import shutil

    data = tmp_path / 'data'
    shutil.copytree(tiny['data'], data)
    val = (
        pd.read_csv(data / 'metadata.csv', keep_default_na=False).query("RegionName == 'peel_plateau'").tile_id.iloc[0]
    )
    bad = data / 'PLANET-RGB' / f'{val}.tif'
    bad.write_bytes(b'not a GeoTIFF')  # only validation tiles are read in DataLoader workers, not by the statistics
    r = rts_seg(
        'train',
        '--config',
        tiny['config'],
        f'data.root={data}',
        f'output_dir={tmp_path}/run',
        'data.num_workers=1',
        'train.epochs=1',
    )
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and bad.name in lines[0] and 'Traceback' not in lines[0], r.stderr[-2000:]
