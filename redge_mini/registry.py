"""One table of the pathwise estimators: names, display labels, knobs and their valid ranges.

Every legend, table and experiment script takes estimator names and labels from here, so they agree
across the book.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import estimators


@dataclass(frozen=True)
class Knob:
    """A hyper-parameter of an estimator: default value and closed/open valid range."""

    default: float | int
    low: float
    high: float
    integer: bool = False
    low_inclusive: bool = True
    description: str = ""

    def check(self, name: str, value: object) -> float | int:
        """Return ``value`` if valid for this knob, else raise a ValueError/TypeError naming it."""
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        too_low = value < self.low if self.low_inclusive else value <= self.low
        if too_low or value > self.high:
            left = "[" if self.low_inclusive else "("
            raise ValueError(f"{name} must lie in {left}{self.low}, {self.high}], got {value}")
        return value


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator: its function, display label and knobs."""

    name: str
    fn: Callable[..., torch.Tensor]
    label: str
    knobs: dict[str, Knob] = field(default_factory=dict)
    summary: str = ""

    def defaults(self) -> dict[str, float | int]:
        """The default value of every knob."""
        return {k: knob.default for k, knob in self.knobs.items()}


_TAU = Knob(1.0, 0.0, math.inf, low_inclusive=False, description="temperature")
_REINMAX_TAU = Knob(1.0, 1.0, math.inf, description="temperature (>= 1)")
_N_STEPS = Knob(5, 2, 10_000, integer=True, description="grid points of the sampler")
_T_1 = Knob(0.5, 0.0, 1.0, low_inclusive=False, description="stopping time")

ESTIMATORS: dict[str, EstimatorSpec] = {
    spec.name: spec
    for spec in (
        EstimatorSpec("st", estimators.st, "ST", {}, "Straight-Through"),
        EstimatorSpec("gumbel", estimators.gumbel_softmax, "Gumbel-Softmax", {"tau": _TAU},
                      "straight-through Gumbel-Softmax"),
        EstimatorSpec("reinmax", estimators.reinmax, "ReinMax", {"tau": _REINMAX_TAU},
                      "ReinMax (second-order straight-through)"),
        EstimatorSpec("redge", estimators.redge, "ReDGE", {"n_steps": _N_STEPS, "t_1": _T_1},
                      "diffusion reparameterisation"),
        EstimatorSpec("redge_cov", estimators.redge_cov, "ReDGE-cov",
                      {"n_steps": _N_STEPS, "t_1": _T_1}, "ReDGE, moment-matched noise"),
        EstimatorSpec("reindge", estimators.reindge, "ReinDGE",
                      {"n_steps": _N_STEPS, "t_1": _T_1}, "ReDGE + ReinMax step at t_1"),
    )
}
"""Name -> :class:`EstimatorSpec` for every pathwise estimator, in display order."""


def get_spec(name: str) -> EstimatorSpec:
    """The :class:`EstimatorSpec` called ``name``; a clear ValueError for an unknown name."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]


def check_knobs(name: str, **knobs: float | int) -> dict[str, float | int]:
    """Validate ``knobs`` for estimator ``name`` and fill in defaults for the missing ones."""
    spec = get_spec(name)
    unknown = set(knobs) - set(spec.knobs)
    if unknown:
        allowed = sorted(spec.knobs) or "none"
        raise ValueError(f"estimator {name!r} has no knob {sorted(unknown)}; its knobs: {allowed}")
    values = spec.defaults()
    for key, value in knobs.items():
        values[key] = spec.knobs[key].check(key, value)
    return values


def make_estimator(name: str, **knobs: float | int) -> Callable[..., torch.Tensor]:
    """Estimator ``name`` with its knobs fixed: ``f(logits, generator=None, **options)``.

    Example:
        >>> sampler = make_estimator("redge", t_1=0.3)
        >>> sampler(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """
    spec = get_spec(name)
    return functools.partial(spec.fn, **check_knobs(name, **knobs))


def label(name: str) -> str:
    """Display label of estimator ``name`` (``"exact"`` and ``"reinforce"`` included)."""
    extra = {"exact": "Exact", "reinforce": "REINFORCE (RLOO)"}
    return extra[name] if name in extra else get_spec(name).label
