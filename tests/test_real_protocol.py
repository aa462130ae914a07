"""Issue 19 on real data: the intercomparison dataset builder (bench/intercomparison_dataset.py) and the protocol
benchmark (bench/real_protocol.py --small) end to end; skipped where ../shared/data is absent."""

import glob, json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
import yaml

from conftest import ROOT, rts_seg

SRC = Path(os.environ.get('RTS_SEG_INTERCOMPARISON', ROOT.parent / 'shared' / 'data' / 'rts_intercomparison'))
pytestmark = pytest.mark.skipif(not SRC.is_dir(), reason=f'intercomparison data not found at {SRC}')


@pytest.fixture(scope='module')
def ic(tmp_path_factory):
    "The intercomparison chips in today's layout, built by the bench script."
    out = tmp_path_factory.mktemp('ic') / 'ds'
    r = subprocess.run(
        [sys.executable, ROOT / 'bench' / 'intercomparison_dataset.py', out, '--src', SRC],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def expert_areas(site: str) -> list[float]:
    "The slump area each expert drew at `site`, m2."
    files = sorted(glob.glob(str(SRC / 'experts' / '*' / f'{site}_digitized.shp')))
    return [sum(shapely.from_wkb(g).area for g in pyogrio.raw.read(f)[2] if g is not None) for f in files]


def test_intercomparison_dataset_layout(ic):
    meta = pd.read_csv(ic / 'metadata.csv')
    splits = yaml.safe_load((ic / 'splits.yaml').read_text())
    # every split holds tiles, and regions (site quadrants) never cross splits
    regions = [r for s in ('train', 'val', 'test') for r in splits[s]]
    assert len(regions) == len(set(regions)) == 8 and all(splits[s] for s in ('train', 'val', 'test'))
    assert set(meta.RegionName) == set(regions)
    for t in meta.tile_id:
        with rasterio.open(ic / 'PLANET-RGB' / f'{t}.tif') as r, rasterio.open(ic / 'labels' / f'{t}.tif') as l:
            assert (r.count, r.dtypes[0], r.shape, r.res) == (3, 'uint16', (64, 64), (10.0, 10.0))
            assert l.transform == r.transform and set(np.unique(l.read(1))) <= {0, 1}
        with rasterio.open(ic / 'EXTRA' / f'{t}.tif') as e:
            assert e.count == 4 and e.shape == (64, 64)
    assert set(meta.TrainClass[meta.RegionName.isin(splits['test'])]) == {'Positive', 'Negative'}
    r = rts_seg('check-data', '--root', ic, cwd=ic)  # its batch picture goes to the working folder
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_intercomparison_labels_are_the_expert_majority(ic):
    "The majority of experts covers less than the largest single drawing and more than nothing, per site."
    for site in ('Peel', 'Bykovsky'):
        # the NW-corner chip of each quadrant starts at 0 or the half: whole quadrants tile the site
        (f,) = glob.glob(str(SRC / site / 'data' / 'S2_*.tif'))
        with rasterio.open(f) as s:
            h, w = s.shape
        lbl = np.zeros((h, w), np.uint8)
        for p in sorted((ic / 'labels').glob(f'{site}_*.tif')):
            y0, x0 = map(int, p.stem.split('_')[-2:])
            with rasterio.open(p) as l:
                a = l.read(1)
            lbl[y0 : y0 + 64, x0 : x0 + 64] = np.maximum(lbl[y0 : y0 + 64, x0 : x0 + 64], a)
        area, experts = (lbl == 1).sum() * 100.0, expert_areas(site)
        assert 0 < area < max(experts), (site, area, experts)


def test_real_protocol_small(ic, tmp_path):
    "The benchmark runs end to end: rts_seg's defaults and the plain loop, both evaluated on the test region."
    r = subprocess.run(
        [
            sys.executable,
            ROOT / 'bench' / 'real_protocol.py',
            ic,
            '--small',
            '--out',
            tmp_path,
            '--json',
            tmp_path / 'r.json',
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / 'r.json').read_text())
    assert set(res) == {'rts_seg', 'plain'}
    for k in res:
        ev = json.loads((tmp_path / ('rts_pred' if k == 'rts_seg' else 'plain_pred') / 'evaluation.json').read_text())
        assert res[k]['pixel_iou'] == ev['pixel_iou'] and ev['n_images'] == 9
        assert f'{k:8s} test pixel IoU {ev["pixel_iou"]:.4f}' in r.stdout
    m = json.loads((tmp_path / 'rts' / 'metrics.json').read_text())
    assert m['epochs_run'] == 3 and m['threshold'] < 1 and m['threshold_rule'], m
