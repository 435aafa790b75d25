"""Print the per-chapter execution-time table at the end of `make test`.

Two measurements per executed page:

* nbval: the sum of the cell times in ``_build/nbval/junit.xml`` (written by
  ``scripts/nbval_chapters.sh``; kernel start-up not included);
* book: the execution time jupyter-book (myst-nb) recorded for the page in the last build
  (``_build/.doctrees/environment.pickle``; the same numbers as the book's execution-statistics
  page).

The table is also written to ``_build/exec_times.txt``. Pages over the per-chapter budget are
marked; the script fails only when a page's build execution did not succeed.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from book_tools import REPO_ROOT, notebook_sources

BUDGET_S = 60.0


def nbval_times(junit: Path) -> dict[str, float]:
    """Seconds per notebook stem, summed over the cells nbval executed."""
    if not junit.is_file():
        return {}
    times: dict[str, float] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("file") or case.get("classname", "")
        stem = Path(name).stem if name.endswith(".ipynb") else name.rsplit(".", 2)[-2]
        times[stem] = times.get(stem, 0.0) + float(case.get("time", 0.0))
    return times


def build_times(doctrees: Path) -> dict[str, dict]:
    """myst-nb's execution record per docname from the last jupyter-book build."""
    pickle_path = doctrees / "environment.pickle"
    if not pickle_path.is_file():
        return {}
    with pickle_path.open("rb") as handle:
        env = pickle.load(handle)  # noqa: S301 - our own build output
    metadata = getattr(env, "nb_metadata", {}) or {}
    return {doc: data["exec_data"] for doc, data in metadata.items() if data.get("exec_data")}


def format_table(
    docs: list[str], nbval: dict[str, float], build: dict[str, dict]
) -> tuple[str, bool]:
    """The table as text (one row per docname), and whether every build execution succeeded."""
    width = max([len("page")] + [len(d) for d in docs])
    lines = [
        f"{'page':<{width}}  {'nbval (s)':>9}  {'book (s)':>9}  status",
        f"{'-' * width}  {'-' * 9}  {'-' * 9}  ------",
    ]
    ok = True
    total_nbval = total_book = 0.0
    for doc in docs:
        stem = doc.rsplit("/", 1)[-1]
        t_nbval = nbval.get(stem)
        data = build.get(doc)
        t_book = data["runtime"] if data else None
        status = "not built" if data is None else ("ok" if data["succeeded"] else "FAILED")
        if data is not None and not data["succeeded"]:
            ok = False
        if max(t_nbval or 0.0, t_book or 0.0) > BUDGET_S:
            status += f" (over {BUDGET_S:.0f} s)"
        total_nbval += t_nbval or 0.0
        total_book += t_book or 0.0
        lines.append(f"{doc:<{width}}  {_fmt(t_nbval)}  {_fmt(t_book)}  {status}")
    lines.append(f"{'-' * width}  {'-' * 9}  {'-' * 9}")
    lines.append(f"{'total':<{width}}  {_fmt(total_nbval)}  {_fmt(total_book)}")
    return "\n".join(lines), ok


def _fmt(value: float | None) -> str:
    return f"{'—':>9}" if value is None else f"{value:9.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, default=REPO_ROOT / "_build")
    args = parser.parse_args(argv)
    nbval = nbval_times(args.build_dir / "nbval" / "junit.xml")
    build = build_times(args.build_dir / ".doctrees")
    if not nbval and not build:
        print("exec table: no timing data (run nbval and the book build first)", file=sys.stderr)
        return 1
    docs = [str(p.relative_to(REPO_ROOT).with_suffix("")) for p in notebook_sources()]
    docs += sorted(set(build) - set(docs))
    table, ok = format_table(docs, nbval, build)
    header = "Per-chapter execution time (nbval: sum of cell times; book: jupyter-book build)"
    text = f"{header}\n{table}\n"
    print(text, end="")
    (args.build_dir / "exec_times.txt").write_text(text, encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
