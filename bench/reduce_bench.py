"""The reduce stage of a tile-list run (mosaics and merged polygons per region) against the number of tiles.

    python bench/reduce_bench.py --small          # 500 and 2,000 tiles of 128 px (a few minutes on 2 cores)
    python bench/reduce_bench.py                  # 500, 2,000 and 8,000 tiles
    python bench/reduce_bench.py --tiles 2000 --size 256

No model runs: the map stage's outputs are written as `run_inference`'s tile-list mode writes them (per tile a
probability, mask and scale COG, its polygons in a GeoPackage, its manifest record with its grid, the region
indexes), from a synthetic probability field per region whose slumps cross tile seams. Then the reduce stage runs
three ways on the same files, each region timed on its own:

- `cog`: today's reduce (what `build_mosaics` did before issue 21, region by region): every tile's three COGs
  fetched, one mosaic COG per region, the whole mosaic vectorised;
- `vrt`: the new per-region task (`rts-seg mosaic --region R`, `inference.mosaics=vrt`): the region's index, its
  tiles' GeoPackages, VRTs over the tiles' COGs (no pixel read), per-tile polygons unioned only across seams,
  GeoParquet and a STAC item;
- `both`: the default (COG and VRT, polygons of the whole mosaic).

Bytes moved are those of the files the reduce needs from the run's folder (what it downloads from a bucket:
`OutDir.bytes_in`). The figures are printed as a table and saved as JSON; `--extrapolate` adds the paper estimate
for 34 million 512 px tiles (per-tile costs measured here, scaled by pixels for the raster work).
"""

import argparse, json, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import from_origin

from rts_seg.config import InferenceConfig
from rts_seg.infer import OutDir, reduce_region, region_records, tile_features, tile_grid, write_region_index
from rts_seg.predict import write_cog
from rts_seg.vectorize import vectorize

PAN_ARCTIC_TILES = 34_000_000  # the SPEC's pan-Arctic tile count (512 px)


def region_field(rng, h: int, w: int, n_slumps: int) -> np.ndarray:
    "A probability field with `n_slumps` elliptic slumps (0.95 at the centre, falling off), some across tile seams."
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = np.zeros((h, w), np.float32)
    for _ in range(n_slumps):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(6, 30), rng.uniform(6, 30)
        y0, y1, x0, x1 = (
            int(max(0, cy - 2 * ry)),
            int(min(h, cy + 2 * ry)),
            int(max(0, cx - 2 * rx)),
            int(min(w, cx + 2 * rx)),
        )
        d = ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 + ((xx[y0:y1, x0:x1] - cx) / rx) ** 2
        p[y0:y1, x0:x1] = np.maximum(p[y0:y1, x0:x1], 0.95 * np.exp(-0.7 * d))
    # a model's background is not 0 but small noisy probabilities: their mantissas barely compress
    return np.maximum(p, rng.beta(0.5, 30, size=(h, w)).astype(np.float32))


def write_tile(out: Path, key: str, prob: np.ndarray, transform, crs: str) -> dict:
    "The three COGs, the GeoPackage and the manifest record of one tile, as `TileRecorder` writes them."
    h, w = prob.shape
    stem = out / 'tiles' / key
    prof = dict(
        driver='GTiff',
        width=w,
        height=h,
        count=1,
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=128,
        blockysize=128,
    )
    arrays = dict(
        prob=(prob, 'float32', -1, 'AVERAGE'),
        mask=((prob > 0.5).astype('uint8'), 'uint8', 255, 'NEAREST'),
        scale=(np.ones((h, w), 'uint8'), 'uint8', 0, 'NEAREST'),
    )
    rec = dict(key=key, windows=1, skipped_windows=0, valid_pixels=h * w, slump_pixels=int((prob > 0.5).sum()))
    with tempfile.TemporaryDirectory() as tmp:
        for k, (a, dt, nd, rs) in arrays.items():
            with rasterio.open(Path(tmp) / f'{k}.tif', 'w', **prof, dtype=dt, nodata=nd) as d:
                d.write(a, 1)
            write_cog(Path(tmp) / f'{k}.tif', f'{stem}_{k}.tif', rs)
            rec[k] = f'tiles/{key}_{k}.tif'
    v = vectorize(f'{stem}_mask.tif', f'{stem}_prob.tif', f'{stem}.gpkg', f'{stem}_scale.tif', 100.0, None)
    rec.update(
        gpkg=f'tiles/{key}.gpkg',
        polygons=v['polygons'],
        rts_area_m2=v['total_area_m2'],
        grid=tile_grid(f'{stem}_prob.tif'),
        features=tile_features(f'{stem}.gpkg'),
    )
    return rec


