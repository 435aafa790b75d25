"""Exact answers by enumeration, and diagnostics of gradient estimators against them.

For ``L`` independent categorical variables with ``K`` classes each, the objective
``F(θ) = E_{X ~ π_θ}[f(X)]`` is a finite sum over the ``K**L`` one-hot configurations, so for small
problems both ``F`` and its gradient can be computed exactly. This module provides

- :func:`enumerate_onehot`, :func:`exact_expectation`, :func:`exact_gradient`: the ground truth;
- :func:`per_sample_gradients`: ``n`` independent draws of any estimator's gradient in one backward
  pass;
- :func:`gradient_diagnostics`: bias, variance, MSE and cosine similarity of those draws to the
  exact gradient, each with a Monte-Carlo standard error;
- :func:`empirical_law` and :func:`hard_sample_tv`: the law of an estimator's hard sample against
  ``softmax(θ)`` in total variation, with its standard error and the noise floor (the TV an exact
  sampler would show with the same number of draws).

Conventions: ``f`` maps a batch of one-hot tensors ``(B, L, K)`` to values ``(B,)``; the logits of
one problem have shape ``(L, K)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .validation import check_generator, check_int, check_logits

__all__ = [
    "MAX_CONFIGS",
    "TVEstimate",
    "config_log_probs",
    "empirical_law",
    "enumerate_onehot",
    "exact_expectation",
    "exact_gradient",
    "gradient_diagnostics",
    "hard_sample_tv",
    "per_sample_gradients",
]

#: Largest number of configurations ``K**L`` that the enumeration accepts by default.
MAX_CONFIGS = 2**20

Objective = Callable[[torch.Tensor], torch.Tensor]
Sampler = Callable[..., torch.Tensor]


def _check_problem_logits(logits: object) -> torch.Tensor:
    """Logits of one problem: a finite floating tensor of shape ``(L, K)`` with ``K >= 2``."""
    logits = check_logits(logits)
    if logits.dim() != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must have shape (L, K), got shape {tuple(logits.shape)}")
    return logits


def _n_configs(L: int, K: int, max_configs: int, n: int | None = None) -> int:
    n = K**L if n is None else n
    if n > max_configs:
        raise ValueError(
            f"K**L = {K}**{L} = {n} configurations exceeds max_configs = {max_configs}; "
            "exact enumeration is only for small problems"
        )
    return n


def enumerate_onehot(
    L: int,
    K: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    max_configs: int = MAX_CONFIGS,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """All ``K**L`` configurations of ``L`` one-hot variables with ``K`` classes (or a slice).

    Args:
        L, K: Number of variables (``>= 1``) and of classes (``>= 2``).
        dtype, device: Of the returned tensor.
        max_configs: Refuse (``ValueError``) when more than this many rows would be returned.
        start, stop: Return only configurations ``start, ..., stop - 1`` (``stop`` defaults to,
            and is capped at, ``K**L``), for enumerating a large space in chunks.

    Returns:
        Shape ``(stop - start, L, K)``, in lexicographic order of the class indices with variable
        0 the slowest (row ``i`` encodes the base-``K`` digits of ``start + i``).
    """
    L = check_int(L, "L")
    K = check_int(K, "K", minimum=2)
    total = K**L
    start = check_int(start, "start", minimum=0)
    stop = total if stop is None else min(check_int(stop, "stop", minimum=start), total)
    _n_configs(L, K, max_configs, max(stop - start, 0))
    index = torch.arange(start, stop, device=device)
    powers = K ** torch.arange(L - 1, -1, -1, device=device)
    digits = (index[:, None] // powers) % K
    return torch.nn.functional.one_hot(digits, K).to(dtype)


def config_log_probs(configs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``log π(x) = Σ_l log π^l(x^l)`` for one-hot configurations ``(N, L, K)``: shape ``(N,)``.

    The log-probability at each configuration's classes, summed (a ``where``, not the contraction
    ``configs · log_probs``, so that a masked class, ``log π = -inf``, gives ``-inf`` for the
    configurations that use it and 0, not ``0 · -inf = NaN``, for the others).
    """
    return torch.where(configs > 0, log_probs, 0.0).sum(dim=(-2, -1))


def _values(f: Objective, configs: torch.Tensor) -> torch.Tensor:
    values = f(configs)
    if not isinstance(values, torch.Tensor) or values.shape != configs.shape[:1]:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values)
        raise ValueError(
            f"f must map a batch (B, L, K) to values of shape (B,); got {shape} "
            f"for B = {configs.shape[0]}"
        )
    return values


