"""Prediction on real PlanetScope chips (float32, 4 bands, -inf nodata); skipped where ../shared/data is absent."""

import numpy as np
import pytest
import rasterio

from conftest import CHIPS, rts_seg

pytestmark = pytest.mark.skipif(not CHIPS.is_dir(), reason=f'real chips not found at {CHIPS}')


def test_predict_real_chip_keeps_nodata(tiny, tmp_path):
    chip = CHIPS / '18191cf6-cdbc-5e6e-b28c-90222c259b3d.tif'  # has -inf nodata pixels
    r = rts_seg(
        'predict',
        '--model',
        tiny['run'] / 'best.pth',
        '--scene',
        chip,
        '--out',
        tmp_path,
        '--bands',
        1,
        2,
        3,
        '--tile-size',
        256,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with rasterio.open(chip) as s, rasterio.open(tmp_path / f'{chip.stem}_prob.tif') as p:
        img, prob = s.read([1, 2, 3]), p.read(1)
        assert (p.crs, p.transform) == (s.crs, s.transform)
    nodata = ~np.isfinite(img).all(0)
    assert nodata.any() and (prob[nodata] == -1).all()
    assert ((prob[~nodata] >= 0) & (prob[~nodata] <= 1)).all()


def test_band_count_mismatch_is_refused(tiny, tmp_path):
    chip = next(CHIPS.glob('*.tif'))
    r = rts_seg('predict', '--model', tiny['run'] / 'best.pth', '--scene', chip, '--out', tmp_path, '--bands', 1, 2)
    assert r.returncode == 2 and 'band' in r.stderr
