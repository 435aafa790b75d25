"""Argument checks shared by every public function of :mod:`redge_mini`.

Each check raises :class:`TypeError` (wrong kind of object) or :class:`ValueError` (right kind, bad
value) with a message that names the argument, so that a mistake is reported where it is made rather
than surfacing later as a NaN.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


_VALIDATE = True


def set_validate_args(value: bool) -> None:
    """Turn the checks that read tensor values on (default) or off, for the whole package.

    Like :meth:`torch.distributions.Distribution.set_default_validate_args`. With validation on,
    every estimator checks that its logits hold no NaN, no ``+inf`` and at least one finite entry
    along ``dim``: one reduction and one host sync per call. With it off those checks are skipped
    (no ``.item()``, no sync), which ``torch.vmap``, ``torch.compile(fullgraph=True)`` and
    CUDA-graph capture need. Checks of Python arguments (knobs, shapes, dtypes, generators)
    always run.
    """
    global _VALIDATE
    if not isinstance(value, bool):
        raise TypeError(f"value must be a bool, got {type(value).__name__}")
    _VALIDATE = value


def get_validate_args() -> bool:
    """Whether the checks that read tensor values are on (see :func:`set_validate_args`)."""
    return _VALIDATE


def check_logits(logits: object, name: str = "logits", dim: int = -1) -> torch.Tensor:
    """Check ``logits``: a floating tensor with at least two categories along ``dim``.

    ``-inf`` entries are masked categories (probability zero). With validation on (see
    :func:`set_validate_args`) NaN, ``+inf`` and a slice along ``dim`` with every entry ``-inf``
    are refused with a ValueError naming the argument.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {logits.dtype}; convert with {name}.float()"
        )
    if logits.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the categories), got a scalar")
    dim = check_dim(dim, logits.dim())
    if logits.shape[dim] < 2:
        raise ValueError(
            f"{name} must have at least 2 categories along dim={dim}, got shape "
            f"{tuple(logits.shape)}"
        )
    if _VALIDATE and logits.numel() > 0:
        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"redge_mini: the checks of {name}'s values read the tensor (a host sync), which "
                "torch.compile cannot trace; call redge_mini.set_validate_args(False) before "
                "compiling"
            )
        _check_logit_values(logits, name, dim)
    return logits


def _check_logit_values(logits: torch.Tensor, name: str, dim: int) -> None:
    # One reduction in float32/64 is enough when the total is finite (a NaN or inf entry always
    # makes it non-finite); only a non-finite total (a mask, an overflow or a bad value) needs the
    # elementwise checks. ``math.isfinite`` on the Python number: ``torch.isfinite`` of a 0-d
    # tensor is five more ops.
    values = logits.detach()
    total = values.sum(dtype=working_dtype(logits.dtype)).item()
    if math.isfinite(total):
        return
    bad = torch.stack([
        values.isnan().any(),
        values.isposinf().any(),
        values.isneginf().all(dim=dim).any(),
    ]).tolist()
    if bad[0]:
        raise ValueError(f"{name} contains NaN")
    if bad[1]:
        raise ValueError(
            f"{name} contains +inf; mask a category with -inf, not favour one with +inf"
        )
    if bad[2]:
        raise ValueError(
            f"{name} has a slice along dim={dim} whose every entry is -inf (every category "
            "masked): at least one category must have a finite logit"
        )


def check_dim(dim: object, ndim: int, name: str = "dim") -> int:
    """Check that ``dim`` is an int in ``[-ndim, ndim)``; return it as a non-negative int."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    dim = int(dim)
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"{name} must lie in [{-ndim}, {ndim - 1}] for a {ndim}-d tensor, got {dim}"
        )
    return dim % ndim


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an integer (not a bool) ``>= minimum``; return it as an ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(
    value: object, name: str, *, minimum: float | None = None, strict: bool = False
) -> float:
    """Check that ``value`` is a finite real number (not a bool); return it as a ``float``.

    With ``minimum``, also require ``value >= minimum`` (``value > minimum`` when ``strict``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if minimum is None:
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        return value
    too_small = value <= minimum if strict else value < minimum
    if not math.isfinite(value) or too_small:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum:g}, got {value}")
    return value


@dataclass(frozen=True)
class Knob:
    """A hyper-parameter of an estimator: its default, its valid range and its kind.

    The registry (:data:`redge_mini.registry.ESTIMATORS`), the estimators' own argument checks and
    the table of knobs in the documentation all read these objects, so they cannot disagree.
    """

    default: float | int
    low: float
    high: float
    integer: bool = False
    low_inclusive: bool = True
    high_inclusive: bool = True
    description: str = ""
    hint: str = ""

    @property
    def kind(self) -> str:
        """``"int"`` or ``"real"``."""
        return "int" if self.integer else "real"

    def range_string(self) -> str:
        """The valid range in interval notation, e.g. ``(0, 1]`` or ``[2, inf)``."""
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive and math.isfinite(self.high) else ")"
        return f"{left}{self.low:g}, {self.high:g}{right}"

    def check(self, name: str, value: object) -> float | int:
        """``value`` as an int or a float if valid, else a TypeError/ValueError naming it."""
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            value = int(value)
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
            value = float(value)
        too_low = value < self.low if self.low_inclusive else value <= self.low
        too_high = value > self.high if self.high_inclusive else value >= self.high
        if not math.isfinite(value) or too_low or too_high:
            hint = f": {self.hint}" if self.hint else ""
            raise ValueError(f"{name} must lie in {self.range_string()}, got {value}{hint}")
        return value


TAU = Knob(1.0, 0.0, math.inf, low_inclusive=False, description="temperature of the relaxation")
REINMAX_TAU = Knob(1.0, 1.0, math.inf, description="temperature (>= 1, as the ReinMax authors)")
N_STEPS = Knob(
    5, 2, math.inf, integer=True, description="grid points of the sampler (n_steps - 1 denoisers)",
    hint="n_steps grid points, n_steps - 1 denoiser calls",
)
T_1 = Knob(
    0.5, 0.0, 1.0, low_inclusive=False, description="stopping time of the sampler",
    hint="t_1 = 1 is Straight-Through, t_1 -> 0 makes the soft sample one-hot (t_1 = 0 divides "
    "by zero)",
)


def check_t_1(t_1: object) -> float:
    """Check the stopping time ``t_1``: a real number in ``(0, 1]``."""
    return T_1.check("t_1", t_1)


def check_n_steps(n_steps: object) -> int:
    """Check the number of grid points ``n_steps``: an integer ``>= 2``."""
    return N_STEPS.check("n_steps", n_steps)


def check_tau(tau: object, *, minimum: float = 0.0, name: str = "tau") -> float:
    """Check a temperature: a finite real ``> 0`` (or ``>= minimum`` when ``minimum > 0``)."""
    if minimum == 1.0:
        return REINMAX_TAU.check(name, tau)
    if minimum == 0.0:
        return TAU.check(name, tau)
    return Knob(minimum, minimum, math.inf).check(name, tau)


def check_generator(generator: object, device: torch.device) -> torch.Generator | None:
    """Check that ``generator`` is ``None`` or a :class:`torch.Generator` on ``device``."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(
            f"generator is on device {generator.device} but logits are on {device}; create it with "
            f"torch.Generator(device=logits.device)"
        )
    return generator


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype computations run in: float32 for half-precision inputs, else the input dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype
