"""Open every page of the built book in headless Chromium and check what a reader would see.

Usage (from the repository root, after the book is built)::

    python scripts/browser_check.py                       # checks _build/html
    python scripts/browser_check.py /tmp/out/_build/html --jobs 2

Two kinds of check, each reported as one line per problem; the exit status is 1 if any:

Static, on the HTML files as built:
  * an ``<img>`` (or a local script, style or frame) whose file is missing;
  * a link (``<a href>``) to an internal page that does not exist, or to an anchor missing there;
  * a script, style, image or frame loaded from outside the site (``http:``, ``https:``, ``//``);
  * an executed notebook page that offers no ``.ipynb`` download.

In the browser, on the DOM after every script ran (``--dump-dom`` after a virtual-time budget),
with DNS switched off so that the page sees what an offline reader sees:
  * raw TeX left in the text (``$$``, ``\\(``, ``\\[``, ``\\begin{``, ``\\frac`` ...) outside
    ``mjx-container``, ``code`` and ``pre``: MathJax did not typeset it;
  * a MathJax error box (``mjx-merror``: a TeX command MathJax does not know);
  * a widget area left empty: a ``widget-view+json`` placeholder with no rendered widget next to
    it, or an "Error displaying widget" message;
  * a script or style inserted at run time from outside the site;
  * an image the browser could not decode, a code block wider than its column at 1280 px
    (horizontal scrolling), and uncaught JavaScript errors.

The last group is measured by a small probe script that is added to a private copy of each page
(the build folder is not modified). Screenshots of the landing page and of one chapter (the one
with the most figures, widgets and math) are written to ``<build>/screenshots/`` (``_build/
screenshots`` for ``_build/html``).

Chromium: ``--chromium PATH``, else ``$CHROMIUM``, else the first of ``chromium``,
``chromium-browser``, ``google-chrome`` on the ``PATH`` (Debian: ``apt-get install -y chromium``;
GitHub's Ubuntu runners have Google Chrome).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_tools import remote_assets  # noqa: E402  (the one definition of "remote")

REPO_ROOT = Path(__file__).resolve().parent.parent

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
    # Offline: no host name resolves, so anything fetched from outside the site fails as it would
    # for a reader without network (and the page shows what such a reader sees).
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)
WINDOW = (1280, 900)
#: Folders of the build that hold assets, not pages.
ASSET_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "screenshots"}

VOID_TAGS = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "param",
    "source",
    "track",
    "wbr",
}
#: Text inside these elements is not prose: TeX there is intended (or not shown).
NO_TEX_TAGS = {
    "head",
    "script",
    "style",
    "noscript",
    "template",
    "code",
    "pre",
    "kbd",
    "samp",
    "textarea",
    "mjx-container",
    "svg",
    "math",
}
# Not "tex2jax_ignore"/"mathjax_ignore": MyST puts them on every section (MathJax then typesets
# only Sphinx's math nodes), so TeX outside a math node is exactly what a reader sees raw.
NO_TEX_CLASSES = {"highlight", "widget-subarea"}
#: Math delimiters, or a backslash command (``\\frac``, ``\\alpha``): TeX, not prose.
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\[A-Za-z]{2,}")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PROBE_ID = "browser-check-probe"

PROBE_JS = """
<script>
(function () {
  document.querySelectorAll('img[loading="lazy"]').forEach(function (img) {
    img.loading = 'eager';
  });
  function longestLine(text) {
    return text.split('\\n').reduce(function (a, b) { return b.length > a.length ? b : a; }, '');
  }
  function report() {
    var out = {overflow: [], brokenImages: [], showcaseY: null};
    document.querySelectorAll('pre').forEach(function (pre) {
      if (pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 2) {
        var kind = pre.closest('.cell_input') ? 'code cell' :
          (pre.closest('.cell_output') ? 'cell output' : 'code block');
        out.overflow.push({kind: kind, width: pre.scrollWidth, visible: pre.clientWidth,
                           line: longestLine(pre.textContent).slice(0, 90)});
      }
    });
    document.querySelectorAll('img').forEach(function (img) {
      if (!img.complete || img.naturalWidth === 0) { out.brokenImages.push(img.src); }
    });
    // Where the page shows its first widget (else its first figure): the screenshot's target.
    var target = document.querySelector('.widget-subarea') ||
      document.querySelector('.cell_output img') || document.querySelector('figure img');
    if (target) { out.showcaseY = target.getBoundingClientRect().top + window.scrollY; }
    var el = document.createElement('script');
    el.type = 'application/json';
    el.id = '%(probe_id)s';
    el.textContent = JSON.stringify(out);
    document.body.appendChild(el);
  }
  function whenTypeset() {
    var mj = window.MathJax;
    var ready = (mj && mj.startup && mj.startup.promise) ? mj.startup.promise : Promise.resolve();
    ready.then(function () { setTimeout(report, 1500); },
               function () { setTimeout(report, 1500); });
  }
  window.addEventListener('load', function () { setTimeout(whenTypeset, 500); });
})();
</script>
"""


# --------------------------------------------------------------------------------------------
# A small DOM built from HTML text (Chromium's --dump-dom serialisation or Sphinx's output)
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    """An element: tag, attributes, children (elements and text) and parent."""

    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def elements(self) -> Iterator[Node]:
        """This element and every element below it, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.elements()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: (v or "") for k, v in attrs}, parent=self.stack[-1])
        self.stack[-1].children.append(node)
        if tag not in VOID_TAGS:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(
            Node(tag, {k: (v or "") for k, v in attrs}, parent=self.stack[-1])
        )

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_html(html: str) -> Node:
    """Parse HTML into a :class:`Node` tree (tolerant: unmatched end tags are ignored)."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# --------------------------------------------------------------------------------------------
# Checks on the rendered DOM
# --------------------------------------------------------------------------------------------


def _prose_text(node: Node) -> Iterator[str]:
    """Text of ``node`` that a reader sees as prose (not code, not typeset math, not scripts)."""
    if node.tag in NO_TEX_TAGS or node.classes & NO_TEX_CLASSES:
        return
    for child in node.children:
        if isinstance(child, str):
            yield child
        else:
            yield from _prose_text(child)


def raw_tex(root: Node) -> list[str]:
    """Snippets of prose that still contain TeX markup (MathJax did not typeset them)."""
    found = []
    for text in _prose_text(root):
        match = RAW_TEX.search(text)
        if match:
            start = max(0, match.start() - 30)
            found.append(" ".join(text[start : match.end() + 30].split()))
    return found


def mathjax_errors(root: Node) -> list[str]:
    """Text of MathJax error boxes (``mjx-merror``), e.g. an unknown TeX command."""
    return [
        node.attrs.get("data-mjx-error") or node.text()[:80]
        for node in root.elements()
        if node.tag == "mjx-merror"
    ]


def _previous_element(node: Node) -> Node | None:
    assert node.parent is not None
    siblings = [c for c in node.parent.children if isinstance(c, Node)]
    index = next(i for i, c in enumerate(siblings) if c is node)
    return siblings[index - 1] if index > 0 else None


def empty_widgets(root: Node) -> list[str]:
    """Widget placeholders the widget manager did not render, and widget error messages.

    The ipywidgets HTML manager inserts a ``div.widget-subarea`` holding the drawn widget just
    before each ``<script type="application/vnd.jupyter.widget-view+json">``.
    """
    problems = []
    for node in root.elements():
        if node.tag == "script" and node.attrs.get("type") == WIDGET_VIEW:
            model = re.search(r'"model_id"\s*:\s*"([^"]+)"', node.text())
            name = model.group(1)[:8] if model else "?"
            previous = _previous_element(node)
            drawn = (
                previous is not None
                and "widget-subarea" in previous.classes
                and any(isinstance(c, Node) for c in previous.children)
            )
            if not drawn:
                problems.append(f"widget {name} is not drawn")
    for node in root.elements():
        for child in node.children:
            if isinstance(child, str) and "Error displaying widget" in child:
                problems.append(f"widget error: {' '.join(child.split())[:80]}")
    return problems


def probe_report(root: Node) -> dict | None:
    """What the probe script measured in the page (``None`` if it never reported)."""
    for node in root.elements():
        if node.tag == "script" and node.attrs.get("id") == PROBE_ID:
            return json.loads(node.text())
    return None


def dom_problems(dom: str) -> list[str]:
    """Everything wrong with a rendered page (the DOM after scripts ran), one line per problem."""
    root = parse_html(dom)
    problems = [f"raw TeX (not typeset): ...{s}..." for s in raw_tex(root)]
    problems += [f"MathJax error: {e}" for e in mathjax_errors(root)]
    problems += empty_widgets(root)
    problems += [f"<{tag}> loads remote {url} at run time" for tag, url in remote_assets(dom)]
    probe = probe_report(root)
    if probe is not None:
        for item in probe["overflow"]:
            problems.append(
                f"{item['kind']} scrolls horizontally at {WINDOW[0]} px "
                f"({item['width']} px in {item['visible']} px): {item['line']!r}"
            )
        for src in probe["brokenImages"]:
            # A missing local file is already reported by the static check.
            local = urlsplit(src).scheme == "file"
            if not local or Path(unquote(urlsplit(src).path)).exists():
                problems.append(f"image not displayed: {src}")
    return problems


# --------------------------------------------------------------------------------------------
# Static checks on the built files
# --------------------------------------------------------------------------------------------


class _RefCollector(HTMLParser):
    """Every local reference of a page (``src``/``href``) and every anchor it defines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: (v or "") for k, v in attrs}
        for key in ("id", "name") if tag == "a" else ("id",):
            if attr.get(key):
                self.ids.add(attr[key])
        if tag in ("img", "script", "iframe", "source", "audio", "video") and attr.get("src"):
            self.refs.append((tag, attr["src"]))
        elif tag in ("a", "link", "area") and attr.get("href"):
            self.refs.append((tag, attr["href"]))

    handle_startendtag = handle_starttag


