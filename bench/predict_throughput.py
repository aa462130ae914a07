"""End-to-end prediction throughput against the raw model forward pass, on the same GPU in the same run.

    python bench/predict_throughput.py            # GPU: 16384 px scene, UNet++/EfficientNet-B7, bf16, channels_last, batch 128
    python bench/predict_throughput.py --small    # CPU smoke test: 1024 px scene, Unet/resnet18, batch 4
    python bench/predict_throughput.py --model tiny --device cpu --size 8192 --batch-size 32 --workers 2
                                                  # host cost: a model that costs nothing, so the host side is all there is
    python bench/predict_throughput.py --scenes 4 --size 8192   # sustained: 4 scenes, each one's COGs made while the next is predicted
    python bench/predict_throughput.py --tiles 2000             # tile list: 2000 tiles of 512 px (one window each), as run_inference does

It makes its own scene (a tiled LZW RGB GeoTIFF in EPSG:3413, written by blocks) and its own model
(random weights: throughput does not depend on them), then measures
  raw: model forward passes on a batch already on the device (the SPEC's 328 tiles/s anchor on an H100);
  end-to-end: rts_seg.predict.predict_scenes on the scene: windowed reads by prefetching threads,
      normalisation, prediction, max-merge, prob/mask/scale COGs written by the writer thread, and the
      polygons (GeoPackage) when pyogrio is installed.
It prints both, their ratio (goal >= 0.9) and the implied time for 20 million km2 at 3 m, stride 256,
one scale, no TTA (goal: under 1.5 GPU-days on an H100), then where the time went, per stage, in ms per
window (`predict_scenes(timings=...)`): each thread's stages add up to at most the wall time, readers'
are summed over the reader threads; `main` is the time until the last strip went to the writer, `tail`
the rest (the last scene's COGs). Needs torch, segmentation-models-pytorch, rasterio, shapely, pydantic
and rts_seg (no fastai, no mlflow).
"""

import argparse, json, os, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import rasterio
import segmentation_models_pytorch as smp
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from rts_seg.config import InferenceConfig
from rts_seg.predict import Predictor, Scene, predict_scenes

PAN_ARCTIC_KM2, GSD_M = 20e6, 3.0
STAGES = dict(
    wait_open='main: waiting for scenes to be opened (checked)',
    read='readers: decoding strips (summed over threads)',
    read_cpu='readers: their CPU time',
    wait_read='main: waiting for strips',
    upload='main: strips to the device, normalised',
    cut='main: windows cut (views), nodata checks',
    forward='main: batch stacked, forward pass enqueued (CPU: run)',
    wait_device='main: waiting for the device',
    merge='main: merge into the band, strips popped',
    wait_writer='main: waiting for the writer (backpressure)',
    write='writer: strips to temporary GeoTIFFs',
    write_cpu='writer: its CPU time',
    cog='finisher: COGs (GDAL, all cores)',
    on_done='finisher: polygons',
    main='main loop, total',
    wall='predict_scenes, total',
)


class Tiny(torch.nn.Module):
    "A model that costs nothing: the logit is the first channel, scaled (host-side profiling)."

    def forward(self, x):
        return x[:, :1] * 0.01


