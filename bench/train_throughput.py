"""Training throughput: rts_seg's real training step against the SPEC's plain PyTorch loop, in one run.

rts_seg's step: tiles read from GeoTIFF through the DataLoader (augmentation, normalisation, collation),
the fastai Learner with focal loss, fused AdamW, gradient clipping, EMA, bf16 autocast, channels-last,
pixel-IoU metric and per-epoch logging. The plain loop: the same model on random data already on the
device, fused AdamW, BCE, bf16 autocast, channels-last (the SPEC's measured anchor: 95 img/s at batch 32
on an H100, 136 img/s with torch.compile).

    python bench/train_throughput.py                      # GPU: UNet++/EfficientNet-B7, 512 px, batch 32
    python bench/train_throughput.py --compile            # both with torch.compile (minutes of warm-up)
    python bench/train_throughput.py --cpu-small          # CPU: Unet/resnet18, 128 px, batch 8

Prints img/s, % of the GPU's dense bf16 peak (3.0 TFLOP per 512 px image, forward + backward, for the
baseline) and peak memory for both, then the ratio. `--json FILE` saves the figures.
"""

import argparse, json, os, shutil, sys, tempfile, time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import rts_seg.core  # noqa: F401  (silences fastai's torch.jit warning)
import segmentation_models_pytorch as smp
from fastai.callback.core import Callback

from rts_seg.config import load_config
from rts_seg.data import compute_stats, get_dls, split_tiles
from accelerate.utils import extract_model_from_parallel
from rts_seg.learner import protocol_cbs, rts_learner
from rts_seg.synthetic import synth_dataset

TFLOP_PER_IMG_512 = 3.0  # UNet++/EfficientNet-B7, forward + backward, from the SPEC
BF16_PEAK = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}  # dense bf16 TFLOP/s (SXM parts)


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def plain_loop(a, dev):
    "The SPEC's plain loop: random data on the device, fused AdamW, bf16 autocast, channels-last."
    torch.manual_seed(0)
    model = smp.create_model(a.arch, encoder_name=a.encoder, encoder_weights=None, in_channels=3, classes=1).to(dev)
    if a.plain_swish and hasattr(model.encoder, 'set_swish'):
        model.encoder.set_swish(memory_efficient=False)
    cuda = dev.type == 'cuda'
    if cuda and a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2, fused=cuda)
    step_model = torch.compile(model) if a.compile else model
    xs = [torch.randn(a.bs, 3, a.size, a.size, device=dev) for _ in range(2)]
    if cuda and a.channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    ys = [(torch.rand(a.bs, 1, a.size, a.size, device=dev) > 0.9).float() for _ in range(2)]

    def step(i):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.binary_cross_entropy_with_logits(step_model(xs[i % 2]), ys[i % 2])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    for i in range(a.warmup):
        step(i)
    sync(dev)
    warm = time.time() - t
    t = time.time()
    for i in range(a.steps):
        step(i)
    sync(dev)
    dt = time.time() - t
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float('nan')
    model = opt = step_model = None  # drop them (`step` shares these names) before emptying the cache
    if cuda:
        torch.cuda.empty_cache()
    return dict(img_s=a.steps * a.bs / dt, peak_gib=mem, warmup_s=warm)


