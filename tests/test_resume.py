"""A quickstart sent SIGTERM (a preempted VM) saves its state and exits; resumed with --resume auto, it ends with the
same val_iou as the uninterrupted run (within 1e-3)."""

import json, shutil, signal, subprocess, time

from conftest import ROOT, no_mlflow_env, rts_seg


def test_sigterm_then_resume_matches_uninterrupted(quickstart, tmp_path):
    args = [
        'train',
        '--config',
        str(ROOT / 'configs' / 'quickstart.yaml'),
        f'output_dir={tmp_path}/run',
        f'data.root={quickstart["data"]}',
    ]
    p = subprocess.Popen(
        [shutil.which('rts-seg'), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=no_mlflow_env()
    )
    seen = []
    for line in p.stdout:  # one line per epoch (no terminal)
        seen.append(line)
        if line.startswith('epoch 5/12'):
            break
    time.sleep(1.5)  # into the training batches of epoch 6
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 143, (p.returncode, err[-3000:])
    assert 'SIGTERM: saved the training state' in err, err[-3000:]
    states = sorted(x.name for x in (tmp_path / 'run').glob('state-*.pth'))
    print('saved:', states, '| last line before SIGTERM:', seen[-1].strip())
    assert states and not (tmp_path / 'run' / 'metrics.json').exists()

    r = rts_seg(*args, '--resume', 'auto', env=no_mlflow_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resuming from' in r.stdout and 'epoch 12/12' in r.stdout
    assert 'epoch 1/12' not in r.stdout  # it went on; it did not start again
    m, ref = json.loads((tmp_path / 'run' / 'metrics.json').read_text()), quickstart['metrics']
    print(f'resumed val_iou {m["val_iou"]:.6f}, uninterrupted {ref["val_iou"]:.6f}')
    assert abs(m['val_iou'] - ref['val_iou']) <= 1e-3
    assert m['best_epoch'] == ref['best_epoch']
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=m['tracking_uri'])
    runs = client.search_runs([client.get_experiment_by_name('rts_seg').experiment_id])
    assert [x.info.run_id for x in runs] == [m['mlflow_run_id']]  # the same MLflow run went on
    assert len(client.get_metric_history(m['mlflow_run_id'], 'val_iou')) == 12 and runs[0].info.status == 'FINISHED'
