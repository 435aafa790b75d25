"""Open every page of the built book in headless Chromium (Playwright) and check what a reader sees.

Usage (from the repository root, after the book is built)::

    python scripts/browser_check.py                 # checks _build/html
    python scripts/browser_check.py /tmp/site --chromium /usr/bin/chromium

Static checks, on the built files (BeautifulSoup): a local image, script, style, frame or link
whose file or anchor is missing; a script, style, image or frame loaded from outside the site; an
executed notebook page that offers no ``.ipynb`` download.

In Chromium, driven by Playwright (the system browser through ``executable_path``; Playwright
downloads none), each page served from ``127.0.0.1`` with every other request aborted, so that
it is seen as an offline reader sees it, at 1280 px wide, after MathJax has typeset it:

* a request that leaves the site (blocked) or a local file that fails to load;
* a console error or uncaught exception, less the known harmless ones (``KNOWN_JS_ERRORS``);
* raw TeX left in prose (``$$``, ``\\(``, ``\\frac`` ...) and MathJax error boxes;
* a widget placeholder that the widget manager left empty, or "Error displaying widget";
* an image that does not display, and a code block or page wider than the window;
* a live figure (``.redge-live``, see ``redge_mini.book.widgets.live_figure``) whose drawing does
  not change when its first slider moves.

Screenshots of the landing page, of the chapter with the most live figures, widgets and figures,
and of that chapter's first live figure before and after a slider moves go to ``<build>/../
screenshots`` (``_build/screenshots``). Exit status 1 if any problem is found.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bs4 import BeautifulSoup
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_tools import is_remote, remote_assets  # noqa: E402  (the one definition of "remote")

REPO_ROOT = Path(__file__).resolve().parent.parent
WINDOW = {"width": 1280, "height": 900}
#: Folders of the build that hold assets, not pages.
ASSET_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "screenshots"}
#: Uncaught errors of the toolchain itself that do not change what the reader sees, and why.
KNOWN_JS_ERRORS = {
    "Identifier 'THEBE_JS_URL' has already been declared": (
        "jupyter-book 1.0.4 adds sphinx-thebe's inline settings twice; thebe is not used"
    ),
    "Got invalid theme mode: . Resetting to auto.": (
        "pydata-sphinx-theme logs this when no colour mode is stored yet; it uses 'auto'"
    ),
    "Cannot read properties of undefined (reading 'Queue')": (
        "the ipywidgets HTML manager typesets widget labels with the MathJax 2 call "
        "MathJax.Hub.Queue, which MathJax 3 lacks: labels are shown as plain text"
    ),
}

# Runs in the page once it has loaded and MathJax has typeset it; returns a list of problems.
# Text inside code, scripts, typeset math or SVG is not prose: TeX there is intended. (Not
# "tex2jax_ignore": MyST puts it on every section, so TeX outside a math node is seen raw.)
PAGE_PROBE = r"""
async () => {
  const problems = [];
  const skip = "script,style,noscript,template,code,pre,kbd,samp,textarea,mjx-container,svg," +
    "math,.highlight,.widget-subarea";
  const rawTex = /\$\$|\\\(|\\\)|\\\[|\\\]|\\[A-Za-z]{2,}/;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const m = rawTex.exec(node.textContent);
    if (m && !node.parentElement.closest(skip)) {
      const t = node.textContent;
      problems.push("raw TeX (not typeset): ..." +
        t.slice(Math.max(0, m.index - 30), m.index + 30).replace(/\s+/g, " ") + "...");
    }
  }
  document.querySelectorAll("mjx-merror").forEach((e) => problems.push(
    "MathJax error: " + (e.getAttribute("data-mjx-error") || e.textContent.slice(0, 80))));
  const view = 'script[type="application/vnd.jupyter.widget-view+json"]';
  document.querySelectorAll(view).forEach((s) => {
    const drawn = s.previousElementSibling;
    if (!drawn || !drawn.classList.contains("widget-subarea") || !drawn.children.length) {
      const id = (/"model_id"\s*:\s*"([^"]+)"/.exec(s.textContent) || [0, "?"])[1];
      problems.push(`widget ${id.slice(0, 8)} is not drawn`);
    }
  });
  if (document.body.innerText.includes("Error displaying widget")) {
    problems.push("widget error: Error displaying widget");
  }
  const images = [...document.images];
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  images.filter((img) => img.naturalWidth === 0)
    .forEach((img) => problems.push("image not displayed: " + img.getAttribute("src")));
  document.querySelectorAll("pre").forEach((pre) => {
    if (pre.clientWidth > 0 && pre.scrollWidth > pre.clientWidth + 2) {
      const line = pre.textContent.split("\n").reduce((a, b) => (b.length > a.length ? b : a));
      problems.push(`code block scrolls horizontally (${pre.scrollWidth} px in ` +
        `${pre.clientWidth} px): ${JSON.stringify(line.slice(0, 90))}`);
    }
  });
  const root = document.scrollingElement;
  if (root.scrollWidth > root.clientWidth + 2) {
    problems.push(`the page scrolls sideways (${root.scrollWidth} px in ${root.clientWidth} px)`);
  }
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve)));
  for (const [i, fig] of [...document.querySelectorAll(".redge-live")].entries()) {
    const slider = fig.querySelector('input[type="range"]');
    const svg = fig.querySelector("svg");
    if (!slider || !svg) {
      problems.push(`live figure ${i + 1} has no slider or no drawing`);
      continue;
    }
    const before = svg.innerHTML;
    const old = slider.value;
    slider.value = Number(slider.value) === Number(slider.max) ? slider.min : slider.max;
    slider.dispatchEvent(new Event("input", { bubbles: true }));
    await frame();
    await frame();
    if (svg.innerHTML === before) {
      problems.push(`live figure ${i + 1} (${fig.dataset.kind}) does not respond to its slider`);
    }
    slider.value = old;
    slider.dispatchEvent(new Event("input", { bubbles: true }));
    await frame();
  }
  return problems;
}
"""

WAIT_FOR_MATHJAX = """
async () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) await mj.startup.promise.catch(() => null);
}
"""


# --------------------------------------------------------------------------------------------
# Static checks on the built files
# --------------------------------------------------------------------------------------------


def find_pages(build_dir: Path) -> list[Path]:
    """The HTML pages of a built site (asset folders excluded), sorted."""
    return sorted(
        p
        for p in build_dir.rglob("*.html")
        if not ASSET_DIRS.intersection(p.relative_to(build_dir).parts[:-1])
    )


@functools.cache
def _soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8", errors="replace"), "html.parser")


def _refresh_target(page: Path) -> str | None:
    """Where a ``<meta http-equiv="refresh">`` page sends the reader (None: not a redirect)."""
    meta = _soup(page).find("meta", attrs={"http-equiv": re.compile("^refresh$", re.I)})
    return meta["content"].split("url=")[-1].strip() if meta else None


def _anchors(path: Path) -> set[str]:
    soup = _soup(path)
    return {t["id"] for t in soup.find_all(id=True)} | {
        t["name"] for t in soup.find_all("a", attrs={"name": True})
    }


def static_problems(build_dir: Path, pages: list[Path]) -> dict[Path, list[str]]:
    """Missing local files, links to missing pages or anchors, and remote assets, per page."""
    _soup.cache_clear()
    problems: dict[Path, list[str]] = {}
    for page in pages:
        html = page.read_text(encoding="utf-8", errors="replace")
        found = [f"<{tag}> loads remote {url}" for tag, url in remote_assets(html)]
        refs = [
            (tag.name, tag.get("src") or tag.get("href"))
            for tag in _soup(page).find_all(["img", "script", "iframe", "source", "a", "link"])
            if tag.get("src") or tag.get("href")
        ]
        target = _refresh_target(page)
        if target:  # a redirect page (index.html): its target must exist
            refs.append(("meta", target))
        if 'class="cell docutils container' in html and not any(
            tag == "a" and urlsplit(url).path.endswith(".ipynb") for tag, url in refs
        ):
            found.append("notebook page without a .ipynb download link")
        for tag, url in refs:
            parts = urlsplit(url.strip())
            if is_remote(url) or parts.scheme not in ("", "file"):
                continue
            path = unquote(parts.path)
            target = page if path == "" else page.parent / path
            if path.endswith("/") or target.is_dir():
                target = target / "index.html"
            what = {"img": "image", "a": "link", "meta": "redirect"}.get(tag, f"<{tag}>")
            if not target.exists():
                found.append(f"broken {what}: {url} (no file {_rel(target, build_dir)})")
            elif tag == "a" and parts.fragment and target.suffix == ".html":
                if unquote(parts.fragment) not in _anchors(target.resolve()):
                    found.append(f"broken link: {url} (no anchor #{parts.fragment})")
        if found:
            problems[page] = found
    return problems


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------


def find_chromium(explicit: str | None) -> str:
    """The system Chromium to drive; exits with a clear message when there is none."""
    for candidate in (explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome", "google-chrome-stable"):
        if candidate and shutil.which(candidate):
            return str(shutil.which(candidate))
    sys.exit("browser check: no Chromium found. Install it (Debian/Ubuntu: "
             "`apt-get install -y chromium`) or pass --chromium PATH.")


def serve(build_dir: Path) -> http.server.ThreadingHTTPServer:
    """Serve ``build_dir`` on an ephemeral port of 127.0.0.1, in a daemon thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(build_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check_page(context, url: str) -> list[str]:
    """Problems of one page as Chromium shows it, offline (requests outside ``url``'s origin
    are aborted and reported)."""
    origin = "{0.scheme}://{0.netloc}/".format(urlsplit(url))
    problems: list[str] = []

    def on_console(msg) -> None:
        # failed loads are reported once, by on_response and block_remote
        if msg.type != "error" or msg.text.startswith("Failed to load resource"):
            return
        if not any(k in msg.text for k in KNOWN_JS_ERRORS):
            problems.append(f"console error: {msg.text[:200]}")

    def on_response(response) -> None:
        if response.url.startswith(origin) and response.status >= 400:
            problems.append(f"HTTP {response.status} for {response.url[len(origin):]}")

    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda e: None if any(k in str(e) for k in KNOWN_JS_ERRORS)
            else problems.append(f"JavaScript error: {e}"))
    page.on("response", on_response)
    try:
        page.goto(url, wait_until="load", timeout=60_000)
        page.evaluate(WAIT_FOR_MATHJAX)
        page.wait_for_timeout(300)
        problems += page.evaluate(PAGE_PROBE)
    except Exception as error:  # a page that cannot be checked is a problem, not a crash
        problems.append(f"the page could not be checked: {error}")
    finally:
        page.close()
    return problems