def make_run(out: Path, n_tiles: int, size: int, regions: int, seed: int = 0) -> pd.DataFrame:
    "A run folder with `n_tiles` finished tiles of `size` px in `regions` square regions (3 m pixels, EPSG:3413)."
    rng = np.random.default_rng(seed)
    (out / 'tiles').mkdir(parents=True, exist_ok=True)
    rows, recs = [], []
    per = n_tiles // regions
    for g in range(regions):
        side = int(np.ceil(np.sqrt(per)))
        field = region_field(rng, side * size, side * size, n_slumps=max(1, per * size * size // 40_000))
        x0, y0 = 1_000_000 * g, 2_000_000.0
        for k in range(per):
            r, c = divmod(k, side)
            key = f'r{g}_{r:03d}_{c:03d}'
            t = from_origin(x0 + c * size * 3, y0 - r * size * 3, 3, 3)
            recs.append(
                write_tile(out, key, field[r * size : (r + 1) * size, c * size : (c + 1) * size], t, 'EPSG:3413')
            )
            rows.append((key, f'region{g}'))
    tiles = pd.DataFrame(rows, columns=['tile_id', 'RegionName'])
    tiles.to_csv(out / 'tiles.csv', index=False)
    with open(out / 'manifest_0of1.jsonl', 'w') as f:
        f.writelines(json.dumps(r, sort_keys=True) + '\n' for r in recs)
    write_region_index(OutDir(out), tiles, recs, 0, 1)
    (out / 'run_info.json').write_text(
        json.dumps(dict(model={'arch': 'none (benchmark)'}, provenance={}, min_area_m2=100.0))
    )
    return tiles


def reduce_once(out: Path, tiles: pd.DataFrame, mode: str) -> list[dict]:
    "Each region reduced from its own files, timed; bytes the reduce needed from the run's folder."
    cfg = InferenceConfig(mosaics=mode, min_area_m2=100.0)
    res = []
    for region in sorted(tiles.RegionName.unique()):
        d = OutDir(out)
        t0 = time.perf_counter()
        recs = region_records(d, region, tiles)
        r = reduce_region(d, region, recs, cfg)
        res.append(
            dict(
                region=region,
                tiles=len(recs),
                seconds=time.perf_counter() - t0,
                bytes=d.bytes_in,
                polygons=r['polygons'],
                area=r['total_area_m2'],
            )
        )
    return res


def du(out: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in out.glob(pattern))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--small', action='store_true', help='500 and 2,000 tiles only')
    p.add_argument('--tiles', type=int, nargs='+', default=None, help='tile counts (default 500 2000 8000)')
    p.add_argument('--size', type=int, default=128, help='tile side in pixels (default 128)')
    p.add_argument('--regions', type=int, default=4, help='regions of equal size (default 4)')
    p.add_argument('--modes', nargs='+', default=['cog', 'vrt', 'both'], help='reduce modes to time')
    p.add_argument('--json', default=None, help='write the figures here')
    p.add_argument('--keep', default=None, help='build the runs under this folder (kept) instead of a temporary one')
    a = p.parse_args()
    counts = a.tiles or ([500, 2000] if a.small else [500, 2000, 8000])
    rows = []
    base = Path(a.keep or tempfile.mkdtemp(prefix='reduce_bench_'))
    for n in counts:
        out = base / f'run_{n}_{a.size}'
        t0 = time.perf_counter()
        tiles = make_run(out, n, a.size, a.regions)
        made = time.perf_counter() - t0
        sizes = dict(rasters=du(out, 'tiles/*.tif'), gpkgs=du(out, 'tiles/*.gpkg'), index=du(out, 'index/*/*.jsonl'))
        print(
            f'{n} tiles of {a.size} px written in {made:.0f} s: rasters {sizes["rasters"] / 1e6:.1f} MB, '
            f'GeoPackages {sizes["gpkgs"] / 1e6:.1f} MB, region indexes {sizes["index"] / 1e6:.2f} MB',
            flush=True,
        )
        for mode in a.modes:
            regs = reduce_once(out, tiles, mode)
            row = dict(
                tiles=n,
                size=a.size,
                mode=mode,
                regions=len(regs),
                tiles_per_region=regs[0]['tiles'],
                serial_s=sum(r['seconds'] for r in regs),
                max_region_s=max(r['seconds'] for r in regs),
                bytes_total=sum(r['bytes'] for r in regs),
                bytes_region=max(r['bytes'] for r in regs),
                polygons=sum(r['polygons'] for r in regs),
                area_km2=sum(r['area'] for r in regs) / 1e6,
                **{f'{k}_bytes': v for k, v in sizes.items()},
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        '\n| tiles | px | mode | serial s (all regions) | s per region task (max) | ms/tile | MB moved (all) | MB per region | polygons | km2 |'
    )
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(
            f'| {r["tiles"]} | {r["size"]} | {r["mode"]} | {r["serial_s"]:.1f} | {r["max_region_s"]:.1f} | '
            f'{1000 * r["serial_s"] / r["tiles"]:.1f} | {r["bytes_total"] / 1e6:.1f} | {r["bytes_region"] / 1e6:.1f} | {r["polygons"]} | {r["area_km2"]:.3f} |'
        )
    big = [r for r in rows if r['tiles'] == max(counts)]
    print(
        f'\nPaper extrapolation to {PAN_ARCTIC_TILES:,} tiles of 512 px (per-tile figures of the {max(counts)}-tile run; '
        f'raster bytes and raster time x {(512 / a.size) ** 2:.0f} for the pixels):'
    )
    est = []
    for r in big:
        f = (512 / a.size) ** 2
        raster_share = r['rasters_bytes'] / max(1, r['rasters_bytes'] + r['gpkgs_bytes'] + r['index_bytes'])
        per_tile_b = r['bytes_total'] / r['tiles']
        # the cog modes move the rasters (scale them by pixels); vrt moves GeoPackages and indexes (by polygons: same density)
        b = PAN_ARCTIC_TILES * (
            per_tile_b * (raster_share * f + (1 - raster_share)) if r['mode'] != 'vrt' else per_tile_b
        )
        s = PAN_ARCTIC_TILES * r['serial_s'] / r['tiles'] * (f if r['mode'] != 'vrt' else 1)
        e = dict(mode=r['mode'], tb_moved=b / 1e12, serial_hours=s / 3600)
        est.append(e)
        print(
            f'- {r["mode"]}: {e["tb_moved"]:.2f} TB moved, {e["serial_hours"]:.0f} h on one core '
            f'({e["serial_hours"] / 24:.1f} days); over 1,000 region tasks: {e["serial_hours"] * 60 / 1000:.1f} min each on average'
        )
    if a.json:
        Path(a.json).write_text(json.dumps(dict(rows=rows, extrapolation=est), indent=2))


if __name__ == '__main__':
    main()
