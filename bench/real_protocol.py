"""The issue-19 protocol on a real dataset: rts_seg's defaults against a plain PyTorch loop, on the held-out region.

Given a dataset root in today's layout (`PLANET-RGB/{id}.tif` R, G, B; `EXTRA/{id}.tif` ndvi, nir, re, sr;
`labels/{id}.tif` 0/1/255; `metadata.csv`; `splits.yaml` with train/val/test regions), this

1. trains with the project's defaults, as a user would: `rts-seg train --config configs/quickstart.yaml
   data.extra_channels=[ndvi,re] train.epochs=35` (the quickstart model: Unet/resnet18 from scratch);
2. predicts the test split's tiles (`rts-seg predict --tile-list ... --imagery ROOT`);
3. evaluates them (`rts-seg evaluate`: pixel IoU, object precision/recall/F1 at IoU 0.3);
4. trains a plain PyTorch loop on the same split (smp Unet/resnet18 from scratch, the same five channels normalised
   by the training tiles' mean and std, BCE + Dice, random flips, Adam 1e-3, the epoch of best validation IoU),
   writes its test probabilities and masks as `rts-seg predict` does, and evaluates them the same way;
5. prints both, with the bar of issue 19 (test pixel IoU > 0.039 and object F1 at IoU 0.3 > 0.04).

    python bench/real_protocol.py ROOT [--out runs/real_protocol] [--epochs 35] [--small] [key=value ...]

`--small` is a smoke test (3 epochs of each). Extra `key=value` arguments go to `rts-seg train`.
`--json FILE` saves the figures.
"""

import argparse, json, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from rts_seg.data import split_tiles  # noqa: E402
from rts_seg.io import write_raster  # noqa: E402

BAR = dict(pixel_iou=0.039, f1_30=0.04)
EXTRA = ('ndvi', 'nir', 're', 'sr')


def sh(*args, log: Path) -> str:
    "Run an rts-seg command; its output goes to `log` and its last line is returned."
    t0 = time.time()
    r = subprocess.run([sys.executable, '-m', 'rts_seg.cli', *map(str, args)], capture_output=True, text=True)
    log.write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f'rts-seg {args[0]} failed ({r.returncode}); see {log}:\n{r.stderr[-2000:]}')
    last = [l for l in r.stdout.splitlines() if l.strip()][-1:] or ['']
    print(f'  rts-seg {args[0]}: {time.time() - t0:.0f} s: {last[0][:300]}', flush=True)
    return last[0]


def scores(ev: dict) -> dict:
    "The figures of an evaluation.json."
    o, m = ev['objects']['0.3'], ev['objects_mapped']['0.3']
    return dict(
        pixel_iou=ev['pixel_iou'],
        pr_auc=ev['pr_auc'],
        f1_30=m['f1'],
        precision_30=m['precision'],
        recall_30=m['recall'],
        matched_30=m['tp'],
        raw_f1_30=o['f1'],
        min_area_m2=ev['min_area_m2'],
    )


# --- the plain loop ---------------------------------------------------------------------------------------------


def read_tile(root: Path, t: str, channels=(0, 1, 2), extra=('ndvi', 're')):
    "(C, H, W) float32 channels, the label with nodata as 255, the profile."
    with rasterio.open(root / 'PLANET-RGB' / f'{t}.tif') as r:
        rgb, prof = r.read().astype(np.float32), r.profile
        ok = r.read_masks(1) > 0
    with rasterio.open(root / 'EXTRA' / f'{t}.tif') as r:
        ex = r.read([EXTRA.index(c) + 1 for c in extra]).astype(np.float32)
    with rasterio.open(root / 'labels' / f'{t}.tif') as r:
        y = r.read(1)
    y = np.where(ok, y, 255).astype(np.uint8)
    x = np.concatenate([rgb[list(channels)], ex])
    x[:, ~ok] = np.nan
    return x, y, prof


