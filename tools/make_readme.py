"""Write README.md from nbs/index.ipynb (markdown as is, code cells as python blocks, hidden cells left out).

nbdev-readme needs quarto, which CI machines cannot install; this keeps README.md in sync without it.
Usage: python tools/make_readme.py [--check]   (--check: exit 1 if README.md is out of date)
"""

import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent


def render() -> str:
    nb = json.loads((root / 'nbs' / 'index.ipynb').read_text())
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip()
        if not src or src.startswith('#| hide'):
            continue
        parts.append(src if c['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    head = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->'
    return head + '\n\n' + '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
    txt, readme = render(), root / 'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text() == txt
        print(
            'README.md is in sync with nbs/index.ipynb'
            if ok
            else 'README.md is out of date: run python tools/make_readme.py'
        )
        sys.exit(0 if ok else 1)
    readme.write_text(txt)
    print(f'wrote {readme}')
