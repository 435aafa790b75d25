"""Gaussian diffusion of one-hot vectors: time grid, exact denoisers and the DDIM sampler.

A categorical variable ``X_0`` (a one-hot vector in ``R^K``) is noised as
``X_t = alpha_t X_0 + sigma_t Z`` with the linear schedule ``alpha_t = 1 - t``, ``sigma_t = t``.
Because every one-hot vector has the same norm, the posterior mean of ``X_0`` given ``X_t = x`` is a
softmax (:func:`denoise`), so the "diffusion model" of a categorical distribution is exact and needs
no training. :func:`ddim_sample` runs the deterministic DDIM sampler from pure noise down to the
stopping time ``t_1`` and returns the soft sample ``S = D_{t_1}(x)`` that ReDGE differentiates;
:func:`inverse_cdf_sample` draws the hard sample ``H ~ Cat(S)``. This is the reference
mathematics; the fast fused sampler built on it (C++, Triton and PyTorch backends, a torch
operator) is :func:`redge_mini._op.fused_sample`, also reachable as ``diffusion.fused_sample``.
The time grid and the one table of step coefficients that every backend reads are in
:mod:`redge_mini.schedule`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from .schedule import (  # noqa: F401 (public)
    ALPHA_END,
    adjoint_coefficients,
    step_table,
    time_grid,
)
from .schedule import cached as _cached

MIN_VARIANCE = 0.1
"""Floor on the per-category variance of the moment-matched reference noise (ReDGE-cov)."""


def posterior_logits(
    x: torch.Tensor, logits: torch.Tensor, alpha: float, sigma: float
) -> torch.Tensor:
    """Unnormalised log-posterior ``log p(e_k | X_t = x) = logits_k + alpha x_k / sigma^2 + c``.

    The Gaussian likelihood ``N(x; alpha e_k, sigma^2 I)`` contributes
    ``-(|x|^2 - 2 alpha x_k + alpha^2) / (2 sigma^2)``; only ``alpha x_k / sigma^2`` depends on
    ``k`` because every one-hot vector has the same norm.
    """
    return torch.add(logits, x, alpha=alpha / sigma**2)


def posterior_logits_cov(
    x: torch.Tensor,
    logits: torch.Tensor,
    probs: torch.Tensor,
    var: torch.Tensor,
    alpha: float,
    sigma: float,
) -> torch.Tensor:
    """Log-posterior under moment-matched reference noise ``xi ~ N(probs, diag(var))``.

    With ``X_t = alpha X_0 + sigma xi`` the ``k``-dependent part of the log-likelihood is
    ``(alpha x_k - alpha sigma probs_k - alpha^2 / 2) / (var_k sigma^2)``.
    """
    return logits + (alpha * x - (alpha * sigma) * probs - 0.5 * alpha**2) / (var * sigma**2)


def denoise(x: torch.Tensor, logits: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Posterior mean ``E[X_0 | X_t = x] = softmax(logits + alpha x / sigma^2)`` (exact)."""
    return torch.softmax(posterior_logits(x, logits, alpha, sigma), dim=-1)


def denoise_cov(
    x: torch.Tensor,
    logits: torch.Tensor,
    probs: torch.Tensor,
    var: torch.Tensor,
    alpha: float,
    sigma: float,
) -> torch.Tensor:
    """Posterior mean of ``X_0`` under ReDGE-cov's moment-matched reference noise."""
    return torch.softmax(posterior_logits_cov(x, logits, probs, var, alpha, sigma), dim=-1)


def ddim_step(
    x: torch.Tensor, x0_hat: torch.Tensor, alpha_s: float, sigma_s: float, alpha_t: float,
    sigma_t: float,
) -> torch.Tensor:
    """One deterministic DDIM move from level ``t`` to the less noisy level ``s``.

    ``x_s = alpha_s x0_hat + sigma_s (x_t - alpha_t x0_hat) / sigma_t``: keep the predicted clean
    point and rescale the implied noise.
    """
    ratio = sigma_s / sigma_t
    return torch.add(x0_hat * (alpha_s - ratio * alpha_t), x, alpha=ratio)


