"""Public functions and methods of `rts_seg` with two or more parameters, one of which has no docment.

    python tools/docments_check.py [MODULE ...]     # default: every module; prints one line per function

A docment is the comment after a parameter (`tile_size:int=512, # pixels per side`), as nbdev shows it in the docs.
Public means: named in the module's `__all__` (for classes, their methods not starting with `_`, and `__init__`).
Exit status 1 when something is missing (tests/test_repo.py runs it)."""

import ast, sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / 'rts_seg'


def missing(module: str) -> list[str]:
    "One line per public function of `module` with an undocumented parameter."
    path = PKG / f'{module}.py'
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    names = next(
        (
            n.value
            for n in tree.body
            if isinstance(n, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in n.targets)
        ),
        None,
    )
    public = {e.value for e in names.elts} if isinstance(names, (ast.List, ast.Tuple)) else set()  # type: ignore[attr-defined]
    out = []

    def check(fn, owner=''):
        args = [a for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs if a.arg not in ('self', 'cls')]
        if len(args) < 2:
            return
        bare = [a.arg for a in args if '#' not in lines[a.lineno - 1][a.col_offset :]]
        if bare:
            out.append(
                f'{path.relative_to(PKG.parent)}:{fn.lineno}: {owner}{fn.name}: no docments for {", ".join(bare)}'
            )

    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for n in tree.body:
        if isinstance(n, funcs) and n.name in public:
            check(n)
        elif isinstance(n, ast.ClassDef) and n.name in public:
            for f in n.body:
                if isinstance(f, funcs) and (not f.name.startswith('_') or f.name == '__init__'):
                    check(f, n.name + '.')
    return out


if __name__ == '__main__':
    mods = sys.argv[1:] or [p.stem for p in sorted(PKG.glob('*.py')) if not p.stem.startswith('_')]
    found = [line for m in mods for line in missing(m)]
    print('\n'.join(found + [f'{len(found)} public function(s) with undocumented parameters']))
    sys.exit(1 if found else 0)
