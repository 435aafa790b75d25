"""Per-unit results and the one verdict rule of the book.

Every experiment stores what it measured, one value per independent unit, in
``book/results/<experiment>/units.csv`` (:data:`UNIT_COLUMNS`, written by :func:`write_units`):
the unit is whatever is independent and shared between the estimators compared -- a puzzle, an
image, a training seed. ``summary.csv`` (:func:`summary_from_units`) and ``verdicts.csv``
(:func:`verdicts_from_units`) are computed from that file and from nothing else, so every word
"better", "worse", "equivalent" or "inconclusive" on a page can be recomputed from the stored
units by a paired t-test.

The rule (``shared/notes/statistics.md``; chapter 13 teaches it):

* two series are paired on ``(seed, unit)``: only the units both measured count, and ``diff`` is
  the mean over them of (estimator - rival), with its 95 % paired t-interval and the p-value of
  the paired t-test (:func:`scipy.stats.ttest_1samp` on the differences);
* the p-values of all rows of one experiment are adjusted together by Holm's step-down method
  (:func:`holm`);
* ``better`` / ``worse``: the interval excludes 0 on that side *and* the Holm-adjusted p is below
  0.05; ``equivalent``: the whole interval lies inside ``[-margin, margin]``, where the margin is
  declared per metric in the experiment's protocol before the run (:class:`Metric`);
  ``inconclusive``: anything else (more units are the remedy).

Tuning is reported beside the verdicts in ``tuning.csv`` (:data:`TUNING_COLUMNS`,
:func:`write_tuning`): what each estimator was tuned over, on how many configurations and runs, on
which units, and whether its choice sits on the edge of the search range.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ...registry import ALL_ESTIMATORS
from .. import runtime
from . import REDGE_FAMILY
from .summary import Row, knob_string, t_interval

__all__ = [
    "ALPHA",
    "TUNING_COLUMNS",
    "UNIT_COLUMNS",
    "VERDICT_COLUMNS",
    "Metric",
    "TuningRow",
    "Unit",
    "Verdict",
    "decide",
    "holm",
    "paired_difference",
    "read_tuning",
    "read_units",
    "read_verdicts",
    "select",
    "series_name",
    "summary_from_units",
    "units_from_values",
    "verdicts_from_units",
    "write_results",
    "write_tuning",
    "write_units",
    "write_verdicts",
]

#: The level of every test and interval (two-sided 95 %).
ALPHA = 0.05

UNIT_COLUMNS: tuple[str, ...] = ("experiment", "setting", "estimator", "knobs", "seed", "unit",
                                 "metric", "budget", "value")
VERDICT_COLUMNS: tuple[str, ...] = (
    "experiment", "setting", "metric", "budget", "estimator", "rival", "n_units", "diff",
    "ci_low", "ci_high", "p_value", "p_holm", "margin", "higher_is_better", "verdict",
    "headline")
TUNING_COLUMNS: tuple[str, ...] = ("experiment", "estimator", "knobs_tuned", "n_configs",
                                   "n_runs", "tuned_on", "chosen", "on_edge")

#: Order of the ``estimator`` / ``rival`` columns: the ReDGE family first (in a pair with one of
#: them, it is the ``estimator``), then the registry's order.
_ORDER: tuple[str, ...] = (*REDGE_FAMILY,
                           *(n for n in ALL_ESTIMATORS if n not in REDGE_FAMILY), "unguided")


@dataclass(frozen=True)
class Unit:
    """One measured value: of ``estimator`` at ``knobs``, on unit ``unit`` of seed ``seed``."""

    experiment: str
    setting: str
    estimator: str
    knobs: str
    seed: int
    unit: str
    metric: str
    budget: int
    value: float


@dataclass(frozen=True)
class Metric:
    """How a metric is judged, declared in an experiment's protocol before the run.

    ``margin`` is the equivalence margin (the smallest difference a reader would care about,
    in the metric's own units); ``headline`` marks the experiment's headline metric, and
    ``headline_budgets`` (empty: every budget) restricts the headline to some budgets.
    """

    name: str
    higher_is_better: bool
    margin: float
    headline: bool = False
    headline_budgets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"margin of {self.name!r} must be a positive number, "
                             f"got {self.margin}")


@dataclass(frozen=True)
class Verdict:
    """One row of ``verdicts.csv``: ``estimator`` against ``rival``, paired on shared units."""

    experiment: str
    setting: str
    metric: str
    budget: int
    estimator: str
    rival: str
    n_units: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    margin: float
    higher_is_better: bool
    verdict: str
    headline: bool

    @property
    def base_estimator(self) -> str:
        """The registry name of ``estimator`` (without a ``[knobs]`` suffix)."""
        return self.estimator.split("[", 1)[0]

    @property
    def base_rival(self) -> str:
        """The registry name of ``rival`` (without a ``[knobs]`` suffix)."""
        return self.rival.split("[", 1)[0]

    def sentence(self, labels: Mapping[str, str] | None = None, digits: int = 3) -> str:
        """A short sentence of the row, e.g. ``"ReDGE vs ST: better (diff 0.12, 95 % CI
        [0.05, 0.19], Holm p = 0.003, n = 600)"``."""
        def name(text: str) -> str:
            base, _, rest = text.partition("[")
            shown = (labels or {}).get(base, base)
            return f"{shown}[{rest}" if rest else shown

        return (f"{name(self.estimator)} vs {name(self.rival)}: {self.verdict} (diff "
                f"{self.diff:.{digits}g}, 95 % CI [{self.ci_low:.{digits}g}, "
                f"{self.ci_high:.{digits}g}], Holm p = {self.p_holm:.2g}, n = {self.n_units})")


