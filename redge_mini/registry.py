"""One table of the estimators: names, display labels, knobs (defaults, valid ranges) and kernels.

:data:`KNOBS` is the only place where an estimator's knobs, their defaults and valid ranges are
written. The estimators' functions, :func:`~redge_mini.estimators.sample`, the distribution
classes (:mod:`redge_mini.distributions`, whose defaults are read from here), the surrogate losses
and every experiment check knobs with the one :func:`check_knobs` and names with the one
:func:`check_name`, so a value accepted by one is accepted by all. The implementations register
themselves here when their modules are imported (:mod:`redge_mini.estimators` binds each pathwise
function and its kernel, :mod:`redge_mini.score_function` binds REINFORCE); :func:`register` adds
an estimator of your own to the same table. Colours and markers are the book's business
(:mod:`redge_mini.book.plotting`).

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
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .validation import N_STEPS, REINMAX_TAU, T_1, TAU, Knob, check_int

__all__ = [
    "ALL_ESTIMATORS",
    "BASELINE",
    "Choice",
    "ESTIMATORS",
    "EstimatorSpec",
    "KNOBS",
    "Knob",
    "check_knobs",
    "check_name",
    "defaults",
    "get_spec",
    "knob_table",
    "label",
    "make_estimator",
    "make_loss",
    "register",
    "unregister",
]

Objective = Callable[[torch.Tensor], torch.Tensor]
Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Choice:
    """A knob that takes one of a few values (e.g. REINFORCE's baseline), not a number.

    ``check(name, value)`` returns the value if it is one of ``choices`` (compared by type and
    value, so ``0`` is not ``False``), else a ValueError naming the knob and the choices.
    """

    default: object
    choices: tuple[object, ...]
    description: str = ""
    kind = "choice"

    def range_string(self) -> str:
        """The choices in set notation, e.g. ``{loo, None}``."""
        return "{" + ", ".join(str(c) for c in self.choices) + "}"

    def check(self, name: str, value: object) -> object:
        """``value`` if it is one of the choices, else a ValueError naming ``name``."""
        for choice in self.choices:
            if value is choice or (type(value) is type(choice) and value == choice):
                return choice
        raise ValueError(f"{name} must be one of {self.choices}, got {value!r}")


BASELINE = Choice(
    "loo", ("loo", None),
    description="subtracted from f: the mean of the other samples (RLOO) or none",
)
"""REINFORCE's baseline: ``"loo"`` (the default, RLOO) or ``None`` (plain REINFORCE)."""

AnyKnob = Knob | Choice

KNOBS: dict[str, dict[str, AnyKnob]] = {
    "st": {},
    "gumbel": {"tau": TAU},
    "reinmax": {"tau": REINMAX_TAU},
    "redge": {"n_steps": N_STEPS, "t_1": T_1},
    "redge_cov": {"n_steps": N_STEPS, "t_1": T_1},
    "reindge": {"n_steps": N_STEPS, "t_1": T_1},
    "reinforce": {"baseline": BASELINE},
}
"""Estimator name -> its knobs (in positional order), with default, valid range and kind: the one
table of knobs. :func:`register` adds the knobs of an estimator of your own."""

# name -> (label, one line for tables, fewest samples its surrogate loss accepts), in the order of
# every legend and table; the functions and kernels are bound by the modules that define them
_BUILTINS: dict[str, tuple[str, str, int]] = {
    "st": ("ST", "Straight-Through", 1),
    "gumbel": ("Gumbel-Softmax", "straight-through Gumbel-Softmax", 1),
    "reinmax": ("ReinMax", "ReinMax (second-order straight-through)", 1),
    "redge": ("ReDGE", "diffusion reparameterisation", 1),
    "redge_cov": ("ReDGE-cov", "ReDGE, moment-matched noise", 1),
    "reindge": ("ReinDGE", "ReDGE + ReinMax step at t_1", 1),
    "reinforce": ("REINFORCE (RLOO)", "score function, leave-one-out baseline", 2),
}

_EXACT_LABEL = "Exact"  # the enumerated reference in figures and tables


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator: its function, display label, knobs and kernel.

    Attributes:
        name: the registry key.
        fn: the pathwise function ``fn(logits, *knobs, hard=False, dim=-1, *, generator=None)``;
            None for a score-function estimator.
        label: display name used in every legend and table.
        knobs: name -> :class:`Knob` (or :class:`Choice`), in positional order (``KNOBS[name]``).
        summary: one line for tables.
        min_samples: fewest samples the surrogate loss accepts (2 for the leave-one-out baseline).
        kernel: ``kernel(work, generator, *knob_values) -> (hard, soft)`` on validated logits with
            the categories last (what :func:`redge_mini.sample` runs); None when the estimator
            has none (REINFORCE, or one added by :func:`register` without a kernel).
        score_loss: the surrogate loss ``score_loss(f, logits, n_samples, *, generator, **knobs)``
            of a score-function estimator (None for a pathwise one).
    """

    name: str
    fn: Callable[..., torch.Tensor] | None
    label: str
    knobs: dict[str, AnyKnob] = field(default_factory=dict)
    summary: str = ""
    min_samples: int = 1
    kernel: Kernel | None = None
    score_loss: Callable[..., torch.Tensor] | None = None

    @property
    def pathwise(self) -> bool:
        """True when the estimator returns a differentiable sample (``fn`` is not None)."""
        return self.fn is not None

    def defaults(self) -> dict[str, object]:
        """The default value of every knob."""
        return {k: knob.default for k, knob in self.knobs.items()}

    def loss(
        self,
        f: Objective,
        logits: torch.Tensor,
        n_samples: int = 1,
        *,
        generator: torch.Generator | None = None,
        **knobs: object,
    ) -> torch.Tensor:
        """Surrogate loss: value ``mean_s f(X_s)``, gradient the estimator's, ``n_samples`` draws.

        ``f`` maps samples ``(S, *logits.shape)`` to ``(S,)`` or ``(S, *b)`` with ``b`` a prefix
        of ``logits.shape[:-1]`` (independent problems); the result has shape ``b``. The
        categories are the last dimension of ``logits``.
        """
        values = check_knobs(self.name, **knobs)
        if self.fn is None:  # the score function checks n_samples against its baseline
            return self.score_loss(f, logits, n_samples, generator=generator, **values)
        n_samples = check_int(n_samples, "n_samples", self.min_samples)
        draws = self.fn(
            logits.expand(n_samples, *logits.shape), hard=True, generator=generator, **values
        )
        out = f(draws)
        if not isinstance(out, torch.Tensor) or out.shape[:1] != (n_samples,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"f must return values of shape (S, ...) with S = {n_samples}, "
                             f"got {shape}")
        return out.mean(0)


ALL_ESTIMATORS: dict[str, EstimatorSpec] = {}
"""Name -> :class:`EstimatorSpec` for every estimator, pathwise and score-function (the built-in
ones in the order of :data:`KNOBS`, then those added by :func:`register`)."""

ESTIMATORS: dict[str, EstimatorSpec] = {}
"""Name -> :class:`EstimatorSpec` for the pathwise estimators (those with a sample ``fn``)."""


def _refresh() -> None:
    # the two dicts are imported by reference elsewhere: update them in place, built-ins first
    specs = dict(ALL_ESTIMATORS)
    ordered = [specs[n] for n in _BUILTINS if n in specs]
    ordered += [s for n, s in specs.items() if n not in _BUILTINS]
    ALL_ESTIMATORS.clear()
    ALL_ESTIMATORS.update((s.name, s) for s in ordered)
    ESTIMATORS.clear()
    ESTIMATORS.update((s.name, s) for s in ordered if s.pathwise)


def _bind(name: str, *, fn: Callable[..., torch.Tensor] | None = None,
          kernel: Kernel | None = None, score_loss: Callable[..., torch.Tensor] | None = None,
          ) -> None:
    """Attach a built-in estimator's implementation to its row (called by the modules that
    define them, :mod:`redge_mini.estimators` and :mod:`redge_mini.score_function`)."""
    label_, summary, min_samples = _BUILTINS[name]
    ALL_ESTIMATORS[name] = EstimatorSpec(name, fn, label_, KNOBS[name], summary, min_samples,
                                         kernel, score_loss)
    _refresh()


def check_name(name: object, *, pathwise: bool = False, kernel: bool = False) -> str:
    """``name`` if it is a registered estimator (with a sample ``fn`` when ``pathwise``, with a
    kernel when ``kernel``); else a ValueError listing the names that are."""
    allowed = ALL_ESTIMATORS
    if kernel:
        allowed = {n: s for n, s in ALL_ESTIMATORS.items() if s.kernel is not None}
    elif pathwise:
        allowed = ESTIMATORS
    if isinstance(name, str) and name in allowed:
        return name
    if isinstance(name, str) and name in ALL_ESTIMATORS:
        why = ("is a score-function estimator (no differentiable sample); use "
               f"make_loss({name!r})" if not ALL_ESTIMATORS[name].pathwise else
               "was registered without a kernel; call its function")
        raise ValueError(f"estimator {name!r} {why}")
    raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(allowed)}")


def get_spec(name: str) -> EstimatorSpec:
    """The :class:`EstimatorSpec` called ``name``; a clear ValueError for an unknown name."""
    return ALL_ESTIMATORS[check_name(name)]


def check_knobs(name: str, **knobs: object) -> dict[str, object]:
    """Validate ``knobs`` for estimator ``name`` and fill in defaults for the missing ones.

    The one knob check: the functions, :func:`~redge_mini.sample`, the distributions, the
    surrogate losses and the experiments all call it. Returns every knob of ``name`` in positional
    order.
    """
    table = KNOBS[check_name(name)]
    for key in knobs:
        if key not in table:
            unknown = sorted(k for k in knobs if k not in table)
            allowed = sorted(table) or "none"
            raise ValueError(f"estimator {name!r} has no knob {unknown}; its knobs: {allowed}")
    return {key: knob.check(key, knobs[key]) if key in knobs else knob.default
            for key, knob in table.items()}


def defaults(name: str) -> dict[str, object]:
    """The default value of every knob of estimator ``name``, in positional order."""
    return {key: knob.default for key, knob in KNOBS[check_name(name)].items()}


def make_estimator(name: str, **knobs: object) -> Callable[..., torch.Tensor]:
    """Pathwise estimator ``name`` with its knobs fixed, returning hard samples.

    ``f(logits, generator=None, dim=-1)`` is ``spec.fn(logits, **knobs, hard=True, ...)``: a
    one-hot value carrying the estimator's gradient.

    Example:
        >>> sampler = make_estimator("redge", t_1=0.3)
        >>> sampler(torch.zeros(2, 3)).sum(-1)
        tensor([1., 1.])
    """
    spec = ALL_ESTIMATORS[check_name(name, pathwise=True)]
    return functools.partial(spec.fn, hard=True, **check_knobs(name, **knobs))


def make_loss(name: str, **knobs: object) -> Callable[..., torch.Tensor]:
    """Estimator ``name``'s surrogate loss with its knobs fixed:
    ``loss(f, logits, n_samples=1, *, generator=None)`` (see :meth:`EstimatorSpec.loss`)."""
    spec = get_spec(name)
    return functools.partial(spec.loss, **check_knobs(name, **knobs))


def label(name: str) -> str:
    """Display label of estimator ``name`` (``"exact"`` included)."""
    return _EXACT_LABEL if name == "exact" else get_spec(name).label


def knob_table() -> str:
    """A Markdown table of every estimator's knobs, defaults and valid ranges (README, NOTES)."""
    rows = ["| estimator | knob | kind | default | valid range | meaning |",
            "|---|---|---|---|---|---|"]
    for spec in ALL_ESTIMATORS.values():
        if not spec.knobs:
            rows.append(f"| `{spec.name}` | — | | | | |")
        for key, knob in spec.knobs.items():
            default = f"{knob.default:g}" if isinstance(knob, Knob) else str(knob.default)
            rows.append(f"| `{spec.name}` | `{key}` | {knob.kind} | {default} | "
                        f"{knob.range_string()} | {knob.description} |")
    return "\n".join(rows)


