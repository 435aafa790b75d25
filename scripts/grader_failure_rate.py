"""Measure how often the problem set's checks fail a correct solution, and write it down.

Every check of ``book/course/problem_set_solutions.md`` that draws random numbers is a function
``check_task_N(seed=...)``: its default seed is what students and the grader run. A correct
solution can still fail a statistical check by chance at another seed (a tolerance of 4.5
standard errors is not a certainty), so "a correct solution always passes" would overstate what
a fixed seed buys. This script runs each randomised check of the reference solutions with many
other seeds and counts the failures; the rate is stated with its exact (Clopper-Pearson) 95 %
interval from :func:`scipy.stats.binomtest`.

Commands (from the repository root)::

    python scripts/grader_failure_rate.py measure --seeds 200   # writes the CSV (minutes)
    python scripts/grader_failure_rate.py render                # rewrites teachers.md's block
    python scripts/grader_failure_rate.py render --check        # exit 1 if the block is stale

The CSV is ``book/course/grader_failure_rate.csv``; ``render`` writes the table and sentence
between the ``% BEGIN GENERATED: grader-failure-rate`` and ``% END GENERATED`` lines of
``book/course/teachers.md`` (tests/test_course.py checks that they agree).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import os
import sys
import textwrap
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO_ROOT / "book" / "course" / "problem_set_solutions.md"
TEACHERS = REPO_ROOT / "book" / "course" / "teachers.md"
RESULTS = REPO_ROOT / "book" / "course" / "grader_failure_rate.csv"
COLUMNS = ("task", "n_runs", "n_failures", "rate", "ci_low", "ci_high", "seconds_per_run")
BEGIN = "% BEGIN GENERATED: grader-failure-rate"
END = "% END GENERATED: grader-failure-rate"
#: Seeds for the measurement start here, away from the checks' own default seeds (1 to 9).
FIRST_SEED = 10_000


def load_checks(path: Path = SOLUTIONS) -> dict[int, object]:
    """Execute the solutions' code cells (not the solution-only figures) in one namespace and
    return the randomised checks, ``{task number: check_task_N}`` (those with a ``seed``)."""
    import jupytext
    import matplotlib

    matplotlib.use("Agg")
    notebook = jupytext.read(path)
    namespace: dict[str, object] = {"__name__": "problem_set"}
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        for cell in notebook.cells:
            tags = cell.get("metadata", {}).get("tags", [])
            if cell.cell_type == "code" and "solution-only" not in tags:
                exec(compile(cell.source, str(path), "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    checks = {}
    for name, value in namespace.items():
        if name.startswith("check_task_") and callable(value):
            if "seed" in inspect.signature(value).parameters:
                checks[int(name.removeprefix("check_task_"))] = value
    return dict(sorted(checks.items()))


def clopper_pearson(failures: int, runs: int) -> tuple[float, float]:
    """Exact two-sided 95 % interval of a binomial proportion."""
    from scipy.stats import binomtest

    ci = binomtest(failures, runs).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def measure(n_seeds: int, tasks: list[int] | None = None) -> list[dict[str, object]]:
    """Run every randomised check with seeds ``FIRST_SEED + i``, ``i < n_seeds``.

    Returns one row per task and a row ``any``: the seeds at which at least one check failed
    (a whole correct submission graded at that seed would lose a task).
    """
    import contextlib
    import io

    checks = load_checks()
    if tasks:
        checks = {k: v for k, v in checks.items() if k in tasks}
    failed_at: dict[int, set[int]] = {k: set() for k in checks}
    seconds: dict[int, float] = dict.fromkeys(checks, 0.0)
    for i in range(n_seeds):
        seed = FIRST_SEED + i
        for task, check in checks.items():
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    check(seed=seed)
            except AssertionError:
                failed_at[task].add(seed)
            seconds[task] += time.perf_counter() - start
        if (i + 1) % 10 == 0:
            print(f"{i + 1}/{n_seeds} seeds, failures so far: "
                  f"{ {k: len(v) for k, v in failed_at.items()} }", flush=True)
    rows = []
    for task in checks:
        k = len(failed_at[task])
        low, high = clopper_pearson(k, n_seeds)
        rows.append({"task": str(task), "n_runs": n_seeds, "n_failures": k, "rate": k / n_seeds,
                     "ci_low": low, "ci_high": high,
                     "seconds_per_run": seconds[task] / n_seeds})
    any_failed = set().union(*failed_at.values()) if failed_at else set()
    low, high = clopper_pearson(len(any_failed), n_seeds)
    rows.append({"task": "any", "n_runs": n_seeds, "n_failures": len(any_failed),
                 "rate": len(any_failed) / n_seeds, "ci_low": low, "ci_high": high,
                 "seconds_per_run": sum(seconds.values()) / n_seeds})
    return rows


def write_rows(rows: list[dict[str, object]], path: Path = RESULTS) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in COLUMNS})


def read_rows(path: Path = RESULTS) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _percent(x: float) -> str:
    return f"{100 * x:.1f} %" if x >= 0.001 or x == 0 else f"{100 * x:.2f} %"


def render(rows: list[dict[str, str]]) -> str:
    """The Markdown block for teachers.md: a sentence and a table, from the CSV rows."""
    by_task = {row["task"]: row for row in rows}
    total = by_task["any"]
    n = int(total["n_runs"])
    tasks = [row for row in rows if row["task"] != "any"]
    lines = [
        BEGIN,
        "% Generated by `python scripts/grader_failure_rate.py render` from",
        "% book/course/grader_failure_rate.csv; do not edit by hand.",
        textwrap.fill(
            f"Run with {n} other seeds each, the randomised checks of the reference solutions "
            f"(tasks {', '.join(row['task'] for row in tasks)}) failed a correct solution at "
            f"{total['n_failures']} of {n} seeds: a chance failure rate of "
            f"{_percent(float(total['rate']))} for a whole submission, with an exact "
            f"(Clopper-Pearson) 95 % interval of [{_percent(float(total['ci_low']))}, "
            f"{_percent(float(total['ci_high']))}]. Per task:",
            width=100, break_long_words=False, break_on_hyphens=False),
        "",
        "| task | seeds | failures | rate | 95 % interval | seconds per run |",
        "|---|---|---|---|---|---|",
    ]
    for row in tasks:
        lines.append(
            f"| {row['task']} | {row['n_runs']} | {row['n_failures']} | "
            f"{_percent(float(row['rate']))} | [{_percent(float(row['ci_low']))}, "
            f"{_percent(float(row['ci_high']))}] | {float(row['seconds_per_run']):.2f} |")
    lines.append(END)
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the lines from BEGIN to END (inclusive) replaced by ``block``."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"teachers.md has no '{BEGIN}' ... '{END}' block")
    return text[:start] + block + text[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("measure", help="run the checks with many seeds and write the CSV")
    run.add_argument("--seeds", type=int, default=200)
    run.add_argument("--tasks", type=int, nargs="*", help="only these tasks (default: all)")
    run.add_argument("--out", type=Path, default=RESULTS)
    show = sub.add_parser("render", help="write the CSV's numbers into teachers.md")
    show.add_argument("--check", action="store_true", help="exit 1 if teachers.md is stale")
    args = parser.parse_args(argv)

    if args.command == "measure":
        if args.seeds < 1:
            parser.error(f"--seeds must be at least 1, got {args.seeds}")
        rows = measure(args.seeds, args.tasks)
        write_rows(rows, args.out)
        for row in rows:
            print(row)
        return 0
    text = TEACHERS.read_text(encoding="utf-8")
    expected = replace_block(text, render(read_rows()))
    if args.check:
        if text != expected:
            print("teachers.md's failure-rate block is stale: run "
                  "`python scripts/grader_failure_rate.py render`", file=sys.stderr)
            return 1
        return 0
    TEACHERS.write_text(expected, encoding="utf-8")
    print(f"wrote {TEACHERS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
