"""Habits of the site: lint and spelling, alt text, code width, the problem set, the browser check.

What each test compares against:

* ruff and codespell: their own rule sets (configured in ``pyproject.toml``);
* alt text and code width: the MyST sources of every page;
* the problem set: the student version regenerated from the solutions, and a strict execution of
  the student version, in which every check must fail until it is solved;
* the browser check: hand-written pages with known defects, checked statically and, when Chromium
  is installed, in the browser;
* the workflows: the README's commands and ``.ci/run``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import browser_check  # noqa: E402
import make_problem_set  # noqa: E402

#: Every page source: chapters and the book's own pages (front matter, course unit).
PAGES = sorted(REPO.glob("chapters/*.md")) + sorted(
    p for p in (REPO / "book").rglob("*.md") if not {"assets", "results"} & set(p.parts)
)
#: Code in chapters must fit the column at 1280 px without horizontal scrolling.
MAX_CODE_LINE = 80


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)


# ------------------------------------------------------------------------------------------------
# Lint and spelling
# ------------------------------------------------------------------------------------------------


def test_ruff_is_clean() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_codespell_is_clean() -> None:
    # "./" prefixes: the skip patterns of [tool.codespell] in pyproject.toml are written that way.
    targets = ["chapters", "book", "redge_mini", "scripts", "tests", "README.md", "CONTRIBUTING.md"]
    paths = [f"./{t}" for t in targets if (REPO / t).exists()]
    result = _run(sys.executable, "-m", "codespell_lib", *paths)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# Figures and code in the page sources
# ------------------------------------------------------------------------------------------------

_DIRECTIVE = re.compile(r"^(?P<fence>```+|:::+)\{(?P<name>figure|image|glue:figure)\}", re.M)
_MD_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)")


def _directive_options(text: str, start: int, fence: str) -> dict[str, str]:
    """The ``:key: value`` options of the directive whose opening line starts at ``start``."""
    lines = text[start:].splitlines()[1:]
    options: dict[str, str] = {}
    for line in lines:
        if line.startswith(fence[:3]):
            break
        match = re.match(r"^:(?P<key>[\w-]+):\s*(?P<value>.*)$", line)
        if not match:
            break
        options[match.group("key")] = match.group("value").strip()
    return options


def figures_without_alt(path: Path) -> list[str]:
    """Figures of one MyST page that have no alt text, as ``file:line: what`` strings."""
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(REPO)
    missing = []
    for match in _DIRECTIVE.finditer(text):
        options = _directive_options(text, match.start(), match.group("fence"))
        if not options.get("alt"):
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"{rel}:{line}: {{{match.group('name')}}} without :alt:")
    for match in _MD_IMAGE.finditer(text):
        if not match.group("alt").strip():
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"{rel}:{line}: image {match.group('src')} without alt text")
    if "kernelspec" in text.split("\n---", 1)[0]:
        notebook = jupytext.read(path)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            mystnb = cell.metadata.get("mystnb", {})
            has_alt = bool(mystnb.get("image", {}).get("alt"))
            shows_figure = "plt.show()" in cell.source and "glue(" not in cell.source
            if ("figure" in mystnb or shows_figure) and not has_alt:
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                missing.append(
                    f"{rel}: code cell {index} ({first[:40]!r}) shows a figure without "
                    "mystnb image alt text"
                )
    return missing


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_figure_has_alt_text(path: Path) -> None:
    missing = figures_without_alt(path)
    assert not missing, "\n".join(missing)


def long_code_lines(path: Path, limit: int = MAX_CODE_LINE) -> list[str]:
    """Lines of a page's code cells longer than ``limit`` characters."""
    text = path.read_text(encoding="utf-8")
    if "kernelspec" not in text.split("\n---", 1)[0]:
        return []
    rel = path.relative_to(REPO)
    found = []
    for index, cell in enumerate(jupytext.read(path).cells):
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if len(line) > limit:
                found.append(f"{rel}: code cell {index}: {len(line)} characters: {line[:60]}...")
    return found


@pytest.mark.parametrize(
    "path", [p for p in PAGES if "book" in p.relative_to(REPO).parts[:1]],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_book_pages_code_fits_the_column(path: Path) -> None:
    """Notebook pages under book/ (chapters/ is covered by tests/test_book.py)."""
    found = long_code_lines(path)
    assert not found, "\n".join(found)


def test_alt_text_check_catches_missing_alt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n\n```{figure} a.png\n:name: fig-a\n\nCaption.\n```\n\n"
        "```{glue:figure} key\n:alt: A described figure.\n\nCaption.\n```\n\n![](b.png)\n",
        encoding="utf-8",
    )
    missing = figures_without_alt(page)
    assert len(missing) == 2
    assert "{figure} without :alt:" in missing[0]
    assert "b.png" in missing[1]


# ------------------------------------------------------------------------------------------------
# The problem set
# ------------------------------------------------------------------------------------------------

SOLUTIONS = make_problem_set.SOLUTIONS
STUDENT = make_problem_set.STUDENT


