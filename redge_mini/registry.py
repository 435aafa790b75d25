"""One table of the estimators: names, display labels, colours, markers, knobs and valid ranges.

Every legend, table and experiment script takes estimator names, labels and styles from here, and
the estimators check their knobs against the same :class:`~redge_mini.validation.Knob` objects
(:data:`redge_mini.estimators.KNOBS`), so a value accepted by one is accepted by the other.

Each estimator also has the same surrogate-loss form,
``spec.loss(f, logits, n_samples, *, generator=None, **knobs)``: a scalar (or one value per
independent problem) whose value is the mean of ``f`` over ``n_samples`` draws and whose gradient
in ``logits`` is the estimator's. REINFORCE (RLOO) has only this form (it needs the values of ``f``,
not a differentiable sample), which is how it sits in the same table:
:data:`ESTIMATORS` lists the pathwise estimators (each with ``fn``, a drop-in for
``torch.nn.functional.gumbel_softmax``), :data:`ALL_ESTIMATORS` adds ``"reinforce"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import estimators
from .score_function import reinforce_loss
from .validation import Knob, check_int

__all__ = [
    "ALL_ESTIMATORS",
    "ESTIMATORS",
    "EstimatorSpec",
    "Knob",
    "check_knobs",
    "color",
    "get_spec",
    "knob_table",
    "label",
    "make_estimator",
    "make_loss",
    "marker",
]

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator: its function, display label, figure style and knobs.

    Attributes:
        name: the registry key.
        fn: the pathwise function ``fn(logits, *knobs, hard=False, dim=-1, *, generator=None)``;
            None for a score-function estimator.
        label: display name used in every legend and table.
        color, marker: matplotlib colour (Okabe–Ito) and marker of the estimator in every figure.
        knobs: name -> :class:`Knob` (default, valid range, kind), in positional order.
        summary: one line for tables.
        min_samples: fewest samples the surrogate loss accepts (2 for the leave-one-out baseline).
    """

    name: str
    fn: Callable[..., torch.Tensor] | None
    label: str
    color: str
    marker: str
    knobs: dict[str, Knob] = field(default_factory=dict)
    summary: str = ""
    min_samples: int = 1

    @property
    def pathwise(self) -> bool:
        """True when the estimator returns a differentiable sample (``fn`` is not None)."""
        return self.fn is not None

    def defaults(self) -> dict[str, float | int]:
        """The default value of every knob."""
        return {k: knob.default for k, knob in self.knobs.items()}

    def loss(
        self,
        f: Objective,
        logits: torch.Tensor,
        n_samples: int = 1,
        *,
        generator: torch.Generator | None = None,
        **knobs: float | int,
    ) -> torch.Tensor:
        """Surrogate loss: value ``mean_s f(X_s)``, gradient the estimator's, ``n_samples`` draws.

        ``f`` maps samples ``(S, *logits.shape)`` to ``(S,)`` or ``(S, *b)`` with ``b`` a prefix
        of ``logits.shape[:-1]`` (independent problems); the result has shape ``b``. The
        categories are the last dimension of ``logits``.
        """
        values = check_knobs(self.name, **knobs)
        n_samples = check_int(n_samples, "n_samples", self.min_samples)
        if self.fn is None:
            return reinforce_loss(f, logits, n_samples, generator=generator, baseline="loo")
        draws = self.fn(
            logits.expand(n_samples, *logits.shape), hard=True, generator=generator, **values
        )
        out = f(draws)
        if not isinstance(out, torch.Tensor) or out.shape[:1] != (n_samples,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"f must return values of shape (S, ...) with S = {n_samples}, "
                             f"got {shape}")
        return out.mean(0)


# The Okabe–Ito palette (colour-blind safe); plotting.PALETTE lists the same colours.
_BLACK, _ORANGE, _SKY, _GREEN, _BLUE, _VERMILLION, _PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7"
)
_KNOBS = estimators.KNOBS

