"""A small real dataset in today's layout from the RTS labelling intercomparison (Nitze et al. 2024).

Two 2.5 km sites, each one Sentinel-2 image (251 x 251 px, 10 m, uint16) and the slump polygons that 10-12 experts
drew independently on it. This script writes, under OUT:

- `PLANET-RGB/{id}.tif`: bands B4, B3, B2 (R, G, B) as uint16, nodata 0;
- `EXTRA/{id}.tif`: ndvi (from B8 and B4), nir (B8 reflectance, 0-1); no elevation exists here, so the `re` and `sr`
  slots hold the red-edge reflectances B5 and B6 (a constant band would have a standard deviation of 0, which
  today's normalisation divides by);
- `labels/{id}.tif`: 1 where more than half of the site's experts drew a slump, else 0; 255 where the image is nodata;
- `metadata.csv` and `splits.yaml`: each site cut into four quadrants (regions), chips never crossing a quadrant,
  so that train, val and test are split by region as the contract asks.

    python bench/intercomparison_dataset.py OUT [--src /work/shared/data/rts_intercomparison] [--chip 64 --stride 32]

The band order is the experiment's (each site's README.txt): B2, B3, B4, B5, B6, B7, B8 (Peel: these 7; Bykovsky: 10,
then B8A, B11, B12).
"""

import argparse, glob, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
import yaml
from rasterio.features import rasterize
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rts_seg.io import write_raster

SRC = Path('/work/shared/data/rts_intercomparison')
SITES = ('Peel', 'Bykovsky')
B2, B3, B4, B5, B6, B8 = 0, 1, 2, 3, 4, 6  # 0-based positions in both sites' S2 stacks
# regions by split, chosen so that each split holds slumps of both kinds of terrain where it can (the script prints the
# counts per quadrant): Peel's NE quadrant, with the most slump pixels, is the held-out test region
SPLITS = dict(
    train=['Peel_NW', 'Peel_SW', 'Bykovsky_NW', 'Bykovsky_NE', 'Bykovsky_SW'],
    val=['Peel_SE', 'Bykovsky_SE'],
    test=['Peel_NE'],
)


def expert_votes(src: Path, site: str, shape, transform) -> tuple[np.ndarray, int]:
    "Per pixel, how many of the site's experts drew a slump over it; and the number of experts."
    files = sorted(glob.glob(str(src / 'experts' / '*' / f'{site}_digitized.shp')))
    votes = np.zeros(shape, np.int16)
    for f in files:
        geoms = [shapely.from_wkb(g) for g in pyogrio.raw.read(f)[2] if g is not None]
        geoms = [g for g in geoms if not g.is_empty]
        if geoms:
            votes += rasterize(geoms, out_shape=shape, transform=transform, fill=0, default_value=1, dtype='uint8')
    return votes, len(files)


def starts(lo: int, hi: int, chip: int, stride: int) -> list[int]:
    "Chip origins from `lo` covering [lo, hi) with chips of `chip` px, the last one flush with `hi`."
    s = list(range(lo, max(hi - chip, lo) + 1, stride))
    if s[-1] + chip < hi:
        s.append(hi - chip)
    return s


def build(out: Path, src: Path = SRC, chip: int = 64, stride: int = 32, splits: dict | None = None) -> dict:
    "Write the dataset to `out`; return per-region tile and slump-pixel counts."
    rows, counts = [], {}
    for site in SITES:
        (f,) = glob.glob(str(src / site / 'data' / 'S2_*.tif'))
        with rasterio.open(f) as r:
            img, tfm, crs = r.read(), r.transform, r.crs
        votes, n = expert_votes(src, site, img.shape[1:], tfm)
        ok = (img != 0).any(0)
        lbl = np.where(ok, (votes * 2 > n).astype(np.uint8), 255).astype(np.uint8)
        red, nir = img[B4].astype(np.float32), img[B8].astype(np.float32)
        ndvi = np.where(ok, (nir - red) / np.maximum(nir + red, 1), 0)
        extra = np.stack([ndvi, nir / 10000, img[B5] / 10000, img[B6] / 10000]).astype(np.float32)
        rgb = img[[B4, B3, B2]]
        h, w = lbl.shape
        for qn, (y0, y1, x0, x1) in dict(
            NW=(0, h // 2, 0, w // 2), NE=(0, h // 2, w // 2, w), SW=(h // 2, h, 0, w // 2), SE=(h // 2, h, w // 2, w)
        ).items():
            region = f'{site}_{qn}'
            counts[region] = dict(tiles=0, positive=0, slump_px=int((lbl[y0:y1, x0:x1] == 1).sum()), experts=n)
            for y in starts(y0, y1, chip, stride):
                for x in starts(x0, x1, chip, stride):
                    tid = f'{region}_{y:03d}_{x:03d}'
                    win = Window(x, y, chip, chip)
                    t = rasterio.windows.transform(win, tfm)
                    sl = np.s_[y : y + chip, x : x + chip]
                    write_raster(out / 'PLANET-RGB' / f'{tid}.tif', rgb[(slice(None), *sl)], crs, t, nodata=0)
                    write_raster(out / 'EXTRA' / f'{tid}.tif', extra[(slice(None), *sl)], crs, t)
                    write_raster(out / 'labels' / f'{tid}.tif', lbl[sl], crs, t, nodata=255)
                    pos = bool((lbl[sl] == 1).any())
                    counts[region]['tiles'] += 1
                    counts[region]['positive'] += pos
                    cx, cy = t * (chip / 2, chip / 2)
                    lon, lat = rasterio.warp.transform(crs, 'EPSG:4326', [cx], [cy])
                    rows.append(
                        dict(
                            tile_id=tid,
                            centroid_lat=round(lat[0], 6),
                            centroid_lon=round(lon[0], 6),
                            TrainClass='Positive' if pos else 'Negative',
                            RegionName=region,
                            UIDs=tid if pos else '',
                        )
                    )
    pd.DataFrame(rows).to_csv(out / 'metadata.csv', index=False)
    (out / 'splits.yaml').write_text(yaml.safe_dump(splits or SPLITS, sort_keys=False))
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('out', type=Path, help='dataset root to create (must not exist)')
    p.add_argument('--src', type=Path, default=SRC, help='the intercomparison folder')
    p.add_argument('--chip', type=int, default=64, help='chip side in pixels')
    p.add_argument('--stride', type=int, default=32, help='step between chips within a quadrant')
    a = p.parse_args()
    if a.out.exists():
        sys.exit(f'{a.out} exists; choose another folder')
    if not a.src.is_dir():
        sys.exit(f'{a.src} not found')
    import rasterio.warp  # noqa: F401

    counts = build(a.out, a.src, a.chip, a.stride)
    for k, v in counts.items():
        split = next((s for s, rs in SPLITS.items() if k in rs), '-')
        print(f'{k:12s} {split:5s} tiles {v["tiles"]:3d}  positive {v["positive"]:3d}  slump px {v["slump_px"]:5d}')
    print(f'-> {a.out}')


if __name__ == '__main__':
    main()
