"""The five ``summary.csv`` files read together: the paper's claim against what each finds.

Used by the synthesis chapter. Only the tidy summaries are read (never the chapters' own tables),
so every sentence the chapter writes comes from the stored numbers. Two estimators are compared
by their 95 % t-intervals over seeds: they *differ* when the intervals do not overlap (a
conservative rule: non-overlapping 95 % intervals imply a significant difference at well below
the 5 % level, while some significant differences still overlap); otherwise the comparison is a
tie. The chapters' own verdicts use the per-seed values (paired tests where seeds share data)
and can resolve smaller differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import REDGE_FAMILY
from .summary import Row, read_summary

__all__ = ["ASPECTS", "EXPERIMENTS", "Aspect", "Comparison", "compare", "costs", "first_aspect",
           "headline_rows", "load_all", "parse_knobs", "t1_landings", "top_groups"]

#: The five experiments, in book order.
EXPERIMENTS: tuple[str, ...] = ("polyprog", "vae", "sudoku", "mdm_guidance", "image_guidance")

#: Chapter of each experiment (for cross-references).
CHAPTERS: dict[str, str] = {
    "polyprog": "polynomial-programming", "vae": "discrete-vae", "sudoku": "sudoku",
    "mdm_guidance": "mdm-guidance", "image_guidance": "image-guidance",
}


@dataclass(frozen=True)
class Aspect:
    """One reported quantity of an experiment: its metric (first of ``metrics`` present)."""

    experiment: str
    metrics: tuple[str, ...]
    higher_is_better: bool
    description: str


#: What each experiment is judged on, headline first (the authors' metric where they have one).
ASPECTS: tuple[Aspect, ...] = (
    Aspect("polyprog", ("final_gap",), False, "final optimality gap"),
    Aspect("vae", ("train_neg_elbo",), False, "training −ELBO (exact samples)"),
    Aspect("vae", ("test_neg_elbo_best_valid", "test_neg_elbo"), False, "held-out −ELBO"),
    Aspect("sudoku", ("final_violations",), False, "violations of the final sample"),
    Aspect("sudoku", ("final_solved",), True, "solved rate of the final sample"),
    Aspect("mdm_guidance", ("final_violations",), False, "violations of the final sample"),
    Aspect("mdm_guidance", ("final_solved",), True, "solved rate of the final sample"),
    Aspect("image_guidance", ("objective",), True, "guidance objective (10·reward − KL)"),
    Aspect("image_guidance", ("reward", "final_reward", "mean_reward"), True, "reward"),
)


def load_all(root: str | Path | None = None) -> dict[str, list[Row] | None]:
    """``summary.csv`` rows of every experiment (None where the file is missing)."""
    out: dict[str, list[Row] | None] = {}
    for experiment in EXPERIMENTS:
        folder = None if root is None else Path(root) / experiment
        try:
            out[experiment] = read_summary(experiment, root=folder)
        except FileNotFoundError:
            out[experiment] = None
    return out


def _is_tuning(row: Row) -> bool:
    return row.metric.startswith("tune") or row.setting.lower().startswith("tun")


def headline_rows(rows: Sequence[Row], aspect: Aspect) -> tuple[str | None, list[Row]]:
    """The metric used for ``aspect`` and its reported (non-tuning) rows at each setting's
    largest budget; ``(None, [])`` when none of the aspect's metrics is present."""
    reported = [r for r in rows if not _is_tuning(r)]
    metric = next((m for m in aspect.metrics if any(r.metric == m for r in reported)), None)
    if metric is None:
        return None, []
    chosen = [r for r in reported if r.metric == metric]
    top = {}
    for row in chosen:
        top[row.setting] = max(top.get(row.setting, row.budget), row.budget)
    return metric, [r for r in chosen if r.budget == top[r.setting]]


