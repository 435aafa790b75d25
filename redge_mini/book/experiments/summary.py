"""Tidy results: one row per reported number, with a 95 % t-interval, in ``summary.csv``.

Every experiment writes ``<results>/<experiment>/summary.csv`` with the columns
:data:`COLUMNS`; the chapters and the synthesis chapter read these files (never hand-typed
numbers). Intervals come from :mod:`scipy.stats` (Student's t over units). Comparisons between
estimators are not made here: :mod:`.verdicts` computes them, by one rule, from ``units.csv``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ...registry import ALL_ESTIMATORS
from .. import runtime

__all__ = [
    "COLUMNS",
    "ESTIMATOR_NAMES",
    "Row",
    "knob_string",
    "read_summary",
    "summary_row",
    "t_interval",
    "timing_rows",
    "write_summary",
]

#: Column order of every ``summary.csv``.
COLUMNS: tuple[str, ...] = (
    "experiment",
    "setting",
    "estimator",
    "knobs",
    "metric",
    "budget",
    "n_seeds",
    "mean",
    "ci_low",
    "ci_high",
)

#: Values allowed in the ``estimator`` column (registry names, plus the unguided baseline).
ESTIMATOR_NAMES: tuple[str, ...] = (*ALL_ESTIMATORS, "unguided")


@dataclass(frozen=True)
class Row:
    """One reported number: the mean over seeds and its 95 % t-interval."""

    experiment: str
    setting: str
    estimator: str
    knobs: str
    metric: str
    budget: int
    n_seeds: int
    mean: float
    ci_low: float
    ci_high: float


def knob_string(knobs: Mapping[str, Any]) -> str:
    """``name=value`` pairs sorted by name and joined by ``;`` (e.g. ``lr=0.05;n_steps=3;t_1=0.5``).

    Floats are written with ``:g`` (``0.05``, not ``0.05000000000000000277``); an empty mapping
    gives the empty string.
    """
    parts = []
    for name in sorted(knobs):
        value = knobs[name]
        if not isinstance(name, str) or not name or any(c in name for c in ";=,\n"):
            raise ValueError(f"knobs: invalid knob name {name!r}")
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if any(c in text for c in ";=\n"):
            raise ValueError(f"knobs: value of {name!r} contains ';', '=' or a newline: {text!r}")
        parts.append(f"{name}={text}")
    return ";".join(parts)


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval over independent seeds.

    Returns ``(mean, low, high)``. With one value, or values that are all equal, the interval is
    the point itself (zero spread); NaN values are refused.
    """
    from scipy import stats

    data = [float(v) for v in values]
    if not data:
        raise ValueError("values must not be empty")
    if any(math.isnan(v) for v in data):
        raise ValueError("values contains NaN")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return mean, mean, mean
    sem = stats.sem(data)
    if sem == 0.0 or not math.isfinite(sem):
        return mean, mean, mean
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def summary_row(
    experiment: str,
    setting: str,
    estimator: str,
    knobs: Mapping[str, Any],
    metric: str,
    budget: int,
    values: Sequence[float],
) -> Row:
    """Build one :class:`Row` from per-seed ``values`` (95 % t-interval)."""
    if estimator not in ESTIMATOR_NAMES:
        raise ValueError(f"estimator must be one of {ESTIMATOR_NAMES}, got {estimator!r}")
    if not metric or metric != metric.lower() or " " in metric:
        raise ValueError(f"metric must be snake_case, got {metric!r}")
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    mean, low, high = t_interval(values)
    return Row(
        experiment=experiment,
        setting=setting,
        estimator=estimator,
        knobs=knob_string(knobs),
        metric=metric,
        budget=int(budget),
        n_seeds=len(values),
        mean=mean,
        ci_low=low,
        ci_high=high,
    )


def timing_rows(experiment: str, setting: str, timing_ms: Mapping[str, float],
                knobs: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """``ms_per_step`` rows (budget 1: one step) of an interleaved timing stage: estimator ->
    median milliseconds per step, at that estimator's ``knobs``. One value per row, so the
    interval is undefined (the timing's own spread is in the result file)."""
    return [summary_row(experiment, setting, name, knobs.get(name, {}), "ms_per_step", 1, [ms])
            for name, ms in timing_ms.items()]

def write_summary(experiment: str, rows: Iterable[Row], root: str | Path | None = None) -> Path:
    """Write ``rows`` to ``<root or results_dir(experiment)>/summary.csv``; return its path."""
    folder = Path(root) if root is not None else runtime.results_dir(experiment)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.csv"
    rows = list(rows)
    for row in rows:
        if row.experiment != experiment:
            raise ValueError(f"row of experiment {row.experiment!r} in {experiment!r}'s summary")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            record = asdict(row)
            for key in ("mean", "ci_low", "ci_high"):
                record[key] = repr(float(record[key]))
            writer.writerow(record)
    return path


def read_summary(experiment: str, root: str | Path | None = None) -> list[Row]:
    """Read ``summary.csv`` of ``experiment`` back into :class:`Row` objects."""
    folder = Path(root) if root is not None else runtime.results_dir(experiment)
    path = folder / "summary.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames} differ from {COLUMNS}")
        types = {f.name: f.type for f in fields(Row)}
        out = []
        for record in reader:
            kwargs: dict[str, Any] = {}
            for name, text in record.items():
                kind = types[name]
                kwargs[name] = int(text) if kind in ("int", int) else (
                    float(text) if kind in ("float", float) else text
                )
            out.append(Row(**kwargs))
    return out
