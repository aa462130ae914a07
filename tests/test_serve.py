"""`rts-seg serve` for real: a server process on 127.0.0.1 with the tiny model, asked over HTTP, and its polygons
checked against what `rts-seg predict` writes for the same scene."""

import os, shutil, socket, subprocess, time

import httpx, numpy as np, pyogrio, pytest, shapely
from rasterio.transform import from_origin

from rts_seg.io import write_raster

from conftest import rts_seg

MAX_MB = 1  # the server's body limit: the demo scene (~0.2 MB) fits, a 1.5 MB body does not


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def served(tiny, tmp_path_factory):
    "The server on the tiny model, and (made while it starts) `rts-seg predict`'s outputs for the demo scene."
    d, model = tmp_path_factory.mktemp('serve'), tiny['run'] / 'best.pth'
    scene = tiny['data'] / 'scenes' / 'demo_scene.tif'
    port, exe = free_port(), shutil.which('rts-seg')
    assert exe, 'the rts-seg console script is not on PATH: install the package (pip install -e .)'
    log = open(d / 'server.log', 'w')  # the model as the serve image gives it: MODEL_PATH
    proc = subprocess.Popen(
        [exe, 'serve', '--host', '127.0.0.1', '--port', str(port), '--device', 'cpu', '--max-mb', str(MAX_MB)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, 'MODEL_PATH': str(model)},
    )
    try:
        ref = rts_seg(
            'predict', '--model', model, '--scene', scene, '--out', d / 'pred', '--tile-size', 64, '--device', 'cpu'
        )
        assert ref.returncode == 0, ref.stderr[-3000:]
        url, t0 = f'http://127.0.0.1:{port}', time.time()
        while True:
            assert proc.poll() is None, (d / 'server.log').read_text()[-3000:]
            try:
                if httpx.get(f'{url}/health', timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() - t0 < 120, (
                'the server did not answer /health within 120 s: ' + (d / 'server.log').read_text()[-3000:]
            )
            time.sleep(0.2)
        yield dict(url=url, dir=d, model=model, scene=scene, gpkg=d / 'pred' / 'demo_scene.gpkg', log=d / 'server.log')
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_health(served):
    h = httpx.get(f'{served["url"]}/health').json()
    assert h['status'] == 'ok' and h['device'] == 'cpu' and h['model'] == str(served['model'])
    assert h['channels'] == ['red', 'green', 'blue'] and h['tile_size'] == 64 and 0 < h['threshold'] < 1
    assert len(h['normalization_hash']) == 12 and h['rts_seg_version']


def test_predict_answers_the_polygons_rts_seg_predict_writes(served):
    r = httpx.post(
        f'{served["url"]}/predict',
        files={'file': ('demo_scene.tif', served['scene'].read_bytes(), 'image/tiff')},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert r.headers['content-type'] == 'application/geo+json'
    fc = r.json()
    meta, _, geoms, cols = pyogrio.raw.read(served['gpkg'])
    ref = dict(zip(meta['fields'], cols))
    assert (
        fc['type'] == 'FeatureCollection'
        and fc['crs']['properties']['name'] == 'urn:ogc:def:crs:EPSG::3413'
        and meta['crs'] == 'EPSG:3413'
    )
    feats = fc['features']
    assert len(feats) == len(geoms) == fc['rts_seg']['polygons']
    assert [f['properties']['rts_id'] for f in feats] == list(ref['rts_id'])
    np.testing.assert_allclose([f['properties']['area_m2'] for f in feats], ref['area_m2'])
    assert all(list(f['properties']) == list(meta['fields']) for f in feats)
    assert all(shapely.equals(shapely.geometry.shape(f['geometry']), g) for f, g in zip(feats, shapely.from_wkb(geoms)))


def test_bad_rasters_get_one_clear_4xx(served, tmp_path):
    write_raster(tmp_path / 's2.tif', np.ones((10, 64, 64), np.uint16), 'EPSG:3413', from_origin(0, 0, 3, 3))
    post = lambda name, data: httpx.post(f'{served["url"]}/predict', files={'file': (name, data)}, timeout=60)
    r = post('s2.tif', (tmp_path / 's2.tif').read_bytes())
    assert r.status_code == 422 and r.json() == {
        'detail': 's2.tif has 10 band(s); the model needs 3 (red, green, blue): '
        'choose them with the query parameter bands, e.g. ?bands=3,2,1'
    }, r.text
    r = post('corrupt.tif', served['scene'].read_bytes()[:5000])  # a GeoTIFF cut short
    assert (
        400 <= r.status_code < 500
        and list(r.json()) == ['detail']
        and r.json()['detail'].startswith('corrupt.tif is cut short or corrupt')
    ), r.text
    r = post('junk.tif', b'\x00garbage' * 1000)
    assert r.status_code == 400 and r.json()['detail'].startswith('junk.tif is not a readable GeoTIFF'), r.text
    r = post('big.tif', b'0' * int(1.5 * 2**20))
    assert r.status_code == 413 and 'limit of 1 MB' in r.json()['detail'], r.text
    assert httpx.get(f'{served["url"]}/health').status_code == 200  # and it goes on serving