@dataclass(frozen=True)
class TuningRow:
    """One row of ``tuning.csv``: how one estimator was tuned."""

    experiment: str
    estimator: str
    knobs_tuned: str        # e.g. "lr;n_steps;t_1"
    n_configs: int          # configurations tried
    n_runs: int             # runs (or tuning units) per configuration
    tuned_on: str           # e.g. "32 tuning puzzles, disjoint from evaluation"
    chosen: str             # knob string of the choice, e.g. "lr=0.1;n_steps=3;t_1=0.5"
    on_edge: bool           # whether the choice sits on the edge of the search range


# ---------------------------------------------------------------------------- units.csv


def units_from_values(experiment: str, setting: str, estimator: str,
                      knobs: Mapping[str, Any] | str, metric: str, budget: int,
                      values: Mapping[tuple[int, str | int], float]) -> list[Unit]:
    """Units of one series: ``values`` maps ``(seed, unit)`` to the measured value.

    ``knobs`` is a mapping (written with :func:`~.summary.knob_string`, lr included) or an
    already formatted knob string. NaN values are refused: a unit that failed must be reported
    as what it is (e.g. not solved), never dropped silently.
    """
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget!r}")
    text = knobs if isinstance(knobs, str) else knob_string(knobs)
    out = []
    for (seed, unit), value in values.items():
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{experiment}/{setting}/{estimator}/{metric}: NaN value for unit "
                             f"{unit!r} of seed {seed}")
        out.append(Unit(experiment, setting, estimator, text, int(seed), str(unit), metric,
                        int(budget), value))
    return out


def _folder(experiment: str, root: str | Path | None) -> Path:
    return Path(root) if root is not None else runtime.results_dir(experiment)


def _write(path: Path, columns: Sequence[str], records: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v)
                             for k, v in record.items()})
    tmp.replace(path)
    return path


