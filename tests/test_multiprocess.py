"""The quickstart under `accelerate launch` with two processes on the CPU (gloo), end to end: each rank trains on its
own batches, validation counts are summed over ranks, and only rank 0 writes files and logs to MLflow."""
import json, os, shutil, socket, subprocess

import mlflow

from conftest import ROOT, no_mlflow_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_accelerate_two_cpu_processes(quickstart, tmp_path):
    acc = shutil.which('accelerate')
    assert acc, 'accelerate is a dependency: its launcher must be on PATH'
    env = {**no_mlflow_env(), 'CUDA_VISIBLE_DEVICES': ''}
    # `--multi_gpu` is accelerate's torch.distributed launcher; without GPUs, rts_seg runs it on gloo
    # (`accelerate launch --cpu --num_processes 2` would need MPI to start more than one process)
    cmd = [acc, 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', '--main_process_port', str(_free_port()), '-m', 'rts_seg.train',
           '--config', str(ROOT/'configs'/'quickstart.yaml'), f'output_dir={tmp_path}/run', f"data.root={quickstart['data']}",
           'data.batch_size=4'] # per process: 2 x 4 = the single run's batch of 8, and as many steps
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    print(f"2 processes: val_iou {m['val_iou']:.3f} (one process: {quickstart['metrics']['val_iou']:.3f}) in {m['seconds']:.0f} s")
    assert m['world_size'] == 2 and m['device'].startswith('cpu')
    assert m['val_iou'] >= 0.6, m # learns as the single-process quickstart does (same global batch and steps)
    assert r.stdout.count('epoch 12/12') == 1 # rank 0 alone prints
    client = mlflow.MlflowClient(tracking_uri=m['tracking_uri'])
    exp = client.get_experiment_by_name('rts_seg')
    assert len(client.search_runs([exp.experiment_id])) == 1 # rank 0 alone logs
    assert len(client.get_metric_history(m['mlflow_run_id'], 'val_iou')) == 12
