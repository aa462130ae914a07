"""Offline check of the docs site: every page built as nbdev builds it, opened in headless Chromium.

The docs site is rendered by quarto (`nbdev-docs`), which CI machines cannot install. This script builds
the same pages without it and looks at them as a reader would:

1. executes each notebook as `nbdev-test` does (same skip flags: `slow`, `cuda`, `eval: false`; the
   notebook's folder as working directory), with the `show_doc` cells nbdev adds for exported names;
2. runs nbdev's doc processors on the result (`nbdev.processors.FilterDefaults`, as `nbdev-proc-nbs`
   does before quarto): front matter, hidden and exported cells removed, directives stripped;
3. renders HTML with nbconvert, applying quarto's cell options (`echo`, `output`, `include`), markdown
   rendered as pandoc would (CommonMark and GFM tables, by markdown-it-py), with a sidebar built from
   `nbs/sidebar.yml`;
4. opens every page in headless Chromium, saves a screenshot, and reads back what the page shows.

It fails (exit 1) on: a cell that raises, an error or traceback in an output, directives or `show_doc`
calls left visible, a markdown table shown as text, a page that does not open with prose, an empty page, an image that does not load
(remote images, such as the Colab badge, cannot load offline and are only counted), a link to a page
that does not exist, and a notebook missing from the sidebar (or a sidebar entry without a notebook).

Usage: python tools/docs_check.py [--out _docs_check] [--only REGEX] [--workers 2] [--flags slow]
Writes OUT/site/*.html, OUT/screenshots/*.png and OUT/report.json.
"""

from __future__ import annotations
import argparse, html, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
CHROMIUM_FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--hide-scrollbars',
    '--window-size=1280,1700',
    '--virtual-time-budget=4000',
]
MIN_TEXT = 400  # characters of visible text below which a page counts as empty

# Runs in the page once it has loaded; Chromium's --dump-dom then gives us the report it writes.
PROBE = r"""<script>window.addEventListener('load', () => {
  const imgs = [...document.images], remote = i => /^https?:/.test(i.currentSrc || i.src);
  const r = {text: document.body.innerText.trim().length, h1: [...document.querySelectorAll('h1')].map(h => h.innerText.trim()),
             images: imgs.filter(i => !remote(i)).length, remote_images: imgs.filter(remote).length,
             broken: imgs.filter(i => !remote(i) && !(i.complete && i.naturalWidth > 0)).map(i => (i.getAttribute('src') || '').slice(0, 80)),
             tables: document.querySelectorAll('main table').length,
             raw_tables: [...document.querySelectorAll('main p')].filter(p => /\|\s*:?-{3,}:?\s*\|/.test(p.innerText)).map(p => p.innerText.slice(0, 80))};
  const pre = document.createElement('pre'); pre.id = 'docs-check'; pre.hidden = true; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});</script>"""

STYLE = """<style>
body.docs-check {display: flex; margin: 0;}
nav.docs-sidebar {flex: 0 0 220px; padding: 1.2em 1em; border-right: 1px solid #ddd; font: 14px/1.5 sans-serif; background: #f7f7f9;}
nav.docs-sidebar ul {list-style: none; padding-left: 0.8em; margin: 0.2em 0;} nav.docs-sidebar > ul {padding-left: 0;}
nav.docs-sidebar a {color: #2c6fbb; text-decoration: none;} nav.docs-sidebar a.here {font-weight: bold; color: #000;}
nav.docs-sidebar .section {font-weight: bold; margin-top: 0.6em; color: #555;}
main.docs-page {flex: 1; min-width: 0; padding: 0 2em; max-width: 1000px;}
main.docs-page p.description {font-size: 1.15em; color: #555;}
main.docs-page h1 {font-size: 2em; margin: 0.8em 0 0.3em;}
main.docs-page div.markdown, main.docs-page p.description {font: 15px/1.55 sans-serif; margin: 0.6em 0;}
main.docs-page div.markdown code {background: #f2f2f2; padding: 0 3px; border-radius: 3px; font-size: 90%;}
main.docs-page div.markdown pre {background: #f7f7f7; padding: 0.6em; overflow-x: auto;}
main.docs-page div.markdown pre code {background: none; padding: 0;}
main.docs-page div.markdown table {border-collapse: collapse; margin: 0.6em 0;}
main.docs-page div.markdown th, main.docs-page div.markdown td {border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top;}
</style>"""