def _is_local(url: str) -> bool:
    scheme = urlsplit(url.strip()).scheme.lower()
    return scheme in ("", "file") and not url.strip().startswith("//")


def _target_file(page: Path, url: str) -> Path:
    path = unquote(urlsplit(url).path)
    target = page if path == "" else (page.parent / path)
    if path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target


def static_problems(build_dir: Path, pages: Iterable[Path]) -> dict[Path, list[str]]:
    """Missing local files, links to missing pages or anchors, and remote assets, per page."""
    anchors: dict[Path, set[str]] = {}

    def anchors_of(path: Path) -> set[str]:
        key = path.resolve()
        if key not in anchors:
            collector = _RefCollector()
            collector.feed(path.read_text(encoding="utf-8", errors="replace"))
            anchors[key] = collector.ids
        return anchors[key]

    problems: dict[Path, list[str]] = {}
    for page in pages:
        html = page.read_text(encoding="utf-8", errors="replace")
        collector = _RefCollector()
        collector.feed(html)
        anchors[page.resolve()] = collector.ids
        found = [f"<{tag}> loads remote {url}" for tag, url in remote_assets(html)]
        is_notebook = 'class="cell docutils container' in html
        if is_notebook and not any(
            tag == "a" and urlsplit(url).path.endswith(".ipynb") for tag, url in collector.refs
        ):
            found.append("notebook page without a .ipynb download link")
        for tag, url in collector.refs:
            if not _is_local(url) or url.strip().lower().startswith(("data:", "javascript:")):
                continue
            target = _target_file(page, url)
            fragment = unquote(urlsplit(url).fragment)
            if not target.exists():
                what = "image" if tag == "img" else ("link" if tag == "a" else f"<{tag}>")
                found.append(f"broken {what}: {url} (no file {_rel(target, build_dir)})")
            elif tag == "a" and fragment and target.suffix == ".html":
                if fragment not in anchors_of(target):
                    found.append(f"broken link: {url} (no anchor #{fragment})")
        if found:
            problems[page] = found
    return problems


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Running Chromium
# --------------------------------------------------------------------------------------------


