"""Issue 20 on real data: an ensemble of seeds, its uncertainty, and its standing among the experts.

On the intercomparison dataset that `bench/intercomparison_dataset.py` writes (72 Sentinel-2 chips of Peel and
Bykovsky, labels = the experts' majority), this

1. trains the project's defaults with three seeds (`rts-seg train --config configs/quickstart.yaml
   data.extra_channels=[ndvi,re] --seeds 42 43 44`), each run in `{out}/runs/seed{N}/`;
2. predicts the test region's tiles (Peel NE) with each seed alone and with the ensemble (`--model {out}/runs`),
   which writes the uncertainty (`_unc.tif`, std across members) and `prob_std` per polygon;
3. evaluates each against the experts' majority labels with 95 % bootstrap intervals, and the ensemble against
   every Peel expert's own polygons (`--truth experts/01/Peel_digitized.shp ...`): its standing in their spread.

    python bench/issue20_real.py ROOT [--out runs/issue20] [--epochs 15] [--data ../shared/data/rts_intercomparison]
"""

import argparse, glob, json, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio.raw
import rasterio
import yaml

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (42, 43, 44)
sys.path.insert(0, str(ROOT / 'bench'))
from real_protocol import sh  # noqa: E402  (run an rts-seg command, its output to a log)


def prob_stds(gpkg: Path) -> list[float]:
    "The `prob_std` of every polygon in a GeoPackage."
    meta, _, _, vals = pyogrio.raw.read(gpkg, read_geometry=False)
    return list(vals[list(meta['fields']).index('prob_std')]) if len(meta['fields']) else []


def unc_facts(pred: Path) -> dict:
    "Uncertainty over the predicted tiles: mean std, its share above 0.05, and mean prob_std of the polygons."
    vals = []
    for f in sorted(pred.glob('tiles/*_unc.tif')):
        with rasterio.open(f) as s:
            a = s.read(1, masked=True).astype('float32') * float(s.scales[0])
            vals.append(a.compressed())
    v = np.concatenate(vals) if vals else np.zeros(0)
    ps = pd.Series([v for g in pred.glob('tiles/*.gpkg') for v in prob_stds(g)], dtype=float)
    return dict(
        unc_files=len(vals),
        unc_mean=float(v.mean()) if v.size else None,
        unc_share_above_0_05=float((v > 0.05).mean()) if v.size else None,
        polygons=int(len(ps)),
        prob_std_mean=float(ps.mean()) if len(ps) else None,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('root', type=Path)
    p.add_argument('--out', type=Path, default=Path('runs/issue20'))
    p.add_argument('--epochs', type=int, default=15)
    p.add_argument('--data', type=Path, default=ROOT.parent / 'shared' / 'data' / 'rts_intercomparison')
    p.add_argument('--skip-train', action='store_true', help='reuse {out}/runs')
    a = p.parse_args()
    out, root = a.out.resolve(), a.root.resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = out / 'runs'
    if not a.skip_train:
        sh(
            'train',
            '--config',
            ROOT / 'configs' / 'quickstart.yaml',
            f'data.root={root}',
            f'output_dir={runs}',
            'data.extra_channels=[ndvi,re]',
            f'train.epochs={a.epochs}',
            '--seeds',
            *SEEDS,
            log=out / 'train.log',
        )
    splits = yaml.safe_load((root / 'splits.yaml').read_text())
    meta = pd.read_csv(root / 'metadata.csv', dtype={'tile_id': str})
    test = meta[meta.RegionName.isin(splits['test'])][['tile_id', 'RegionName']]
    test.to_csv(out / 'test_tiles.csv', index=False)
    figures = {}
    models = {f'seed{s}': [runs / f'seed{s}' / 'best.pth'] for s in SEEDS} | {'ensemble': [runs]}
    for name, model in models.items():
        pred = out / f'pred_{name}'
        t0 = time.time()
        sh(
            'predict',
            '--model',
            *model,
            '--tile-list',
            out / 'test_tiles.csv',
            '--imagery',
            root,
            '--out',
            pred,
            '--resume',
            log=out / f'predict_{name}.log',
        )
        secs = time.time() - t0
        sh('evaluate', '--pred', pred, '--truth', root / 'labels', '--iou', 0.3, log=out / f'evaluate_{name}.log')
        ev = json.loads((pred / 'evaluation.json').read_text())
        figures[name] = dict(
            predict_s=round(secs, 1),
            pixel_iou=ev['pixel_iou'],
            pr_auc=ev['pr_auc'],
            f1_30=ev['objects_mapped']['0.3']['f1'],
            ci95=ev.get('ci95'),
            **unc_facts(pred),
        )
    experts = sorted(glob.glob(str(a.data / 'experts' / '*' / 'Peel_digitized.shp')))
    ev_dir = out / 'experts'
    line = sh(
        'evaluate',
        '--pred',
        out / 'pred_ensemble',
        '--truth',
        *experts,
        '--iou',
        0.3,
        '--out',
        ev_dir,
        log=out / 'evaluate_experts.log',
    )
    ev = json.loads((ev_dir / 'evaluation.json').read_text())
    figures['experts'] = dict(line=line, standing=ev.get('standing'), n_experts=len(experts))
    (out / 'figures.json').write_text(json.dumps(figures, indent=1, default=str))
    for k, f in figures.items():
        if k != 'experts':
            print(
                f'{k:9s} pixel IoU {f["pixel_iou"]:.3f} PR-AUC {f["pr_auc"]:.3f} F1@0.3 {f["f1_30"]:.3f} '
                f'predict {f["predict_s"]} s; unc mean {f["unc_mean"]}, share > 0.05 {f["unc_share_above_0_05"]}, '
                f'polygons {f["polygons"]} (mean prob_std {f["prob_std_mean"]})'
            )
    print('ensemble vs', len(experts), 'Peel experts:', line)


if __name__ == '__main__':
    main()