class Problem(Exception):
    pass


def notebooks() -> list[Path]:
    "Notebooks nbdev builds pages from (folders starting with `_` or `.` are skipped, as nbdev does)."
    from nbdev.doclinks import nbglob

    return sorted(nbglob(NBS, func=Path))


def sidebar_entries() -> list:
    "The sidebar of `nbs/sidebar.yml`: notebook paths (relative to nbs/) and (section, [entries]) pairs."
    import yaml

    def walk(items):
        out = []
        for it in items:
            if isinstance(it, str):
                out.append(it)
            elif isinstance(it, dict) and 'section' in it:
                out.append((it['section'], walk(it.get('contents', []))))
            elif isinstance(it, dict) and 'href' in it:
                out.append(it['href'])
        return out

    return walk(yaml.safe_load((NBS / 'sidebar.yml').read_text())['website']['sidebar']['contents'])


def _flat(entries):
    return [e for x in entries for e in ([x] if isinstance(x, str) else _flat(x[1]))]


# ---- 1-2: execute and process one notebook (in a worker process) ----


def execute(fn: Path, force: str = ''):
    "The notebook with nbdev's show_doc cells added and every cell nbdev-test runs executed (and those flagged `force`), outputs kept."
    from fastcore.nbio import read_nb
    from fastcore.xtras import working_directory
    from execnb.shell import CaptureShell
    from nbdev.config import get_config
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    from nbdev.processors import add_show_docs, populate_language
    from nbdev.test import _skip_cell  # the predicate nbdev-test uses to leave cells out

    flags = get_config().tst_flags
    flags = [f for f in (flags.split() if isinstance(flags, str) else list(flags or [])) if f not in force.split()]
    nb = read_nb(fn)
    NBProcessor(nb=nb, procs=[FrontmatterProc, populate_language, add_show_docs], rm_directives=False).process()
    k = CaptureShell(fn)
    k.run_cell('from nbdev.showdoc import show_doc')
    os.environ['IN_TEST'] = '1'
    try:
        with working_directory(fn.parent):
            k.run_all(nb, exc_stop=True, preproc=_skip_cell(nb, flags))
    except Exception as e:
        tb = k.prettytb(fname=fn) if hasattr(k, 'prettytb') else ''
        raise Problem(f'a cell raised {type(e).__name__}: {str(e)[:300]}\n{tb[-2000:] if tb else ""}') from None
    finally:
        os.environ.pop('IN_TEST', None)
    # outputs as they read back from a saved notebook: text as one string, as nbdev's processors expect
    for c in nb.cells:
        for o in c.get('outputs', []):
            if isinstance(o.get('text'), list):
                o['text'] = ''.join(o['text'])
            for k, v in (o.get('data') or {}).items():
                if isinstance(v, list):
                    o['data'][k] = ''.join(v)
    return nb


def process(nb):
    "nbdev's doc processors, less the three already applied before execution and the one that executes."
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.processors import FilterDefaults, add_show_docs, exec_show_docs, populate_language

    class After(FilterDefaults):
        def base_procs(self):
            return [
                p
                for p in super().base_procs()
                if p not in (FrontmatterProc, populate_language, add_show_docs, exec_show_docs)
            ]

    After()(nb)
    return nb


_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')


def _text(o) -> str:
    t = o.get('text', '')
    return ''.join(t) if isinstance(t, list) else t


def markdown(src: str, inline: bool = False) -> str:
    "HTML of markdown as pandoc (quarto) reads it closely enough for a check: CommonMark with GFM tables and strikethrough."
    from markdown_it import MarkdownIt

    md = MarkdownIt('commonmark', {'html': True, 'highlight': _highlight}).enable(['table', 'strikethrough'])
    return md.renderInline(src) if inline else md.render(src)


def _highlight(code: str, lang: str, attrs) -> str:
    "Code blocks coloured by pygments, as quarto colours them ('' leaves a block plain)."
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        return highlight(code, get_lexer_by_name(lang), HtmlFormatter(cssclass='highlight'))
    except ClassNotFound:
        return ''


