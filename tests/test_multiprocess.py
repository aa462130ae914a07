"""The quickstart under `accelerate launch` with two processes on the CPU (gloo), end to end: each rank trains on its
own batches, validation counts are summed over ranks, and only rank 0 writes files and logs to MLflow. A two-process
run started by the training image's entry point (docker/train.sh) and sent SIGTERM (a preempted multi-GPU VM) saves its
state and, resumed, ends as the uninterrupted run does; torchrun gives the same run's figures."""

import json, os, shutil, signal, socket, subprocess, sys, threading, time

import mlflow

from conftest import ROOT, TINY, no_mlflow_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _launch(*args):
    "accelerate's torch.distributed launcher, two processes on gloo (no GPUs): the command line of a multi-GPU VM."
    return [
        shutil.which('accelerate'),
        'launch',
        '--multi_gpu',
        '--num_processes',
        '2',
        '--num_machines',
        '1',
        '--mixed_precision',
        'no',
        '--dynamo_backend',
        'no',
        '--main_process_port',
        str(_free_port()),
        '-m',
        'rts_seg.train',
        *map(str, args),
    ]


def test_accelerate_two_cpu_processes(quickstart, tmp_path):
    assert shutil.which('accelerate'), 'accelerate is a dependency: its launcher must be on PATH'
    env = {**no_mlflow_env(), 'CUDA_VISIBLE_DEVICES': ''}
    # `--multi_gpu` is accelerate's torch.distributed launcher; without GPUs, rts_seg runs it on gloo
    # (`accelerate launch --cpu --num_processes 2` would need MPI to start more than one process)
    cmd = _launch(
        '--config',
        ROOT / 'configs' / 'quickstart.yaml',
        f'output_dir={tmp_path}/run',
        f'data.root={quickstart["data"]}',
        'data.batch_size=4',
    )  # per process: 2 x 4 = the single run's batch of 8, and as many steps
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    print(
        f'2 processes: val_iou {m["val_iou"]:.3f} (one process: {quickstart["metrics"]["val_iou"]:.3f}) in {m["seconds"]:.0f} s'
    )
    assert m['world_size'] == 2 and m['device'].startswith('cpu')
    assert m['val_iou'] >= 0.6, m  # learns as the single-process quickstart does (same global batch and steps)
    assert r.stdout.count('epoch 12/12') == 1  # rank 0 alone prints
    client = mlflow.MlflowClient(tracking_uri=m['tracking_uri'])
    exp = client.get_experiment_by_name('rts_seg')
    assert len(client.search_runs([exp.experiment_id])) == 1  # rank 0 alone logs
    assert len(client.get_metric_history(m['mlflow_run_id'], 'val_iou')) == 12


def test_two_processes_sigterm_then_resume(tmp_path):
    """The training image's entry point (docker/train.sh) with two processes: SIGTERM to it (what `docker stop` or a
    preempted VM sends) reaches both ranks, the state is saved, and the resumed run ends exactly as an uninterrupted one.
    torchrun gives the uninterrupted run's figures too."""
    (tmp_path / 'tiny.yaml').write_text(TINY.format(out=tmp_path / 'ref', root=tmp_path / 'data'))
    cfg = ['--config', tmp_path / 'tiny.yaml', 'train.epochs=3', 'data.synth.tiles=64', 'data.synth.size=64']
    env = {**no_mlflow_env(), 'CUDA_VISIBLE_DEVICES': '', 'MAIN_PROCESS_PORT': str(_free_port())}
    train_sh = lambda *a: [ROOT / 'docker' / 'train.sh', '--num_processes', '2', *map(str, cfg), *map(str, a)]
    r = subprocess.run(train_sh('train.epoch=3'), capture_output=True, text=True, env=env, timeout=120)
    # one line, before launching
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "'train.epoch'" in r.stderr, r.stderr[
        -4000:
    ]
    r = subprocess.run(train_sh(), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert 'accelerate launch --multi_gpu --num_processes 2' in r.stderr
    # torchrun, the other launcher: the same run gives the same figures
    r = subprocess.run(
        [
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--nproc_per_node',
            '2',
            '--master_port',
            str(_free_port()),
            '-m',
            'rts_seg.train',
            *map(str, cfg),
            f'output_dir={tmp_path}/torchrun',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    ref, tr = (json.loads((tmp_path / d / 'metrics.json').read_text()) for d in ('ref', 'torchrun'))
    assert tr['world_size'] == 2 and all(abs(tr[k] - ref[k]) <= 1e-6 for k in ('train_iou', 'val_iou', 'val_loss')), (
        tr,
        ref,
    )
    env['MAIN_PROCESS_PORT'] = str(_free_port())
    # stderr to a file (a pipe nobody reads could fill and stall the run); a watchdog ends a hung run
    with open(tmp_path / 'stderr.txt', 'w') as ef:
        p = subprocess.Popen(
            train_sh(f'output_dir={tmp_path}/run'),
            stdout=subprocess.PIPE,
            stderr=ef,
            text=True,
            env=env,
            start_new_session=True,
        )
        watchdog = threading.Timer(300, os.killpg, (p.pid, signal.SIGKILL))
        watchdog.start()
        try:
            for line in p.stdout:
                if line.startswith('epoch 1/3'):
                    break
            time.sleep(0.5)  # into epoch 2
            # to the launcher only, as `docker stop` does to the container's first process
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=300)
        finally:
            watchdog.cancel()
    err = (tmp_path / 'stderr.txt').read_text()
    assert p.returncode != 0 and 'SIGTERM: saved the training state' in err, err[-4000:]
    states = sorted((tmp_path / 'run').glob('state-*.pth'))
    assert states and not (tmp_path / 'run' / 'metrics.json').exists(), states
    env['MAIN_PROCESS_PORT'] = str(_free_port())
    r = subprocess.run(
        train_sh(f'output_dir={tmp_path}/run', '--resume', 'auto'), capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert 'resuming from' in r.stdout and 'epoch 3/3' in r.stdout and 'epoch 1/3' not in r.stdout, r.stdout
    ref, m = (json.loads((tmp_path / d / 'metrics.json').read_text()) for d in ('ref', 'run'))
    print(
        f'saved {states[-1].name}; resumed: train_iou {m["train_iou"]:.6f} val_iou {m["val_iou"]:.6f} val_loss {m["val_loss"]:.6f}; '
        f'uninterrupted: {ref["train_iou"]:.6f} {ref["val_iou"]:.6f} {ref["val_loss"]:.6f}'
    )
    assert m['world_size'] == 2 and m['best_epoch'] == ref['best_epoch']
    for k in ('train_iou', 'val_iou', 'val_loss', 'val_pr_auc'):
        assert abs(m[k] - ref[k]) <= 1e-4, (k, m[k], ref[k])
