"""The data layer as a user drives it: stats, check-data and make-dataset through the CLI, on local folders,
on a real local GCS emulator (gs://), and on the real chips of ../shared/data (skipped where absent)."""

import json, os, shutil, socket, subprocess, sys, time

import numpy as np
import pytest
import rasterio
import shapely
import pyogrio
from rasterio.features import rasterize

from conftest import CHIPS, TINY, rts_seg

BUCKET = 'rts-test'


@pytest.fixture(scope='module')
def extra_ds(tmp_path_factory):
    "A small synthetic dataset with aux bands, made through the CLI."
    d = tmp_path_factory.mktemp('extra')
    r = rts_seg('synth', '--out', d / 'data', '--tiles', 18, '--size', 64, '--seed', 2, '--extra')
    assert r.returncode == 0, r.stderr
    cfg = TINY.format(out=d / 'run', root=d / 'data').replace(
        '  num_workers: 0\n', '  num_workers: 2\n  extra_channels: [ndvi, re]\n  positive_fraction: 0.5\n'
    )
    (d / 'cfg.yaml').write_text(cfg)
    return d


def test_stats_match_numpy(extra_ds, tmp_path):
    root = extra_ds / 'data'
    r = rts_seg('stats', '--root', root, '--clip', 2, 98, '--out', tmp_path / 's.json')
    assert r.returncode == 0, r.stderr
    st = json.loads((tmp_path / 's.json').read_text())
    assert {'dataset_version', 'computed_date', 'n_tiles_used', 'groups'} <= set(st) and st['clip_percentiles'] == [
        2,
        98,
    ]
    train = [l.split(',')[0] for l in (root / 'metadata.csv').read_text().splitlines()[1:] if ',banks_island,' in l]
    px = np.concatenate(
        [rasterio.open(root / 'PLANET-RGB' / f'{t}.tif').read().reshape(3, -1) for t in train], 1
    ).astype(float)
    lo, hi = np.percentile(px, 2, axis=1), np.percentile(px, 98, axis=1)
    g = st['groups']['rgb']
    assert st['n_tiles_used'] == len(train)
    assert np.abs(np.array(g['clip_low']) - lo).max() <= 1 and np.abs(np.array(g['clip_high']) - hi).max() <= 1
    c = np.clip(px, np.array(g['clip_low'])[:, None], np.array(g['clip_high'])[:, None])
    np.testing.assert_allclose(g['mean'], c.mean(1), rtol=1e-9)
    np.testing.assert_allclose(g['std'], c.std(1, ddof=1), rtol=1e-9)


def test_check_data_cli(extra_ds, tmp_path):
    r = rts_seg(
        'check-data',
        '--root',
        extra_ds / 'data',
        '--config',
        extra_ds / 'cfg.yaml',
        '--report',
        tmp_path / 'report.txt',
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / 'report.png').stat().st_size > 1000 and (tmp_path / 'report.txt').read_text() == ''
    bad = shutil.copytree(extra_ds / 'data', tmp_path / 'bad')
    (bad / 'labels' / 'yamal_00002.tif').write_bytes(b'II*\x00garbage')
    (bad / 'EXTRA' / 'yamal_00001.tif').unlink()
    r = rts_seg('check-data', '--root', bad, '--report', tmp_path / 'bad.txt')
    assert r.returncode == 1, r.stderr
    lines = (tmp_path / 'bad.txt').read_text().splitlines()
    assert any(l.startswith('yamal_00002: ') and 'labels/yamal_00002.tif' in l and 'cannot read' in l for l in lines), (
        lines
    )
    assert any(
        l.startswith('yamal_00001: ') and 'EXTRA/yamal_00001.tif' in l and 'does not exist' in l for l in lines
    ), lines


# --- a real local GCS emulator ---------------------------------------------------------------------