def exact_expectation(
    f: Objective, logits: torch.Tensor, *, max_configs: int = MAX_CONFIGS
) -> torch.Tensor:
    """``E_{X ~ softmax(logits)}[f(X)]`` by summing over every configuration.

    Differentiable in ``logits`` (and in any parameters ``f`` uses).

    Args:
        f: Maps one-hot configurations ``(B, L, K)`` to values ``(B,)``.
        logits: Finite floating tensor ``(L, K)``; the variables are independent with
            ``π^l = softmax(logits[l])``.
        max_configs: Refuse (``ValueError``) when ``K**L`` exceeds this.

    Returns:
        A scalar in the logits' dtype.
    """
    logits = _check_problem_logits(logits)
    L, K = logits.shape
    configs = enumerate_onehot(
        L, K, dtype=logits.dtype, device=logits.device, max_configs=max_configs
    )
    log_probs = torch.log_softmax(logits, dim=-1)
    log_weights = config_log_probs(configs, log_probs)
    values = _values(f, configs)
    return (log_weights.exp() * values).sum()


def exact_gradient(
    f: Objective, logits: torch.Tensor, *, max_configs: int = MAX_CONFIGS
) -> torch.Tensor:
    """``∇_θ E_{X ~ softmax(θ)}[f(X)]`` at ``θ = logits``, by enumeration.

    Returns a detached tensor of the logits' shape ``(L, K)`` and dtype.
    """
    logits = _check_problem_logits(logits)
    theta = logits.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = exact_expectation(f, theta, max_configs=max_configs)
        (grad,) = torch.autograd.grad(value, theta)
    return grad