# ------------------------------------------------------------------ estimators of your own

_SIGNATURE = "fn(logits, *knobs, hard=False, dim=-1, *, generator=None)"


def _check_knob_spec(key: object, knob: object) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise ValueError(f"knobs: every knob name must be a Python identifier, got {key!r}")
    if not isinstance(knob, (Knob, Choice)):
        raise TypeError(f"knobs: {key!r} must be a redge_mini.Knob (or registry.Choice), got "
                        f"{type(knob).__name__}")
    if isinstance(knob, Knob):
        for bound in ("low", "high"):
            value = getattr(knob, bound)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise ValueError(f"knobs: {key!r} has an invalid {bound} bound {value!r}")
        if not knob.low <= knob.high:
            raise ValueError(f"knobs: {key!r} has low {knob.low} > high {knob.high}")
    try:  # the default must be a valid value
        knob.check(key, knob.default)
    except (TypeError, ValueError) as error:
        raise ValueError(f"knobs: the default of {key!r} is not a valid value: {error}") from None


def _check_signature(name: str, fn: Callable[..., torch.Tensor], knobs: Mapping[str, AnyKnob]):
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise TypeError(f"fn of {name!r} has no inspectable signature; it must be "
                        f"{_SIGNATURE}") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in positional]
    expected = ["logits", *knobs, "hard", "dim"]
    keyword_only = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
    if names != expected or "generator" not in keyword_only:
        raise TypeError(f"fn of {name!r} must have the signature {_SIGNATURE} with its knobs "
                        f"{list(knobs)} in order: expected positional parameters {expected} and "
                        f"a keyword-only generator, got {inspect.signature(fn)}")
    given = {p.name: p.default for p in positional}
    if given["hard"] is not False or given["dim"] != -1:
        raise ValueError(f"fn of {name!r} must default to hard=False and dim=-1 (as torch)")
    if keyword_only["generator"].default is not None:
        raise ValueError(f"fn of {name!r} must default to generator=None")
    for key, knob in knobs.items():
        if given[key] is inspect.Parameter.empty or not (
                given[key] is knob.default or given[key] == knob.default):
            raise ValueError(f"fn of {name!r}: the default of {key} in its signature "
                             f"({given[key]!r}) must be the knob's default {knob.default!r}")