@pytest.fixture(scope='module')
def gcs(tmp_path_factory, extra_ds):
    "gcp-storage-emulator on 127.0.0.1 with `extra_ds` uploaded to gs://rts-test/ds; yields the environment to reach it."
    exe = shutil.which('gcp-storage-emulator')
    assert exe, 'gcp-storage-emulator is not installed: pip install -e ".[dev]"'
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp('gcs') / 'emulator.log', 'w')
    proc = subprocess.Popen(
        [exe, 'start', '--host', '127.0.0.1', '--port', str(port), '--in-memory', '-q', '--default-bucket', BUCKET],
        stdout=log,
        stderr=log,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        env = {
            **os.environ,
            'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{port}',
            'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
        }
        env.pop('MLFLOW_TRACKING_URI', None)
        up = f"import gcsfs; fs = gcsfs.GCSFileSystem(token='anon'); fs.put({str(extra_ds / 'data')!r}, '{BUCKET}/ds', recursive=True); print(len(fs.find('{BUCKET}/ds')))"
        r = subprocess.run([sys.executable, '-c', up], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and int(r.stdout.split()[-1]) > 50, r.stderr[-2000:]
        yield env
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_gcs_check_stats_train(gcs, extra_ds, tmp_path):
    root = f'gs://{BUCKET}/ds'
    r = rts_seg(
        'check-data', '--root', root, '--config', extra_ds / 'cfg.yaml', '--report', tmp_path / 'report.txt', env=gcs
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / 'report.png').is_file()
    r = rts_seg('stats', '--root', root, '--extra', 'ndvi', 're', '--out', tmp_path / 'gs.json', env=gcs)
    assert r.returncode == 0, r.stderr[-2000:]
    from rts_seg.data import compute_stats, split_tiles

    loc = compute_stats(extra_ds / 'data', split_tiles(extra_ds / 'data')['train'], extra_channels=['ndvi', 're'])
    gs_ = json.loads((tmp_path / 'gs.json').read_text())
    assert gs_['groups'] == loc['groups'] and gs_['dataset_version'] == loc['dataset_version']
    # data from gs://, and the MLflow run's artifacts to gs:// (a local tracking store, a gs:// artifact location)
    r = rts_seg(
        'train',
        '--config',
        extra_ds / 'cfg.yaml',
        f'data.root={root}',
        f'output_dir={tmp_path / "run"}',
        'train.epochs=1',
        f'mlflow.artifact_location=gs://{BUCKET}/mlflow',
        'train.tta_eval=none',
        cwd=tmp_path,
        env=gcs,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert m['n_train_tiles'] == 6
    ls = f"import gcsfs; print('\\n'.join(gcsfs.GCSFileSystem(token='anon').find('{BUCKET}/mlflow')))"
    r = subprocess.run([sys.executable, '-c', ls], env=gcs, capture_output=True, text=True, timeout=120)
    names = {p.rsplit('/', 1)[-1] for p in r.stdout.split()}
    assert {
        'best.pth',
        'config.yaml',
        'normalization_stats.json',
        'threshold_calibration.json',
        'pr_curves.png',
    } <= names, r.stdout + r.stderr[-2000:]
    assert m['mlflow_run_id'] in r.stdout


# --- make-dataset on the real chips -------------------------------------------------------------------


@pytest.mark.skipif(not CHIPS.is_dir(), reason=f'real chips not found at {CHIPS}')
def test_make_dataset_real_chips(tmp_path):
    out = tmp_path / 'chips_ds'
    r = rts_seg(
        'make-dataset',
        '--images',
        CHIPS,
        '--polygons',
        CHIPS / 'ground_truth_polygons.geojson',
        '--out',
        out,
        '--tile-size',
        256,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    print(r.stdout)
    _, _, wkb, _ = pyogrio.raw.read(CHIPS / 'ground_truth_polygons.geojson')
    polys = shapely.from_wkb(wkb)
    n, ignored = 0, 0
    for chip in sorted(CHIPS.glob('*.tif')):
        with rasterio.open(chip) as s:
            truth = rasterize(
                [p for p in polys if p.intersects(shapely.box(*s.bounds))] or [shapely.Point(0, 0)],
                s.shape,
                transform=s.transform,
            )
        with rasterio.open(out / 'labels' / f'{chip.stem}_000_000.tif') as l, rasterio.open(chip) as s:
            lbl = l.read(1)
            assert (l.crs, l.transform) == (s.crs, s.transform)
        keep = lbl != 255
        assert (lbl[keep] == truth[keep]).all(), chip.name  # labels = direct rasterisation wherever not ignored
        n += lbl.size
        ignored += (~keep).sum()
    assert ignored / n < 0.2
    (tmp_path / 'cfg.yaml').write_text(TINY.format(out=tmp_path / 'run', root=out))
    from rts_seg.checks import check_data

    assert check_data(out) == []  # the contract's checks (the DataLoader run is the training below)
    r = rts_seg(
        'train',
        '--config',
        tmp_path / 'cfg.yaml',
        'train.epochs=1',
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != 'MLFLOW_TRACKING_URI'},
    )
    assert r.returncode == 0, r.stderr[-3000:]


def test_gs_access_denied_is_one_clear_line(tmp_path):
    "A storage server that refuses the caller (HTTP 401, as GCS answers without credentials) gives one line naming the fix."
    import http.server, threading

    class Deny(http.server.BaseHTTPRequestHandler):
        def _deny(self):
            body = json.dumps(
                {'error': {'code': 401, 'message': 'Anonymous caller does not have storage.objects.get access'}}
            ).encode()
            self.send_response(401)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except BrokenPipeError:
                pass

        do_GET = do_POST = do_HEAD = do_PUT = _deny

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Deny)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = {**os.environ, 'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{srv.server_address[1]}'}
    try:
        for args in (
            ['check-data', '--root', 'gs://private/ds'],
            ['stats', '--root', 'gs://private/ds', '--out', tmp_path / 's.json'],
        ):
            r = rts_seg(*args, env=env)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
            assert (
                'access denied' in lines[0]
                and 'GOOGLE_APPLICATION_CREDENTIALS' in lines[0]
                and 'gs://private/ds' in lines[0]
            ), lines
    finally:
        srv.shutdown()