def make_scene(path, size, seed=0, x0=0):
    "A size x size RGB uint8 scene (`x0` px east of the others), written block by block (smooth noise, so it compresses like imagery)."
    rng = np.random.default_rng(seed)
    prof = dict(
        driver='GTiff',
        width=size,
        height=size,
        count=3,
        dtype='uint8',
        crs='EPSG:3413',
        nodata=None,
        transform=from_origin(-2_000_000 + x0 * GSD_M, 1_000_000, GSD_M, GSD_M),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress='lzw',
    )
    base = rng.integers(60, 200, (3, 16, 16)).astype(np.float32)
    with rasterio.open(path, 'w', **prof) as dst:
        for y in range(0, size, 1024):
            h = min(1024, size - y)
            yy = np.arange(y, y + h) / size * 15
            xx = np.arange(size) / size * 15
            blk = np.stack([base[c][yy.astype(int)][:, xx.astype(int)] for c in range(3)])
            blk += rng.normal(0, 12, blk.shape)
            dst.write(np.clip(blk, 0, 255).astype(np.uint8), window=Window(0, y, size, h))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--small', action='store_true', help='CPU smoke test: small scene and model')
    p.add_argument('--size', type=int, default=None, help='scene side in pixels (default 16384; --small 1024)')
    p.add_argument(
        '--model',
        default='smp',
        choices=['smp', 'tiny'],
        help="smp: --arch/--encoder; tiny: no compute at all (the host side's cost)",
    )
    p.add_argument('--device', default=None, help='auto, cpu, cuda (default: auto; --small: cpu)')
    p.add_argument(
        '--scenes', type=int, default=1, help='predict the scene this many times in one run (sustained throughput)'
    )
    p.add_argument(
        '--tiles',
        type=int,
        default=0,
        help='instead of a scene: this many separate tiles of --tile-size px (tile-list mode)',
    )
    p.add_argument('--tile-size', type=int, default=None, help='window (and tile) size (default 512; --small 256)')
    p.add_argument('--arch', default=None)
    p.add_argument('--encoder', default=None)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--precision', default='auto')
    p.add_argument('--no-channels-last', action='store_true')
    p.add_argument('--compile', action='store_true')
    p.add_argument('--workers', type=int, default=None)
    p.add_argument('--raw-iters', type=int, default=None)
    p.add_argument(
        '--threshold',
        type=float,
        default=0.999,
        help='mask threshold: high, so a random model detects rarely, as a real one does',
    )
    p.add_argument('--out', default=None, help='work folder (default a temporary one)')
    a = p.parse_args()
    small = a.small
    size = a.size or (1024 if small else 16384)
    arch, enc = (
        a.arch or ('Unet' if small else 'UnetPlusPlus'),
        a.encoder or ('resnet18' if small else 'efficientnet-b7'),
    )
    B = a.batch_size or (4 if small else 128)
    T = a.tile_size or (256 if small else 512)
    workers = a.workers or (2 if small else min(12, os.cpu_count() or 2))
    device = a.device or ('cpu' if small else 'auto')
    out = Path(a.out or tempfile.mkdtemp(prefix='rts_bench_'))
    out.mkdir(parents=True, exist_ok=True)
    scene = out / f'scene_{size}.tif'
    t = time.time()
    if a.tiles:
        paths = [out / 'tiles' / f'tile_{i:05d}.tif' for i in range(a.tiles)]
        (out / 'tiles').mkdir(exist_ok=True)
        for i, q in enumerate(paths):
            if not q.exists():
                make_scene(q, T, seed=i, x0=i * T)
        print(f'{a.tiles} tiles of {T}x{T} px written in {time.time() - t:.1f} s', flush=True)
        scenes = lambda: [Scene(str(q), out / 'pred_tiles' / q.stem) for q in paths]
    else:
        if not scene.exists():
            make_scene(scene, size)
        print(f'scene {size}x{size} px written in {time.time() - t:.1f} s', flush=True)
        scenes = lambda: [Scene(str(scene), out / f'pred{i}') for i in range(a.scenes)]

    # the host side alone: on the CPU, one torch thread, so "device" ops do not fight the host threads
    if a.model == 'tiny':
        arch, enc, model = 'tiny', '-', Tiny()
        if device == 'cpu':
            torch.set_num_threads(1)
    else:
        model = smp.create_model(arch, encoder_name=enc, encoder_weights=None, in_channels=3, classes=1)
    g = dict(channels=['r', 'g', 'b'], mean=[120.0] * 3, std=[40.0] * 3, clip_low=[0.0] * 3, clip_high=[255.0] * 3)
    stats = dict(channels=['r', 'g', 'b'], groups=dict(rgb=g))
    pred = Predictor(
        model, stats, device=device, precision=a.precision, channels_last=not a.no_channels_last, compile=a.compile
    )
    dev = pred.device
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    gpu = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'

    # raw forward throughput: a normalised batch already on the device
    x = torch.randn(B, 3, T, T, device=dev)
    for _ in range(3):
        pred(x)
    sync()
    iters = a.raw_iters or (3 if small else 20)
    t = time.time()
    for _ in range(iters):
        pred(x)
    sync()
    raw = iters * B / (time.time() - t)
    print(
        f'raw forward: {raw:.1f} tiles/s ({arch}/{enc}, {pred.precision}, channels_last={pred.channels_last}, batch {B}, {T} px, {gpu})',
        flush=True,
    )

    # end to end
    try:
        from rts_seg.vectorize import vectorize
        import pyogrio  # noqa: F401
    except ImportError:
        vectorize = None
    polys = []

    def on_done(r):
        if vectorize:
            polys.append(
                vectorize(r['mask'], r['prob'], r['prob'].replace('_prob.tif', '.gpkg'), r['scale'], min_area_m2=100)
            )

    cfg = InferenceConfig(
        tile_size=T,
        stride=T // 2,
        batch_size=B,
        workers=workers,
        threshold=a.threshold,
        device=device,
        precision=a.precision,
        channels_last=not a.no_channels_last,
    )
    t, c, tm = time.time(), time.process_time(), {}
    res = predict_scenes(pred, scenes(), cfg, on_done=on_done, timings=tm)
    sync()
    wall, cpu = time.time() - t, time.process_time() - c
    windows = sum(r['windows'] for r in res)
    e2e = windows / wall
    ratio = e2e / raw
    tiles = PAN_ARCTIC_KM2 * 1e6 / GSD_M**2 / 256**2  # 256 px stride at 3 m
    days = tiles / e2e / 86400
    summary = dict(
        gpu=gpu,
        arch=arch,
        encoder=enc,
        precision=pred.precision,
        channels_last=pred.channels_last,
        batch_size=B,
        tile_size=T,
        scene_px=None if a.tiles else size,
        scenes=len(res),
        windows=windows,
        raw_tiles_per_s=round(raw, 2),
        end_to_end_tiles_per_s=round(e2e, 2),
        ratio=round(ratio, 3),
        wall_s=round(wall, 2),
        vectorized=bool(vectorize),
        polygons=sum(v['polygons'] for v in polys) if polys else None,
        pan_arctic_tiles=round(tiles),
        pan_arctic_gpu_days=round(days, 3),
        streaming_tiles_per_s=round(windows / tm['main'], 2),
        tail_s=round(tm['wall'] - tm['main'], 2),
        process_cpu_ms_per_window=round(cpu / windows * 1e3, 2),
        stages_ms_per_window={k: round(v / windows * 1e3, 3) for k, v in tm.items() if k != 'windows'},
    )
    print(
        f'end to end: {e2e:.1f} tiles/s ({windows} windows{f" of {len(res)} scenes" if len(res) > 1 else ""} in {wall:.1f} s; '
        f'polygons {"written" if vectorize else "skipped (no pyogrio)"}); ratio end-to-end / raw = {ratio:.3f} (goal >= 0.9)'
    )
    if T == 512:
        print(
            f'pan-Arctic (20 million km2 at 3 m, stride 256, one scale, no TTA): {tiles / 1e6:.1f} M tiles = '
            f'{days:.2f} GPU-days at {e2e:.0f} tiles/s (goal < 1.5 on an H100); {tiles / raw / 86400:.2f} at the raw rate'
        )
    else:
        print('(--small: 256 px windows on the CPU; the pan-Arctic estimate needs the 512 px GPU run)')
    print(
        f'streaming (until the last strip went to the writer): {summary["streaming_tiles_per_s"]:.1f} tiles/s; '
        f'tail (the last COGs{", polygons" if vectorize else ""}): {summary["tail_s"]:.2f} s; '
        f'CPU time of the whole process: {summary["process_cpu_ms_per_window"]:.2f} ms per window'
    )
    print('stages, ms per window:')
    for k, v in summary['stages_ms_per_window'].items():
        print(f'  {k:12s} {v:8.3f}  {STAGES.get(k, "")}')
    print(json.dumps(summary))
    (out / 'throughput.json').write_text(json.dumps(summary, indent=2))


if __name__ == '__main__':
    main()