class DDIMResult(NamedTuple):
    """What :func:`ddim_sample` returns.

    Attributes:
        soft: the soft sample ``S = D_{t_1}(x)``, a point of the simplex, differentiable in logits.
        log_weights: the unnormalised log-posterior at ``t_1`` (``S = softmax(log_weights)``);
            a hard sample ``H ~ Cat(S)`` is ``argmax(log_weights + Gumbel)``.
        x_t1: the sampler's state at ``t_1`` (input of the last denoiser); None when only the
            denoiser outputs were asked for (``trajectory="denoised"``).
        states: when asked, the states ``x`` at grid indices ``n_steps - 1, ..., 1`` (else None).
        denoised: when asked, the denoiser outputs at the same indices (else None).
    """

    soft: torch.Tensor
    log_weights: torch.Tensor
    x_t1: torch.Tensor | None
    states: tuple[torch.Tensor, ...] | None
    denoised: tuple[torch.Tensor, ...] | None


def reference_moments(
    logits: torch.Tensor, dim: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``probs`` and floored variance ``max(probs (1 - probs), 0.1)`` of ReDGE-cov's noise."""
    probs = torch.softmax(logits, dim=dim)
    var = (probs * (1.0 - probs)).clamp(min=MIN_VARIANCE)
    return probs, var


def ddim_sample(
    logits: torch.Tensor,
    noise: torch.Tensor,
    *,
    n_steps: int,
    t_1: float,
    variant: Literal["plain", "cov"] = "plain",
    trajectory: bool | Literal["denoised"] = False,
    dim: int = -1,
) -> DDIMResult:
    """Run the deterministic DDIM sampler of ``Cat(softmax(logits))`` from ``noise`` to ``t_1``.

    Args:
        logits: ``(..., K)`` logits (already validated, in the working dtype).
        noise: standard normal noise of the same shape; the starting state is ``noise`` for the
            plain variant and ``probs + sqrt(var) * noise`` for ``variant="cov"``.
        n_steps: number of grid points (``n_steps - 1`` denoiser calls, ``n_steps - 2`` moves).
        t_1: stopping time in ``(0, 1]``.
        variant: ``"plain"`` (ReDGE) or ``"cov"`` (ReDGE-cov, moment-matched reference noise).
        trajectory: also return every intermediate state and denoiser output (``"denoised"``:
            only the denoiser outputs, ``states`` is None).
        dim: the dimension that holds the categories (default: the last).

    Returns:
        A :class:`DDIMResult`.
    """
    if noise.shape != logits.shape:
        raise ValueError(
            f"noise must have the shape of logits {tuple(logits.shape)}, got {tuple(noise.shape)}"
        )
    if trajectory not in (False, True, "denoised"):
        raise ValueError(f"trajectory must be True, False or 'denoised', got {trajectory!r}")
    table = _cached(step_table, n_steps, t_1)
    alphas, sigmas, scale = table.alpha, table.sigma, table.scale
    last = n_steps - 1
    # The state is carried as x_j = scale_j u_j with scale_j = sigma_j / sigma_last, so that the
    # DDIM move x_{j-1} = (sigma_{j-1} / sigma_j) x_j + b_j D_j (ddim_step, with
    # b_j = alpha_{j-1} - alpha_j sigma_{j-1} / sigma_j) is one in-place update
    # u += (b_j / scale_{j-1}) D_j (table.move), and scale_j folds into the denoiser's weight
    # alpha_j scale_j / sigma_j^2 (table.weight): the coefficients of schedule.step_table, which
    # the C++ and Triton kernels read too.
    if variant == "plain":
        u = noise

        def log_weights_at(u: torch.Tensor, j: int) -> torch.Tensor:
            return torch.add(logits, u, alpha=table.weight[j])  # posterior_logits of x_j

    elif variant == "cov":
        probs, var = reference_moments(logits, dim)
        u = probs + var.sqrt() * noise

        def log_weights_at(u: torch.Tensor, j: int) -> torch.Tensor:
            x = u if j == last else u * scale[j]
            return posterior_logits_cov(x, logits, probs, var, alphas[j], sigmas[j])

    else:
        raise ValueError(f"variant must be 'plain' or 'cov', got {variant!r}")

    states: list[torch.Tensor] = []
    denoised: list[torch.Tensor] = []
    for j in range(last, 1, -1):
        x0_hat = torch.softmax(log_weights_at(u, j), dim=dim)
        if trajectory:
            denoised.append(x0_hat)
            if trajectory is True:
                states.append(u if j == last else u * scale[j])
        step = table.move[j]
        if j == last:  # out of place: u is still the caller's noise (or the cov start)
            u = torch.add(u, x0_hat, alpha=step)
        else:
            u.add_(x0_hat, alpha=step)
    log_weights = log_weights_at(u, 1)
    soft = torch.softmax(log_weights, dim=dim)
    x = None
    if trajectory != "denoised":
        x = u if last == 1 else u * scale[1]
    if trajectory:
        denoised.append(soft)
        if trajectory is True:
            states.append(x)
    return DDIMResult(
        soft=soft,
        log_weights=log_weights,
        x_t1=x,
        states=tuple(states) if trajectory is True else None,
        denoised=tuple(denoised) if trajectory else None,
    )


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """One-hot draw from ``Cat(probs)`` by inversion, one uniform number per variable.

    ``uniform`` has the shape of ``probs`` with size 1 along ``dim`` and values in ``[0, 1)``. The
    category is the first ``k`` whose cumulative sum reaches ``(1 - u)`` times the total, so a
    category of probability zero is never drawn. The index stays in ``[0, K - 1]`` whatever the
    uniforms; a slice whose ``probs`` (or uniform) hold NaN (non-finite logits, every category
    masked) gives a NaN row, as on every backend of :func:`fused_sample`.
    """
    cdf = probs.cumsum(dim=dim)
    last_dim = dim in (-1, cdf.dim() - 1)
    level = (1.0 - uniform) * cdf.narrow(dim, cdf.shape[dim] - 1, 1)
    # the number of cumulative sums below the level (<= K - 1 since level <= total); cdf is
    # non-decreasing, so along the (contiguous) last dimension this is a binary search
    if last_dim and cdf.is_contiguous() and level.is_contiguous():
        index = torch.searchsorted(cdf, level)
    else:
        index = (cdf < level).sum(dim=dim, keepdim=True)
    index = index.clamp(max=cdf.shape[dim] - 1)
    hard = torch.zeros_like(probs)
    # out of place under torch.vmap (no batching rule for scatter_; in place, an unbatched hard
    # cannot take a batched level): the same values
    if _wrapped(probs) or _wrapped(uniform):
        return hard.scatter(dim, index, 1.0) + level * 0.0
    # + 0 on a finite level (the values are unchanged), NaN on a NaN one
    return hard.scatter_(dim, index, 1.0).add_(level * 0.0)


def _softmax_vjp(probs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``J(probs)^T grad`` with ``J(q) = diag(q) - q q^T``, the softmax Jacobian at ``q``
    (last dimension)."""
    weighted = probs * grad
    return weighted - probs * weighted.sum(dim=-1, keepdim=True)


def _reinmax_step(soft: torch.Tensor, hard: torch.Tensor, grad_hard: torch.Tensor) -> torch.Tensor:
    """ReinDGE's change to the logits' gradient from the hard sample's gradient ``g``:
    ``[(g . d) d - J(S)^T g] / 2`` with ``d = H - S`` (``S``, ``H`` held fixed)."""
    direction = hard - soft
    along = (grad_hard * direction).sum(dim=-1, keepdim=True)
    return 0.5 * (along * direction - _softmax_vjp(soft, grad_hard))


def _wrapped(tensor: torch.Tensor) -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ...) has wrapped ``tensor`` (its
    values cannot be read, in-place updates may not batch). The public
    ``torch.func.debug_unwrap`` is only compared with its argument; its result is never used."""
    return torch.func.debug_unwrap(tensor, recurse=False) is not tensor


_MOVED = ("fused_sample", "check_sampler_inputs", "_backend", "_FusedSampler")


def __getattr__(name: str):
    # the fused sampler lives in redge_mini._op (which imports this module, not the reverse);
    # these names stay reachable from here, looked up on first use
    if name in _MOVED:
        from . import _op

        return getattr(_op, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