@dataclass(frozen=True)
class Comparison:
    """The best ReDGE-family row against the best other estimator at one setting."""

    setting: str
    family: Row
    other: Row
    verdict: str            # "wins", "ties", "loses" (family against other) or "one run"
    plain_redge: Row | None


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def compare(rows: Sequence[Row], higher_is_better: bool) -> list[Comparison]:
    """Per setting: best family member against best other estimator (``unguided`` excluded),
    judged by the overlap of their 95 % intervals."""
    out = []
    for setting in dict.fromkeys(r.setting for r in rows):
        here = [r for r in rows if r.setting == setting and r.estimator != "unguided"]
        family = [r for r in here if r.estimator in REDGE_FAMILY]
        others = [r for r in here if r.estimator not in REDGE_FAMILY]
        if not family or not others:
            continue
        pick = max if higher_is_better else min
        best_f = pick(family, key=lambda r: r.mean)
        best_o = pick(others, key=lambda r: r.mean)
        if best_f.n_seeds < 2 or best_o.n_seeds < 2:
            verdict = "one run"
        elif best_f.ci_low > best_o.ci_high or best_f.ci_high < best_o.ci_low:
            verdict = "wins" if _better(best_f.mean, best_o.mean, higher_is_better) else "loses"
        else:
            verdict = "ties"
        plain = next((r for r in family if r.estimator == "redge"), None)
        out.append(Comparison(setting, best_f, best_o, verdict, plain))
    return out


def parse_knobs(text: str) -> dict[str, float]:
    """``"n_steps=3;t_1=0.5"`` -> ``{"n_steps": 3.0, "t_1": 0.5}`` (empty string -> {})."""
    out = {}
    for part in filter(None, text.split(";")):
        name, _, value = part.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def t1_landings(summaries: dict[str, list[Row] | None]) -> list[dict[str, Any]]:
    """Chosen ``t_1`` of every ReDGE-family member in every headline row (one per setting)."""
    out = []
    for aspect in ASPECTS:
        rows = summaries.get(aspect.experiment)
        if rows is None or aspect is not first_aspect(aspect.experiment):
            continue
        _, chosen = headline_rows(rows, aspect)
        for row in chosen:
            knobs = parse_knobs(row.knobs)
            if row.estimator in REDGE_FAMILY and "t_1" in knobs:
                out.append({"experiment": aspect.experiment, "setting": row.setting,
                            "estimator": row.estimator, "t_1": knobs["t_1"],
                            "n_steps": knobs.get("n_steps", math.nan)})
    return out


def first_aspect(experiment: str) -> Aspect:
    """The headline aspect of ``experiment`` (the first of :data:`ASPECTS`)."""
    return next(a for a in ASPECTS if a.experiment == experiment)


def top_groups(summaries: dict[str, list[Row] | None]) -> dict[str, set[str] | None]:
    """experiment -> estimators whose 95 % interval overlaps the best one's at *every* setting
    of the headline aspect (None when the experiment has no usable rows)."""
    out: dict[str, set[str] | None] = {}
    for experiment in EXPERIMENTS:
        rows = summaries.get(experiment)
        aspect = first_aspect(experiment)
        metric, chosen = headline_rows(rows or [], aspect)
        if metric is None:
            out[experiment] = None
            continue
        pick = max if aspect.higher_is_better else min
        top: set[str] | None = None
        for setting in dict.fromkeys(r.setting for r in chosen):
            here = [r for r in chosen if r.setting == setting and r.estimator != "unguided"]
            best = pick(here, key=lambda r: r.mean)
            group = {r.estimator for r in here
                     if r.ci_low <= best.ci_high and r.ci_high >= best.ci_low}
            top = group if top is None else top & group
        out[experiment] = top or set()
    return out


def costs(summaries: dict[str, list[Row] | None]) -> dict[str, dict[str, float]]:
    """experiment -> estimator -> ms per step relative to Straight-Through (where recorded)."""
    out = {}
    for experiment, rows in summaries.items():
        if rows is None:
            continue
        timing = {}
        for row in rows:
            if row.metric == "ms_per_step":
                timing.setdefault(row.estimator, row.mean)
        if "st" in timing and timing["st"] > 0:
            out[experiment] = {e: v / timing["st"] for e, v in timing.items()}
    return out
