"""The course unit: the problem set assesses what the chapters do not already print, the grader
passes the reference solutions, and the teachers' page states the grader's measured chance
failure rate.

What each test compares against:

* graded code: every chapter and appendix source (``chapters/*.md``, ``book/appendix/*.md``),
  searched for the names of the functions and variables the students write and for any 4
  consecutive non-trivial lines of the solution code (whitespace removed); the detector itself
  is tested on planted copies;
* the grader: ``scripts/make_problem_set.py grade`` run on the solutions file (every task solved);
* the failure rate: the CSV written by ``scripts/grader_failure_rate.py measure``, its
  Clopper-Pearson intervals recomputed with scipy, and teachers.md's generated block re-rendered
  from it.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import grader_failure_rate  # noqa: E402
import make_problem_set  # noqa: E402

SOLUTIONS = make_problem_set.SOLUTIONS
#: The book's teaching pages: the chapters and the appendix.
CHAPTERS = sorted((REPO / "chapters").glob("*.md")) + sorted(
    (REPO / "book" / "appendix").glob("*.md"))
WINDOW = 4

_BEGIN = re.compile(r"^[ \t]*# BEGIN SOLUTION")
_END = re.compile(r"^[ \t]*# END SOLUTION")
_DEF = re.compile(r"^(?P<indent>[ \t]*)def (?P<name>\w+)\(")
_ASSIGN = re.compile(r"^(?P<name>[A-Za-z_]\w*)[ \t]*(?::[^=]*)?=[^=]")


def _code_cells(text: str) -> list[list[str]]:
    """The lines of every ``{code-cell}`` of a MyST source, without the cell options."""
    cells, current = [], None
    for line in text.splitlines():
        if current is None:
            if line.startswith("```{code-cell}"):
                current = []
        elif line.startswith("```"):
            cells.append([c for c in current if not c.startswith(":")])
            current = None
        else:
            current.append(line)
    return cells


def solution_blocks(text: str) -> list[list[str]]:
    """The lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` of each block, in order."""
    blocks, current = [], None
    for cell in _code_cells(text):
        for line in cell:
            if _BEGIN.match(line):
                current = []
            elif _END.match(line):
                blocks.append(current)
                current = None
            elif current is not None:
                current.append(line)
    return blocks


def graded_names(text: str) -> set[str]:
    """Names the students write: each function whose body holds a solution block, and each
    top-level name assigned inside a top-level solution block."""
    names = set()
    for cell in _code_cells(text):
        enclosing: list[tuple[int, str]] = []
        inside = False
        for line in cell:
            if _BEGIN.match(line):
                indent = len(line) - len(line.lstrip())
                owners = [name for depth, name in enclosing if depth < indent]
                if owners:
                    names.add(owners[-1])
                inside = True
                continue
            if _END.match(line):
                inside = False
                continue
            match = _DEF.match(line)
            if match:
                depth = len(match.group("indent"))
                enclosing = [(d, n) for d, n in enclosing if d < depth]
                enclosing.append((depth, match.group("name")))
            assign = _ASSIGN.match(line)
            if inside and assign:
                names.add(assign.group("name"))
    return names


def _normalise(line: str) -> str:
    return re.sub(r"\s+", "", line)


def _trivial(normalised: str) -> bool:
    """Lines too common to count: blank, comments, imports, lone brackets, ``return x``."""
    return (not normalised or normalised.startswith("#")
            or re.match(r"^(import|from)\w", normalised) is not None
            or re.fullmatch(r"[\[\](){},:;]*", normalised) is not None
            or re.fullmatch(r"return\w*", normalised) is not None)


def _meaningful(lines: list[str]) -> list[str]:
    return [n for n in map(_normalise, lines) if not _trivial(n)]


def solution_windows(text: str) -> set[tuple[str, ...]]:
    """Every run of WINDOW consecutive non-trivial lines inside one solution block."""
    windows = set()
    for block in solution_blocks(text):
        lines = _meaningful(block)
        windows |= {tuple(lines[i:i + WINDOW]) for i in range(len(lines) - WINDOW + 1)}
    return windows


def copied_code(page: str, windows: set[tuple[str, ...]], names: set[str]) -> list[str]:
    """What ``page`` (a chapter source) shares with the solutions: graded names and blocks."""
    found = [f"name {name!r}" for name in sorted(names)
             if re.search(rf"\b{re.escape(name)}\b", page)]
    lines = _meaningful(page.splitlines())
    for i in range(len(lines) - WINDOW + 1):
        if tuple(lines[i:i + WINDOW]) in windows:
            found.append("block: " + " / ".join(lines[i:i + WINDOW]))
    return found


# ------------------------------------------------------------------------------------------------
# No graded solution in the chapters
# ------------------------------------------------------------------------------------------------

SOLUTION_TEXT = SOLUTIONS.read_text(encoding="utf-8")
NAMES = graded_names(SOLUTION_TEXT)
WINDOWS = solution_windows(SOLUTION_TEXT)


def test_the_solutions_have_graded_names_and_blocks() -> None:
    expected = {"score_identity_gradient", "onehot_posterior_mean", "train_logits",
                "conditional_gap", "gap_constant", "rao_blackwell_redge", "PREREGISTRATION",
                "relative_squared_errors", "run_comparison"}
    assert NAMES == expected
    assert len(WINDOWS) >= 20


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_chapter_contains_a_graded_solution(path: Path) -> None:
    found = copied_code(path.read_text(encoding="utf-8"), WINDOWS, NAMES)
    assert not found, f"{path.name} prints graded work of the problem set: {found}"


def test_the_detector_finds_planted_copies() -> None:
    page = CHAPTERS[0].read_text(encoding="utf-8")
    assert copied_code(page, WINDOWS, NAMES) == []
    block = max(solution_blocks(SOLUTION_TEXT), key=lambda b: len(_meaningful(b)))
    # The copy is re-indented, respaced and interleaved with blank lines and an import.
    copy = ["import torch", ""]
    for line in block:
        copy += ["        " + re.sub(r" ", "  ", line.strip()), ""]
    planted = page + "\n```{code-cell} ipython3\n" + "\n".join(copy) + "\n```\n"
    found = copied_code(planted, WINDOWS, set())
    assert found and all(f.startswith("block: ") for f in found)
    # Three lines are not a copy (the window is four), the fourth makes one.
    lines = [line for line in block if not _trivial(_normalise(line))]
    assert copied_code(page + "\n" + "\n".join(lines[:WINDOW - 1]), WINDOWS, set()) == []
    assert copied_code(page + "\n" + "\n".join(lines[:WINDOW]), WINDOWS, set())
    # A graded name in prose counts too, but not as part of a longer word.
    assert copied_code(page + "\nCall `gap_constant(soft, a)`.\n", set(), NAMES) == [
        "name 'gap_constant'"]
    assert copied_code(page + "\nmy_gap_constant_2 = 1\n", set(), NAMES) == []


def test_graded_names_include_enclosing_functions_and_top_level_assignments() -> None:
    source = (
        "```{code-cell} ipython3\ndef outer(x):\n    def helper(y):\n        return y\n"
        "    # BEGIN SOLUTION\n    return helper(x)\n    # END SOLUTION\n```\n\n"
        "```{code-cell} ipython3\n# BEGIN SOLUTION\nPLAN = {'a': 1}\n# END SOLUTION\n```\n"
    )
    assert graded_names(source) == {"outer", "PLAN"}


