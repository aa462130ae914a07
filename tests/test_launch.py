"""`rts-seg launch` against a real registry on 127.0.0.1 (Debian's docker-registry, images pushed by skopeo).

Google Cloud itself cannot be reached from CI: the job specs are checked against the fields the Vertex AI and
Cloud Batch REST references document (`rts_seg.launch.API`), and `gcloud` is a stand-in script on PATH that records
its arguments (and, for `builds submit`, pushes an image to the registry as Cloud Build would)."""

import json, os, shutil, subprocess, sys, textwrap
from pathlib import Path

import pytest

from conftest import ROOT, rts_seg
from rts_seg.image import image_tag
from rts_seg.launch import RETRY_EXIT_CODES, check_api

NEEDS = 'apt-get install docker-registry skopeo (.ci/run does)'


@pytest.fixture(scope='module')
def registry(tmp_path_factory):
    "A registry on a free loopback port, and a one-layer OCI image ready to push."
    for exe in ('docker-registry', 'skopeo'):
        assert shutil.which(exe), f'{exe} not found: {NEEDS}'
    d = tmp_path_factory.mktemp('registry')
    import socket, time

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    (d / 'config.yml').write_text(
        f'version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {d / "store"}}}}}\n'
        f'http: {{addr: 127.0.0.1:{port}}}\n'
    )
    proc = subprocess.Popen(
        [shutil.which('docker-registry'), 'serve', str(d / 'config.yml')],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(('127.0.0.1', port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    layout = _oci_image(d / 'oci')
    yield dict(host=f'127.0.0.1:{port}', layout=layout, dir=d)
    proc.terminate()
    proc.wait(10)


def _oci_image(d: Path) -> Path:
    import hashlib, io, tarfile

    (d / 'blobs' / 'sha256').mkdir(parents=True)

    def blob(b):
        h = hashlib.sha256(b).hexdigest()
        (d / 'blobs' / 'sha256' / h).write_bytes(b)
        return dict(digest=f'sha256:{h}', size=len(b))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as t:
        ti = tarfile.TarInfo('hello.txt')
        ti.size = 6
        t.addfile(ti, io.BytesIO(b'hello\n'))
    layer = blob(buf.getvalue())
    config = blob(
        json.dumps(
            dict(architecture='amd64', os='linux', rootfs=dict(type='layers', diff_ids=[layer['digest']]), config={})
        ).encode()
    )
    manifest = blob(
        json.dumps(
            dict(
                schemaVersion=2,
                mediaType='application/vnd.oci.image.manifest.v1+json',
                config=dict(mediaType='application/vnd.oci.image.config.v1+json', **config),
                layers=[dict(mediaType='application/vnd.oci.image.layer.v1.tar', **layer)],
            )
        ).encode()
    )
    (d / 'index.json').write_text(
        json.dumps(
            dict(schemaVersion=2, manifests=[dict(mediaType='application/vnd.oci.image.manifest.v1+json', **manifest)])
        )
    )
    (d / 'oci-layout').write_text('{"imageLayoutVersion": "1.0.0"}')
    return d


def push(layout, ref):
    subprocess.run(
        ['skopeo', 'copy', '--quiet', '--dest-tls-verify=false', f'oci:{layout}', f'docker://{ref}'], check=True
    )


def plan(stdout: str):
    "The printed plan: image line, build commands, job JSON, submit command."
    lines = stdout.strip().splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith('# job spec'))
    # what follows is the build's and gcloud's output
    j = next(k for k in range(i, len(lines)) if lines[k].startswith('gcloud '))
    return lines[0], lines[1:i], json.loads('\n'.join(lines[i + 1 : j])), lines[j]


def test_launch_train_builds_only_a_new_tag(registry, tmp_path):
    reg = f'{registry["host"]}/my-project/rts'
    hopper = f'{reg}/rts-seg-train:{image_tag(ROOT, "hopper")}-hopper'
    push(registry['layout'], hopper)  # as an earlier build would have
    args = [
        'launch',
        'train',
        '--root',
        ROOT,
        '--config',
        ROOT / 'configs' / 'baseline.yaml',
        '--registry',
        reg,
        '--region',
        'us-central1',
        '--output',
        'gs://my-bucket/runs/baseline',
        '--spot',
        '--dry-run',
        '--name',
        'rts-train-test',
        'data.root=gs://my-bucket/data',
        'train.epochs=3',
    ]
    r = rts_seg(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    head, build, job, submit = plan(r.stdout)
    assert head == f'# image {hopper}: in the registry, no build' and build == [] and 'builds submit' not in r.stdout
    assert check_api(job, 'CustomJob') == []
    pool = job['jobSpec']['workerPoolSpecs'][0]
    assert pool['machineSpec'] == dict(
        machineType='a3-highgpu-8g', acceleratorType='NVIDIA_H100_80GB', acceleratorCount=8
    )
    assert pool['replicaCount'] == 1 and pool['containerSpec']['imageUri'] == hopper
    assert pool['containerSpec']['args'] == [
        '--config',
        '/opt/rts_seg/configs/baseline.yaml',
        '--resume',
        'auto',
        'data.root=gs://my-bucket/data',
        'train.epochs=3',
        'output_dir=/gcs/my-bucket/runs/baseline',
    ]
    assert job['jobSpec']['baseOutputDirectory'] == dict(outputUriPrefix='gs://my-bucket/runs/baseline')
    assert job['jobSpec']['scheduling'] == dict(restartJobOnWorkerRestart=True, strategy='SPOT')
    assert submit.split() == [
        'gcloud',
        'ai',
        'custom-jobs',
        'create',
        '--region=us-central1',
        '--display-name=rts-train-test',
        f'--labels=app=rts-seg,image-tag={hopper.rsplit(":", 1)[1]}',
        '--config=launches/rts-train-test.json',
    ]
    assert not (tmp_path / 'launches').exists()  # a dry run writes nothing
    # another GPU generation: another tag, not in the registry, so Cloud Build is asked for it
    r = rts_seg(*args[:-2], '--machine', 'a2-highgpu-1g', 'data.root=gs://my-bucket/data', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    head, build, job, _ = plan(r.stdout)
    ampere = f'{reg}/rts-seg-train:{image_tag(ROOT, "ampere")}-ampere'
    assert head.startswith(f'# image {ampere}: not in the registry') and len(build) == 1
    assert (
        build[0].startswith('gcloud builds submit --config docker/cloudbuild.yaml')
        and f'_TAG={ampere.rsplit(":", 1)[1]}' in build[0]
    )
    assert job['jobSpec']['workerPoolSpecs'][0]['machineSpec']['acceleratorType'] == 'NVIDIA_TESLA_A100'
    # mistakes: one line each, before anything is built
    for extra, msg in (
        (['data.root=/data'], 'data.root=/data is a local folder the job cannot see'),
        (['data.root=gs://b/d', '--gpus', '4'], 'a3-highgpu-8g has 8 GPU(s), not --gpus 4'),
        (['data.root=gs://b/d', '--env', 'MLFLOW_TRACKING_TOKEN=abc'], 'secrets never go into a job spec'),
    ):
        r = rts_seg(*args[:-2], *extra, cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_launch_predict_submits_a_batch_job(registry, tmp_path):
    "A real launch (no --dry-run): gcloud is a stand-in that records its calls and, for `builds submit`, pushes the image."
    reg = f'{registry["host"]}/my-project/rts'
    log = tmp_path / 'gcloud.jsonl'
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'gcloud').write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, subprocess, sys
        a = sys.argv[1:]
        open({str(log)!r}, 'a').write(json.dumps(a) + '\\n')
        if a[:3] == ['batch', 'jobs', 'describe']: # the prediction job, finished
            print('SUCCEEDED')
        if a[:2] == ['builds', 'submit']: # Cloud Build pushes _IMAGE:_TAG
            s = dict(kv.split('=', 1) for kv in a[a.index('--substitutions') + 1].split(','))
            subprocess.run(['skopeo', 'copy', '--quiet', '--dest-tls-verify=false', 'oci:{registry['layout']}', f"docker://{{s['_IMAGE']}}:{{s['_TAG']}}"], check=True)
        """)
    )
    (tmp_path / 'bin' / 'gcloud').chmod(0o755)
    env = {**os.environ, 'PATH': f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}'}
    args = [
        'launch',
        'predict',
        '--root',
        ROOT,
        '--model',
        'gs://b/runs/baseline/best.pth',
        '--tile-list',
        'gs://b/tiles/arctic.csv',
        '--imagery',
        'gs://b/imagery',
        '--out',
        'gs://b/pred/arctic',
        '--registry',
        reg,
        '--region',
        'europe-west4',
        '--tasks',
        '64',
        '--parallelism',
        '16',
        '--name',
        'rts-predict-arctic',
        '--secret',
        'MLFLOW_TRACKING_TOKEN=projects/p/secrets/mlflow/versions/latest',
        'inference.tta=full',
    ]
    r = rts_seg(*args, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    ref = f'{reg}/rts-seg-infer:{image_tag(ROOT, "ampere")}-ampere'
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert [c[:2] for c in calls] == [
        ['builds', 'submit'],
        ['batch', 'jobs'],
    ]  # built (the tag was new), then submitted
    assert calls[1] == [
        'batch',
        'jobs',
        'submit',
        'rts-predict-arctic',
        '--location=europe-west4',
        '--config=launches/rts-predict-arctic.json',
    ]
    job = json.loads((tmp_path / 'launches' / 'rts-predict-arctic.json').read_text())
    assert plan(r.stdout)[2] == job and check_api(job, 'Job') == []
    g = job['taskGroups'][0]
    assert (g['taskCount'], g['parallelism'], g['taskCountPerNode']) == (64, 16, 1)
    c = g['taskSpec']['runnables'][0]['container']
    assert c['imageUri'] == ref
    assert c['commands'] == [
        '--model',
        'gs://b/runs/baseline/best.pth',
        '--tile-list',
        'gs://b/tiles/arctic.csv',
        '--imagery',
        'gs://b/imagery',
        '--out',
        'gs://b/pred/arctic',
        '--shard',
        'auto',
        '--resume',
        '--no-mosaic',  # the reduce is a job of its own
        'inference.tta=full',
    ]
    assert g['taskSpec']['maxRetryCount'] == 3 and g['taskSpec']['lifecyclePolicies'] == [
        dict(action='RETRY_TASK', actionCondition=dict(exitCodes=RETRY_EXIT_CODES))
    ]
    assert g['taskSpec']['environment'] == dict(
        secretVariables={'MLFLOW_TRACKING_TOKEN': 'projects/p/secrets/mlflow/versions/latest'}
    )
    inst = job['allocationPolicy']['instances'][0]
    assert inst == dict(
        installGpuDrivers=True,
        policy=dict(
            machineType='g2-standard-8', provisioningModel='SPOT', accelerators=[dict(type='nvidia-l4', count=1)]
        ),
    )
    assert job['allocationPolicy']['location'] == dict(allowedLocations=['regions/europe-west4'])
    # the reduce job, written beside it, printed to submit once the prediction has succeeded
    red = json.loads((tmp_path / 'launches' / 'rts-predict-arctic-mosaic.json').read_text())
    assert check_api(red, 'Job') == [] and red['taskGroups'][0]['taskCount'] == 16
    rc = red['taskGroups'][0]['taskSpec']['runnables'][0]['container']
    assert (rc['imageUri'], rc['entrypoint']) == (ref, 'rts-seg')
    assert rc['commands'] == [
        'mosaic',
        '--out',
        'gs://b/pred/arctic',
        '--tile-list',
        'gs://b/tiles/arctic.csv',
        '--task',
        'auto',
        'inference.tta=full',
    ]
    assert red['allocationPolicy']['instances'] == [
        dict(policy=dict(machineType='n2-highmem-8', provisioningModel='SPOT'))
    ]
    assert 'submit its reduce job: gcloud batch jobs submit rts-predict-arctic-mosaic' in r.stdout
    # the same launch again, waiting: the image is there now, so no build; the reduce job once the first succeeded
    log.unlink()
    r = rts_seg(*args, '--wait', cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert [c[:3] for c in calls] == [
        ['batch', 'jobs', 'submit'],
        ['batch', 'jobs', 'describe'],
        ['batch', 'jobs', 'submit'],
    ]
    assert calls[1][3:] == ['rts-predict-arctic', '--location=europe-west4', '--format=value(status.state)']
    assert calls[2][3:] == [
        'rts-predict-arctic-mosaic',
        '--location=europe-west4',
        '--config=launches/rts-predict-arctic-mosaic.json',
    ]
    assert 'in the registry, no build' in r.stdout
    # local paths are refused: the tasks could not read them
    r = rts_seg(
        *[a if a != 'gs://b/tiles/arctic.csv' else 'tiles.csv' for a in args], '--dry-run', cwd=tmp_path, env=env
    )
    assert r.returncode == 2 and '--tile-list tiles.csv: the tasks run on Google Cloud' in r.stderr


def test_dry_run_offline(tmp_path):
    "A registry that does not answer (a closed port): the dry run says the tag could not be checked, prints the plan with its build step, exit 0."
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    reg = f'127.0.0.1:{port}/my-project/rts'
    common = ['--root', ROOT, '--registry', reg, '--region', 'us-central1', '--dry-run']
    r = rts_seg(
        'launch',
        'predict',
        '--model',
        'gs://b/m.pth',
        '--tile-list',
        'gs://b/t.csv',
        '--out',
        'gs://b/o',
        '--name',
        'rts-predict-offline',
        *common,
        'inference.mosaics=vrt',
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    first, build, job, submit = plan(r.stdout)
    ref = f'{reg}/rts-seg-infer:{image_tag(ROOT, "ampere")}-ampere'
    assert first.startswith(f'# image {ref}: could not check the registry for this tag') and 'did not answer' in first
    assert (
        build and build[0].startswith('gcloud builds submit') and f'_TAG={image_tag(ROOT, "ampere")}-ampere' in build[0]
    )
    assert (
        check_api(job, 'Job') == [] and job['taskGroups'][0]['taskSpec']['runnables'][0]['container']['imageUri'] == ref
    )
    assert submit.startswith('gcloud batch jobs submit rts-predict-offline ')
    cmds = job['taskGroups'][0]['taskSpec']['runnables'][0]['container']['commands']
    assert '--imagery' not in cmds and cmds[:4] == [
        '--model',
        'gs://b/m.pth',
        '--tile-list',
        'gs://b/t.csv',
    ]  # a scene list
    assert 'gcloud batch jobs submit rts-predict-offline-mosaic' in r.stdout
    assert not (tmp_path / 'launches').exists()  # a dry run writes nothing
    r = rts_seg(
        'launch', 'mosaic', '--tile-list', 'gs://b/t.csv', '--out', 'gs://b/o', '--tasks', '4', *common, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    first, build, job, submit = plan(r.stdout)
    assert 'could not check the registry' in first and build and job['taskGroups'][0]['taskCount'] == 4
    assert submit.startswith('gcloud batch jobs submit rts-predict-') and '-mosaic ' in submit
    # a real launch offline still stops, naming the registry
    r = rts_seg('launch', 'mosaic', '--tile-list', 'gs://b/t.csv', '--out', 'gs://b/o', *common[:-1], cwd=tmp_path)
    assert r.returncode == 2 and 'did not answer' in r.stderr
