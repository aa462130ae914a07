"""The README's quickstart config learns (val_iou >= 0.8 on the held-out synthetic region, on the CPU), and its
MLflow run holds every parameter group, per-epoch metrics at every ratio and the artifacts the SPEC lists."""

import json

import mlflow


def test_quickstart_learns(quickstart):
    m = quickstart['metrics']
    print(f'quickstart: val_iou {m["val_iou"]:.3f}, r500_pr_auc {m["val_r500_pr_auc"]:.3f} in {m["seconds"]:.0f} s')
    assert m['val_iou'] >= 0.8, m
    assert 'epoch 12/12' in quickstart['stdout'] and 'img/s' in quickstart['stdout']  # plain lines without a terminal


def test_quickstart_reports_what_it_did(quickstart):
    "Every epoch line shows the share of pixels predicted slump; metrics.json counts epochs as the lines do."
    m, out = quickstart['metrics'], quickstart['stdout']
    lines = [l for l in out.splitlines() if l.startswith('epoch ') and 'train_loss' in l]
    assert len(lines) == m['epochs_run'] == 12 and all(' pred_pos ' in l for l in lines), out[-2000:]
    assert 1 <= m['best_epoch'] <= 12 and 0 < m['val_pred_pos'] < 1, m
    # enough negative validation tiles: the realistic monitor stays, and nothing warns of an empty model
    assert m['monitor'] == 'r500_pr_auc' and m['monitor_fallback_reason'] is None, m
    assert 'no validation pixel predicted as slump' not in quickstart['stderr']
    last = out.strip().splitlines()[-1]
    assert last.startswith(f'val_iou {m["val_iou"]:.4f}  pred_pos ') and f'best epoch {m["best_epoch"]}/12' in last, (
        last
    )


def test_quickstart_mlflow_run_holds_everything(quickstart):
    m = quickstart['metrics']
    client = mlflow.MlflowClient(tracking_uri=m['tracking_uri'])
    run = client.get_run(m['mlflow_run_id'])
    params = run.data.params
    groups = {k.split('.')[0] for k in params}
    assert {'model', 'loss', 'optimizer', 'schedule', 'train', 'data', 'system'} <= groups, groups
    for k in (
        'model.arch',
        'loss.name',
        'loss.alpha',
        'train.base_lr',
        'train.warmup_epochs',
        'train.ema_decay',
        'data.batch_size',
        'data.normalization_hash',
        'system.git_commit',
        'system.torch',
        'system.cuda',
        'system.gpu',
        'system.gpu_count',
    ):
        assert k in params, k
    assert params['train.epochs'] == '12' and params['model.encoder_weights'] == 'None'
    assert params['loss.name'] == 'focal_dice' and params['train.monitor_used'] == 'r500_pr_auc'
    for name in (
        'train_loss',
        'train_iou',
        'val_loss',
        'val_iou',
        'val_bal_pr_auc',
        'val_r200_pr_auc',
        'val_r500_pr_auc',
        'val_r1000_pr_auc',
        'val_r500_obj_p30',
        'val_r500_obj_r10',
        'val_bal_obj_r50',
        'lr_decoder',
        'val_pred_pos',
    ):
        assert len(client.get_metric_history(run.info.run_id, name)) == 12, name
    assert run.data.metrics['final_val_iou'] == m['val_iou']
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        'best.pth',
        'normalization_stats.json',
        'config.yaml',
        'pr_curves.png',
        'predictions.png',
        'threshold_calibration.json',
        'requirements.txt',
        'metrics.json',
    } <= arts, arts
    local = client.download_artifacts(run.info.run_id, 'threshold_calibration.json')
    cal = json.loads(open(local).read())
    assert cal['threshold'] == m['threshold'] and set(cal['ratios']) == {
        'as_is',
        'balanced',
        '1:200',
        '1:500',
        '1:1000',
    }
    assert run.info.status == 'FINISHED'
