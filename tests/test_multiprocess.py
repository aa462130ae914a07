"""The quickstart under `accelerate launch` with two processes on the CPU (gloo), end to end: each rank trains on its
own batches, validation counts are summed over ranks, and only rank 0 writes files and logs to MLflow. A two-process
run sent SIGTERM (a preempted multi-GPU VM) saves its state and, resumed, ends as the uninterrupted run does."""
import json, os, shutil, signal, socket, subprocess, time

import mlflow

from conftest import ROOT, TINY, no_mlflow_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _launch(*args, port=None):
    "accelerate's torch.distributed launcher, two processes on gloo (no GPUs): the command line of a multi-GPU VM."
    return [shutil.which('accelerate'), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
            '--dynamo_backend', 'no', '--main_process_port', str(port or _free_port()), '-m', 'rts_seg.train', *map(str, args)]


def test_accelerate_two_cpu_processes(quickstart, tmp_path):
    assert shutil.which('accelerate'), 'accelerate is a dependency: its launcher must be on PATH'
    env = {**no_mlflow_env(), 'CUDA_VISIBLE_DEVICES': ''}
    # `--multi_gpu` is accelerate's torch.distributed launcher; without GPUs, rts_seg runs it on gloo
    # (`accelerate launch --cpu --num_processes 2` would need MPI to start more than one process)
    cmd = _launch('--config', ROOT/'configs'/'quickstart.yaml', f'output_dir={tmp_path}/run', f"data.root={quickstart['data']}",
                  'data.batch_size=4') # per process: 2 x 4 = the single run's batch of 8, and as many steps
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


def test_two_processes_sigterm_then_resume(tmp_path):
    "SIGTERM to the launcher (what `docker stop` or a preempted VM sends) reaches both ranks; the state is saved and a resumed run ends exactly as an uninterrupted one."
    (tmp_path/'tiny.yaml').write_text(TINY.format(out=tmp_path/'ref', root=tmp_path/'data'))
    cfg = [tmp_path/'tiny.yaml', 'train.epochs=4', 'data.synth.tiles=96', 'data.synth.size=64']
    env = {**no_mlflow_env(), 'CUDA_VISIBLE_DEVICES': ''}
    r = subprocess.run(_launch('--config', *cfg), capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    args = ['--config', *cfg, f'output_dir={tmp_path}/run']
    p = subprocess.Popen(_launch(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:
        if line.startswith('epoch 2/4'): break
    time.sleep(0.5) # into epoch 3
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode != 0 and 'SIGTERM: saved the training state' in err, err[-4000:]
    states = sorted((tmp_path/'run').glob('state-*.pth'))
    assert states and not (tmp_path/'run'/'metrics.json').exists(), states
    r = subprocess.run(_launch(*args, '--resume', 'auto'), capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert 'resuming from' in r.stdout and 'epoch 4/4' in r.stdout and 'epoch 1/4' not in r.stdout, r.stdout
    ref, m = (json.loads((tmp_path/d/'metrics.json').read_text()) for d in ('ref', 'run'))
    print(f"saved {states[-1].name}; resumed val_iou {m['val_iou']:.6f} val_loss {m['val_loss']:.6f}, "
          f"uninterrupted {ref['val_iou']:.6f} {ref['val_loss']:.6f}")
    assert m['world_size'] == 2 and m['best_epoch'] == ref['best_epoch']
    for k in ('train_iou', 'val_iou', 'val_loss', 'val_pr_auc'): assert abs(m[k] - ref[k]) <= 1e-4, (k, m[k], ref[k])
