"""`rts-seg export` end to end: the exported file and its JSON sidecar give rts_seg's probabilities, with onnxruntime alone or through `rts-seg predict`."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import rasterio

from conftest import rts_seg

TOL = 1e-4  # largest accepted difference of probabilities


@pytest.fixture(scope='module')
def exported(tiny, tmp_path_factory):
    "The tiny run's best.pth exported to ONNX through the CLI, and one training tile to apply it to."
    d = tmp_path_factory.mktemp('export')
    r = rts_seg('export', '--model', tiny['run'] / 'best.pth', '--format', 'onnx', '--out', d / 'm.onnx')
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(d / 'm.onnx') in r.stdout
    tile = sorted((tiny['data'] / 'PLANET-RGB').glob('*.tif'))[0]
    return dict(dir=d, onnx=d / 'm.onnx', tile=tile, sidecar=json.loads((d / 'm.onnx.json').read_text()))


def predict_prob(model, tile, out):
    "rts_seg's probabilities for one 64 px tile: one window, no TTA, float32 on the CPU."
    r = rts_seg(
        'predict',
        '--model',
        model,
        '--scene',
        tile,
        '--out',
        out,
        '--tile-size',
        64,
        '--device',
        'cpu',
        'inference.precision=fp32',
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with rasterio.open(out / f'{tile.stem}_prob.tif') as p:
        return p.read(1)


def onnxruntime_alone(onnx_path, side: dict, root, tile_id: str) -> np.ndarray:
    "What a user without rts_seg does: channels from the sources and bands the sidecar names, its normalisation, sigmoid(logit / T)."
    i, o = side['export']['input'], side['export']['output']
    raw = []
    for c in side['channels']:
        with rasterio.open(root / c['source'] / f'{tile_id}.tif') as src:
            raw.append(src.read(c['band']).astype('float32'))
    col = lambda k: np.array(i[k], 'float32')[:, None, None]
    x = (np.clip(np.stack(raw), col('clip_low'), col('clip_high')) - col('mean')) / col('std')
    sess = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    logit = sess.run([o['name']], {i['name']: x[None].astype('float32')})[0][0, 0]
    return 1 / (1 + np.exp(-logit.astype('float64') / o['temperature']))


def test_export_writes_the_model_and_its_sidecar(exported, tiny):
    from rts_seg.bundle import Bundle

    side, b = exported['sidecar'], Bundle.load(tiny['run'] / 'best.pth')
    assert {k: side[k] for k in b.meta()} == b.meta()  # the bundle's fields, as they are in best.pth
    ex = side['export']
    assert (ex['format'], ex['file'], ex['source'], ex['opset']) == ('onnx', 'm.onnx', 'best.pth', 18)
    assert ex['input']['channels'] == ['red', 'green', 'blue'] and ex['output']['temperature'] == b.temperature
    assert ex['check']['max_abs_logit_diff'] < 1e-4
    inp = ort.InferenceSession(str(exported['onnx']), providers=['CPUExecutionProvider']).get_inputs()[0]
    assert inp.shape == ['batch', 3, 'height', 'width']  # any batch and window size


def test_onnxruntime_alone_gives_rts_seg_probabilities(exported, tiny, tmp_path):
    tile = exported['tile']
    ours = predict_prob(tiny['run'] / 'best.pth', tile, tmp_path)
    assert (ours >= 0).all()  # every pixel of a synthetic tile is valid
    theirs = onnxruntime_alone(exported['onnx'], exported['sidecar'], tiny['data'], tile.stem)
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() < TOL


def test_predict_runs_the_exported_files(exported, tiny, tmp_path):
    "Needs `Predictor.from_checkpoint` to load models with `rts_seg.export.load_model`."
    tile = exported['tile']
    ours = predict_prob(tiny['run'] / 'best.pth', tile, tmp_path / 'pth')
    assert np.abs(predict_prob(exported['onnx'], tile, tmp_path / 'onnx') - ours).max() < TOL
    r = rts_seg('export', '--model', tiny['run'] / 'best.pth', '--format', 'torchscript', '--out', tmp_path / 'm.pt')
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / 'm.pt.json').read_text())['export']['format'] == 'torchscript'
    assert np.abs(predict_prob(tmp_path / 'm.pt', tile, tmp_path / 'pt') - ours).max() < TOL


def test_bad_format_is_one_line(tiny, tmp_path):
    r = rts_seg('export', '--model', tiny['run'] / 'best.pth', '--format', 'tflite', '--out', tmp_path / 'm.tflite')
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "'tflite'" in lines[0] and 'onnx, torchscript' in lines[0] and 'Traceback' not in r.stderr
    ), r.stderr
    assert not list(tmp_path.iterdir())  # nothing written