ALL_ESTIMATORS: dict[str, EstimatorSpec] = {
    spec.name: spec
    for spec in (
        EstimatorSpec("st", estimators.st, "ST", _BLACK, "o", _KNOBS["st"], "Straight-Through"),
        EstimatorSpec("gumbel", estimators.gumbel_softmax, "Gumbel-Softmax", _ORANGE, "s",
                      _KNOBS["gumbel"], "straight-through Gumbel-Softmax"),
        EstimatorSpec("reinmax", estimators.reinmax, "ReinMax", _SKY, "^", _KNOBS["reinmax"],
                      "ReinMax (second-order straight-through)"),
        EstimatorSpec("redge", estimators.redge, "ReDGE", _VERMILLION, "D", _KNOBS["redge"],
                      "diffusion reparameterisation"),
        EstimatorSpec("redge_cov", estimators.redge_cov, "ReDGE-cov", _PURPLE, "X",
                      _KNOBS["redge_cov"], "ReDGE, moment-matched noise"),
        EstimatorSpec("reindge", estimators.reindge, "ReinDGE", _GREEN, "v", _KNOBS["reindge"],
                      "ReDGE + ReinMax step at t_1"),
        EstimatorSpec("reinforce", None, "REINFORCE (RLOO)", _BLUE, "P", {},
                      "score function, leave-one-out baseline", min_samples=2),
    )
}
"""Name -> :class:`EstimatorSpec` for every estimator, pathwise and score-function."""

ESTIMATORS: dict[str, EstimatorSpec] = {
    name: spec for name, spec in ALL_ESTIMATORS.items() if spec.pathwise
}
"""Name -> :class:`EstimatorSpec` for the pathwise estimators (those with a sample ``fn``)."""

_EXACT = ("Exact", "#7f7f7f", "*")  # the enumerated reference in figures and tables


def get_spec(name: str) -> EstimatorSpec:
    """The :class:`EstimatorSpec` called ``name``; a clear ValueError for an unknown name."""
    if name not in ALL_ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ALL_ESTIMATORS)}")
    return ALL_ESTIMATORS[name]


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
    """Pathwise estimator ``name`` with its knobs fixed, returning hard samples.

    ``f(logits, generator=None, dim=-1)`` is ``spec.fn(logits, **knobs, hard=True, ...)``: a
    one-hot value carrying the estimator's gradient.

    Example:
        >>> sampler = make_estimator("redge", t_1=0.3)
        >>> sampler(torch.zeros(2, 3)).sum(-1)
        tensor([1., 1.])
    """
    spec = get_spec(name)
    if spec.fn is None:
        raise ValueError(
            f"estimator {name!r} has no differentiable sample (it is a score-function estimator); "
            f"use make_loss({name!r}) or get_spec({name!r}).loss"
        )
    return functools.partial(spec.fn, hard=True, **check_knobs(name, **knobs))


def make_loss(name: str, **knobs: float | int) -> Callable[..., torch.Tensor]:
    """Estimator ``name``'s surrogate loss with its knobs fixed:
    ``loss(f, logits, n_samples=1, *, generator=None)`` (see :meth:`EstimatorSpec.loss`)."""
    spec = get_spec(name)
    return functools.partial(spec.loss, **check_knobs(name, **knobs))


def label(name: str) -> str:
    """Display label of estimator ``name`` (``"exact"`` included)."""
    return _EXACT[0] if name == "exact" else get_spec(name).label


def color(name: str) -> str:
    """Colour of estimator ``name`` in every figure (``"exact"`` included)."""
    return _EXACT[1] if name == "exact" else get_spec(name).color


def marker(name: str) -> str:
    """Marker of estimator ``name`` in every figure (``"exact"`` included)."""
    return _EXACT[2] if name == "exact" else get_spec(name).marker


def knob_table() -> str:
    """A Markdown table of every estimator's knobs, defaults and valid ranges (README, NOTES)."""
    rows = ["| estimator | knob | kind | default | valid range | meaning |",
            "|---|---|---|---|---|---|"]
    for spec in ALL_ESTIMATORS.values():
        if not spec.knobs:
            rows.append(f"| `{spec.name}` | — | | | | |")
        for key, knob in spec.knobs.items():
            rows.append(f"| `{spec.name}` | `{key}` | {knob.kind} | {knob.default:g} | "
                        f"{knob.range_string()} | {knob.description} |")
    return "\n".join(rows)
