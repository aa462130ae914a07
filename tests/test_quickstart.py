"""The README's quickstart config learns: val_iou >= 0.6 on the held-out synthetic region, on the CPU."""
import json, os

from conftest import ROOT, rts_seg


def test_quickstart_learns(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'}
    r = rts_seg('train', '--config', ROOT/'configs'/'quickstart.yaml', f'output_dir={tmp_path}/run', f'data.root={tmp_path}/data', env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    print(f"quickstart: val_iou {m['val_iou']:.3f} in {m['seconds']:.0f} s")
    assert m['val_iou'] >= 0.6, m
    assert m['seconds'] < 600, m
