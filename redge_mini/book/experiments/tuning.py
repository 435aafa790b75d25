"""Knob grids that grow past their edges: the tuning search shared by every experiment.

A tuning grid whose best point lies on its edge did not find the optimum, only a bound on it. Every
experiment therefore tunes with :func:`grow_search`: it evaluates the grid, picks the best point(s)
with the experiment's own rule, and, while a chosen point lies on an edge of some knob's axis,
evaluates one new point past that edge (:func:`extend_grid`), up to ``max_rounds`` times. A knob
at the boundary of its valid range (ReinMax's ``tau = 1``, ``n_steps = 1``) stays there: the range
itself is the edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...registry import get_spec

__all__ = ["GROW_ROUNDS", "KNOB_SPACE", "Axis", "edge_of_space", "extend_grid", "grow_search",
           "on_edge", "sample_configs", "search_space"]

#: Growth rounds of a full-scale tuning stage.
GROW_ROUNDS = 2

#: How a grid grows past an edge: the next value above / below, per knob.
_GROW: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "t_1": (lambda v: round(1.0 - (1.0 - v) / 3.0, 4), lambda v: round(v / 3.0, 4)),
    "n_steps": (lambda v: 2 * v - 1, lambda v: v - 1),
    "tau": (lambda v: round(v * 2.5, 4), lambda v: round(v / 3.0, 4)),
    "lr": (lambda v: round(v * 3.0, 6), lambda v: round(v / 3.0, 6)),
}


def on_edge(grid: Sequence[Any], index: int) -> bool:
    """Whether grid point ``index`` lies on an edge of the grid: its value of some knob is the
    smallest or the largest of the grid (points are dicts of knobs, or plain numbers such as
    learning rates); a knob with a single value has no edge."""
    point = grid[index]
    if not isinstance(point, dict):
        values = sorted(set(grid))
        return len(values) > 1 and point in (values[0], values[-1])
    for key, value in point.items():
        values = sorted({g[key] for g in grid})
        if len(values) > 1 and value in (values[0], values[-1]):
            return True
    return False


def extend_grid(estimator: str, points: Sequence[dict[str, Any]],
                index: int) -> list[dict[str, Any]]:
    """New grid points past the edge(s) on which ``points[index]`` lies (empty if interior).

    ``points`` are dicts of knob values (and/or ``lr``). For every knob whose chosen value is the
    largest (smallest) of the grid, one point with the next value above (below) is proposed, the
    other knobs kept at the chosen values; values outside the knob's valid range (e.g. ReinMax's
    ``tau < 1``) are dropped, so a choice on the boundary of the domain stays where it is.
    """
    spec = get_spec(estimator)
    chosen = points[index]
    new: list[dict[str, Any]] = []
    for key, value in chosen.items():
        values = sorted({p[key] for p in points})
        if len(values) < 2:
            continue
        up, down = _GROW[key]
        for edge, step in ((values[-1], up), (values[0], down)):
            if value != edge:
                continue
            candidate = step(value)
            if key in spec.knobs:
                try:
                    candidate = spec.knobs[key].check(key, candidate)
                except (TypeError, ValueError):
                    continue
            elif not candidate > 0:
                continue
            point = {**chosen, key: candidate}
            if candidate not in values and point not in new:
                new.append(point)
    return new


def grow_search(
    estimator: str,
    grid: Sequence[dict[str, Any]],
    evaluate: Callable[[list[dict[str, Any]]], list[Any]],
    choose: Callable[[list[Any]], int | list[int]],
    *,
    max_rounds: int,
    axis: Callable[[Any], dict[str, Any]] | None = None,
) -> tuple[list[Any], int | list[int], list[dict[str, Any]]]:
    """Evaluate ``grid``, then grow it past the edges of the choice, up to ``max_rounds`` times.

    ``evaluate(points)`` returns one entry per point, in order; ``choose(entries)`` returns the
    index of the best entry, or a list of indices when several settings choose at once (e.g. one
    per exponent); ``axis(entry)`` is the point an entry stands for (default: the entry itself).
    Returns ``(entries, chosen, added)``: every entry evaluated, the final choice, and the points
    added by growth, in order.
    """
    if max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    axis = axis or (lambda entry: entry)
    todo = [dict(point) for point in grid]
    entries: list[Any] = []
    added: list[dict[str, Any]] = []
    for round_ in range(max_rounds + 1):
        results = evaluate(todo)
        if len(results) != len(todo):
            raise ValueError(f"evaluate returned {len(results)} entries for {len(todo)} points")
        entries += results
        chosen = choose(entries)
        points = [axis(e) for e in entries]
        todo = []
        for index in ([chosen] if isinstance(chosen, int) else chosen):
            todo += [p for p in extend_grid(estimator, points, index) if p not in todo]
        if not todo or round_ == max_rounds:
            break
        added += todo
    return entries, chosen, added


# ---------------------------------------------------------------------------- equal budgets
#
# A grid gives every estimator as many configurations as its knobs multiply to: 15 points for the
# ReDGE family (t_1 x n_steps), 5 for a temperature, 1 for Straight-Through. Comparisons between
# estimators tuned over such different budgets are won partly by search. The verdicts issue asks
# for the same number of configurations for every estimator, the learning rate tuned with the
# knobs; :func:`sample_configs` draws that many points of each estimator's search space (a Latin
# hypercube, scipy.stats.qmc), so Straight-Through spends its budget on the learning rate alone
# and the others share it between the learning rate and their knobs.


@dataclass(frozen=True)
class Axis:
    """One knob's search range: ``[low, high]`` (log-uniform when ``log``), or ``choices``."""

    low: float = math.nan
    high: float = math.nan
    log: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.choices:
            return
        if not (self.low < self.high) or (self.log and self.low <= 0):
            raise ValueError(f"invalid axis [{self.low}, {self.high}] (log={self.log})")

    def value(self, u: float) -> Any:
        """The knob value at quantile ``u`` in [0, 1)."""
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        return float(f"{x:.3g}")

    def position(self, value: Any) -> float:
        """Where ``value`` lies in the range, from 0 (low edge) to 1 (high edge)."""
        if self.choices:
            if len(self.choices) == 1:
                return 0.5
            return self.choices.index(value) / (len(self.choices) - 1)
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high)
                                                              - math.log(self.low))
        return (value - self.low) / (self.high - self.low)


