"""`rts-seg make-dataset --chips` on the real ARTS chips (R, G, B and the label in band 4, float32, -inf nodata);
skipped where ../shared/data is absent."""

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from rasterio.warp import transform as warp_transform

from conftest import CHIPS, rts_seg

pytestmark = pytest.mark.skipif(not CHIPS.is_dir(), reason=f'real chips not found at {CHIPS}')


def chips():
    return sorted(CHIPS.glob('*.tif'))


def test_make_dataset_from_real_chips_keeps_them_and_labels_their_slumps(tmp_path):
    r = rts_seg('make-dataset', '--chips', CHIPS, '--label-band', 4, '--out', tmp_path / 'ds')
    assert r.returncode == 0, r.stderr[-2000:]
    root = tmp_path / 'ds'
    meta = pd.read_csv(root / 'metadata.csv', keep_default_na=False).set_index('tile_id')
    assert sorted(meta.index) == [c.stem for c in chips()] and len(meta) == len(chips()) > 0
    assert f'wrote {len(meta)} tiles' in r.stdout
    assert 'float32' in r.stdout and '--to-uint8' in r.stdout  # kept as it is, and how to convert it said
    n_ignored = 0
    for c in chips():
        with (
            rasterio.open(c) as s,
            rasterio.open(root / 'PLANET-RGB' / c.name) as i,
            rasterio.open(root / 'labels' / c.name) as lab,
        ):
            # the chip's CRS, grid, type and nodata, and its R, G, B untouched
            assert (i.crs, i.transform, i.count, i.dtypes[0], i.nodata) == (s.crs, s.transform, 3, 'float32', s.nodata)
            assert (lab.crs, lab.transform, lab.dtypes[0]) == (s.crs, s.transform, 'uint8')
            rgb, y = s.read([1, 2, 3]), lab.read(1)
            np.testing.assert_array_equal(i.read(), rgb)
            band4 = s.read(4)
            b = s.bounds
        valid = np.isfinite(rgb).all(0)
        assert set(np.unique(y)) <= {0, 1, 255}
        np.testing.assert_array_equal(y == 1, (band4 == 1) & valid)
        np.testing.assert_array_equal(y == 255, ~valid)
        n_ignored += int((y == 255).sum())
        assert meta.TrainClass[c.stem] == ('Positive' if ((band4 == 1) & valid).any() else 'Negative')
        lon, lat = warp_transform(s.crs, 'EPSG:4326', [(b.left + b.right) / 2], [(b.bottom + b.top) / 2])
        assert abs(meta.centroid_lat[c.stem] - lat[0]) < 1e-5 and abs(meta.centroid_lon[c.stem] - lon[0]) < 1e-5
        assert 60 < meta.centroid_lat[c.stem] < 80  # Arctic slumps
    assert n_ignored > 0  # the chips with -inf nodata have it ignored
    assert set(meta.RegionName) == {CHIPS.name} and set(meta.UIDs) == {''}
    assert yaml.safe_load((root / 'splits.yaml').read_text()) == {'train': [CHIPS.name], 'val': [], 'test': []}


def test_make_dataset_from_real_chips_to_uint8_passes_check_data(tmp_path):
    # five regions, so that every split has some
    rows = [f'{c.stem},region_{i % 5}' for i, c in enumerate(chips())]
    (tmp_path / 'regions.csv').write_text('tile_id,RegionName\n' + '\n'.join(rows) + '\n')
    root = tmp_path / 'ds'
    r = rts_seg(
        'make-dataset', '--chips', CHIPS, '--label-band', 4, '--to-uint8', 0, 255, '--regions', tmp_path / 'regions.csv',
        '--out', root,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    c = next(c for c in chips() if not np.isfinite(rasterio.open(c).read(1)).all())  # a chip with nodata
    with rasterio.open(c) as s, rasterio.open(root / 'PLANET-RGB' / c.name) as i:
        assert (i.dtypes[0], i.nodata, i.crs) == ('uint8', 0, s.crs)
        rgb, out = s.read([1, 2, 3]), i.read()
    valid = np.isfinite(rgb).all(0)
    np.testing.assert_array_equal(out[:, valid], np.clip(rgb[:, valid].round(), 0, 255).astype(np.uint8))
    assert (out[:, ~valid] == 0).all()
    meta = pd.read_csv(root / 'metadata.csv', keep_default_na=False)
    assert meta.RegionName.nunique() == 5
    # the dataset meets the data contract: every check, and a batch through the real DataLoader
    r = rts_seg('check-data', '--root', root, '--batches', 1, '--report', tmp_path / 'report.txt')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert '0 problem(s)' in r.stdout


def test_make_dataset_chip_mistakes_are_one_line(tmp_path):
    r = rts_seg('make-dataset', '--chips', CHIPS, '--masks', tmp_path, '--out', tmp_path / 'ds')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'no GeoTIFF found in' in r.stderr
    r = rts_seg('make-dataset', '--chips', CHIPS, '--label-band', 4, '--mask-values', '0/255', '--out', tmp_path / 'ds')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'mask values 1 outside --mask-values 0/255' in r.stderr and not (tmp_path / 'ds').exists()
