"""The project's own files agree with each other: README, CI script, configs."""

import re, subprocess, sys

from rts_seg.config import load_config

from conftest import ROOT


def readme_commands():
    return re.findall(r'```sh\n(.*?)\n```', (ROOT / 'README.md').read_text(), re.S)


def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, ROOT / 'tools' / 'make_readme.py', '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_ci_runs_the_readme_test_command():
    install, test = readme_commands()[:2]
    assert 'pip install' in install and 'configs/quickstart.yaml' in install
    assert 'pytest' in test and 'nbdev-test' in test
    assert test in (ROOT / '.ci' / 'run').read_text()


def test_configs_load():
    q, b = load_config(ROOT / 'configs' / 'quickstart.yaml'), load_config(ROOT / 'configs' / 'baseline.yaml')
    assert q.model.encoder_weights is None and q.data.synth is not None
    assert (b.model.arch, b.model.encoder, b.data.batch_size, b.model.encoder_weights) == (
        'UnetPlusPlus',
        'efficientnet-b7',
        32,
        'imagenet',
    )


def test_public_parameters_have_docments():
    "Every public function or method with two or more parameters documents each one (nbdev's docments)."
    r = subprocess.run([sys.executable, ROOT / 'tools' / 'docments_check.py'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
