"""Score-function (REINFORCE) gradient estimation, as a surrogate loss.

The score-function identity ``∇_θ E_{X~π_θ}[f(X)] = E[f(X) ∇_θ log π_θ(X)]`` needs no
gradient of ``f``: it is unbiased for any ``f``, at the price of variance. Subtracting a baseline
``b`` that does not depend on the sample it multiplies keeps it unbiased; with ``S`` samples the
leave-one-out baseline ``b_s = (1/(S−1)) Σ_{j≠s} f(X_j)`` (RLOO) is such a baseline and needs no
extra evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .estimators import sample_categorical
from .registry import BASELINE, _bind
from .validation import check_generator, check_int, check_logits, working_dtype

__all__ = ["BASELINES", "reinforce_loss", "sample_onehot"]

#: Accepted values of ``reinforce_loss(baseline=...)``: the choices of REINFORCE's knob
#: ``baseline`` in the registry (:data:`redge_mini.registry.BASELINE`, default ``"loo"``).
BASELINES = BASELINE.choices


def sample_onehot(
    logits: torch.Tensor,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n_samples`` exact draws from ``Cat(softmax(logits))``, as detached one-hot tensors.

    The draws are Gumbel-max samples (:func:`redge_mini.estimators.sample_categorical`), computed
    in float32 for half-precision logits.

    Args:
        logits: Finite floating tensor ``(..., K)``, ``K >= 2``; each leading index is an
            independent categorical variable.
        n_samples: Number of draws (``>= 1``).
        generator: Source of the draws (``None``: the global RNG), on the logits' device.

    Returns:
        ``(n_samples, *logits.shape)`` one-hot, in the logits' dtype, without gradient.
    """
    logits = check_logits(logits)
    n_samples = check_int(n_samples, "n_samples", 1)
    check_generator(generator, logits.device)
    work = logits.detach().to(working_dtype(logits.dtype))
    draws = sample_categorical(work.expand(n_samples, *work.shape), generator)
    return draws.to(logits.dtype)


def reinforce_loss(
    f: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
    baseline: str | None = BASELINE.default,
) -> torch.Tensor:
    """A surrogate loss whose value is the mean of ``f`` and whose gradient is REINFORCE.

    Draws ``S = n_samples`` samples ``X_s ~ Cat(softmax(logits))`` and returns

    ``mean_s f(X_s) + (1/S) Σ_s sg(f(X_s) − b_s) · log π(X_s) − sg(same)``,

    so the forward value equals ``mean_s f(X_s)`` and ``backward`` gives, with respect to the
    logits, ``(1/S) Σ_s (f(X_s) − b_s) ∇ log π(X_s)`` — the REINFORCE estimator — and, with respect
    to any parameters inside ``f``, the gradient of ``mean_s f(X_s)``.

    Args:
        f: Maps one-hot samples ``(S, *logits.shape)`` to values of shape ``(S,)`` or
            ``(S, *b)``, where ``b`` is a prefix of ``logits.shape[:-1]`` (independent problems in
            a batch, e.g. one per data point). ``log π(X_s)`` sums over the dimensions of
            ``logits`` after ``b``.
        logits: Finite floating tensor ``(..., K)``, ``K >= 2``.
        n_samples: ``S``, the number of samples (``>= 2`` for the leave-one-out baseline).
        generator: Source of the draws (``None``: global RNG).
        baseline: the estimator's knob (:data:`redge_mini.registry.BASELINE`): ``"loo"`` (the
            default), ``b_s`` is the mean of the other ``S − 1`` values (RLOO); ``None``:
            ``b_s = 0`` (plain REINFORCE). ``make_loss("reinforce", baseline=None)`` sets it too.

    Returns:
        Shape ``b`` (a scalar when ``f`` returns ``(S,)``).

    Example:
        >>> logits = torch.zeros(4, 3, requires_grad=True)
        >>> loss = reinforce_loss(lambda x: x[..., 0].sum(-1), logits, 8)
        >>> loss.backward()
    """
    baseline = BASELINE.check("baseline", baseline)
    minimum = 2 if baseline == "loo" else 1
    n_samples = check_int(n_samples, "n_samples", 1)
    if n_samples < minimum:
        raise ValueError(
            f"n_samples must be >= {minimum} with baseline={baseline!r}, got {n_samples}"
        )
    samples = sample_onehot(logits, n_samples, generator=generator)
    values = f(samples)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"f must return a torch.Tensor, got {type(values).__name__}")
    batch = tuple(values.shape[1:])
    batch_dims = tuple(logits.shape[:-1])
    if values.shape[:1] != (n_samples,) or batch != batch_dims[: len(batch)] or (
        len(batch) > len(batch_dims)
    ):
        raise ValueError(
            f"f must return values of shape (S,) or (S, *b) with b a prefix of "
            f"logits.shape[:-1] = {tuple(logits.shape[:-1])}; got {tuple(values.shape)}"
        )
    log_probs = torch.log_softmax(logits, dim=-1)
    sample_dims = tuple(range(1 + len(batch), 1 + logits.dim()))
    # log π(X_s): the log-probability at each drawn class (a where, not samples * log_probs, so
    # that a masked class, log π = -inf, contributes 0 rather than 0 * -inf = NaN)
    log_pi = torch.where(samples > 0, log_probs, 0.0).sum(dim=sample_dims)
    v = values.detach().to(log_pi.dtype)
    if baseline == "loo":
        advantage = v - (v.sum(0) - v) / (n_samples - 1)
    else:
        advantage = v
    score = (advantage * log_pi).mean(0)
    return values.mean(0) + (score - score.detach()).to(values.dtype)


# REINFORCE's row of the registry: a score-function estimator, this surrogate loss
_bind("reinforce", score_loss=reinforce_loss)