def for_nbconvert(nb) -> tuple[dict, list[str], dict[str, str]]:
    "A plain nbformat notebook (quarto's cell options as nbconvert tags), the problems seen on the way, and the HTML of its markdown by placeholder."
    import nbformat

    probs, cells, visible, blocks, fm = [], [], [], {}, getattr(nb, 'frontmatter_', {}) or {}

    def html_cell(
        h,
    ):  # a placeholder paragraph, replaced by `h` once nbconvert has rendered the page (its own markdown renderer misses GFM tables)
        key = f'DOCSCHECKBLOCK{len(blocks):04d}'
        blocks[key] = h
        return nbformat.v4.new_markdown_cell(key)

    title, desc = fm.get('title', ''), fm.get('description', '')
    if title:
        cells.append(
            html_cell(
                f'<h1>{html.escape(title)}</h1>'
                + (f'<p class="description">{markdown(desc, inline=True)}</p>' if desc else '')
            )
        )
    for c in nb.cells:
        if c.cell_type == 'raw' or not c.get('source', '').strip() and c.cell_type == 'markdown':
            continue
        if c.cell_type == 'markdown':
            if c.source.startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'):
                continue
            cells.append(html_cell(f'<div class="markdown">{markdown(c.source)}</div>'))
            visible.append(('markdown', c.source))
            continue
        opts, lines = {}, []
        for l in c.source.splitlines():
            m = _re_opt.match(l)
            if m:
                opts[m[1]] = m[2].strip('"\'').lower()
            else:
                lines.append(l)
        src = '\n'.join(lines).strip()
        if opts.get('include') == 'false':
            continue
        outs = [dict(o) for o in c.get('outputs', [])]
        for o in outs:
            if o.get('output_type') == 'error':
                probs.append(f'error output: {o.get("ename")}: {str(o.get("evalue"))[:200]}')
            if o.get('output_type') == 'stream' and 'Traceback (most recent call last)' in _text(o):
                probs.append(f'traceback in output: {_text(o)[-300:]}')
            data = o.get('data') or {}
            # as quarto shows it (show_doc's output, `output: asis`)
            if 'text/markdown' in data and 'text/html' not in data:
                o['data'] = {**data, 'text/html': markdown(data['text/markdown'])}
        tags = []
        if opts.get('echo') == 'false' or not src:
            tags.append('remove_input')
        elif re.search(r'^\s*show_doc\(', src, re.M):
            probs.append(f'show_doc call visible: {src[:80]}')
        if opts.get('output') == 'false':
            tags.append('remove_output')
        if '#|' in src:
            probs.append(f'directive left in visible code: {src[:80]}')
        cells.append(
            nbformat.v4.new_code_cell(src, outputs=[nbformat.from_dict(o) for o in outs], metadata={'tags': tags})
        )
        visible.append(('code' if 'remove_input' not in tags else 'output', src))
    if not opens_with_prose(visible):
        probs.append('does not open with prose (title, then a paragraph saying what it is for)')
    return nbformat.v4.new_notebook(cells=cells, metadata={'language_info': {'name': 'python'}}), probs, blocks


def opens_with_prose(cells: list[tuple[str, str]]) -> bool:
    "Whether the first (kind, source) cells after the title start with a markdown sentence (headings before it are fine)."
    for kind, src in cells:
        if kind != 'markdown':
            return False
        for l in src.splitlines():
            l = l.strip()
            if (
                len(l) >= 40
                and not l.startswith(('#', '|', '```', '<', '{', '-', '*', '>'))
                or l.startswith(('- ', '* '))
                and len(l) > 60
            ):
                return True
        if not all(l.strip().startswith('#') or not l.strip() for l in src.splitlines()):
            return False
    return False


def page_name(fn: Path, fm: dict) -> str:
    "The page's path in the site: the front matter's output-file (set from default_exp), else the notebook's path."
    rel = fn.relative_to(NBS)
    out = fm.get('output-file')
    return str(rel.parent / out) if out else str(rel.with_suffix('.html'))


