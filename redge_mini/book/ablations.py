"""Ablations that isolate ReDGE's sampler (issue 20): what the diffusion trajectory contributes.

Two ablations, run as extra stages of the polynomial-programming, Sudoku and large-vocabulary
experiments and judged by the book's one verdict rule (:mod:`.experiments.verdicts`):

* **ReinDGE, trajectory detached** (:data:`DETACH`, :func:`redge_mini.estimators.reindge_detach`):
  the same samples as ReinDGE, but the DDIM states up to ``t_1`` carry no gradient, so only the
  ReinMax step at ``t_1`` is left. Against ReinDGE it measures the trajectory's part of the
  gradient; against ReinMax, what a ReinMax step on the sampler's conditional categorical
  ``Cat(S)`` does that one on ``Cat(pi)`` does not. Its rows live in the setting
  :func:`ablation_setting`.
* **A ``t_1`` sweep of ReDGE** (:data:`T1_SWEEP`) up to ``t_1 = 1``, where ReDGE's law and
  gradient are Straight-Through's; each ``t_1`` is its own setting (:func:`sweep_setting`),
  paired with Straight-Through.

The ablation estimator is deliberately not in :data:`redge_mini.registry.ESTIMATORS`: every
experiment, the bench and the tests iterate over that table, and an entry there would add the
ablation to all of them. :func:`registered` adds it for the span of one ablation stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .. import registry
from ..estimators import _reindge_detach, reindge_detach

__all__ = ["DETACH", "DETACH_LABEL", "PAIRS", "T1_SWEEP", "ablation_markdown", "ablation_setting",
           "is_ablation", "oriented",
           "not_headline", "plot_sweep", "registered", "sweep_points", "sweep_setting",
           "sweep_t1", "write_results"]

#: The ablation's estimator name (``detach`` in it, as issue 20 asks).
DETACH = "reindge_detach"
#: Its label in figures and tables.
DETACH_LABEL = "ReinDGE, trajectory detached"
#: The stopping times of the sweep: the authors' range 0.3-0.9, a small value and ``t_1 = 1``
#: (Straight-Through's law).
T1_SWEEP: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)

_SWEEP = re.compile(r"t1_sweep t_1=([0-9.]+) (.+)")


def ablation_setting(base: str) -> str:
    """The setting of the detached-ReinDGE rows of the experiment's setting ``base``."""
    return f"ablation {base}"


def sweep_setting(t_1: float, base: str) -> str:
    """The setting of the sweep's rows at ``t_1`` in the experiment's setting ``base``."""
    return f"t1_sweep t_1={t_1:g} {base}"


def sweep_t1(setting: str) -> tuple[float, str] | None:
    """``(t_1, base)`` of a sweep setting, None for any other setting."""
    found = _SWEEP.fullmatch(setting)
    return None if found is None else (float(found.group(1)), found.group(2))


@contextmanager
def registered() -> Iterator[str]:
    """Register :data:`DETACH` in the registry for the span of the ``with`` block (so that the
    experiments' name-based machinery, ``make_loss`` and ``get_spec``, can run it); removed on
    exit, also after an error. Yields the name."""
    if DETACH in registry.ALL_ESTIMATORS:  # nested, or registered by the caller: leave it
        yield DETACH
        return
    registry.register(DETACH, reindge_detach, registry.KNOBS["reindge"], label=DETACH_LABEL,
                      summary="ReinDGE without the trajectory's gradient (ablation)",
                      kernel=_reindge_detach)
    try:
        yield DETACH
    finally:
        registry.unregister(DETACH)


def sweep_points(summary: Iterable[Any], verdicts: Iterable[Any], base: str, metric: str,
                 budget: int, estimator: str = "redge", rival: str = "st",
                 ) -> list[dict[str, Any]]:
    """The sweep of setting ``base``, one dict per ``t_1`` (increasing): ``t_1``, the mean and
    95 % interval of ``estimator`` and of ``rival`` (summary rows, :class:`.summary.Row`) and the
    paired verdict row of the two (:class:`.verdicts.Verdict`, or None when missing)."""
    means: dict[tuple[float, str], Any] = {}
    for row in summary:
        found = sweep_t1(row.setting)
        if found and found[1] == base and row.metric == metric and row.budget == budget:
            means[(found[0], row.estimator)] = row
    rows: dict[float, Any] = {}
    for v in verdicts:
        found = sweep_t1(v.setting)
        if found and found[1] == base and v.metric == metric and v.budget == budget and {
                v.base_estimator, v.base_rival} == {estimator, rival}:
            rows[found[0]] = v
    out = []
    for t_1 in sorted({t for t, _ in means}):
        if (t_1, estimator) in means and (t_1, rival) in means:
            out.append({"t_1": t_1, "mine": means[(t_1, estimator)],
                        "rival": means[(t_1, rival)], "verdict": rows.get(t_1)})
    return out


_MARK = {"better": "▲", "worse": "▼", "equivalent": "=", "inconclusive": "?"}


