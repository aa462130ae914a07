"""Shared fixtures: a tiny dataset and model made through the real command line, once per test session."""

import json, os, shutil, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHIPS = Path(os.environ.get('RTS_SEG_CHIPS', ROOT.parent / 'shared' / 'data' / 'arts_chips'))

TINY = """\
output_dir: {out}
data:
  root: {root}
  batch_size: 4
  num_workers: 0
model:
  arch: Unet
  encoder: resnet18
  encoder_weights: null
  decoder_channels: [64, 32, 16, 16, 8]
loss:
  alpha: 0.5
train:
  epochs: 2
  base_lr: 0.003
  warmup_epochs: 0.5
  freeze_backbone_epochs: 0
  backbone_lr_multiplier: 1.0
"""


def rts_seg(*args, cwd=None, env=None):
    "Run the installed `rts-seg` console script; return the CompletedProcess."
    exe = shutil.which('rts-seg')
    assert exe, 'the rts-seg console script is not on PATH: install the package (pip install -e .)'
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def no_mlflow_env() -> dict:
    "The environment without MLFLOW_TRACKING_URI, so that runs use their own store in output_dir."
    return {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}


@pytest.fixture(scope='session')
def quickstart(tmp_path_factory):
    "The README's quickstart, uninterrupted, through the CLI (generates its data on first use)."
    d = tmp_path_factory.mktemp('quickstart')
    r = rts_seg(
        'train',
        '--config',
        ROOT / 'configs' / 'quickstart.yaml',
        f'output_dir={d}/run',
        f'data.root={d}/data',
        env=no_mlflow_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(
        dir=d,
        run=d / 'run',
        data=d / 'data',
        stdout=r.stdout,
        stderr=r.stderr,
        metrics=json.loads((d / 'run' / 'metrics.json').read_text()),
    )


@pytest.fixture(scope='session')
def tiny(tmp_path_factory):
    "synth -> train (2 epochs) through the CLI; returns the paths involved."
    d = tmp_path_factory.mktemp('tiny')
    r = rts_seg('synth', '--out', d / 'data', '--tiles', 30, '--size', 64, '--seed', 1)
    assert r.returncode == 0, r.stderr
    (d / 'tiny.yaml').write_text(TINY.format(out=d / 'run', root=d / 'data'))
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    r = rts_seg('train', '--config', d / 'tiny.yaml', 'train.epochs=1', cwd=d, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(
        dir=d,
        data=d / 'data',
        run=d / 'run',
        config=d / 'tiny.yaml',
        train_stdout=r.stdout,
        metrics=json.loads((d / 'run' / 'metrics.json').read_text()),
    )