# ------------------------------------------------------------------------------------------------
# The grader on the reference solutions
# ------------------------------------------------------------------------------------------------


def test_the_grader_passes_the_reference_solutions() -> None:
    """Strict grading of the solutions file: every task solved (about a minute)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_problem_set.py"), "grade", str(SOLUTIONS)],
        cwd=REPO, capture_output=True, text=True, check=False)
    n_tasks = len(re.findall(r"^## Task \d", SOLUTION_TEXT, re.M))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"score: {n_tasks} of {n_tasks} tasks" in result.stdout
    assert "NOT SOLVED" not in result.stdout


# ------------------------------------------------------------------------------------------------
# The grader's measured chance failure rate
# ------------------------------------------------------------------------------------------------


def _stored_rows() -> list[dict[str, str]]:
    with grader_failure_rate.RESULTS.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_randomised_check_was_measured_with_many_seeds() -> None:
    seeded = {m for m in re.findall(r"^def check_task_(\d+)\(seed", SOLUTION_TEXT, re.M)}
    rows = _stored_rows()
    assert {row["task"] for row in rows} == seeded | {"any"}
    for row in rows:
        assert int(row["n_runs"]) >= 200, row
        n, k = int(row["n_runs"]), int(row["n_failures"])
        assert float(row["rate"]) == pytest.approx(k / n)
        low, high = grader_failure_rate.clopper_pearson(k, n)
        assert float(row["ci_low"]) == pytest.approx(low)
        assert float(row["ci_high"]) == pytest.approx(high)
        assert low <= k / n <= high


def test_teachers_page_states_the_measured_rate() -> None:
    text = grader_failure_rate.TEACHERS.read_text(encoding="utf-8")
    block = grader_failure_rate.render(_stored_rows())
    assert block in text, "teachers.md is stale: run `python scripts/grader_failure_rate.py render`"
    assert "always passes" not in text


def test_the_rendered_block_follows_the_numbers() -> None:
    rows = [
        {"task": "4", "n_runs": "200", "n_failures": "1", "rate": "0.005", "ci_low": "0.0001",
         "ci_high": "0.0275", "seconds_per_run": "0.2"},
        {"task": "any", "n_runs": "200", "n_failures": "1", "rate": "0.005",
         "ci_low": "0.0001", "ci_high": "0.0275", "seconds_per_run": "0.2"},
    ]
    block = grader_failure_rate.render(rows)
    words = " ".join(block.split())
    assert "at 1 of 200 seeds" in words and "rate of 0.5 %" in words
    assert "[0.01 %, 2.8 %]" in words
    text = f"before\n{grader_failure_rate.BEGIN}\nold\n{grader_failure_rate.END}\nafter\n"
    assert grader_failure_rate.replace_block(text, block) == f"before\n{block}\nafter\n"
    with pytest.raises(ValueError, match="no '% BEGIN GENERATED"):
        grader_failure_rate.replace_block("no block here", block)
