"""Inference runs without the training packages, as in the inference image (docker/requirements-infer.txt has
none of them): a fresh interpreter that refuses to import them loads a checkpoint and predicts a scene."""

import subprocess, sys

from test_docker import TRAINING_ONLY

# Run in a fresh interpreter: argv = blocked top-level packages (comma-separated), checkpoint, scene, output folder.
SCRIPT = """
import importlib.abc, sys
from pathlib import Path
BLOCKED = set(sys.argv[1].split(','))

class Refuse(importlib.abc.MetaPathFinder):
    "Find the blocked packages nowhere, as if they were not installed."
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in BLOCKED: raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

assert not BLOCKED & set(sys.modules), sorted(BLOCKED & set(sys.modules)) # nothing imported them before the block
sys.meta_path.insert(0, Refuse())
model, scene, out = map(Path, sys.argv[2:5])

import rts_seg.predict, rts_seg.infer, rts_seg.bundle, rts_seg.vectorize, rts_seg.evaluate
from rts_seg.config import InferenceConfig
rts_seg.predict.Predictor.from_checkpoint(model)
rts_seg.infer.run_inference(model, out, scenes=[scene], cfg=InferenceConfig(tile_size=64))
loaded = sorted(m for m in sys.modules if m.partition('.')[0] in BLOCKED)
assert not loaded, f"imported although blocked: {loaded}"
"""


def test_predict_without_the_training_packages(tiny, tmp_path):
    out = tmp_path / 'out'
    r = subprocess.run(
        [
            sys.executable,
            '-c',
            SCRIPT,
            ','.join(TRAINING_ONLY),
            tiny['run'] / 'best.pth',
            tiny['data'] / 'scenes' / 'demo_scene.tif',
            out,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert all((out / f'demo_scene_{k}.tif').is_file() for k in ('prob', 'mask', 'scale')), sorted(
        p.name for p in out.iterdir()
    )
    assert (out / 'demo_scene.gpkg').is_file() and (out / 'inference_log.json').is_file()
