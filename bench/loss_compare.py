"""Losses and encoder learning rates of the quickstart model, on generated and on real data: does it learn?

Trains `configs/quickstart.yaml` once per variant (loss x backbone_lr_multiplier) with `rts_seg.train.train` and
prints, per run, the validation pixel IoU at 0.5, the share of valid pixels predicted slump at 0.5 (`pred_pos`),
the as-is PR-AUC (the ranking, whatever the threshold), the calibrated threshold and how it was chosen.

    python bench/loss_compare.py --data synth                 # the quickstart's generated data (12 epochs)
    python bench/loss_compare.py --data real --root /tmp/ic64 # bench/intercomparison_dataset.py's chips, 35 epochs
    python bench/loss_compare.py --data real --root R --losses focal focal_dice --mult 0.1 1 --json out.json

`--data real` uses the issue's protocol: the quickstart model with data.extra_channels=[ndvi,re] for 35 epochs.
"""

import argparse, contextlib, io, json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rts_seg.config import load_config
from rts_seg.train import train

ROOT = Path(__file__).resolve().parent.parent


def run(data: str, root: str | None, out: Path, loss: str, mult: float, extra: list[str]) -> dict:
    "One training; the figures of its metrics.json."
    ov = [f'output_dir={out}', f'loss.name={loss}', f'train.backbone_lr_multiplier={mult}', 'train.tta_eval=none']
    if data == 'real':
        ov += [f'data.root={root}', 'data.extra_channels=[ndvi,re]', 'train.epochs=35', 'data.num_workers=0']
    elif root:
        ov += [f'data.root={root}']
    cfg = load_config(ROOT / 'configs' / 'quickstart.yaml', ov + extra)
    t0 = time.time()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        m = train(cfg)
    cal = json.loads((out / 'threshold_calibration.json').read_text())
    return dict(
        loss=loss,
        backbone_lr_multiplier=mult,
        val_iou=m['val_iou'],
        val_pred_pos=m.get('val_pred_pos'),
        val_truth_pos=m.get('val_truth_pos'),
        val_pr_auc=m['val_pr_auc'],
        threshold=m['threshold'],
        threshold_rule=cal.get('threshold_rule'),
        monitor=m.get('monitor'),
        best_epoch=m['best_epoch'],
        epochs_run=m['epochs_run'],
        train_iou=m['train_iou'],
        seconds=round(time.time() - t0),
        last_epoch_line=[l for l in log.getvalue().splitlines() if l.startswith('epoch ')][-1:],
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', choices=('synth', 'real'), default='synth')
    p.add_argument('--root', default=None, help='dataset root (real: required; synth: where the data is generated)')
    p.add_argument('--out', type=Path, default=Path('runs/loss_compare'))
    p.add_argument('--losses', nargs='+', default=['focal', 'focal_dice', 'tversky', 'bce_dice'])
    p.add_argument('--mult', type=float, nargs='+', default=[1.0], help='train.backbone_lr_multiplier values')
    p.add_argument('--json', type=Path, default=None, help='save the figures here')
    p.add_argument('overrides', nargs='*', help='more config overrides for every run')
    a = p.parse_args()
    if a.data == 'real' and not a.root:
        sys.exit('--data real needs --root (bench/intercomparison_dataset.py builds one)')
    rows = []
    for loss in a.losses:
        for mult in a.mult:
            r = run(a.data, a.root, a.out / f'{a.data}_{loss}_m{mult:g}', loss, mult, a.overrides)
            rows.append(r)
            print(
                f'{a.data:5s} {loss:12s} mult {mult:<4g} val_iou {r["val_iou"] or 0:.4f}  pred_pos {r["val_pred_pos"] or 0:.4f} '
                f'(truth {r["val_truth_pos"] or 0:.4f})  pr_auc {r["val_pr_auc"] or 0:.4f}  threshold {r["threshold"]:.3f} '
                f'({r["threshold_rule"]})  train_iou {r["train_iou"] or 0:.4f}  best epoch {r["best_epoch"]}/{r["epochs_run"]}  '
                f'{r["seconds"]} s',
                flush=True,
            )
            if a.json:
                a.json.write_text(json.dumps(rows, indent=2))


if __name__ == '__main__':
    main()