def plot_sweep(ax: Any, points: Sequence[dict[str, Any]], ylabel: str, *,
               title: str = "", log: bool = False) -> None:
    """Draw one sweep: ReDGE's mean and 95 % interval at each ``t_1`` (a line), the rival's
    (Straight-Through's, at its own tuned setting) as a band, and the paired verdict of each
    point as a mark above it (▲ better, ▼ worse, = equivalent, ? inconclusive)."""
    from .plotting import estimator_color, estimator_label

    if not points:
        raise ValueError("points is empty: nothing to draw")
    xs = [p["t_1"] for p in points]
    mean = [p["mine"].mean for p in points]
    low = [p["mine"].mean - p["mine"].ci_low for p in points]
    high = [p["mine"].ci_high - p["mine"].mean for p in points]
    ax.errorbar(xs, mean, yerr=[low, high], color=estimator_color("redge"), marker="o",
                capsize=3, lw=1.6, label=f"{estimator_label('redge')} (95 % CI)")
    rival = points[-1]["rival"]
    ax.axhspan(rival.ci_low, rival.ci_high, color=estimator_color("st"), alpha=0.25,
               label=f"{estimator_label('st')}, tuned (95 % CI)")
    ax.axhline(rival.mean, color=estimator_color("st"), lw=1.0)
    for p in points:
        if p["verdict"] is not None:
            ax.annotate(_MARK[p["verdict"].verdict], (p["t_1"], p["mine"].ci_high),
                        textcoords="offset points", xytext=(0, 4), ha="center", fontsize=9)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("t₁ (1 = Straight-Through's law)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if not any(math.isnan(v) for v in mean):
        ax.set_xlim(0.0, 1.05)


def is_ablation(setting: str) -> bool:
    """Whether ``setting`` holds ablation rows (detached ReinDGE or the ``t_1`` sweep)."""
    return setting.startswith("ablation ") or sweep_t1(setting) is not None


def write_results(experiment: str, units: Sequence[Any], metrics: Sequence[Any],
                  tuning: Sequence[Any], **kwargs: Any) -> list[Any]:
    """:func:`.experiments.verdicts.write_results`, with the rows of the ablation settings
    (:func:`is_ablation`) marked as no headline: they are judged by the same rule, in the same
    Holm family as the experiment's other rows, but are not what the experiment claims."""
    from dataclasses import replace

    from .experiments.verdicts import write_results as write_all
    from .experiments.verdicts import write_verdicts

    rows = [replace(v, headline=False) if is_ablation(v.setting) else v
            for v in write_all(experiment, units, metrics, tuning, **kwargs)]
    write_verdicts(experiment, rows, kwargs.get("root"))
    return rows


def not_headline(verdicts: Iterable[Any]) -> list[Any]:
    """``verdicts`` with the rows of ablation settings marked as no headline (as
    :func:`write_results` writes them), for verdicts computed in memory."""
    from dataclasses import replace

    return [replace(v, headline=False) if is_ablation(v.setting) else v for v in verdicts]


def oriented(verdicts: Iterable[Any], setting: str, metric: str, first: str, second: str,
             ) -> tuple[str, float, float, float] | None:
    """``(word, diff, ci_low, ci_high)`` of ``first`` against ``second`` (registry names) in
    ``setting``, turned round when the row is stored the other way; None when missing."""
    for v in verdicts:
        if v.setting != setting or v.metric != metric:
            continue
        if (v.base_estimator, v.base_rival) == (first, second):
            return v.verdict, v.diff, v.ci_low, v.ci_high
        if (v.base_estimator, v.base_rival) == (second, first):
            word = {"better": "worse", "worse": "better"}.get(v.verdict, v.verdict)
            return word, -v.diff, -v.ci_high, -v.ci_low
    return None


#: The three comparisons of the detached-ReinDGE setting, in the order of the tables.
PAIRS: tuple[tuple[str, str], ...] = (("reindge", DETACH), (DETACH, "reinmax"),
                                      ("reindge", "reinmax"))


def ablation_markdown(verdicts: Iterable[Any], bases: Sequence[tuple[str, ...]], metric: str,
                      digits: int = 2) -> str:
    """A Markdown table of the detached-ReinDGE setting: one row per ``(label, base)`` of
    ``bases`` (or ``(label, base, metric)``, which overrides ``metric`` for that row), one
    column per pair of :data:`PAIRS` (the verdict, the paired difference of the first minus
    the second and its 95 % interval)."""
    from .plotting import estimator_label

    verdicts = list(verdicts)

    def name(e: str) -> str:
        return DETACH_LABEL if e == DETACH else estimator_label(e)

    head = "| | " + " | ".join(f"{name(a)} − {name(b)}" for a, b in PAIRS) + " |"
    lines = [head, "|---|" + "---|" * len(PAIRS)]
    for label, base, *which in bases:
        cells = []
        for a, b in PAIRS:
            found = oriented(verdicts, ablation_setting(base), which[0] if which else metric,
                             a, b)
            cells.append("—" if found is None else
                         f"**{found[0]}** {found[1]:+.{digits}g} "
                         f"[{found[2]:+.{digits}g}, {found[3]:+.{digits}g}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
