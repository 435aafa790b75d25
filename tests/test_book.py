"""Consistency of the book's sources: table of contents, chapter files, front matter, citations,
configuration, vendored assets, and the offline check of the built HTML."""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = REPO_ROOT / "chapters"
CHAPTER_NAME = re.compile(r"^(\d{2})_[a-z0-9]+(?:_[a-z0-9]+)*\.md$")
MAX_CODE_LINE = 80


def _load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    scripts = str(REPO_ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


book_tools = _load_script("book_tools")


def chapter_files() -> list[Path]:
    return sorted(CHAPTERS.glob("*.md"))


def toc_entries() -> list[str]:
    return book_tools.toc_entries(REPO_ROOT / "_toc.yml")


def code_cells(text: str) -> list[str]:
    """Bodies of the ``{code-cell}`` blocks of a MyST notebook (without their option lines)."""
    cells = re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", text, flags=re.M | re.S)
    bodies = []
    for cell in cells:
        lines = cell.splitlines()
        while lines and lines[0].startswith(":"):
            lines.pop(0)
        if lines and lines[0] == "---":  # YAML options block
            end = lines.index("---", 1)
            lines = lines[end + 1 :]
        bodies.append("\n".join(lines))
    return bodies


def prose(text: str) -> str:
    """The text outside fenced blocks (code cells, directives), where headings live."""
    kept, fence = [], None
    for line in text.splitlines():
        match = re.match(r"^(`{3,}|~{3,})", line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


# --- table of contents <-> files ---------------------------------------------------------------


def test_toc_root_is_landing_page() -> None:
    assert toc_entries()[0] == "book/intro"


def test_every_toc_entry_exists() -> None:
    missing = [e for e in toc_entries() if book_tools.source_of(e, REPO_ROOT) is None]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_toc_has_no_duplicates() -> None:
    entries = toc_entries()
    duplicates = sorted({e for e in entries if entries.count(e) > 1})
    assert not duplicates, f"_toc.yml lists these more than once: {duplicates}"


def test_every_chapter_is_in_toc() -> None:
    listed = set(toc_entries())
    absent = [p.name for p in chapter_files() if f"chapters/{p.stem}" not in listed]
    assert not absent, f"chapters missing from _toc.yml: {absent}"


def test_chapter_zero_exists_and_is_listed() -> None:
    assert (CHAPTERS / "00_how_to_use.md").is_file()
    assert "chapters/00_how_to_use" in toc_entries()


def test_chapters_listed_in_numeric_order() -> None:
    numbers = [int(e.split("/")[1][:2]) for e in toc_entries() if e.startswith("chapters/")]
    assert numbers == sorted(numbers), f"chapters out of order in _toc.yml: {numbers}"


def test_toc_parts_have_captions() -> None:
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    assert all(part.get("caption") for part in toc["parts"])


# --- chapter files -------------------------------------------------------------------------------


#: A chapter a student can finish in one sitting (issue 21): no chapter longer than this.
MAX_CHAPTER_LINES = 1_100


@pytest.mark.parametrize("path", chapter_files(), ids=lambda p: p.stem)
def test_chapter_is_at_most_max_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_CHAPTER_LINES, (
        f"{path.name} has {lines} source lines (at most {MAX_CHAPTER_LINES}): split it")


def test_chapter_file_names_and_unique_numbers() -> None:
    names = [p.name for p in chapter_files()]
    bad = [n for n in names if not CHAPTER_NAME.match(n)]
    assert not bad, f"chapter files must be named NN_snake_case.md: {bad}"
    numbers = [n[:2] for n in names]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"chapter numbers used twice: {duplicates}"


@pytest.mark.parametrize("path", chapter_files(), ids=lambda p: p.stem)
def test_chapter_front_matter(path: Path) -> None:
    meta = book_tools.front_matter(path)
    text_repr = meta.get("jupytext", {}).get("text_representation", {})
    assert text_repr.get("format_name") == "myst", "jupytext front matter with format_name: myst"
    assert text_repr.get("extension") == ".md"
    kernel = meta.get("kernelspec", {})
    assert kernel.get("name") == "python3" and kernel.get("language") == "python"
    assert book_tools.is_notebook(path)


@pytest.mark.parametrize("path", chapter_files(), ids=lambda p: p.stem)
def test_chapter_has_label_and_title(path: Path) -> None:
    text = prose(path.read_text(encoding="utf-8"))
    assert re.search(r"^\([a-z0-9][a-z0-9_-]*\)=\n# \S", text, flags=re.M), (
        "a chapter starts with a `(label)=` target directly above its `# Title`"
    )
    assert len(re.findall(r"^# \S", text, flags=re.M)) == 1, "exactly one level-1 title"


def test_chapter_labels_unique() -> None:
    labels: list[str] = []
    book_pages = [
        path for path in sorted((REPO_ROOT / "book").rglob("*.md"))
        if not path.is_relative_to(REPO_ROOT / "book" / "assets")
        and not path.is_relative_to(REPO_ROOT / "book" / "results")
    ]
    for path in [*chapter_files(), *book_pages]:
        labels += re.findall(r"^\(([^)]+)\)=$", path.read_text(encoding="utf-8"), flags=re.M)
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    assert not duplicates, f"labels defined twice: {duplicates}"


BOOK_PAGES = [
    path for path in sorted((REPO_ROOT / "book").rglob("*.md"))
    if not {"assets", "results"} & set(path.relative_to(REPO_ROOT).parts)
]


@pytest.mark.parametrize(
    "path", chapter_files() + BOOK_PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_code_fits_80_columns(path: Path) -> None:
    """Every code cell of every page (chapters and book/) fits the column at 1280 px."""
    long_lines = [
        line
        for cell in code_cells(path.read_text(encoding="utf-8"))
        for line in cell.splitlines()
        if len(line) > MAX_CODE_LINE
    ]
    assert not long_lines, f"code lines over {MAX_CODE_LINE} characters: {long_lines}"


def test_code_cell_parser() -> None:
    text = "```{code-cell} ipython3\n:tags: [hide-input]\n\nx = 1\n```\n"
    assert code_cells(text) == ["\nx = 1"]


def test_prose_drops_fenced_blocks() -> None:
    text = "# Title\n```{code-cell} ipython3\n# a comment\n```\n````{x}\n```\n````\ntail"
    assert prose(text) == "# Title\ntail"


# --- citations -----------------------------------------------------------------------------------


def bib_keys() -> list[str]:
    text = (REPO_ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    return re.findall(r"^@\w+\{([^,\s]+),", text, flags=re.M)


def test_bib_keys_unique() -> None:
    keys = bib_keys()
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"references.bib defines these twice: {duplicates}"
    assert "gourevitch2026redge" in keys


def test_every_cited_key_exists() -> None:
    keys = set(bib_keys())
    pages = [*chapter_files(), *sorted((REPO_ROOT / "book").glob("*.md"))]
    cited = set()
    for path in pages:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", path.read_text(encoding="utf-8")):
            cited.update(k.strip() for k in group.split(","))
    assert cited, "no citation found at all"
    assert not cited - keys, f"cited but not in references.bib: {sorted(cited - keys)}"


# --- configuration and vendored assets -----------------------------------------------------------


def config() -> dict:
    return yaml.safe_load((REPO_ROOT / "_config.yml").read_text(encoding="utf-8"))


def test_config_executes_everything_strictly() -> None:
    cfg = config()
    assert cfg["only_build_toc_files"] is True
    assert cfg["execute"]["execute_notebooks"] == "force"
    assert cfg["execute"]["allow_errors"] is False
    for pattern in (".venv", "_build", "tests", "redge_mini"):
        assert pattern in cfg["exclude_patterns"]
    assert cfg["bibtex_bibfiles"] == ["book/references.bib"]
    assert {"sphinx_exercise", "sphinx-mathjax-offline"} <= set(cfg["sphinx"]["extra_extensions"])


def test_vendored_widget_assets_exist() -> None:
    cfg = config()["sphinx"]["config"]
    static_paths = cfg["html_static_path"]
    assert "_static" not in static_paths and not (REPO_ROOT / "_static").exists(), (
        "a `_static` folder at the book root makes jupyter-book load every .js on every page"
    )
    for rel in cfg["nb_ipywidgets_js"]:
        assert not book_tools.is_remote(rel), f"nb_ipywidgets_js must be local, got {rel}"
        assert any((REPO_ROOT / sp / rel).is_file() for sp in static_paths), f"missing {rel}"


def test_repository_url_is_github() -> None:
    url = config()["repository"]["url"]
    assert url.startswith("https://github.com/")


def test_requirements_pin_every_package_and_the_installed_torch() -> None:
    # an unpinned torch pulls a CUDA build; the pin must be the torch this environment runs
    lines = [line.split("#")[0].strip()
             for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^=\s]+", r) for r in requirements), requirements
    pins = dict(r.split("==") for r in requirements)
    assert pins["torch"] == metadata.version("torch").split("+")[0]


@pytest.mark.parametrize("path", chapter_files(), ids=lambda p: p.stem)
def test_chapters_glue_through_the_package(path: Path) -> None:
    # redge_mini.book.glue also shows the values in a notebook, and needs no Sphinx
    text = path.read_text(encoding="utf-8")
    assert "from myst_nb import glue" not in text, f"{path.name}: use redge_mini.book.glue"
    if re.search(r"^glue\(", text, re.M):
        assert "from redge_mini.book.glue import glue" in text


def test_jupyterlab_opens_chapters_as_notebooks() -> None:
    # make lab: the project's JupyterLab defaults, and the front end pinned with its extensions
    import json

    overrides = json.loads((REPO_ROOT / "lab" / "overrides.json").read_text())
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["markdown"] == viewers["myst"] == "Jupytext Notebook"
    pins = dict(line.split("#")[0].strip().split("==")
                for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line.split("#")[0])
    for name in ("jupyterlab", "jupyterlab-myst", "jupytext"):
        assert pins[name] == metadata.version(name), name
    assert "lab/overrides.json" in (REPO_ROOT / "Makefile").read_text()


# --- the offline check of built HTML ------------------------------------------------------------


def test_remote_asset_detection() -> None:
    page = """<html><head>
    <script src="_static/local.js"></script>
    <script src="https://cdn.example.org/mathjax.js"></script>
    <link rel="stylesheet" href="//fonts.example.org/font.css">
    <link rel="stylesheet" href="_static/theme.css">
    <link rel="next" href="https://example.org/next.html">
    <img src="HTTP://example.org/a.png"><a href="https://example.org">a link is fine</a>
    </head></html>"""
    found = book_tools.remote_assets(page)
    assert found == [
        ("script", "https://cdn.example.org/mathjax.js"),
        ("link rel=stylesheet", "//fonts.example.org/font.css"),
        ("img", "HTTP://example.org/a.png"),
    ]


def test_check_html_reports_problems(tmp_path: Path) -> None:
    assert book_tools.check_html(tmp_path) == [f"no HTML pages under {tmp_path}"]
    (tmp_path / "index.html").write_text('<script src="https://x.org/a.js"></script>')
    problems = book_tools.check_html(tmp_path)
    assert any("https://x.org/a.js" in p for p in problems)
    assert any("MathJax" in p for p in problems)
    (tmp_path / "index.html").write_text('<script src="_static/mathjax/tex-chtml.js"></script>')
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("")
    assert book_tools.check_html(tmp_path) == []


# --- the landing figure -------------------------------------------------------------------------


def test_landing_figure_script_and_caption_claim(tmp_path: Path) -> None:
    """The landing figure regenerates, and its caption's claim holds: the law of ReDGE's hard
    sample at the default knobs matches pi within Monte-Carlo error (5 standard errors)."""
    figure = _load_script("make_landing_figure")
    freq, stderr = figure.main(tmp_path / "landing.png")
    assert (tmp_path / "landing.png").stat().st_size > 10_000
    assert np.all(np.abs(freq - np.array(figure.PROBS)) < 5 * stderr)
    assert (REPO_ROOT / "book" / "assets" / "landing.png").is_file()
