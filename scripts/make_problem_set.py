"""Write the student version of the problem set from the solutions, and grade a submission.

The solutions file ``book/course/problem_set_solutions.md`` is the single source. The student
version ``book/course/problem_set.md`` is generated from it:

* code between ``# BEGIN SOLUTION[: hint]`` and ``# END SOLUTION`` (whole lines, any indentation)
  becomes ``# TODO: hint`` and ``raise NotImplementedError(...)`` at the same indentation;
* Markdown between the lines ``% BEGIN SOLUTION`` and ``% END SOLUTION`` is dropped;
* ``% STUDENT: text`` lines become ``text`` (student-only Markdown, a comment in the solutions);
* code cells tagged ``check`` (and cells whose own TODO stub is at the top level) get the tag
  ``raises-exception``, so the unfilled student notebook still executes in nbval and in the book
  build: its check cells stop with ``NotImplementedError`` and the run goes on;
* code cells tagged ``solution-only`` (a figure of the solved tasks, say) are dropped.

Cell options must use the short ``:key: value`` form (``:tags: [check]``).

Commands (from the repository root)::

    python scripts/make_problem_set.py            # (re)write book/course/problem_set.md
    python scripts/make_problem_set.py --check    # exit 1 if the student version is stale
    python scripts/make_problem_set.py grade SUBMISSION.ipynb   # strict grading

``grade`` removes every ``raises-exception`` tag and executes the notebook with nbval, so a check
cell that fails (an unfilled TODO, a wrong answer) fails the grade; pytest lists the failing cells.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

REPO_ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO_ROOT / "book" / "course" / "problem_set_solutions.md"
STUDENT = REPO_ROOT / "book" / "course" / "problem_set.md"

CHECK_TAG = "check"
SOLUTION_ONLY_TAG = "solution-only"
RAISES_TAG = "raises-exception"
GENERATED_NOTE = (
    "% Generated from problem_set_solutions.md by scripts/make_problem_set.py: edit that file\n"
    "% and regenerate; do not edit this one.\n"
)

_CODE_BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION(?::[ \t]*(?P<hint>.*\S))?[ \t]*$")
_CODE_END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
_MD_BEGIN = re.compile(r"^% BEGIN SOLUTION[ \t]*$")
_MD_END = re.compile(r"^% END SOLUTION[ \t]*$")
_STUDENT = re.compile(r"^% STUDENT: ?(?P<text>.*)$")
_CELL_START = re.compile(r"^```\{code-cell\}")
_TAGS = re.compile(r"^:tags:[ \t]*\[(?P<tags>[^\]]*)\][ \t]*$")


def _split_front_matter(text: str) -> tuple[str, str]:
    if not text.startswith("---\n"):
        raise ValueError("the solutions file must start with jupytext front matter")
    end = text.index("\n---\n", 4) + len("\n---\n")
    return text[:end], text[end:]


def _with_raises_tag(options: list[str]) -> list[str]:
    """Cell option lines with ``raises-exception`` added to the tags (a tags line if none)."""
    for i, line in enumerate(options):
        match = _TAGS.match(line)
        if match:
            tags = [t.strip() for t in match.group("tags").split(",") if t.strip()]
            if RAISES_TAG not in tags:
                tags.append(RAISES_TAG)
            return options[:i] + [f":tags: [{', '.join(tags)}]"] + options[i + 1 :]
    return [f":tags: [{RAISES_TAG}]", *options]


def _cell_tags(options: list[str]) -> list[str]:
    for line in options:
        match = _TAGS.match(line)
        if match:
            return [t.strip() for t in match.group("tags").split(",") if t.strip()]
    return []


def _student_code(body: list[str], where: str) -> tuple[list[str], bool]:
    """Replace the solution blocks of a code cell's body; returns (lines, has a top-level stub)."""
    out: list[str] = []
    top_level = False
    i = 0
    while i < len(body):
        begin = _CODE_BEGIN.match(body[i])
        if not begin:
            if _CODE_END.match(body[i]):
                raise ValueError(f"{where}: '# END SOLUTION' without '# BEGIN SOLUTION'")
            out.append(body[i])
            i += 1
            continue
        end = next((j for j in range(i + 1, len(body)) if _CODE_END.match(body[j])), None)
        if end is None:
            raise ValueError(f"{where}: '# BEGIN SOLUTION' without '# END SOLUTION'")
        indent = begin.group("indent")
        hint = begin.group("hint") or "your code here"
        out.append(f"{indent}# TODO: {hint}")
        out.append(f'{indent}raise NotImplementedError("TODO: replace this line with your code")')
        top_level = top_level or indent == ""
        i = end + 1
    return out, top_level


