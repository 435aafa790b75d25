"""Small helpers for the book pipeline: read _toc.yml, find notebook pages, check built HTML,
publish what a downloaded notebook installs, and point the Colab buttons at notebooks.

Used by the Makefile (through the command line below), by the tests, and by the book's build as a
Sphinx extension (``_config.yml``: ``local_extensions``; see :func:`setup`).

Command line (from the repository root)::

    python scripts/book_tools.py notebooks          # toc entries that are jupytext notebooks
    python scripts/book_tools.py check-html _build/html   # fail if a page loads remote assets
    python scripts/book_tools.py publish _build/html      # wheel + results into _static/dist
    python scripts/book_tools.py install-cell             # (re)write every chapter's first cell
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_SUFFIXES = (".md", ".ipynb", ".py")
#: Where the site publishes the wheel of redge_mini and the stored results (under the build).
DIST = "_static/dist"
#: The branch that the deploy workflow fills with the executed notebooks, for Colab.
NOTEBOOK_BRANCH = "notebooks"


def toc_entries(toc_path: Path = REPO_ROOT / "_toc.yml") -> list[str]:
    """Every document of ``_toc.yml`` in reading order: the root, then each ``file:`` entry.

    Entries are returned as written (paths relative to the book root, without suffix).
    """
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    if not isinstance(toc, dict) or "root" not in toc:
        raise ValueError(f"{toc_path} has no 'root' entry")
    entries = [str(toc["root"])]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                entries.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                if key in node:
                    walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return entries


def source_of(entry: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of a toc entry (``.md``, ``.ipynb`` or ``.py``), or None if missing."""
    base = root / entry
    if base.suffix in SOURCE_SUFFIXES and base.is_file():
        return base
    for suffix in SOURCE_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def front_matter(path: Path) -> dict:
    """The YAML front matter of a Markdown file (``{}`` when there is none)."""
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end < 0:
        return {}
    data = yaml.safe_load(text[4:end])
    return data if isinstance(data, dict) else {}


def is_notebook(path: Path) -> bool:
    """Whether a page source is executed: an ``.ipynb``, or a Markdown file with a kernelspec."""
    if path.suffix == ".ipynb":
        return True
    return path.suffix == ".md" and "kernelspec" in front_matter(path)


def notebook_sources(root: Path = REPO_ROOT) -> list[Path]:
    """Sources of every executed page listed in ``_toc.yml``, in toc order."""
    sources = []
    for entry in toc_entries(root / "_toc.yml"):
        path = source_of(entry, root)
        if path is None:
            raise FileNotFoundError(f"_toc.yml lists {entry!r}, which does not exist")
        if is_notebook(path):
            sources.append(path)
    return sources