#: The search range of each estimator's knobs (the learning rate's range is the experiment's).
KNOB_SPACE: dict[str, dict[str, Axis]] = {
    "st": {},
    "gumbel": {"tau": Axis(0.02, 3.0, log=True)},
    "reinmax": {"tau": Axis(1.0, 5.0, log=True)},
    "redge": {"n_steps": Axis(choices=(2, 3, 5, 9)), "t_1": Axis(0.05, 0.97)},
    "redge_cov": {"n_steps": Axis(choices=(2, 3, 5, 9)), "t_1": Axis(0.05, 0.97)},
    "reindge": {"n_steps": Axis(choices=(2, 3, 5, 9)), "t_1": Axis(0.05, 0.97)},
    "reinforce": {},
}


def search_space(estimator: str, lr: Axis | None,
                 overrides: dict[str, Axis] | None = None) -> dict[str, Axis]:
    """The search space of ``estimator``: its knobs (:data:`KNOB_SPACE`, with ``overrides``) and,
    when ``lr`` is given, the learning rate."""
    if estimator not in KNOB_SPACE:
        raise ValueError(f"estimator must be one of {sorted(KNOB_SPACE)}, got {estimator!r}")
    space = {**KNOB_SPACE[estimator], **{k: v for k, v in (overrides or {}).items()
                                          if k in KNOB_SPACE[estimator]}}
    if lr is not None:
        space["lr"] = lr
    return space


def sample_configs(space: dict[str, Axis], n: int, *, seed: int,
                   anchors: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """``n`` configurations of ``space``: the ``anchors`` first (e.g. the authors' setting), then
    a Latin hypercube of the rest (:class:`scipy.stats.qmc.LatinHypercube`, seeded), without
    duplicates. With an empty space there is one configuration, ``{}``."""
    from scipy.stats import qmc

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    names = sorted(space)
    configs: list[dict[str, Any]] = []
    for anchor in anchors:
        if set(anchor) != set(names):
            raise ValueError(f"anchor {anchor} must set exactly the knobs {names}")
        if anchor not in configs:
            configs.append(dict(anchor))
    if not names:
        return [{}]
    rng_seed = seed
    while len(configs) < n:
        sampler = qmc.LatinHypercube(d=len(names), rng=np.random.default_rng(rng_seed))
        for row in sampler.random(n - len(configs)):
            point = {k: space[k].value(float(u)) for k, u in zip(names, row, strict=True)}
            if point not in configs:
                configs.append(point)
        rng_seed += 7919
    return configs[:n]


def edge_of_space(point: dict[str, Any], space: dict[str, Axis], tol: float = 0.1) -> bool:
    """Whether ``point`` lies within ``tol`` of an edge of ``space`` for some continuous knob, or
    at the first or last of a knob's choices (a hint that the range may be too narrow)."""
    for key, axis in space.items():
        if axis.choices and len(axis.choices) == 1:
            continue
        where = axis.position(point[key])
        if axis.choices and where in (0.0, 1.0):
            return True
        if not axis.choices and (where <= tol or where >= 1 - tol):
            return True
    return False