def build(fn: Path, force: str = '') -> dict:
    "Execute, process and render one notebook; the page body, its title and the problems found."
    import nbconvert

    t0 = time.time()
    rel = str(fn.relative_to(NBS))
    try:
        nb = process(execute(fn, force))
        fm = getattr(nb, 'frontmatter_', {}) or {}
        doc, probs, blocks = for_nbconvert(nb)
        exp = nbconvert.HTMLExporter(
            template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True, anchor_link_text=''
        )
        exp.register_preprocessor(
            nbconvert.preprocessors.TagRemovePreprocessor(
                remove_cell_tags={'remove_cell'},
                remove_input_tags={'remove_input'},
                remove_all_outputs_tags={'remove_output'},
                enabled=True,
            ),
            enabled=True,
        )
        body, _ = exp.from_notebook_node(doc)
        body = re.sub(r'<p>(DOCSCHECKBLOCK\d{4})</p>', lambda m: blocks.pop(m[1]), body)
        if blocks:
            probs.append(f'{len(blocks)} markdown cell(s) lost on the way to HTML')
        return dict(
            notebook=rel,
            page=page_name(fn, fm),
            title=fm.get('title', fn.stem),
            html=body,
            problems=probs,
            seconds=round(time.time() - t0, 1),
        )
    except Problem as e:
        return dict(
            notebook=rel,
            page=str(Path(rel).with_suffix('.html')),
            title=fn.stem,
            html='',
            problems=[str(e)],
            seconds=round(time.time() - t0, 1),
        )
    except Exception as e:
        return dict(
            notebook=rel,
            page=str(Path(rel).with_suffix('.html')),
            title=fn.stem,
            html='',
            problems=[f'build failed: {type(e).__name__}: {e}'],
            seconds=round(time.time() - t0, 1),
        )


# ---- 3: the site ----


def sidebar_html(entries, pages: dict, here: str) -> str:
    "Nested list of links from the sidebar entries; `pages` maps notebook -> (page, title)."

    def rel(page):
        return os.path.relpath(page, os.path.dirname(here) or '.')

    def items(es):
        out = []
        for e in es:
            if isinstance(e, str):
                page, title = pages.get(e, (str(Path(e).with_suffix('.html')), Path(e).stem))
                out.append(
                    f'<li><a href="{html.escape(rel(page))}"{" class=here" if page == here else ""}>{html.escape(title)}</a></li>'
                )
            else:
                out.append(f'<li><div class="section">{html.escape(e[0])}</div><ul>{"".join(items(e[1]))}</ul></li>')
        return ''.join(out)

    return f'<nav class="docs-sidebar"><ul>{items(entries)}</ul></nav>'


def assemble(body: str, nav: str) -> str:
    "The nbconvert page with its remote scripts dropped (the check is offline), the sidebar and the probe added."
    from pygments.formatters import HtmlFormatter

    body = re.sub(r'<script[^>]+src="https?://[^"]*"[^>]*>\s*</script>', '', body)
    css = HtmlFormatter().get_style_defs('main.docs-page div.markdown .highlight')
    body = body.replace('</head>', STYLE + f'\n<style>{css}</style>\n</head>', 1)
    body = re.sub(r'<body([^>]*)class="([^"]*)"', r'<body\1class="\2 docs-check"', body, count=1)
    body = re.sub(r'(<body[^>]*>)', r'\1' + nav.replace('\\', r'\\') + '<main class="docs-page">', body, count=1)
    return body.replace('</body>', '</main>' + PROBE + '</body>', 1)


def local_links(body: str, page: str, known: set[str]) -> list[str]:
    "Relative links of a page's content to .html pages that the site does not have."
    bad = []
    for href in re.findall(r'href="([^"#?]+\.html)(?:#[^"]*)?"', body):
        if re.match(r'^[a-z]+:', href):
            continue
        if os.path.normpath(os.path.join(os.path.dirname(page), href)) not in known:
            bad.append(href)
    return sorted(set(bad))


def page_names(nbs: list[Path]) -> dict[str, tuple[str, str]]:
    "notebook -> (page, title) for every notebook, from its front matter (as nbdev reads it)."
    from fastcore.nbio import read_nb
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor

    res = {}
    for f in nbs:
        nb = read_nb(f)
        NBProcessor(nb=nb, procs=[FrontmatterProc], rm_directives=False).process()
        fm = getattr(nb, 'frontmatter_', {}) or {}
        res[str(f.relative_to(NBS))] = (page_name(f, fm), fm.get('title', f.stem))
    return res


# ---- 4: the browser ----


def chromium() -> str:
    exe = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if not exe:
        raise SystemExit('docs_check: Chromium not found; install it (Debian: apt-get install chromium)')
    return exe