class _AssetCollector(HTMLParser):
    """Collect the URLs a page loads as scripts, styles, images and frames."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: (v or "") for k, v in attrs}
        if tag in ("script", "img", "iframe", "source", "audio", "video") and attr.get("src"):
            self.urls.append((tag, attr["src"]))
        elif tag == "link":
            rel = attr.get("rel", "").lower().split()
            loads = {"stylesheet", "preload", "modulepreload", "icon", "prefetch"}
            if loads.intersection(rel) and attr.get("href"):
                self.urls.append((f"link rel={' '.join(rel)}", attr["href"]))


def is_remote(url: str) -> bool:
    """Whether a URL points outside the site (``http:``, ``https:`` or protocol-relative)."""
    lowered = url.strip().lower()
    return lowered.startswith(("http://", "https://", "//"))


def remote_assets(html: str) -> list[tuple[str, str]]:
    """The ``(tag, url)`` pairs of a page that load something from outside the site."""
    collector = _AssetCollector()
    collector.feed(html)
    return [(tag, url) for tag, url in collector.urls if is_remote(url)]


def check_html(build_dir: Path) -> list[str]:
    """Problems of a built site: remote scripts/styles/images, and MathJax not served locally.

    Returns one line per problem (empty when the site works offline).
    """
    pages = sorted(build_dir.rglob("*.html"))
    if not pages:
        return [f"no HTML pages under {build_dir}"]
    problems = []
    for page in pages:
        rel = page.relative_to(build_dir)
        for tag, url in remote_assets(page.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{rel}: <{tag}> loads remote {url}")
    if not (build_dir / "_static" / "mathjax" / "tex-chtml.js").is_file():
        problems.append("_static/mathjax/tex-chtml.js is missing: MathJax is not vendored")
    return problems


# ------------------------------------------------------------------------------------------------
# Notebooks that run anywhere: the first cell of every chapter and what it installs
# ------------------------------------------------------------------------------------------------


def site_url(config_path: Path = REPO_ROOT / "_config.yml") -> str:
    """The GitHub Pages address of the book, from ``repository.url`` in ``_config.yml``."""
    url = yaml.safe_load(config_path.read_text(encoding="utf-8"))["repository"]["url"]
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)/?", url)
    if not match:
        raise ValueError(f"repository.url must be https://github.com/OWNER/NAME, got {url!r}")
    return f"https://{match.group(1).lower()}.github.io/{match.group(2)}"


INSTALL_CELL_MARK = "# Set-up for Colab or a fresh Jupyter"
#: PyTorch's index of CPU-only wheels (the default index serves the CUDA build on Linux).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def install_cell(site: str | None = None) -> str:
    """The first code cell of every chapter, as MyST text.

    When ``redge_mini`` cannot be imported (a downloaded notebook, Colab), it installs the wheel
    that the site publishes, with the book's extra, and unpacks the stored results into
    ``book/results`` of the working directory, where ``redge_mini.book.runtime`` looks for them.
    Where no torch is installed it first installs the CPU build from PyTorch's CPU index (an
    unpinned ``pip install torch`` pulls the CUDA build, several GB); Colab's torch is kept. When
    pip fails (offline, or the site unreachable) it stops with a message saying what to do:
    ``REDGE_BOOK_DIST`` pointing at a local copy of the site's ``_static/dist``, or a clone of the
    repository. Inside the repository it only asks ``importlib`` one question.
    """
    dist = f"{site or site_url()}/{DIST}"
    return f"""```{{code-cell}} ipython3
:tags: [remove-cell]

{INSTALL_CELL_MARK}: install redge_mini (CPU torch
# if missing) and the stored results from the book's site; a no-op in a clone.
import importlib.util

if importlib.util.find_spec("redge_mini") is None:
    import os, shutil, subprocess, sys, urllib.request  # noqa: E401

    DIST = os.environ.get(
        "REDGE_BOOK_DIST",
        "{dist}")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--retries", "1"]
    try:
        if importlib.util.find_spec("torch") is None:  # CPU build, not CUDA
            cpu = "{TORCH_CPU_INDEX}"
            subprocess.run(pip + ["torch", "--index-url", cpu], check=True)
        subprocess.run(pip + ["--find-links", DIST, "redge_mini[book]"],
                       check=True)
    except subprocess.CalledProcessError:
        raise RuntimeError(
            f"pip could not install redge_mini from {{DIST}} (offline?): set "
            "REDGE_BOOK_DIST to a folder holding the book's wheel (a built "
            "site's _static/dist), or open the chapter in a clone of the "
            "book's repository (make lab).") from None
    try:
        urllib.request.urlretrieve(f"{{DIST}}/results.zip", "results.zip")
        shutil.unpack_archive("results.zip", "book/results")
    except OSError as error:
        print(f"no stored results ({{error}}): chapters show small runs only")
```
"""


def write_install_cells(paths: list[Path], cell: str) -> list[Path]:
    """Put ``cell`` before the first code cell of each page (replacing an older install cell).

    Returns the pages that changed.
    """
    changed = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        old = re.search(r"```\{code-cell\} ipython3\n(?::tags:.*\n\n)?"
                        + re.escape(INSTALL_CELL_MARK) + r".*?\n```\n\n?", text, re.S)
        if old:
            new = text[: old.start()] + cell + "\n" + text[old.end():]
        else:
            first = text.find("```{code-cell}")
            if first < 0:
                continue
            new = text[:first] + cell + "\n" + text[first:]
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def publish(build_dir: Path, root: Path = REPO_ROOT) -> Path:
    """Put what a downloaded notebook installs into ``<build_dir>/_static/dist``.

    The wheel of ``redge_mini`` (built from ``root`` without network: ``--no-build-isolation``),
    ``results.zip`` (the stored results, ``book/results``) and ``index.html``, a page of links
    that ``pip install --find-links`` reads. Returns the folder.
    """
    dist = build_dir / DIST
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:  # setuptools writes build/ next to the sources
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(root / name, tmp)
        shutil.copytree(root / "redge_mini", Path(tmp) / "redge_mini",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "--wheel-dir", str(dist.resolve()), "."],
                       cwd=tmp, check=True)
    results = root / "book" / "results"
    shutil.make_archive(str(dist / "results"), "zip", root_dir=results)
    links = "".join(f'<a href="{html.escape(p.name)}">{html.escape(p.name)}</a><br>\n'
                    for p in sorted(dist.iterdir()))
    (dist / "index.html").write_text(
        f"<!DOCTYPE html><html><head><title>redge_mini for the book</title></head><body>\n"
        f"{links}</body></html>\n", encoding="utf-8")
    return dist


# ------------------------------------------------------------------------------------------------
# Sphinx extension: the Colab button opens the executed notebook that the deploy workflow
# publishes on the branch NOTEBOOK_BRANCH (Colab opens only .ipynb files from GitHub; the sources
# are MyST Markdown).
# ------------------------------------------------------------------------------------------------


def _colab_to_notebook_branch(app, pagename, templatename, context, doctree) -> None:
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            if button.get("text") == "Colab":
                head, _, path = button["url"].partition("/blob/")
                path = path.split("/", 1)[1] if "/" in path else path
                button["url"] = (f"{head}/blob/{NOTEBOOK_BRANCH}/"
                                 f"{Path(path).with_suffix('.ipynb').as_posix()}")


def setup(app) -> dict:
    # the notebooks this build executes glue their values for the pages only: no duplicate
    # display under the cell (redge_mini.book.glue; myst-nb's kernels inherit the environment)
    os.environ["REDGE_BOOK_BUILD"] = "1"
    # after sphinx-book-theme's add_launch_buttons (priority 501)
    app.connect("html-page-context", _colab_to_notebook_branch, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("notebooks", help="print the executed pages listed in _toc.yml")
    check = sub.add_parser("check-html", help="fail if the built site loads remote assets")
    check.add_argument("build_dir", type=Path)
    pub = sub.add_parser("publish", help="wheel, results and a find-links page into the site")
    pub.add_argument("build_dir", type=Path)
    sub.add_parser("install-cell", help="write the install cell into every chapter")
    args = parser.parse_args(argv)
    if args.command == "notebooks":
        for path in notebook_sources():
            print(path.relative_to(REPO_ROOT))
        return 0
    if args.command == "publish":
        dist = publish(args.build_dir)
        print(f"published for downloaded notebooks: {', '.join(p.name for p in dist.iterdir())}")
        return 0
    if args.command == "install-cell":
        chapters = sorted((REPO_ROOT / "chapters").glob("*.md"))
        for path in write_install_cells(chapters, install_cell()):
            print(f"install cell written: {path.relative_to(REPO_ROOT)}")
        return 0
    problems = check_html(args.build_dir)
    for line in problems:
        print(line, file=sys.stderr)
    n_pages = len(list(args.build_dir.rglob("*.html")))
    if problems:
        print(f"offline check FAILED: {len(problems)} problem(s), {n_pages} pages", file=sys.stderr)
        return 1
    print(f"offline check passed: {n_pages} pages load no remote script, style or image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