def student_version(solutions: str) -> str:
    """The student version of a problem-set source (see the module docstring)."""
    front, body = _split_front_matter(solutions)
    lines = body.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        where = f"line {i + 1 + front.count(chr(10))}"
        if _CELL_START.match(line):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"{where}: code cell is not closed")
            cell = lines[i + 1 : end]
            n_options = next((k for k, c in enumerate(cell) if not c.startswith(":")), len(cell))
            options, code = cell[:n_options], cell[n_options:]
            i = end + 1
            if SOLUTION_ONLY_TAG in _cell_tags(options):
                if i < len(lines) and lines[i] == "" and (not out or out[-1] == ""):
                    i += 1
                continue
            code, top_level = _student_code(code, where)
            if CHECK_TAG in _cell_tags(options) or top_level:
                options = _with_raises_tag(options)
            out += [line, *options, *code, lines[end]]
        elif _MD_BEGIN.match(line):
            end = next((j for j in range(i + 1, len(lines)) if _MD_END.match(lines[j])), None)
            if end is None:
                raise ValueError(f"{where}: '% BEGIN SOLUTION' without '% END SOLUTION'")
            i = end + 1
            # Do not leave two blank lines where the block was.
            if i < len(lines) and lines[i] == "" and (not out or out[-1] == ""):
                i += 1
        elif _MD_END.match(line) or _CODE_END.match(line) or _CODE_BEGIN.match(line):
            raise ValueError(f"{where}: solution marker outside its block: {line.strip()!r}")
        else:
            student = _STUDENT.match(line)
            out.append(student.group("text") if student else line)
            i += 1
    return front + "\n" + GENERATED_NOTE + "\n".join(out).lstrip("\n")


def _task_of_cells(nb) -> list[str]:
    """For each code cell, in order, the ``##`` section it belongs to ("" before the first)."""
    section, owners = "", []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    section = line[3:].strip()
        elif cell.cell_type == "code":
            owners.append(section)
    return owners


def grade(notebook: Path, cell_timeout: int, python: str) -> int:
    """Execute ``notebook`` (``.ipynb`` or MyST ``.md``) with every check strict.

    Prints pytest's report, then one line per task (a ``##`` section holding a ``check`` cell):
    solved when every code cell of the section ran without error. Returns 0 when every task is
    solved and nothing else failed, 1 otherwise.
    """
    import jupytext

    nb = jupytext.read(notebook)
    tasks: dict[str, bool] = {}
    owners = _task_of_cells(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for cell, owner in zip(code_cells, owners, strict=True):
        tags = cell.get("metadata", {}).get("tags", [])
        if CHECK_TAG in tags:
            tasks[owner] = True
        if RAISES_TAG in tags:
            cell["metadata"]["tags"] = [t for t in tags if t != RAISES_TAG]
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        strict = Path(tmp) / f"{notebook.stem}_graded.ipynb"
        report = Path(tmp) / "junit.xml"
        jupytext.write(nb, strict)
        cmd = [
            python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
            "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout}",
            f"--junitxml={report}", str(strict),
        ]
        subprocess.run(cmd, check=False)
        if not report.is_file():
            print("grade: pytest produced no report", file=sys.stderr)
            return 1
        failed = {
            int(case.get("name", "").removeprefix("Cell "))
            for case in ElementTree.parse(report).iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        }
    other_failures = []
    for index in sorted(failed):
        owner = owners[index] if index < len(owners) else ""
        if owner in tasks:
            tasks[owner] = False
        else:
            other_failures.append(f"code cell {index} ({owner or 'before the first task'})")
    print("\nGrade of", notebook)
    for task, solved in tasks.items():
        print(f"  {'solved    ' if solved else 'NOT SOLVED'}  {task}")
    for what in other_failures:
        print(f"  ERROR       {what} failed")
    print(f"  score: {sum(tasks.values())} of {len(tasks)} tasks")
    return 0 if all(tasks.values()) and not other_failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the student version differs from the generated one")
    sub = parser.add_subparsers(dest="command")
    grader = sub.add_parser("grade", help="execute a submission with every check strict")
    grader.add_argument("notebook", type=Path)
    grader.add_argument("--cell-timeout", type=int, default=120)
    args = parser.parse_args(argv)

    if args.command == "grade":
        if not args.notebook.is_file():
            parser.error(f"no such notebook: {args.notebook}")
        return grade(args.notebook, args.cell_timeout, sys.executable)
    expected = student_version(SOLUTIONS.read_text(encoding="utf-8"))
    if args.check:
        current = STUDENT.read_text(encoding="utf-8") if STUDENT.is_file() else ""
        if current != expected:
            print(f"{STUDENT.relative_to(REPO_ROOT)} is stale: run "
                  "`python scripts/make_problem_set.py`", file=sys.stderr)
            return 1
        print(f"{STUDENT.relative_to(REPO_ROOT)} is up to date")
        return 0
    STUDENT.write_text(expected, encoding="utf-8")
    print(f"wrote {STUDENT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