def register(
    name: str,
    fn: Callable[..., torch.Tensor],
    knobs: Mapping[str, Knob | Choice] | None = None,
    *,
    label: str | None = None,
    summary: str = "",
    kernel: Kernel | None = None,
) -> EstimatorSpec:
    """Add a pathwise estimator of your own to the registry; return its :class:`EstimatorSpec`.

    Afterwards ``check_knobs``, ``make_estimator``, ``make_loss``, ``get_spec``,
    :data:`ESTIMATORS` and the distribution :class:`~redge_mini.PathwiseCategorical` know it.

    Args:
        name: a new name (a Python identifier; a built-in name or a registered one is refused).
        fn: ``fn(logits, *knobs, hard=False, dim=-1, *, generator=None)``, the knobs in the
            order of ``knobs`` and with their defaults (checked).
        knobs: knob name -> :class:`~redge_mini.Knob` (default, valid range) or :class:`Choice`.
        label: display name (default: ``name``).
        summary: one line for tables.
        kernel: optional ``kernel(work, generator, *knob_values) -> (hard, soft)`` on validated
            logits with the categories last; with it, :func:`redge_mini.sample` works too.

    Example:
        >>> from redge_mini import Knob, register, unregister, make_estimator
        >>> def hot(logits, tau=1.0, hard=False, dim=-1, *, generator=None):
        ...     return torch.softmax(logits / tau, dim)
        >>> spec = register("hot", hot, {"tau": Knob(1.0, 0.0, 10.0, low_inclusive=False)})
        >>> make_estimator("hot", tau=2.0)(torch.zeros(3)).tolist()
        [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
        >>> unregister("hot")
    """
    if not isinstance(name, str) or not name.isidentifier() or name == "exact":
        raise ValueError(f"name must be a Python identifier other than 'exact', got {name!r}")
    if name in ALL_ESTIMATORS or name in _BUILTINS:
        raise ValueError(f"estimator {name!r} is already registered; unregister it first (a "
                         "built-in estimator cannot be replaced)")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if kernel is not None and not callable(kernel):
        raise TypeError(f"kernel must be callable or None, got {type(kernel).__name__}")
    knobs = {} if knobs is None else knobs
    if not isinstance(knobs, Mapping):
        raise TypeError(f"knobs must be a mapping of knob name -> Knob, got "
                        f"{type(knobs).__name__}")
    for key, knob in knobs.items():
        _check_knob_spec(key, knob)
    _check_signature(name, fn, knobs)
    if label is None:
        label = name
    if not isinstance(label, str) or not label:
        raise TypeError(f"label must be a non-empty str, got {label!r}")
    if not isinstance(summary, str):
        raise TypeError(f"summary must be a str, got {type(summary).__name__}")
    KNOBS[name] = dict(knobs)
    ALL_ESTIMATORS[name] = EstimatorSpec(name, fn, label, KNOBS[name], summary, 1, kernel)
    _refresh()
    return ALL_ESTIMATORS[name]


def unregister(name: str) -> None:
    """Remove an estimator added by :func:`register` (a built-in one cannot be removed)."""
    if name in _BUILTINS:
        raise ValueError(f"estimator {name!r} is built in and cannot be unregistered")
    check_name(name)
    del ALL_ESTIMATORS[name], KNOBS[name]
    _refresh()