def block_remote(context, origin: str, blocked: list[str]) -> None:
    """Abort every request that leaves ``origin``, and note it in ``blocked``."""

    def handle(route) -> None:
        if route.request.url.startswith(origin) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", handle)


def pick_chapter(build_dir: Path, pages: list[Path]) -> Path | None:
    """The chapter that shows the most live figures, widgets, figures and math, in that order."""
    def score(page: Path) -> tuple[int, ...]:
        html = page.read_text(encoding="utf-8", errors="replace")
        return (html.count('class="redge-live"'), min(html.count("widget-view+json"), 1),
                min(html.count("<img"), 3), min(html.count('class="math'), 3))

    chapters = [p for p in pages if "chapters" in p.relative_to(build_dir).parts]
    return max(chapters, key=score, default=None)


def landing_page(build_dir: Path) -> str:
    """The page ``index.html`` redirects to (jupyter-book's root document), else index.html."""
    target = _refresh_target(build_dir / "index.html")
    return target if target and (build_dir / target).is_file() else "index.html"


def screenshots(context, base: str, build_dir: Path, pages: list[Path], out: Path) -> list[Path]:
    """The landing page, the top of one chapter, and its first live figure before and after a
    slider moves (else its first widget or figure)."""
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    page = context.new_page()
    page.goto(base + landing_page(build_dir), wait_until="load")
    page.evaluate(WAIT_FOR_MATHJAX)
    page.screenshot(path=out / "landing.png")
    shots.append(out / "landing.png")
    chapter = pick_chapter(build_dir, pages)
    if chapter is not None:
        page.goto(base + chapter.relative_to(build_dir).as_posix(), wait_until="load")
        page.evaluate(WAIT_FOR_MATHJAX)
        page.screenshot(path=out / "chapter.png")
        shots.append(out / "chapter.png")
        figure = page.locator(".redge-live, .widget-subarea, .cell_output img").first
        if figure.count():
            figure.scroll_into_view_if_needed()
            figure.screenshot(path=out / "chapter_figure.png")
            shots.append(out / "chapter_figure.png")
            slider = figure.locator('input[type="range"]').first
            if slider.count():
                slider.fill(slider.get_attribute("max"))  # sets the value, fires "input"
                page.wait_for_timeout(500)
                figure.screenshot(path=out / "chapter_figure_moved.png")
                shots.append(out / "chapter_figure_moved.png")
    page.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", type=Path, default=REPO_ROOT / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="folder for the PNGs (default: <build_dir>/../screenshots)")
    parser.add_argument("--chromium", default=None, help="Chromium executable")
    args = parser.parse_args(argv)
    build_dir: Path = args.build_dir.resolve()
    if not (build_dir / "index.html").is_file():
        print(f"browser check: {build_dir} holds no built site (no index.html)", file=sys.stderr)
        return 1
    chromium = find_chromium(args.chromium)
    start = time.perf_counter()
    pages = find_pages(build_dir)
    problems = static_problems(build_dir, pages)
    server = serve(build_dir)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    blocked: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport=WINDOW, service_workers="block")
        block_remote(context, base, blocked)
        for page in pages:
            if _refresh_target(page):  # a redirect: nothing to see
                continue
            before = len(blocked)
            found = check_page(context, base + page.relative_to(build_dir).as_posix())
            found += [f"request leaves the site (blocked offline): {u}" for u in blocked[before:]]
            if found:
                problems.setdefault(page, []).extend(found)
        shots = screenshots(context, base, build_dir, pages,
                            args.screenshots or build_dir.parent / "screenshots")
        browser.close()
    server.shutdown()
    for page in sorted(problems):
        print(f"{_rel(page, build_dir)}:", file=sys.stderr)
        for line in problems[page]:
            print(f"  - {line}", file=sys.stderr)
    for shot in shots:
        print(f"screenshot: {shot}")
    elapsed = time.perf_counter() - start
    n_problems = sum(len(v) for v in problems.values())
    if n_problems:
        print(f"browser check FAILED: {n_problems} problem(s) on {len(problems)} of "
              f"{len(pages)} pages ({elapsed:.0f} s)", file=sys.stderr)
        return 1
    print(f"browser check passed: {len(pages)} pages in Chromium, offline, {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
