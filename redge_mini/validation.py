"""Argument checks shared by every public function of :mod:`redge_mini`.

Each check raises :class:`TypeError` (wrong kind of object) or :class:`ValueError` (right kind, bad
value) with a message that names the argument, so that a mistake is reported where it is made rather
than surfacing later as a NaN.
"""

from __future__ import annotations

import math
import numbers

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_logits(logits: object, name: str = "logits") -> torch.Tensor:
    """Check that ``logits`` is a finite floating tensor with at least two categories (last dim)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {logits.dtype}; convert with {name}.float()"
        )
    if logits.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the categories), got a scalar")
    if logits.shape[-1] < 2:
        raise ValueError(
            f"{name} must have at least 2 categories in its last dimension, got shape "
            f"{tuple(logits.shape)}"
        )
    # One reduction in float32/64 is enough when the total is finite (a NaN or inf entry always
    # makes it non-finite); only an overflowing total needs the elementwise check.
    # ``math.isfinite`` on the Python number: ``torch.isfinite`` of a 0-d tensor is five more ops.
    total = logits.detach().sum(dtype=working_dtype(logits.dtype)).item()
    if not math.isfinite(total) and not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return logits


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


def check_t_1(t_1: object) -> float:
    """Check the stopping time ``t_1``: a real number in ``(0, 1]``."""
    value = check_real(t_1, "t_1")
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"t_1 must lie in (0, 1], got {value}: t_1 = 1 is Straight-Through, t_1 -> 0 makes the "
            "soft sample one-hot (t_1 = 0 divides by zero)"
        )
    return value


def check_n_steps(n_steps: object) -> int:
    """Check the number of grid points ``n_steps``: an integer ``>= 2``."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    value = int(n_steps)
    if value < 2:
        raise ValueError(
            f"n_steps must be >= 2 (n_steps grid points, n_steps - 1 denoiser calls), got {value}"
        )
    return value


def check_tau(tau: object, *, minimum: float = 0.0, name: str = "tau") -> float:
    """Check a temperature: a finite real ``> 0`` (or ``>= minimum`` when ``minimum > 0``)."""
    value = check_real(tau, name)
    if minimum > 0.0:
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    elif value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


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