def test_student_version_is_generated_from_the_solutions() -> None:
    expected = make_problem_set.student_version(SOLUTIONS.read_text(encoding="utf-8"))
    assert STUDENT.read_text(encoding="utf-8") == expected, (
        "book/course/problem_set.md is stale: run `python scripts/make_problem_set.py`"
    )


def _solution_lines(text: str) -> list[str]:
    """Non-trivial lines inside the solution blocks (code and Markdown) of the solutions file."""
    lines, inside = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"^(# |% )BEGIN SOLUTION", stripped):
            inside = True
        elif re.match(r"^(# |% )END SOLUTION$", stripped):
            inside = False
        elif inside and len(stripped) > 12 and not stripped.startswith("%"):
            lines.append(stripped)
    return lines


def test_student_version_contains_no_solution() -> None:
    solutions = SOLUTIONS.read_text(encoding="utf-8")
    student = STUDENT.read_text(encoding="utf-8")
    student_lines = {line.strip() for line in student.splitlines()}
    secret = _solution_lines(solutions)
    assert len(secret) >= 10, "the solutions file has (almost) no marked solution"
    leaked = [line for line in secret if line in student_lines]
    assert not leaked, f"solution lines in the student version: {leaked}"
    assert "SOLUTION" not in student
    assert student.count("raise NotImplementedError") == solutions.count("# BEGIN SOLUTION")


def _code_cells(path: Path) -> list:
    return [c for c in jupytext.read(path).cells if c.cell_type == "code"]


def test_check_cells_are_tagged_for_the_build() -> None:
    student_checks = [c for c in _code_cells(STUDENT) if "check" in c.metadata.get("tags", [])]
    assert len(student_checks) >= 5
    for cell in student_checks:
        assert "raises-exception" in cell.metadata["tags"]
    for cell in _code_cells(SOLUTIONS):
        assert "raises-exception" not in cell.metadata.get("tags", []), (
            "the solutions must pass every check without allowances"
        )


def test_generator_replaces_blocks_and_rejects_unbalanced_markers() -> None:
    source = (
        "---\nkernelspec:\n  name: python3\n---\n\n"
        "% STUDENT: # Student title\n% BEGIN SOLUTION\n# Solutions title\n% END SOLUTION\n\n"
        "```{code-cell} ipython3\ndef f(x):\n    # BEGIN SOLUTION: return twice x.\n"
        "    return 2 * x\n    # END SOLUTION\n```\n\n"
        "```{code-cell} ipython3\n:tags: [check]\n\nassert f(1) == 2\n```\n\n"
        "```{code-cell} ipython3\n:tags: [solution-only]\n\nplot_the_solution()\n```\n"
    )
    out = make_problem_set.student_version(source)
    assert "# Student title" in out and "Solutions title" not in out
    assert "    # TODO: return twice x.\n    raise NotImplementedError(" in out
    assert "return 2 * x" not in out
    assert ":tags: [check, raises-exception]" in out
    assert "plot_the_solution" not in out
    with pytest.raises(ValueError, match="without '# END SOLUTION'"):
        make_problem_set.student_version(source.replace("    # END SOLUTION\n", ""))
    with pytest.raises(ValueError, match="without '% END SOLUTION'"):
        make_problem_set.student_version(source.replace("% END SOLUTION\n", ""))


def test_unsolved_student_version_fails_every_task_when_graded() -> None:
    """Strict grading (raises-exception removed): every check of the unfilled notebook fails."""
    result = _run(sys.executable, str(REPO / "scripts" / "make_problem_set.py"), "grade",
                  str(STUDENT))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    n_tasks = len(re.findall(r"^## Task \d", STUDENT.read_text(encoding="utf-8"), re.M))
    assert result.stdout.count("NOT SOLVED") == n_tasks, result.stdout[-3000:]
    assert f"score: 0 of {n_tasks} tasks" in result.stdout


# ------------------------------------------------------------------------------------------------
# The browser check (scripts/browser_check.py)
# ------------------------------------------------------------------------------------------------


def test_dom_check_finds_raw_tex_but_not_typeset_math_or_code() -> None:
    good = (
        "<body><p>Typeset <span class='math'><mjx-container>x</mjx-container></span></p>"
        "<pre>$$ not math in code $$</pre><code>\\frac{a}{b}</code></body>"
    )
    assert browser_check.dom_problems(good) == []
    bad = "<body><section class='tex2jax_ignore'><p>Raw \\(\\alpha\\) here</p></section></body>"
    problems = browser_check.dom_problems(bad)
    assert len(problems) == 1 and "raw TeX" in problems[0]
    error = "<body><mjx-merror data-mjx-error='Undefined control sequence'></mjx-merror></body>"
    assert "MathJax error" in browser_check.dom_problems(error)[0]


