"""Habits of the site: alt text, the problem set, the browser check.

What each test compares against:

* ruff and codespell run in the Makefile's lint target (not here, so they run once); the
  80-column rule for code cells is tests/test_book.py's;
* alt text: the MyST sources of every page;
* the problem set: the student version regenerated from the solutions, and a strict execution of
  the student version, in which every check must fail until it is solved;
* the browser check: hand-written pages with known defects (and a working live figure), checked
  statically and, when Chromium is installed, in the browser;
* notebooks that run anywhere: every chapter's first cell, run with and without redge_mini; the
  wheel and results the site publishes, opened as pip and the cell open them; the Colab button;
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

import book_tools  # noqa: E402
import browser_check  # noqa: E402
import make_problem_set  # noqa: E402

#: Every page source: chapters and the book's own pages (front matter, course unit).
PAGES = sorted(REPO.glob("chapters/*.md")) + sorted(
    p for p in (REPO / "book").rglob("*.md") if not {"assets", "results"} & set(p.parts)
)


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)


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


PNG_DOT = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8ffff3f0005fe02fe0def46b80000000049454e44ae426082"
)
#: A live figure whose slider changes nothing (the check must notice).
DEAD_LIVE_FIGURE = (
    '<div class="redge-live" data-kind="dead"><input type="range" min="0" max="3" value="1">'
    "<svg><circle r='1'></circle></svg></div>"
)


def _tiny_site(root: Path) -> Path:
    """A two-page site: ``index.html`` is fine (with a working live figure), ``bad.html`` has one
    of every defect the check looks for."""
    from redge_mini.book.widgets import live_figure

    root.mkdir(parents=True)
    (root / "img.png").write_bytes(PNG_DOT)
    live = live_figure("sampler", logits=[1.0, 0.0, -0.5], t_1=0.5, n_steps=5, seed=0,
                       n_law=200).data
    (root / "index.html").write_text(
        '<html><body><h1 id="top">Home</h1><img src="img.png" alt="a dot">'
        f'<a href="bad.html#sec">bad</a><a href="#top">top</a>{live}'
        "<p>Typeset <span class='math'><mjx-container>x</mjx-container></span></p>"
        "<pre>$$ not math in code $$</pre><code>\\frac{a}{b}</code></body></html>",
        encoding="utf-8",
    )
    (root / "bad.html").write_text(
        '<html><head><link rel="stylesheet" href="https://cdn.example.org/a.css"></head><body>'
        '<h2 id="sec">Bad</h2><p>Raw $$x^2$$ here.</p><img src="missing.png" alt="x">'
        '<a href="nowhere.html">x</a><a href="index.html#no-anchor">y</a>'
        "<mjx-merror data-mjx-error='Undefined control sequence'></mjx-merror>"
        '<div><script type="application/vnd.jupyter.widget-view+json">{"model_id": "dead"}'
        "</script></div><pre>" + "y" * 400 + "</pre>"
        "<script>document.body.appendChild(document.createElement('script')).src ="
        " 'https://cdn.example.org/late.js'; console.error('boom');</script>"
        f"{DEAD_LIVE_FIGURE}</body></html>",
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


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (.ci/run installs it)")
def test_browser_check_fails_on_a_broken_page_and_passes_a_good_one(tmp_path: Path) -> None:
    site = _tiny_site(tmp_path / "html")
    result = _run(sys.executable, str(REPO / "scripts" / "browser_check.py"), str(site))
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stderr
    assert "bad.html:" in report and "index.html:" not in report, report
    for expected in ("raw TeX (not typeset): ...Raw $$x^2$$", "MathJax error: Undefined control",
                     "widget dead is not drawn", "code block scrolls horizontally",
                     "image not displayed: missing.png", "broken link: nowhere.html",
                     "request leaves the site (blocked offline): https://cdn.example.org/late.js",
                     "console error: boom", "live figure 1 (dead) does not respond"):
        assert expected in report, report
    assert (tmp_path / "screenshots" / "landing.png").stat().st_size > 1000

    (site / "bad.html").unlink()
    (site / "index.html").write_text(
        (site / "index.html").read_text().replace('<a href="bad.html#sec">bad</a>', ""))
    result = _run(sys.executable, str(REPO / "scripts" / "browser_check.py"), str(site))
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# Notebooks that run anywhere (the run in a fresh environment: scripts/check_downloaded_notebook.py)
# ------------------------------------------------------------------------------------------------


def _install_code() -> str:
    cell = book_tools.install_cell()
    return cell.split("\n\n", 1)[1].rsplit("```", 1)[0]


@pytest.mark.parametrize("path", sorted(REPO.glob("chapters/*.md")), ids=lambda p: p.stem)
def test_every_chapter_starts_with_the_install_cell(path: Path) -> None:
    cells = _code_cells(path)
    assert cells, f"{path.name} has no code cell"
    assert cells[0].source == _install_code().strip(), (
        f"{path.name}: the first code cell is not the install cell; run "
        "`python scripts/book_tools.py install-cell`")


def test_install_cell_does_nothing_where_redge_mini_is_installed(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    namespace: dict = {}
    exec(_install_code(), namespace)
    assert calls == [] and "DIST" not in namespace


def test_install_cell_installs_the_wheel_and_results_from_the_site(monkeypatch, tmp_path,
                                                                  capsys) -> None:
    import importlib.util
    import urllib.request

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "redge_mini" else real_find_spec(name, *a))
    pip, fetched = [], []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: pip.append((cmd, k)))
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, to: fetched.append(url))
    monkeypatch.setattr(shutil, "unpack_archive", lambda *a: fetched.append(a))
    monkeypatch.delenv("REDGE_BOOK_DIST", raising=False)
    exec(_install_code(), {})
    dist = f"{book_tools.site_url()}/{book_tools.DIST}"
    (cmd, kwargs), = pip
    # torch is present here, so only the wheel is installed (and pip gives up after one retry)
    assert cmd[1:] == ["-m", "pip", "install", "-q", "--retries", "1", "--find-links", dist,
                       "redge_mini[book]"]
    assert kwargs == {"check": True}
    assert fetched == [f"{dist}/results.zip", ("results.zip", "book/results")]
    # offline: the results cannot be fetched, and the cell says so instead of failing
    monkeypatch.setenv("REDGE_BOOK_DIST", "file:///nowhere")

    def offline(url, to):
        raise OSError("no network")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    exec(_install_code(), {})
    assert pip[-1][0][8] == "file:///nowhere"
    assert "no stored results (no network)" in capsys.readouterr().out


def test_install_cell_installs_cpu_torch_and_says_what_to_do_offline(monkeypatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    missing = {"redge_mini", "torch"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else real_find_spec(name, *a))
    pip = []

    def offline_pip(cmd, **kwargs):
        pip.append(cmd)
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(subprocess, "run", offline_pip)
    monkeypatch.setenv("REDGE_BOOK_DIST", "file:///nowhere")
    with pytest.raises(RuntimeError, match="REDGE_BOOK_DIST") as error:
        exec(_install_code(), {})
    assert "clone" in str(error.value) and "file:///nowhere" in str(error.value)
    # no torch: the CPU build from PyTorch's CPU index, never the default (CUDA) one
    assert pip[0][-3:] == ["torch", "--index-url", book_tools.TORCH_CPU_INDEX]


def test_site_url_follows_the_repository_of_the_config(tmp_path: Path) -> None:
    assert book_tools.site_url() == "https://redge-book.github.io/redge-book"
    config = tmp_path / "_config.yml"
    config.write_text("repository:\n  url: https://github.com/Some-Org/a-book\n")
    assert book_tools.site_url(config) == "https://some-org.github.io/a-book"
    config.write_text("repository:\n  url: https://gitlab.com/x/y\n")
    with pytest.raises(ValueError, match="repository.url"):
        book_tools.site_url(config)


def test_published_wheel_and_results_are_what_pip_and_the_cell_read(tmp_path: Path) -> None:
    import zipfile
    from html.parser import HTMLParser

    had_build = (REPO / "build").exists()
    dist = book_tools.publish(tmp_path / "html")
    wheels = list(dist.glob("redge_mini-*-py3-none-any.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for needed in ("redge_mini/diffusion.py", "redge_mini/book/widgets.py",
                   "redge_mini/book/js/live.js"):
        assert needed in names
    metadata = zipfile.ZipFile(wheels[0]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert 'Requires-Dist: matplotlib; extra == "book"' in metadata
    stored = sorted(p.relative_to(REPO / "book" / "results").as_posix()
                    for p in (REPO / "book" / "results").rglob("*") if p.is_file())
    assert sorted(n for n in zipfile.ZipFile(dist / "results.zip").namelist()
                  if not n.endswith("/")) == stored

    class Links(HTMLParser):
        hrefs: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.hrefs += [v for k, v in attrs if tag == "a" and k == "href"]

    parser = Links()
    parser.feed((dist / "index.html").read_text())
    assert sorted(parser.hrefs) == sorted([wheels[0].name, "results.zip"])
    assert (REPO / "build").exists() == had_build, "publishing wrote build/ into the repository"


def test_colab_button_opens_the_published_notebook() -> None:
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["sphinx"]["local_extensions"] == {"book_tools": "scripts"}
    colab = {"type": "link", "text": "Colab", "url": "https://colab.research.google.com/github/"
             "redge-book/redge-book/blob/main/chapters/04_diffusion_on_the_simplex.md"}
    binder = {"type": "link", "text": "Binder", "url": "https://mybinder.org/v2/gh/x/y/main"}
    context = {"header_buttons": [{"type": "group", "buttons": [binder, colab]}]}
    book_tools._colab_to_notebook_branch(None, "chapters/04", "page.html", context, None)
    assert colab["url"] == ("https://colab.research.google.com/github/redge-book/redge-book/"
                            f"blob/{book_tools.NOTEBOOK_BRANCH}/chapters/"
                            "04_diffusion_on_the_simplex.ipynb")
    assert binder["url"] == "https://mybinder.org/v2/gh/x/y/main"


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
    runs = [step["run"].strip() for step in workflow["jobs"]["build"]["steps"] if "run" in step]
    assert runs == ["make book"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make book" in readme, "the README's book command is not `make book` any more"
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert len(uploads) == 1 and uploads[0]["with"]["path"] == "_build/html"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in steps)
    assert workflow["permissions"]["pages"] == "write"
    assert workflow["permissions"]["id-token"] == "write"


def test_deploy_workflow_publishes_the_notebooks_that_colab_opens() -> None:
    workflow = _workflow("deploy.yml")
    build = workflow["jobs"]["build"]["steps"]
    upload = [s for s in build if s.get("with", {}).get("name") == "notebooks"]
    assert len(upload) == 1 and upload[0]["with"]["path"] == "_build/html/_sources/chapters/*.ipynb"
    job = workflow["jobs"]["notebooks"]
    assert job["needs"] == "build" and job["permissions"] == {"contents": "write"}
    download = [s for s in job["steps"] if s.get("uses", "").startswith("actions/download")]
    assert download[0]["with"] == {"name": "notebooks", "path": "notebooks/chapters"}
    push = " ".join(s.get("run", "") for s in job["steps"])
    assert f"push --force origin HEAD:{book_tools.NOTEBOOK_BRANCH}" in " ".join(push.split())