def browse(exe: str, page: Path, shot: Path) -> dict:
    "Open `page`, save a screenshot to `shot`, and return what the probe saw."
    shot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='docs_check_chromium_') as ud:
        r = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f'--user-data-dir={ud}', f'--screenshot={shot}', '--dump-dom', page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    m = re.search(r'<pre id="docs-check" hidden="">(.*?)</pre>', r.stdout, re.S)
    if not m:
        return dict(error=f'no report from the page (chromium exit {r.returncode}): {r.stderr[-300:]}')
    return json.loads(html.unescape(m[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=str(ROOT / '_docs_check'), help='output folder (default _docs_check)')
    p.add_argument(
        '--only', default='', help='regex on notebook paths: build only these (the sidebar checks still cover all)'
    )
    p.add_argument('--workers', type=int, default=2, help='notebooks executed in parallel (default 2)')
    p.add_argument('--flags', default='', help='test flags to run anyway, as nbdev-test --flags (e.g. "slow")')
    a = p.parse_args(argv)
    t0 = time.time()
    os.chdir(ROOT)
    out = Path(a.out).resolve()
    site, shots = out / 'site', out / 'screenshots'
    shutil.rmtree(out, ignore_errors=True)
    site.mkdir(parents=True)
    shots.mkdir()
    exe = chromium()
    nbs = notebooks()
    entries = sidebar_entries()
    listed = _flat(entries)
    rels = [str(f.relative_to(NBS)) for f in nbs]
    problems = {
        'sidebar.yml': [f'{e} is in the sidebar but there is no such notebook' for e in listed if e not in rels]
        + [f'{r} is not in the sidebar' for r in rels if r not in listed]
    }
    pages = page_names(nbs)
    todo = [f for f in nbs if re.search(a.only, str(f.relative_to(NBS)))]
    from fastcore.parallel import parallel
    import docs_check  # by module name: running a notebook replaces a worker's __main__ (IPython's), so `__main__.build` would not unpickle

    print(f'docs_check: building {len(todo)} page(s) with {a.workers} worker(s)', flush=True)
    built = (
        list(parallel(docs_check.build, todo, force=a.flags, n_workers=a.workers, pause=0.01))
        if a.workers > 1
        else [build(f, a.flags) for f in todo]
    )
    for b in built:
        page = site / b['page']
        page.parent.mkdir(parents=True, exist_ok=True)
        txt = assemble(b['html'], sidebar_html(entries, pages, b['page'])) if b['html'] else ''
        page.write_text(txt or f'<html><body><h1>{html.escape(b["title"])}</h1><p>build failed</p></body></html>')
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(a.workers, 1)) as ex:  # one Chromium per page, a.workers at a time
        seens = list(
            ex.map(
                lambda b: browse(
                    exe, site / b['page'], shots / (b['page'].replace('/', '__').removesuffix('.html') + '.png')
                ),
                built,
            )
        )
    report = []
    for b, seen in zip(built, seens):
        probs = list(b['problems'])
        if b['html']:
            probs += [
                f'link to a missing page: {h}'
                for h in local_links(b['html'], b['page'], {p for p, _ in pages.values()})
            ]
        if 'error' in seen:
            probs.append(seen['error'])
        else:
            if seen['broken']:
                probs.append(f'images that do not load: {seen["broken"]}')
            if seen['raw_tables']:
                probs.append(f'markdown tables shown as text: {seen["raw_tables"]}')
            if seen['text'] < MIN_TEXT:
                probs.append(f'empty page: {seen["text"]} characters of text')
            if b['title'] not in seen['h1']:
                probs.append(f"title '{b['title']}' not shown as the page heading (h1: {seen['h1']})")
        report.append(
            dict(
                notebook=b['notebook'],
                page=b['page'],
                title=b['title'],
                seconds=b['seconds'],
                seen=seen,
                problems=probs,
            )
        )
        print(
            f'{"ok  " if not probs else "FAIL"} {b["notebook"]:34s} -> {b["page"]:34s} {b["seconds"]:5.1f} s  '
            f'{seen.get("images", "?")} image(s), {seen.get("tables", "?")} table(s), {seen.get("text", "?")} chars',
            flush=True,
        )
        for q in probs:
            print(f'     {q}', flush=True)
    for q in problems['sidebar.yml']:
        print(f'FAIL sidebar.yml: {q}')
    (out / 'report.json').write_text(
        json.dumps(dict(pages=report, sidebar=problems['sidebar.yml'], seconds=round(time.time() - t0, 1)), indent=2)
    )
    n_bad = sum(bool(r['problems']) for r in report) + bool(problems['sidebar.yml'])
    print(f'docs_check: {len(report)} page(s), {n_bad} with problems, {time.time() - t0:.0f} s; screenshots in {shots}')
    return 1 if n_bad else 0


if __name__ == '__main__':
    sys.exit(main())
