"""The tuning search shared by every experiment: the same budget for every estimator.

A grid gives every estimator as many configurations as its knobs multiply to: 15 points for the
ReDGE family (t_1 x n_steps), 5 for a temperature, 1 for Straight-Through. Comparisons between
estimators tuned over such different budgets are won partly by search. So every experiment draws
the same number of configurations for every estimator from that estimator's search space
(:func:`search_space`, :func:`sample_configs`: a Latin hypercube over the learning rate and the
knobs), and reports whether a choice lies near the edge of its range (:func:`edge_of_space`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KNOB_SPACE", "Axis", "edge_of_space", "sample_configs", "search_space"]


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