def per_sample_gradients(
    estimator_fn: Sampler,
    f: Objective,
    logits: torch.Tensor,
    n: int,
    *,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``n`` independent draws of an estimator's gradient of ``E[f(X)]`` with respect to the logits.

    The logits are copied ``n`` times into one leaf tensor ``(n, L, K)``; the estimator draws one
    sample per copy and ``f`` scores each sample separately, so the gradient of the sum of the
    ``n`` values with respect to copy ``i`` is the estimator's gradient for sample ``i`` alone.
    One backward pass gives all ``n`` draws.

    Args:
        estimator_fn: ``estimator_fn(logits, generator=...) -> sample`` acting on the last
            dimension, e.g. ``registry.make_estimator(name, **knobs)`` or
            ``functools.partial(redge, t_1=0.5)``. Its output's gradient is the estimator's
            surrogate.
        f: Maps ``(B, L, K)`` to ``(B,)`` with each value depending on its own sample only (no
            coupling across the batch, e.g. no batch normalisation).
        logits: ``(L, K)``.
        n: Number of draws.
        generator: Source of every random draw (``None``: the global RNG).
        chunk_size: Draws per backward pass (default: all ``n`` at once); lowers peak memory.

    Returns:
        ``(n, L, K)``, detached, in the logits' dtype.
    """
    logits = _check_problem_logits(logits)
    n = check_int(n, "n")
    chunk = n if chunk_size is None else check_int(chunk_size, "chunk_size")
    check_generator(generator, logits.device)
    grads = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        copies = logits.detach().unsqueeze(0).repeat(m, 1, 1).requires_grad_(True)
        with torch.enable_grad():
            sample = estimator_fn(copies, generator=generator)
            values = _values(f, sample)
            (grad,) = torch.autograd.grad(values.sum(), copies)
        grads.append(grad)
    return torch.cat(grads)


def _delta_stderr(projections: torch.Tensor) -> float:
    """Standard error of a mean of scalar projections (the delta method's linearisation)."""
    n = projections.shape[0]
    if n < 2:
        return math.nan
    return float(projections.std(unbiased=True) / math.sqrt(n))


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), _delta_stderr(values)


def gradient_diagnostics(grads: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Bias, variance, MSE and cosine similarity of gradient draws against the exact gradient.

    With ``g_i`` the ``n`` draws (flattened), ``ḡ`` their mean, ``e`` the exact gradient and
    ``Σ`` the draws' covariance:

    - ``bias = ‖ḡ − e‖``. Its standard error ``bias_se`` is the delta method,
      ``sqrt(uᵀ Σ u / n)`` with ``u = (ḡ − e)/‖ḡ − e‖``. The norm of a noisy mean is biased
      upwards: even an unbiased estimator shows ``E‖ḡ − e‖² = tr Σ / n``, reported as
      ``bias_floor = sqrt(variance / n)``; a bias is resolved only when it clearly exceeds this
      floor. ``bias2_unbiased = ‖ḡ − e‖² − variance / n`` is an unbiased estimate of the
      squared bias (it can be negative) and ``bias2_unbiased_se`` its delta-method error.
    - ``variance = tr Σ``: mean squared distance to ``ḡ`` summed over coordinates (``n − 1``
      denominator); ``variance_se`` = std of the per-draw squared distances ``/ sqrt(n)``.
    - ``mse = mean_i ‖g_i − e‖²``; ``mse_se`` = std of the per-draw squared errors ``/ sqrt(n)``.
    - ``cosine_of_mean = cos(ḡ, e)`` with a delta-method ``cosine_of_mean_se``.
    - ``mean_cosine = mean_i cos(g_i, e)`` (a zero draw counts as cosine 0) with its standard error.
    - ``exact_norm = ‖e‖`` and ``n``.

    The delta-method errors assume a roughly Gaussian mean and are unreliable when the quantity
    sits at a singular point (``bias`` near 0, ``ḡ`` near 0 for the cosine).

    Args:
        grads: ``(n, *shape)`` draws, ``n >= 2``.
        exact: ``shape``, the exact gradient.

    Returns:
        A dict of Python floats with the keys above.
    """
    if not isinstance(grads, torch.Tensor) or not isinstance(exact, torch.Tensor):
        raise TypeError("grads and exact must be torch.Tensor")
    if grads.dim() < 1 or grads.shape[1:] != exact.shape:
        raise ValueError(
            f"grads must have shape (n, *exact.shape); got grads {tuple(grads.shape)} and "
            f"exact {tuple(exact.shape)}"
        )
    n = grads.shape[0]
    if n < 2:
        raise ValueError(f"grads must hold at least 2 draws, got n = {n}")
    g = grads.detach().reshape(n, -1).double()
    e = exact.detach().reshape(-1).double().to(g.device)
    mean = g.mean(0)
    diff = mean - e
    centred = g - mean

    bias = float(diff.norm())
    if bias > 0:
        bias_se = _delta_stderr(g @ (diff / bias))
    else:
        bias_se = math.nan
    sq_dev = (centred**2).sum(1)
    variance = float(sq_dev.sum() / (n - 1))
    variance_se = _delta_stderr(sq_dev)
    sq_err = ((g - e) ** 2).sum(1)
    mse, mse_se = _mean_and_stderr(sq_err)
    # ‖ḡ − e‖² − tr Σ / n: the derivative w.r.t. ḡ is 2(ḡ − e) (the trace term's own noise is
    # of smaller order and is neglected).
    bias2_unbiased = bias**2 - variance / n
    bias2_unbiased_se = _delta_stderr(2 * (g @ diff))

    e_norm = float(e.norm())
    m_norm = float(mean.norm())
    if e_norm > 0 and m_norm > 0:
        cos_mean = float(mean @ e) / (m_norm * e_norm)
        direction = e / (m_norm * e_norm) - cos_mean * mean / m_norm**2
        cos_mean_se = _delta_stderr(g @ direction)
    else:
        cos_mean, cos_mean_se = math.nan, math.nan
    if e_norm > 0:
        per_cos = torch.nn.functional.cosine_similarity(g, e.expand_as(g), dim=1, eps=1e-30)
        mean_cos, mean_cos_se = _mean_and_stderr(per_cos)
    else:
        mean_cos, mean_cos_se = math.nan, math.nan

    return {
        "n": float(n),
        "exact_norm": e_norm,
        "bias": bias,
        "bias_se": bias_se,
        "bias_floor": math.sqrt(variance / n),
        "bias2_unbiased": bias2_unbiased,
        "bias2_unbiased_se": bias2_unbiased_se,
        "variance": variance,
        "variance_se": variance_se,
        "mse": mse,
        "mse_se": mse_se,
        "cosine_of_mean": cos_mean,
        "cosine_of_mean_se": cos_mean_se,
        "mean_cosine": mean_cos,
        "mean_cosine_se": mean_cos_se,
    }


def _draw_hard(
    sampler: Sampler,
    logits: torch.Tensor,
    n: int,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> torch.Tensor:
    """``n`` hard samples ``(n, L, K)`` from ``sampler``, checked to be one-hot."""
    chunk = n if chunk_size is None else check_int(chunk_size, "chunk_size")
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            batch = logits.detach().unsqueeze(0).expand(m, *logits.shape).contiguous()
            sample = sampler(batch, generator=generator)
            if not isinstance(sample, torch.Tensor) or sample.shape != batch.shape:
                raise ValueError(
                    "sampler must return a tensor of its input's shape "
                    f"{tuple(batch.shape)}"
                )
            ones = sample == 1
            if not bool(((sample == 0) | ones).all()) or not bool((ones.sum(-1) == 1).all()):
                raise ValueError("sampler must return one-hot (hard) samples")
            out.append(sample.to(torch.float64))
    return torch.cat(out)


def empirical_law(
    sampler: Sampler,
    logits: torch.Tensor,
    n: int,
    *,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Class counts ``(L, K)`` of ``n`` hard samples of ``sampler`` at ``logits`` ``(L, K)``.

    ``sampler(logits_batch, generator=...)`` must return one-hot samples of its input's shape
    (e.g. ``functools.partial(redge, t_1=0.1, n_steps=3)``); ``ValueError`` otherwise.
    Counts are returned as float64 (divide by ``n`` for frequencies).
    """
    logits = _check_problem_logits(logits)
    n = check_int(n, "n")
    check_generator(generator, logits.device)
    return _draw_hard(sampler, logits, n, generator, chunk_size).sum(0)


class TVEstimate(NamedTuple):
    """Total variation between a hard sample's empirical law and ``softmax(logits)``."""

    tv: float
    """Mean over the ``L`` variables of ``½ Σ_k |p̂_k − π_k|``."""
    stderr: float
    """Delta-method standard error of ``tv`` (sign pattern of ``p̂ − π`` held fixed)."""
    null_tv: float
    """Expected ``tv`` of an exact sampler with the same ``n`` (noise floor), by simulation."""
    null_stderr: float
    """Monte-Carlo standard error of ``null_tv``."""


def _multinomial_counts(
    probs: torch.Tensor, n: int, reps: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``reps`` draws of Multinomial(n, probs[l]) for every row: ``(reps, L, K)``, float64.

    Sequential conditional binomials, so the cost does not grow with ``n``.
    """
    probs = probs.double()
    L, K = probs.shape
    counts = torch.zeros(reps, L, K, dtype=torch.float64, device=probs.device)
    remaining = torch.full((reps, L), float(n), dtype=torch.float64, device=probs.device)
    mass_left = torch.ones(L, dtype=torch.float64, device=probs.device)
    for k in range(K - 1):
        p = (probs[:, k] / mass_left.clamp_min(1e-300)).clamp(0.0, 1.0)
        c = torch.binomial(remaining, p.expand(reps, L).contiguous(), generator=generator)
        counts[:, :, k] = c
        remaining = remaining - c
        mass_left = mass_left - probs[:, k]
    counts[:, :, K - 1] = remaining
    return counts


def hard_sample_tv(
    sampler: Sampler,
    logits: torch.Tensor,
    n: int,
    *,
    generator: torch.Generator | None = None,
    null_reps: int = 200,
    chunk_size: int | None = None,
) -> TVEstimate:
    """How far the law of ``sampler``'s hard sample is from ``π = softmax(logits)``.

    Draws ``n`` hard samples at ``logits`` ``(L, K)``, forms the empirical frequencies ``p̂^l``
    and returns ``tv = (1/L) Σ_l ½ Σ_k |p̂^l_k − π^l_k|``.

    The empirical TV is biased upwards: even an exact sampler shows a TV of order
    ``½ Σ_k sqrt(2 π_k (1 − π_k) / (π n)) ≤ sqrt((K − 1) / (2π n))`` (normal approximation). The
    returned ``null_tv`` is that noise floor computed exactly for this ``π`` and ``n`` by
    simulating ``null_reps`` multinomial count vectors (from the same ``generator``): a measured
    ``tv`` is evidence of bias only when it clearly exceeds ``null_tv``; ``tv − null_tv`` is a
    rough bias-corrected value.

    ``stderr`` is the delta-method standard error: the standard deviation over samples of
    ``(1/L) Σ_l ½ sign(p̂^l − π^l)·H^l`` divided by ``sqrt(n)`` (it allows correlated variables
    within a sample).

    Args:
        sampler: ``sampler(logits_batch, generator=...) -> one-hot samples`` of the batch's shape.
        logits: ``(L, K)``.
        n: Number of samples (``>= 2``).
        generator: Source of all random draws (``None``: global RNG).
        null_reps: Number of simulated exact samplers for ``null_tv``.
        chunk_size: Samples per call of ``sampler`` (default: all at once).
    """
    logits = _check_problem_logits(logits)
    n = check_int(n, "n", minimum=2)
    null_reps = check_int(null_reps, "null_reps", minimum=2)
    check_generator(generator, logits.device)
    hard = _draw_hard(sampler, logits, n, generator, chunk_size)
    probs = torch.softmax(logits.detach().double(), dim=-1)
    freq = hard.mean(0)
    L = logits.shape[0]
    tv = float(0.5 * (freq - probs).abs().sum(-1).mean())
    signs = 0.5 * torch.sign(freq - probs)
    per_sample = torch.einsum("nlk,lk->n", hard, signs) / L
    stderr = _delta_stderr(per_sample)

    counts = _multinomial_counts(probs, n, null_reps, generator)
    null = 0.5 * (counts / n - probs).abs().sum(-1).mean(-1)
    null_tv, null_stderr = _mean_and_stderr(null)
    return TVEstimate(tv=tv, stderr=stderr, null_tv=null_tv, null_stderr=null_stderr)
