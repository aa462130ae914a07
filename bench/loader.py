"""Tiles/s per worker core: 512 px RGB LZW GeoTIFFs read through the full SPEC augmentation list and normalisation.

    python bench/loader.py [--tiles 48] [--size 512] [--repeat 3]

One process, one thread (OpenCV, torch and GDAL pinned to one thread), as one DataLoader worker runs; prints
the throughput of the whole `RTSDataset.__getitem__` and where the time goes, step by step. Times are CPU
time of the process (time.process_time), so the figures are per core even on a shared, loaded machine.
"""

import argparse, os, tempfile, time

os.environ.setdefault('GDAL_NUM_THREADS', '1')
from pathlib import Path

import cv2
import numpy as np
import torch

from rts_seg.augment import train_transforms
from rts_seg.data import Normalizer, RTSDataset, compute_stats
from rts_seg.io import write_raster
from rts_seg.synthetic import CRS, PIXEL_M, make_tile
from rasterio.transform import from_origin


def make_tiles(root: Path, n: int, size: int):
    "Write `n` synthetic RGB tiles + labels as LZW GeoTIFFs, plus the metadata the dataset reads."
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img, lbl = make_tile(rng, size, int(rng.integers(0, 3)))
        tfm = from_origin(-1_250_000 + i * size * PIXEL_M, -650_000, PIXEL_M, PIXEL_M)
        write_raster(root / 'PLANET-RGB' / f't{i:04d}.tif', img, CRS, tfm)
        write_raster(root / 'labels' / f't{i:04d}.tif', lbl, CRS, tfm)
        rows.append(f't{i:04d},70,-120,{"Positive" if (lbl == 1).any() else "Negative"},r,')
    (root / 'metadata.csv').write_text(
        'tile_id,centroid_lat,centroid_lon,TrainClass,RegionName,UIDs\n' + '\n'.join(rows) + '\n'
    )
    (root / 'splits.yaml').write_text('train: [r]\nval: []\ntest: []\n')
    return [f't{i:04d}' for i in range(n)]


def rate(fn, n: int, repeat: int) -> float:
    "Best-of-`repeat` calls per CPU-second of fn(i) for i in range(n)."
    best = 0.0
    for _ in range(repeat):
        # CPU time of this (single-threaded) process: per-core cost, whatever else the machine runs
        t = time.process_time()
        for i in range(n):
            fn(i)
        best = max(best, n / (time.process_time() - t))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--tiles', type=int, default=48)
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--repeat', type=int, default=3)
    a = p.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    ids = make_tiles(root, a.tiles, a.size)
    stats = compute_stats(root, ids)
    norm, tf = Normalizer(stats), train_transforms()
    ds = RTSDataset(root, ids, norm, tf)
    imgs = [ds.read(i) for i in range(a.tiles)]
    hwc = [(im.transpose(1, 2, 0).copy(), lb) for im, _, lb in imgs]
    full = rate(lambda i: ds[i], a.tiles, a.repeat)
    print(
        f'{a.size} px RGB LZW tiles, full SPEC augmentation + normalisation, 1 core: {full:.1f} tiles/s ({1000 / full:.1f} ms/tile)'
    )
    print('where the time goes (ms per tile; each step alone, its probability included):')
    steps = {'read image + label (rasterio, LZW)': lambda i: ds.read(i)}
    for t in tf.geom.transforms:
        steps[type(t).__name__ + f' (p={t.p})'] = (lambda t: lambda i: t(image=hwc[i][0], mask=hwc[i][1]))(t)
    for t in tf.color.transforms:
        steps[type(t).__name__ + f' RGB only (p={t.p})'] = (lambda t: lambda i: t(image=hwc[i][0]))(t)
    steps['normalise (clip, standardise)'] = lambda i: norm.hwc(hwc[i][0])
    steps['to tensors'] = lambda i: (torch.from_numpy(imgs[i][0].astype(np.float32)), torch.from_numpy(imgs[i][2]))
    for k, f in steps.items():
        print(f'  {k:45s} {1000 / rate(f, a.tiles, a.repeat):6.2f}')
    w = tf.geom.transforms[-1]
    for pa, pe in ((1, 0), (0, 1), (1, 1)):
        w.p_affine, w.p_elastic = pa, pe
        print(
            f'  {f"AffineElastic when applied (affine {pa}, elastic {pe})":45s} {1000 / rate(lambda i: w(image=hwc[i][0], mask=hwc[i][1]), a.tiles, a.repeat):6.2f}'
        )
    import albumentations as A, cv2 as cv

    ref = {
        'albumentations Affine (p=1)': A.Affine(
            translate_percent=(-0.06, 0.06),
            scale=(0.9, 1.1),
            rotate=(-30, 30),
            shear=(-8, 8),
            p=1,
            border_mode=cv.BORDER_CONSTANT,
            fill_mask=255,
        ),
        'albumentations ElasticTransform (p=1)': A.ElasticTransform(
            alpha=30, sigma=6, approximate=True, same_dxdy=True, p=1
        ),
    }
    for k, t in ref.items():
        print(
            f'  {"for reference: " + k:45s} {1000 / rate(lambda i: t(image=hwc[i][0], mask=hwc[i][1]), a.tiles, a.repeat):6.2f}'
        )


if __name__ == '__main__':
    main()
