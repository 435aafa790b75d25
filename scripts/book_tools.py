"""Small helpers for the book pipeline: read _toc.yml, find notebook pages, check built HTML.

Used by the Makefile (through the command line below) and by tests/test_book.py.

Command line (from the repository root)::

    python scripts/book_tools.py notebooks          # toc entries that are jupytext notebooks
    python scripts/book_tools.py check-html _build/html   # fail if a page loads remote assets
"""

from __future__ import annotations

import argparse
import sys
from html.parser import HTMLParser
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_SUFFIXES = (".md", ".ipynb", ".py")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("notebooks", help="print the executed pages listed in _toc.yml")
    check = sub.add_parser("check-html", help="fail if the built site loads remote assets")
    check.add_argument("build_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "notebooks":
        for path in notebook_sources():
            print(path.relative_to(REPO_ROOT))
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