def find_pages(build_dir: Path) -> list[Path]:
    """The HTML pages of a built site (asset folders excluded), sorted."""
    return sorted(
        p
        for p in build_dir.rglob("*.html")
        if not ASSET_DIRS.intersection(p.relative_to(build_dir).parts[:-1])
    )


def find_chromium(explicit: str | None) -> str:
    """The Chromium executable to use; exits with a clear message when there is none."""
    candidates = (
        explicit,
        os.environ.get("CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    )
    for candidate in candidates:
        if candidate and shutil.which(candidate):
            return str(shutil.which(candidate))
    sys.exit(
        "browser check: no Chromium found. Install it (Debian/Ubuntu: "
        "`apt-get update && apt-get install -y chromium`) or pass --chromium PATH."
    )


def mirror_site(build_dir: Path, pages: list[Path], dest: Path) -> None:
    """A copy of the site under ``dest`` whose pages carry the probe script.

    Asset files are symbolic links to the build; only the HTML pages are written.
    """
    page_set = {p.resolve() for p in pages}
    probe = PROBE_JS % {"probe_id": PROBE_ID}
    for src in build_dir.rglob("*"):
        rel = src.relative_to(build_dir)
        out = dest / rel
        if src.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif src.resolve() in page_set:
            html = src.read_text(encoding="utf-8", errors="replace")
            cut = html.lower().rfind("</body>")
            html = html[:cut] + probe + html[cut:] if cut >= 0 else html + probe
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(html, encoding="utf-8")
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.symlink_to(src.resolve())


def run_chromium(
    chromium: str, url: str, extra: list[str], budget_ms: int, timeout_s: float
) -> tuple[str, str]:
    """Run headless Chromium on ``url``; returns (stdout, stderr)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    return proc.stdout, proc.stderr


#: Uncaught errors of the toolchain itself that do not change what the reader sees, and why.
KNOWN_JS_ERRORS = {
    "Identifier 'THEBE_JS_URL' has already been declared": (
        "jupyter-book 1.0.4 adds sphinx-thebe's inline settings twice; thebe is not used"
    ),
    "Cannot read properties of undefined (reading 'Queue')": (
        "the ipywidgets HTML manager typesets widget labels with the MathJax 2 call "
        "MathJax.Hub.Queue, which MathJax 3 lacks: labels are shown as plain text"
    ),
}

_CONSOLE_ERROR = re.compile(r'CONSOLE[^\]]*\] "(Uncaught [^"]*)"')


def console_errors(stderr: str) -> list[str]:
    """Uncaught JavaScript errors reported on Chromium's log, less the known harmless ones."""
    errors = []
    for line in stderr.splitlines():
        match = _CONSOLE_ERROR.search(line)
        if match and not any(known in match.group(1) for known in KNOWN_JS_ERRORS):
            errors.append(match.group(1))
    return errors


def check_page(
    chromium: str, build_dir: Path, mirror: Path, rel: Path, budget_ms: int, timeout_s: float
) -> tuple[list[str], float | None]:
    """Problems of one page as the browser renders it (remote loads already present in the built
    file are left to the static check), and the height at which it shows its first widget or
    figure (``None`` if it has none)."""
    url = (mirror / rel).absolute().as_uri()
    window = f"--window-size={WINDOW[0]},{WINDOW[1]}"
    try:
        dom, log = run_chromium(chromium, url, [window, "--dump-dom"], budget_ms, timeout_s)
    except subprocess.TimeoutExpired:
        return [f"Chromium did not finish within {timeout_s:.0f} s"], None
    probe = probe_report(parse_html(dom))
    if probe is None:
        return ["the page did not finish loading (the probe script never reported)"], None
    static_remote = {url for _, url in remote_assets((build_dir / rel).read_text(errors="replace"))}
    problems = [
        p for p in dom_problems(dom) if not any(f" {url} at run time" in p for url in static_remote)
    ]
    problems += [f"JavaScript error: {e}" for e in console_errors(log)]
    return problems, probe.get("showcaseY")


def pick_chapter(build_dir: Path, pages: list[Path]) -> Path | None:
    """The chapter page that shows the most of what a screenshot should show.

    Score: widgets, figures and math, in that order; ties go to the first chapter.
    """
    best, best_score = None, (-1, -1, -1)
    for page in pages:
        if "chapters" not in page.relative_to(build_dir).parts:
            continue
        html = page.read_text(encoding="utf-8", errors="replace")
        score = (
            min(html.count(WIDGET_VIEW), 1),
            min(html.count("<img"), 3),
            min(html.count('class="math'), 3),
        )
        if score > best_score:
            best, best_score = page, score
    return best


def landing_page(build_dir: Path) -> Path:
    """The page ``index.html`` redirects to (jupyter-book's root document), else index.html."""
    index = build_dir / "index.html"
    if index.is_file():
        match = re.search(r'url=([^"\'>]+)', index.read_text(encoding="utf-8", errors="replace"))
        if match and (build_dir / match.group(1)).is_file():
            return build_dir / match.group(1)
    return index


def take_screenshots(
    chromium: str,
    build_dir: Path,
    pages: list[Path],
    out_dir: Path,
    budget_ms: int,
    timeout_s: float,
    showcase_y: dict[Path, float | None],
) -> list[Path]:
    """Screenshots of the landing page and of one chapter: its top, and the region of its first
    widget or figure. Returns the files written.

    Headless Chromium paints nothing below the first screen when a page is scrolled, so the second
    chapter view is a tall window cropped around the height the probe measured.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: list[tuple[str, Path, int, int | None]] = [
        ("landing.png", landing_page(build_dir), WINDOW[1], None)
    ]
    chapter = pick_chapter(build_dir, pages)
    if chapter is not None:
        shots.append(("chapter.png", chapter, 1400, None))
        y = showcase_y.get(chapter)
        if y is not None:
            top = max(0, int(y) - 200)
            shots.append(("chapter_figure.png", chapter, min(top + 1000, 16000), top))

    def shoot(item: tuple[str, Path, int, int | None]) -> Path | None:
        name, page, height, crop_top = item
        target = out_dir / name
        target.unlink(missing_ok=True)
        extra = [f"--window-size={WINDOW[0]},{height}", f"--screenshot={target}"]
        run_chromium(chromium, page.absolute().as_uri(), extra, budget_ms, timeout_s)
        if not target.is_file():
            return None
        if crop_top:
            import matplotlib.image as mpimg

            mpimg.imsave(target, mpimg.imread(target)[crop_top:])
        return target

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [path for path in pool.map(shoot, shots) if path is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", type=Path, default=REPO_ROOT / "_build" / "html")
    parser.add_argument(
        "--screenshots",
        type=Path,
        default=None,
        help="folder for the PNGs (default: <build_dir>/../screenshots)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="Chromium processes at a time")
    parser.add_argument(
        "--budget-ms",
        type=int,
        default=8000,
        help="virtual time each page gets to load and typeset",
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per page, real time")
    parser.add_argument("--chromium", default=None, help="Chromium executable")
    args = parser.parse_args(argv)

    build_dir: Path = args.build_dir.resolve()
    if not (build_dir / "index.html").is_file():
        print(f"browser check: {build_dir} holds no built site (no index.html)", file=sys.stderr)
        return 1
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    chromium = find_chromium(args.chromium)
    pages = find_pages(build_dir)
    start = time.perf_counter()

    problems = static_problems(build_dir, pages)
    with tempfile.TemporaryDirectory(prefix="browser-check-") as tmp:
        mirror = Path(tmp) / "site"
        mirror_site(build_dir, pages, mirror)
        rels = [p.relative_to(build_dir) for p in pages]
        showcase_y: dict[Path, float | None] = {}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = pool.map(
                lambda rel: check_page(
                    chromium, build_dir, mirror, rel, args.budget_ms, args.timeout
                ),
                rels,
            )
            for rel, (found, y) in zip(rels, results, strict=True):
                showcase_y[build_dir / rel] = y
                if found:
                    problems.setdefault(build_dir / rel, []).extend(found)
    shots_dir = args.screenshots or build_dir.parent / "screenshots"
    shots = take_screenshots(
        chromium, build_dir, pages, shots_dir, args.budget_ms, args.timeout, showcase_y
    )

    elapsed = time.perf_counter() - start
    for page in sorted(problems):
        print(f"{_rel(page, build_dir)}:", file=sys.stderr)
        for line in problems[page]:
            print(f"  - {line}", file=sys.stderr)
    for shot in shots:
        print(f"screenshot: {shot}")
    n_problems = sum(len(v) for v in problems.values())
    if n_problems:
        print(
            f"browser check FAILED: {n_problems} problem(s) on {len(problems)} of {len(pages)} "
            f"pages ({elapsed:.0f} s)",
            file=sys.stderr,
        )
        return 1
    print(f"browser check passed: {len(pages)} pages in Chromium, {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
