"""Print the built book to one PDF for course handouts (``make pdf``).

Usage (from the repository root, after the site is built)::

    python scripts/book_pdf.py _build/html              # writes _build/html/_static/redge-book.pdf

Each page of ``_toc.yml``, in reading order, is served from ``127.0.0.1`` (nothing else is
reachable) and printed by the system Chromium through Playwright's ``page.pdf()`` once MathJax
has typeset it and every image has loaded; pypdf joins the pages into one file with a bookmark
per page. The solutions of the problem set and the execution statistics are left out: the file is
for students. The teachers' page links to it.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright
from pypdf import PdfReader, PdfWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_tools import toc_entries  # noqa: E402
from browser_check import WAIT_FOR_MATHJAX, block_remote, find_chromium, serve  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
PDF_NAME = "_static/redge-book.pdf"
LEFT_OUT = {"book/course/problem_set_solutions", "book/exec_stats"}
# Every image loaded (lazy ones too) before printing.
LOAD_IMAGES = """
async () => {
  const images = [...document.images];
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
}
"""


def print_book(build_dir: Path, out: Path, chromium: str) -> tuple[int, int]:
    """Print every page of the toc into ``out``; returns (pages of the toc, PDF pages)."""
    entries = [e for e in toc_entries() if e not in LEFT_OUT]
    server = serve(build_dir)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    writer = PdfWriter()
    parts = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1100, "height": 1400})
        block_remote(context, base, [])
        page = context.new_page()
        for entry in entries:
            response = page.goto(f"{base}{entry}.html", wait_until="load")
            if response is None or not response.ok:
                raise SystemExit(f"book PDF: {entry}.html is missing from the build")
            page.evaluate(WAIT_FOR_MATHJAX)
            page.evaluate(LOAD_IMAGES)
            page.emulate_media(media="print")
            pdf = page.pdf(format="A4", print_background=True, scale=0.8,
                           margin={"top": "15mm", "bottom": "15mm", "left": "12mm",
                                   "right": "12mm"},
                           display_header_footer=True, header_template="<span></span>",
                           footer_template='<div style="font-size:8px;width:100%;'
                           'text-align:center"><span class="pageNumber"></span></div>')
            parts.append((page.title().split("—")[0].strip(), pdf))
        browser.close()
    server.shutdown()
    for title, pdf in parts:
        start = len(writer.pages)
        writer.append(PdfReader(io.BytesIO(pdf)))
        writer.add_outline_item(title=title, page_number=start)
    writer.add_metadata({"/Title": "Gradients through categorical variables: ReDGE and friends"})
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        writer.write(handle)
    return len(entries), len(writer.pages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", type=Path, default=REPO_ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=None, help=f"default: <build>/{PDF_NAME}")
    parser.add_argument("--chromium", default=None, help="Chromium executable")
    args = parser.parse_args(argv)
    build_dir = args.build_dir.resolve()
    if not (build_dir / "index.html").is_file():
        print(f"book PDF: {build_dir} holds no built site (run `make book`)", file=sys.stderr)
        return 1
    out = args.out or build_dir / PDF_NAME
    start = time.perf_counter()
    n_entries, n_pages = print_book(build_dir, out, find_chromium(args.chromium))
    print(f"book PDF: {out} ({n_entries} chapters and pages, {n_pages} PDF pages, "
          f"{out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