def _read(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != tuple(columns):
            raise ValueError(f"{path}: columns {reader.fieldnames} differ from {tuple(columns)}")
        return list(reader)


def _typed(cls: type, record: Mapping[str, str]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        text = record[f.name]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "int":
            kwargs[f.name] = int(text)
        elif kind == "float":
            kwargs[f.name] = float(text)
        elif kind == "bool":
            kwargs[f.name] = text.strip().lower() in ("true", "1", "yes")
        else:
            kwargs[f.name] = text
    return cls(**kwargs)


def write_units(experiment: str, units: Iterable[Unit], root: str | Path | None = None) -> Path:
    """Write ``units.csv`` of ``experiment`` (sorted, so reruns give identical files)."""
    units = sorted(units, key=lambda u: (u.setting, u.metric, u.budget, u.estimator, u.knobs,
                                         u.seed, u.unit))
    for u in units:
        if u.experiment != experiment:
            raise ValueError(f"unit of experiment {u.experiment!r} in {experiment!r}'s units.csv")
    keys = [(u.setting, u.estimator, u.knobs, u.metric, u.budget, u.seed, u.unit) for u in units]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{experiment}: units.csv would hold a unit twice")
    return _write(_folder(experiment, root) / "units.csv", UNIT_COLUMNS,
                  (asdict(u) for u in units))


def read_units(experiment: str, root: str | Path | None = None) -> list[Unit]:
    """Read ``units.csv`` of ``experiment`` back."""
    path = _folder(experiment, root) / "units.csv"
    return [_typed(Unit, r) for r in _read(path, UNIT_COLUMNS)]


def summary_from_units(units: Iterable[Unit]) -> list[Row]:
    """``summary.csv`` rows: per series and budget, the mean over its units and the 95 %
    t-interval (``n_seeds`` counts the units)."""
    groups: dict[tuple[str, str, str, str, str, int], list[float]] = defaultdict(list)
    for u in units:
        groups[(u.experiment, u.setting, u.estimator, u.knobs, u.metric, u.budget)].append(
            u.value)
    rows = []
    for (experiment, setting, estimator, knobs, metric, budget), values in groups.items():
        mean, low, high = t_interval(values)
        rows.append(Row(experiment, setting, estimator, knobs, metric, budget, len(values),
                        mean, low, high))
    return rows


# ---------------------------------------------------------------------------- the rule


def paired_difference(a: Mapping[tuple[int, str], float], b: Mapping[tuple[int, str], float],
                      ) -> tuple[int, float, float, float, float]:
    """``(n, diff, ci_low, ci_high, p_value)`` of ``a - b`` paired on their shared keys.

    The interval is the 95 % paired t-interval and the p-value that of the two-sided paired
    t-test (:func:`scipy.stats.ttest_1samp` on the differences). Identical differences (zero
    spread) give the point as interval and p = 1 when it is 0, else p = 0; fewer than two shared
    units give NaN.
    """
    from scipy import stats

    shared = sorted(set(a) & set(b))
    d = [a[k] - b[k] for k in shared]
    n = len(d)
    if n < 2:
        mean = d[0] if d else math.nan
        return n, mean, math.nan, math.nan, math.nan
    mean = math.fsum(d) / n
    if all(x == d[0] for x in d):
        return n, mean, mean, mean, (1.0 if mean == 0.0 else 0.0)
    test = stats.ttest_1samp(d, 0.0)
    low, high = test.confidence_interval(1 - ALPHA)
    return n, mean, float(low), float(high), float(test.pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (NaN entries stay NaN and do not count).

    The i-th smallest of k p-values is multiplied by ``k - i + 1``; the sequence is then made
    non-decreasing and capped at 1.
    """
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    k = len(finite)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (k - rank) * p))
        out[i] = running
    return out


def decide(ci_low: float, ci_high: float, p_holm: float, margin: float,
           higher_is_better: bool) -> str:
    """The verdict word of one row (see the module docstring)."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return "inconclusive"
    good_low, good_high = (ci_low, ci_high) if higher_is_better else (-ci_high, -ci_low)
    if p_holm < ALPHA and good_low > 0:
        return "better"
    if p_holm < ALPHA and good_high < 0:
        return "worse"
    if -margin <= ci_low and ci_high <= margin:
        return "equivalent"
    return "inconclusive"


def series_name(estimator: str, knobs: str, several: bool) -> str:
    """``estimator`` alone, or ``estimator[knobs]`` when it has several knob settings there."""
    return f"{estimator}[{knobs}]" if several else estimator


def _rank(estimator: str) -> int:
    return _ORDER.index(estimator) if estimator in _ORDER else len(_ORDER)


def verdicts_from_units(experiment: str, units: Iterable[Unit], metrics: Sequence[Metric], *,
                        budgets: Mapping[str, Sequence[int]] | None = None) -> list[Verdict]:
    """Every pairwise verdict of ``experiment``, from its units.

    For each setting, each metric of ``metrics`` and each budget (all budgets present, or those
    of ``budgets[metric]``), every series (an estimator at one knob setting) is compared with
    every other one: a ReDGE-family member is the ``estimator`` of its pairs (each member meets
    every other estimator and every other member), other pairs follow the registry's order.
    Holm's adjustment runs over all rows. Metrics not in ``metrics`` get no verdicts.
    """
    declared = {m.name: m for m in metrics}
    if len(declared) != len(metrics):
        raise ValueError("metrics lists a metric twice")
    if sum(m.headline for m in metrics) != 1:
        raise ValueError("exactly one metric must be the headline")
    series: dict[tuple[str, str, int], dict[tuple[str, str], dict[tuple[int, str], float]]] = (
        defaultdict(lambda: defaultdict(dict)))
    for u in units:
        if u.metric in declared:
            series[(u.setting, u.metric, u.budget)][(u.estimator, u.knobs)][(u.seed, u.unit)] = (
                u.value)
    pending = []
    for (setting, metric, budget), group in sorted(series.items()):
        if budgets is not None and metric in budgets and budget not in budgets[metric]:
            continue
        spec = declared[metric]
        counts: dict[str, int] = defaultdict(int)
        for estimator, _ in group:
            counts[estimator] += 1
        keys = sorted(group, key=lambda k: (_rank(k[0]), k[0], k[1]))
        for i, first in enumerate(keys):
            for second in keys[i + 1:]:
                n, diff, low, high, p = paired_difference(group[first], group[second])
                headline = spec.headline and (not spec.headline_budgets
                                              or budget in spec.headline_budgets)
                pending.append(dict(
                    experiment=experiment, setting=setting, metric=metric, budget=budget,
                    estimator=series_name(first[0], first[1], counts[first[0]] > 1),
                    rival=series_name(second[0], second[1], counts[second[0]] > 1),
                    n_units=n, diff=diff, ci_low=low, ci_high=high, p_value=p,
                    margin=spec.margin, higher_is_better=spec.higher_is_better,
                    headline=headline))
    adjusted = holm([row["p_value"] for row in pending])
    out = []
    for row, p_holm in zip(pending, adjusted, strict=True):
        verdict = decide(row["ci_low"], row["ci_high"], p_holm, row["margin"],
                         row["higher_is_better"])
        out.append(Verdict(p_holm=p_holm, verdict=verdict, **row))
    return out


def write_verdicts(experiment: str, verdicts: Iterable[Verdict],
                   root: str | Path | None = None) -> Path:
    """Write ``verdicts.csv`` of ``experiment``."""
    return _write(_folder(experiment, root) / "verdicts.csv", VERDICT_COLUMNS,
                  (asdict(v) for v in verdicts))


def read_verdicts(experiment: str, root: str | Path | None = None) -> list[Verdict]:
    """Read ``verdicts.csv`` of ``experiment`` back."""
    path = _folder(experiment, root) / "verdicts.csv"
    return [_typed(Verdict, r) for r in _read(path, VERDICT_COLUMNS)]


def write_tuning(experiment: str, rows: Iterable[TuningRow],
                 root: str | Path | None = None) -> Path:
    """Write ``tuning.csv`` of ``experiment``."""
    return _write(_folder(experiment, root) / "tuning.csv", TUNING_COLUMNS,
                  (asdict(r) for r in rows))


def read_tuning(experiment: str, root: str | Path | None = None) -> list[TuningRow]:
    """Read ``tuning.csv`` of ``experiment`` back."""
    path = _folder(experiment, root) / "tuning.csv"
    return [_typed(TuningRow, r) for r in _read(path, TUNING_COLUMNS)]


def select(verdicts: Iterable[Verdict], **where: Any) -> list[Verdict]:
    """The rows whose attributes equal ``where`` (``base_estimator`` / ``base_rival`` allowed)."""
    return [v for v in verdicts if all(getattr(v, k) == x for k, x in where.items())]



def write_results(experiment: str, units: Sequence[Unit], metrics: Sequence[Metric],
                  tuning: Sequence[TuningRow], *, extra_rows: Sequence[Row] = (),
                  budgets: Mapping[str, Sequence[int]] | None = None,
                  root: str | Path | None = None) -> list[Verdict]:
    """Write the four tables of ``experiment`` from its units: ``units.csv``, ``summary.csv``
    (:func:`summary_from_units` plus ``extra_rows``, e.g. timing rows), ``verdicts.csv``
    (:func:`verdicts_from_units`) and ``tuning.csv``; return the verdicts."""
    from .summary import write_summary

    write_units(experiment, units, root)
    write_summary(experiment, [*summary_from_units(units), *extra_rows], root=root)
    verdicts = verdicts_from_units(experiment, units, metrics, budgets=budgets)
    write_verdicts(experiment, verdicts, root)
    write_tuning(experiment, tuning, root)
    return verdicts

