"""The docs: what a reader of the site sees, the tutorials' Colab set-up, the sidebar and the GitHub workflows."""

import json, os, re, shutil, subprocess, sys

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / 'tools'))
import docs_check  # noqa: E402

NBS = ROOT / 'nbs'
TUTORIALS = sorted((NBS / 'tutorials').glob('*.ipynb'))
COLAB = 'https://colab.research.google.com/github/rts-seg/rts_seg/blob/main/nbs/'


def cells(path):
    return [(c['cell_type'], ''.join(c['source'])) for c in json.loads(path.read_text())['cells']]


def test_sidebar_lists_every_notebook_once():
    listed = docs_check._flat(docs_check.sidebar_entries())
    rels = [str(f.relative_to(NBS)) for f in docs_check.notebooks()]
    assert sorted(listed) == sorted(rels) and len(set(listed)) == len(listed)


@pytest.mark.parametrize('nb', TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_opens_in_colab(nb):
    "A tutorial exports nothing, has an Open-in-Colab badge for its own path, and installs the package first, in Colab only."
    cs = cells(nb)
    assert not any(re.search(r'^#\|\s*default_exp', s, re.M) for t, s in cs if t == 'code'), 'tutorials export nothing'
    assert cs[0][0] == 'markdown' and cs[0][1].startswith('# ')
    assert f'({COLAB}{nb.relative_to(NBS)})' in cs[1][1] and 'colab-badge.svg' in cs[1][1]
    code = [s for t, s in cs if t == 'code']
    assert "'google.colab' in sys.modules" in code[0] and 'pip' in code[0]
    # the install comes before any import of the package
    assert not re.search(r'^\s*(import|from) rts_seg', code[0], re.M)


def test_workflows():
    "GitHub Actions: tests run .ci/run; the site is rendered by nbdev-docs from executed notebooks and published."
    test = yaml.safe_load((ROOT / '.github' / 'workflows' / 'test.yaml').read_text())
    deploy = yaml.safe_load((ROOT / '.github' / 'workflows' / 'deploy.yaml').read_text())
    runs = lambda wf: [s.get('run', '') for j in wf['jobs'].values() for s in j['steps']]
    uses = lambda wf: [s.get('uses', '') for j in wf['jobs'].values() for s in j['steps']]
    assert any('.ci/run' in r for r in runs(test))
    assert any('nbdev-test' in r and '--save' in r for r in runs(deploy)) and any(
        r.strip() == 'nbdev-docs' for r in runs(deploy)
    )
    assert any(u.startswith('quarto-dev/quarto-actions/setup') for u in uses(deploy))
    assert any('gh-pages' in u for u in uses(deploy))
    assert (ROOT / 'nbs' / '_quarto.yml').is_file() and 'sidebar.yml' in (ROOT / 'nbs' / '_quarto.yml').read_text()


def _browser():
    return shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')


def test_docs_pages_render():
    "Every page built as nbdev builds it, opened in headless Chromium: no errors, no broken images, no empty page."
    if not _browser():
        if os.environ.get('CI'):
            pytest.fail('Chromium is missing: .ci/run installs it (apt-get install chromium)')
        pytest.skip('no Chromium here (apt-get install chromium)')
    out = ROOT / '_docs_check'
    r = subprocess.run(
        [sys.executable, ROOT / 'tools' / 'docs_check.py', '--out', out], capture_output=True, text=True, timeout=1200
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    report = json.loads((out / 'report.json').read_text())
    pages = {p['notebook']: p for p in report['pages']}
    assert set(pages) == {str(f.relative_to(NBS)) for f in docs_check.notebooks()}
    for p in pages.values():
        shot = out / 'screenshots' / (p['page'].replace('/', '__').removesuffix('.html') + '.png')
        # a rendered page, not a blank one
        assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 20_000, shot
    # where output is visual, the page shows it
    for nb in [
        'tutorials/quickstart.ipynb',
        'tutorials/predict_scene.ipynb',
        'tutorials/train_colab.ipynb',
        '03_synthetic.ipynb',
        '04_augment.ipynb',
        '05a_checks.ipynb',
        '05c_make_dataset.ipynb',
        '07_losses.ipynb',
        '11a_vectorize.ipynb',
        '11b_evaluate.ipynb',
    ]:
        assert pages[nb]['seen']['images'] >= 1, nb
    # batch, curves, PR curves, predictions, scene, scored map
    assert pages['tutorials/quickstart.ipynb']['seen']['images'] >= 6


def test_checks_catch_what_they_claim(tmp_path):
    "The docs check's own checks fail where they should: error outputs, leaked directives, no opening prose, broken images, empty pages."
    from fastcore.basics import AttrDict
    from fastcore.nbio import dict2nb

    nb = dict2nb(
        {
            'cells': [
                {'cell_type': 'markdown', 'source': '## Usage', 'metadata': {}},
                {
                    'cell_type': 'code',
                    'source': '#| echo: false\nprint(1)',
                    'metadata': {},
                    'outputs': [],
                    'execution_count': None,
                },
                {
                    'cell_type': 'code',
                    'source': 'x = 1 #| not a directive line\n#|  eval: false',
                    'metadata': {},
                    'outputs': [],
                    'execution_count': None,
                },
                {
                    'cell_type': 'code',
                    'source': '1/0',
                    'metadata': {},
                    'execution_count': None,
                    'outputs': [
                        {
                            'output_type': 'error',
                            'ename': 'ZeroDivisionError',
                            'evalue': 'division by zero',
                            'traceback': [],
                        }
                    ],
                },
            ],
            'metadata': {},
            'nbformat': 4,
            'nbformat_minor': 5,
        }
    )
    nb.frontmatter_ = AttrDict(title='T', description='d')
    doc, probs, blocks = docs_check.for_nbconvert(nb)
    assert any('ZeroDivisionError' in p for p in probs) and any('directive left' in p for p in probs)
    # cells: title, heading, the echo: false one
    assert doc.cells[2].metadata['tags'] == ['remove_input'] and '#|' not in doc.cells[2].source
    # a heading, then code: no sentence saying what the page is for
    assert any('does not open with prose' in p for p in probs)
    assert docs_check.opens_with_prose(
        [('markdown', '## Usage'), ('markdown', 'This module turns masks into polygons that scientists can count.')]
    )
    # GFM tables, as pandoc reads them
    assert '<table>' in docs_check.markdown('| a | b |\n|---|---|\n| `x \\| y` | 2 |')
    exe = _browser()
    if not exe:
        pytest.skip('no Chromium here (apt-get install chromium)')
    page = tmp_path / 'p.html'
    page.write_text(
        f'<html><body><main><h1>T</h1><img src="missing.png"><img src="https://example.org/badge.svg"><p>| a | b |\n|---|---|</p></main>{docs_check.PROBE}</body></html>'
    )
    seen = docs_check.browse(exe, page, tmp_path / 'p.png')
    assert (
        seen['broken'] == ['missing.png']
        and seen['remote_images'] == 1
        and seen['text'] < docs_check.MIN_TEXT
        and seen['h1'] == ['T']
    )
    assert len(seen['raw_tables']) == 1
    assert (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'