def test_dom_check_finds_empty_widgets_and_remote_scripts() -> None:
    view = (
        '<script type="application/vnd.jupyter.widget-view+json">{"model_id": "abc123"}</script>'
    )
    drawn = (
        f'<div><div class="widget-subarea"><div class="jupyter-widgets"></div></div>{view}</div>'
    )
    assert browser_check.dom_problems(f"<body>{drawn}</body>") == []
    empty = f'<div><div class="widget-subarea"></div>{view}</div>'
    assert browser_check.dom_problems(f"<body>{empty}</body>") == ["widget abc123 is not drawn"]
    assert browser_check.dom_problems(f"<body><div>{view}</div></body>") == [
        "widget abc123 is not drawn"
    ]
    remote = '<head><script src="https://cdn.example.org/x.js"></script></head>'
    assert "loads remote" in browser_check.dom_problems(remote)[0]


def _tiny_site(root: Path) -> Path:
    """A two-page site: ``index.html`` is fine, ``bad.html`` has one of every static defect."""
    root.mkdir(parents=True)
    (root / "img.png").write_bytes(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c63f8ffff3f0005fe02fe0def46b80000000049454e44ae426082"
        )
    )
    (root / "index.html").write_text(
        '<html><body><h1 id="top">Home</h1><img src="img.png" alt="a dot">'
        '<a href="bad.html#sec">bad</a><a href="#top">top</a></body></html>',
        encoding="utf-8",
    )
    (root / "bad.html").write_text(
        '<html><head><link rel="stylesheet" href="https://cdn.example.org/a.css"></head><body>'
        '<h2 id="sec">Bad</h2><p>Raw $$x^2$$ here.</p><img src="missing.png" alt="x">'
        '<a href="nowhere.html">x</a><a href="index.html#no-anchor">y</a>'
        '<div><script type="application/vnd.jupyter.widget-view+json">{"model_id": "dead"}'
        "</script></div><pre>" + "y" * 400 + "</pre></body></html>",
        encoding="utf-8",
    )
    return root


def test_static_check_finds_broken_images_links_anchors_and_remote_styles(tmp_path: Path) -> None:
    site = _tiny_site(tmp_path / "html")
    pages = browser_check.find_pages(site)
    problems = browser_check.static_problems(site, pages)
    assert set(problems) == {site / "bad.html"}
    text = "\n".join(problems[site / "bad.html"])
    assert "loads remote https://cdn.example.org/a.css" in text
    assert "broken image: missing.png" in text
    assert "broken link: nowhere.html" in text
    assert "no anchor #no-anchor" in text


def test_static_check_wants_an_ipynb_download_on_notebook_pages(tmp_path: Path) -> None:
    site = tmp_path / "html"
    (site / "_sources").mkdir(parents=True)
    (site / "_sources" / "nb.ipynb").write_text("{}", encoding="utf-8")
    cell = '<div class="cell docutils container"><pre>1 + 1</pre></div>'
    (site / "nb.html").write_text(f"<html><body>{cell}</body></html>", encoding="utf-8")
    problems = browser_check.static_problems(site, [site / "nb.html"])
    assert problems == {site / "nb.html": ["notebook page without a .ipynb download link"]}
    link = '<a href="_sources/nb.ipynb">.ipynb</a>'
    (site / "nb.html").write_text(f"<html><body>{link}{cell}</body></html>", encoding="utf-8")
    assert browser_check.static_problems(site, [site / "nb.html"]) == {}


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return name
    return None


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed")
def test_browser_check_fails_on_a_broken_page_and_passes_a_good_one(tmp_path: Path) -> None:
    site = _tiny_site(tmp_path / "html")
    result = _run(sys.executable, str(REPO / "scripts" / "browser_check.py"), str(site),
                  "--budget-ms", "2000")
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stderr
    assert "bad.html:" in report and "index.html:" not in report
    for expected in ("raw TeX", "widget dead is not drawn", "scrolls horizontally",
                     "broken image", "loads remote"):
        assert expected in report, report
    assert (tmp_path / "screenshots" / "landing.png").is_file()

    (site / "bad.html").unlink()
    (site / "index.html").write_text(
        '<html><body><h1>Home</h1><img src="img.png" alt="a dot"></body></html>',
        encoding="utf-8",
    )
    result = _run(sys.executable, str(REPO / "scripts" / "browser_check.py"), str(site),
                  "--budget-ms", "2000")
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# Workflows
# ------------------------------------------------------------------------------------------------


def _workflow(name: str) -> dict:
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict) and "jobs" in data
    return data


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_ci_workflow_runs_the_ci_script_on_python_311() -> None:
    steps = _steps(_workflow("ci.yml"))
    assert any(step.get("run", "").strip() == "bash .ci/run" for step in steps)
    versions = [s["with"]["python-version"] for s in steps if "setup-python" in s.get("uses", "")]
    assert versions == ["3.11"]
    assert (REPO / ".ci" / "run").is_file()


def test_deploy_workflow_builds_with_the_readme_command_and_publishes_the_site() -> None:
    workflow = _workflow("deploy.yml")
    steps = _steps(workflow)
    runs = [step["run"].strip() for step in steps if "run" in step]
    assert runs == ["make book"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make book" in readme, "the README's book command is not `make book` any more"
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert len(uploads) == 1 and uploads[0]["with"]["path"] == "_build/html"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in steps)
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["permissions"]["id-token"] == "write"