def bce_dice(logits, y):
    "BCE + Dice over the batch, pixels labelled 255 counting nowhere."
    v = (y != 255).float()
    t = (y == 1).float()
    z = logits[:, 0]
    bce = (F.binary_cross_entropy_with_logits(z, t, reduction='none') * v).sum() / v.sum().clamp_min(1)
    p = torch.sigmoid(z) * v
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + (t * v).sum() + 1)
    return bce + dice


def plain_loop(root: Path, tiles: dict, out: Path, epochs: int, seed: int = 0) -> dict:
    "Train the plain loop; write its test predictions to `out`; return its validation IoU and threshold."
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = {s: [read_tile(root, t) for t in ids] for s, ids in tiles.items()}
    xs = np.concatenate([x.reshape(x.shape[0], -1) for x, _, _ in data['train']], 1)
    mean, std = np.nanmean(xs, 1)[:, None, None], np.nanstd(xs, 1)[:, None, None] + 1e-6
    norm = lambda x: np.nan_to_num((x - mean) / std).astype(np.float32)
    X = {s: torch.from_numpy(np.stack([norm(x) for x, _, _ in d])) for s, d in data.items() if d}
    Y = {s: torch.from_numpy(np.stack([y for _, y, _ in d]).astype(np.int64)) for s, d in data.items() if d}
    model = smp.Unet('resnet18', encoder_weights=None, in_channels=X['train'].shape[1], classes=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    best, best_iou, best_epoch = None, -1.0, 0
    for ep in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(X['train'])), max(1, len(X['train']) // 8)):
            xb, yb = X['train'][idx].clone(), Y['train'][idx].clone()
            if rng.random() < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            if rng.random() < 0.5:
                xb, yb = xb.flip(-2), yb.flip(-2)
            opt.zero_grad()
            bce_dice(model(xb), yb).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            p = torch.cat([torch.sigmoid(model(X['val'][i : i + 16]))[:, 0] for i in range(0, len(X['val']), 16)])
        v, t = Y['val'] != 255, Y['val'] == 1
        pr = (p > 0.5) & v
        iou = float((pr & t).sum() / max(int((pr | (t & v)).sum()), 1))
        if iou > best_iou:
            best_iou, best_epoch, best = iou, ep + 1, {k: w.clone() for k, w in model.state_dict().items()}
    model.load_state_dict(best)
    model.eval()
    (out / 'tiles').mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for t, x, (_, y, prof) in zip(tiles['test'], X['test'], data['test']):
            p = torch.sigmoid(model(x[None]))[0, 0].numpy()
            p = np.where(y == 255, -1, p).astype(np.float32)  # nodata reads as a negative probability
            write_raster(out / 'tiles' / f'{t}_prob.tif', p, prof['crs'], prof['transform'])
            write_raster(out / 'tiles' / f'{t}_mask.tif', (p > 0.5).astype(np.uint8), prof['crs'], prof['transform'])
    return dict(val_iou=best_iou, best_epoch=best_epoch, threshold=0.5)


def rts_seg_protocol(a, root: Path, out: Path, tiles: dict, epochs: int) -> dict:
    "Train (or take `--train-dir`), predict the test tiles and evaluate them; the figures."
    print("rts_seg (the project's defaults):", flush=True)
    run = a.train_dir.resolve() if a.train_dir else out / 'rts'
    if not a.train_dir:
        sh(
            'train',
            '--config',
            a.config,
            f'output_dir={run}',
            f'data.root={root}',
            'data.extra_channels=[ndvi,re]',
            f'train.epochs={epochs}',
            *a.overrides,
            log=out / 'train.log',
        )
    m = json.loads((run / 'metrics.json').read_text())
    meta = pd.read_csv(root / 'metadata.csv', dtype={'tile_id': str})
    meta[meta.tile_id.isin(tiles['test'])][['tile_id', 'RegionName']].to_csv(out / 'test_tiles.csv', index=False)
    pred = out / 'rts_pred'
    sh(
        'predict',
        '--model',
        run / 'best.pth',
        '--tile-list',
        out / 'test_tiles.csv',
        '--imagery',
        root,
        '--out',
        pred,
        log=out / 'predict.log',
    )
    sh('evaluate', '--pred', pred, '--truth', root / 'labels', '--iou', 0.3, log=out / 'evaluate.log')
    ev = json.loads((pred / 'evaluation.json').read_text())
    return dict(
        val_iou_at_0_5=m['val_iou'],
        val_pred_pos=m.get('val_pred_pos'),
        val_iou_at_threshold=(m.get('val_at_threshold') or {}).get('iou'),
        threshold=m['threshold'],
        threshold_rule=m.get('threshold_rule'),
        monitor=m.get('monitor'),
        best_epoch=m['best_epoch'],
        epochs_run=m['epochs_run'],
        **scores(ev),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('root', type=Path, help="dataset root in today's layout")
    p.add_argument('--out', type=Path, default=Path('runs/real_protocol'))
    p.add_argument('--epochs', type=int, default=35)
    p.add_argument('--small', action='store_true', help='3 epochs of each: a smoke test')
    p.add_argument('--config', type=Path, default=ROOT / 'configs' / 'quickstart.yaml')
    p.add_argument('--skip-plain', action='store_true', help='only rts_seg')
    p.add_argument('--skip-rts', action='store_true', help='only the plain loop')
    p.add_argument(
        '--train-dir', type=Path, default=None, help='an rts-seg train output to evaluate instead of training'
    )
    p.add_argument('--json', type=Path, default=None, help='save the figures here')
    p.add_argument('overrides', nargs='*', help='more rts-seg train overrides')
    a = p.parse_args()
    epochs = 3 if a.small else a.epochs
    root, out = a.root.resolve(), a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tiles = split_tiles(root)
    print(f'{root}: {", ".join(f"{s} {len(v)}" for s, v in tiles.items())} tiles', flush=True)
    if not tiles['test']:
        sys.exit(f'{root}/splits.yaml names no test region')
    res = {}
    if not a.skip_rts:
        res['rts_seg'] = rts_seg_protocol(a, root, out, tiles, epochs)
    if not a.skip_plain:
        print('plain PyTorch loop (Unet/resnet18 from scratch, BCE + Dice, flips):', flush=True)
        t0 = time.time()
        pl = plain_loop(root, tiles, out / 'plain_pred', epochs)
        print(f'  trained in {time.time() - t0:.0f} s: val IoU {pl["val_iou"]:.4f} (epoch {pl["best_epoch"]})')
        # the same smallest map object as rts_seg's maps (the default for 10 m pixels: 4 pixels, 400 m2)
        area = res['rts_seg']['min_area_m2'] if 'rts_seg' in res else 400.0
        plain = out / 'plain_pred'
        sh(
            'evaluate',
            '--pred',
            plain,
            '--truth',
            root / 'labels',
            '--iou',
            0.3,
            '--min-area-m2',
            area,
            log=out / 'evaluate_plain.log',
        )
        evp = json.loads((plain / 'evaluation.json').read_text())
        res['plain'] = dict(val_iou_at_0_5=pl['val_iou'], threshold=0.5, best_epoch=pl['best_epoch'], **scores(evp))

    print(f'\ntest region ({len(tiles["test"])} tiles), objects as mapped at IoU 0.3:')
    for k, r in res.items():
        ok = r['pixel_iou'] > BAR['pixel_iou'] and r['f1_30'] > BAR['f1_30']
        print(
            f'{k:8s} test pixel IoU {r["pixel_iou"]:.4f}  PR-AUC {r["pr_auc"]:.4f}  object F1@0.3 {r["f1_30"]:.4f} '
            f'(P {r["precision_30"]:.3f} R {r["recall_30"]:.3f}, {r["matched_30"]} matched, >= {r["min_area_m2"]:g} m2)  '
            f'threshold {r["threshold"]:.3f}  val IoU@0.5 {r["val_iou_at_0_5"] or 0:.4f}  best epoch {r["best_epoch"]}  '
            f'bar (IoU > {BAR["pixel_iou"]}, F1 > {BAR["f1_30"]}): {"met" if ok else "NOT met"}'
        )
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == '__main__':
    main()