def make_dataset(a, root):
    "Synthetic tiles at `a.size` px; the unique training tiles are repeated (as file links) to fill the epochs."
    synth_dataset(root, tiles=3 * a.unique, size=a.size, seed=0, scene=False)
    meta = pd.read_csv(root / 'metadata.csv', keep_default_na=False)
    train = meta[meta.RegionName == 'banks_island']
    need = a.bs * (a.warmup + a.steps)
    rows = []
    for k in range(need // len(train) + 1):
        for _, r in train.iterrows():
            tid = f'{r.tile_id}_copy{k}'
            for d in ('PLANET-RGB', 'labels'):
                os.link(root / d / f'{r.tile_id}.tif', root / d / f'{tid}.tif')
            rows.append({**r.to_dict(), 'tile_id': tid})
    pd.concat([meta, pd.DataFrame(rows)]).to_csv(root / 'metadata.csv', index=False)


class NoValid(Callback):
    "Skip validation (as `train.val_frequency` does): it is not timed, and under torch.compile eval mode would compile a second graph."

    order = 46  # after ValidationMetrics.before_validate

    def before_validate(self):
        self.learn.skip_valid = True


class Timer(Callback):
    "Wall time of training batches after `warmup` batches, validation excluded."

    order = 100

    def __init__(self, warmup):
        self.warmup, self.n, self.t0, self.elapsed, self.imgs = warmup, 0, None, 0.0, 0

    def before_train(self):
        self.t0 = None

    def before_batch(self):
        if self.training and self.n == self.warmup and self.t0 is None:
            sync(self.dls.device if hasattr(self.dls, 'device') and self.dls.device else torch.device('cpu'))
            self.t0 = time.time()

    def after_batch(self):
        if not self.training:
            return
        self.n += 1
        if self.n > self.warmup and self.t0 is not None:
            self.imgs += self.xb[0].shape[0]

    def after_train(self):
        if self.t0 is not None:
            sync(torch.device(self.dls.device) if getattr(self.dls, 'device', None) else torch.device('cpu'))
            self.elapsed += time.time() - self.t0


def rts_seg_step(a, dev, tmp):
    "rts_seg's Learner on GeoTIFF tiles through its DataLoader, everything on."
    root = tmp / 'data'
    t = time.time()
    make_dataset(a, root)
    t_data = time.time() - t
    ov = [
        f'output_dir={tmp}/run',
        f'data.root={root}',
        f'data.batch_size={a.bs}',
        f'data.num_workers={a.workers}',
        f'model.arch={a.arch}',
        f'model.encoder={a.encoder}',
        'model.encoder_weights=null',
        f'train.compile={a.compile}',
        f'train.channels_last={a.channels_last}',
        'train.epochs=1',
        'train.early_stopping_patience=null',
    ]
    cfg = load_config(Path(__file__).resolve().parent.parent / 'configs' / 'baseline.yaml', ov)
    stats = compute_stats(root, split_tiles(root)['train'])
    dls = get_dls(cfg.data, stats, dev)
    learn = rts_learner(dls, cfg, text_progress=True)
    if a.plain_swish and hasattr(
        extract_model_from_parallel(learn.model, keep_torch_compile=False).encoder, 'set_swish'
    ):
        extract_model_from_parallel(learn.model, keep_torch_compile=False).encoder.set_swish(memory_efficient=False)
    timer = Timer(a.warmup)
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    # the full protocol's callbacks, as `rts-seg train` runs them (schedule, checkpoints, MLflow, sampler, device-side loss)
    learn.fit(1, cbs=protocol_cbs(cfg, stats) + [timer] + ([NoValid()] if a.no_valid else []))
    total = time.time() - t
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == 'cuda' else float('nan')
    return dict(
        img_s=timer.imgs / timer.elapsed,
        peak_gib=mem,
        timed_images=timer.imgs,
        fit_s=total,
        dataset_s=t_data,
        train_batches=len(dls.train),
        workers=a.workers,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='UnetPlusPlus')
    p.add_argument('--encoder', default='efficientnet-b7')
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--warmup', type=int, default=8, help='batches before timing starts')
    p.add_argument('--steps', type=int, default=30, help='timed batches')
    p.add_argument('--unique', type=int, default=64, help='distinct synthetic training tiles')
    p.add_argument('--workers', type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument('--compile', action='store_true')
    p.add_argument('--no-channels-last', dest='channels_last', action='store_false')
    p.add_argument('--cpu-small', action='store_true', help='CPU: Unet/resnet18, 128 px, batch 8')
    p.add_argument('--skip-plain', action='store_true')
    p.add_argument('--json', default=None)
    p.add_argument('--no-valid', action='store_true', help='skip the (untimed) validation pass')
    p.add_argument('--cudnn-benchmark', action='store_true', help='torch.backends.cudnn.benchmark = True (both loops)')
    p.add_argument(
        '--plain-swish',
        action='store_true',
        help="EfficientNet encoders: plain x*sigmoid(x) instead of smp's memory-efficient swish (both loops)",
    )
    a = p.parse_args()
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    if a.cpu_small:
        a.arch, a.encoder, a.size, a.bs, a.warmup, a.steps, a.unique, a.workers = (
            'Unet',
            'resnet18',
            128,
            8,
            3,
            20,
            24,
            1,
        )
    dev = torch.device('cuda' if torch.cuda.is_available() and not a.cpu_small else 'cpu')
    gpu = torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu'
    print(
        f'device {gpu}  torch {torch.__version__}  {a.arch}/{a.encoder} {a.size}px batch {a.bs}  compile {a.compile}  '
        f'channels_last {a.channels_last}  workers {a.workers}  cudnn_benchmark {a.cudnn_benchmark}  plain_swish {a.plain_swish}',
        flush=True,
    )
    res = dict(device=gpu, torch=torch.__version__, args=vars(a))
    if not a.skip_plain:
        res['plain'] = plain_loop(a, dev)
        print(f'plain loop: {res["plain"]["img_s"]:.1f} img/s  peak {res["plain"]["peak_gib"]:.1f} GiB', flush=True)
    tmp = Path(tempfile.mkdtemp(prefix='rts_bench_'))
    try:
        res['rts_seg'] = rts_seg_step(a, dev, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = next((v for k, v in BF16_PEAK.items() if k in gpu), None)
    flop = (
        TFLOP_PER_IMG_512 * (a.size / 512) ** 2 if (a.arch, a.encoder) == ('UnetPlusPlus', 'efficientnet-b7') else None
    )
    print(f'\n{"":10} {"img/s":>8} {"% bf16 peak":>12} {"peak GiB":>9}')
    for k in ('plain', 'rts_seg'):
        if k not in res:
            continue
        r = res[k]
        pct = f'{100 * r["img_s"] * flop / peak:.1f}' if peak and flop else 'n/a'
        r['pct_bf16_peak'] = None if pct == 'n/a' else float(pct)
        print(f'{k:10} {r["img_s"]:8.1f} {pct:>12} {r["peak_gib"]:9.1f}')
    if 'plain' in res:
        res['ratio'] = res['rts_seg']['img_s'] / res['plain']['img_s']
        print(
            f'rts_seg / plain = {res["ratio"]:.3f}  (rts_seg step costs {100 * (1 / res["ratio"] - 1):+.1f} % vs the plain loop)'
        )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == '__main__':
    main()
