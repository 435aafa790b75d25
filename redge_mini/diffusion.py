"""Gaussian diffusion of one-hot vectors: time grid, exact denoisers and the DDIM sampler.

A categorical variable ``X_0`` (a one-hot vector in ``R^K``) is noised as
``X_t = alpha_t X_0 + sigma_t Z`` with the linear schedule ``alpha_t = 1 - t``, ``sigma_t = t``.
Because every one-hot vector has the same norm, the posterior mean of ``X_0`` given ``X_t = x`` is a
softmax (:func:`denoise`), so the "diffusion model" of a categorical distribution is exact and needs
no training. :func:`ddim_sample` runs the deterministic DDIM sampler from pure noise down to the
stopping time ``t_1`` and returns the soft sample ``S = D_{t_1}(x)`` that ReDGE differentiates.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import torch

from .validation import check_n_steps, check_t_1

ALPHA_END = 1e-4
"""Signal level at the last grid point (almost pure noise), as in the authors' package."""

MIN_VARIANCE = 0.1
"""Floor on the per-category variance of the moment-matched reference noise (ReDGE-cov)."""


@functools.lru_cache(maxsize=256, typed=True)
def time_grid(n_steps: int, t_1: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The authors' time grid: ``n_steps`` signal levels ``alpha`` and noise levels ``sigma``.

    ``alpha[0] = 1`` (clean data), ``alpha[1..n_steps-1] = linspace(1 - t_1, 1e-4, n_steps - 1)``
    and ``sigma = 1 - alpha``. Index 1 is the stopping time ``t_1``; the last index is (almost) pure
    noise. Returned as Python floats, which keeps the sampler free of tiny scalar tensors, and
    cached per ``(n_steps, t_1)`` (the arguments are checked on the first call of each pair).

    Example:
        >>> alphas, sigmas = time_grid(5, 0.5)
        >>> [round(a, 4) for a in alphas]
        [1.0, 0.5, 0.3334, 0.1667, 0.0001]
    """
    n_steps = check_n_steps(n_steps)
    t_1 = check_t_1(t_1)
    start = 1.0 - t_1
    if n_steps == 2:
        tail = [start]
    else:
        step = (ALPHA_END - start) / (n_steps - 2)
        tail = [start + j * step for j in range(n_steps - 2)] + [ALPHA_END]
    alphas = (1.0, *tail)
    sigmas = tuple(1.0 - a for a in alphas)
    return alphas, sigmas


def _cached(function, *args):
    """``function(*args)`` from its ``lru_cache``, or computed afresh while ``torch.compile``
    traces (Dynamo warns about cached functions; the values are Python floats either way)."""
    if torch.compiler.is_compiling():
        return function.__wrapped__(*args)
    return function(*args)


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
    alphas, sigmas = _cached(time_grid, n_steps, t_1)
    last = n_steps - 1
    # The state is carried as x_j = scale_j u_j with scale_j = sigma_j / sigma_last, so that the
    # DDIM move x_{j-1} = (sigma_{j-1} / sigma_j) x_j + b_j D_j (ddim_step, with
    # b_j = alpha_{j-1} - alpha_j sigma_{j-1} / sigma_j) is one in-place update
    # u += (b_j / scale_{j-1}) D_j, and scale_j folds into the denoiser's coefficient.
    scale = [sigma / sigmas[last] for sigma in sigmas]
    if variant == "plain":
        u = noise

        def log_weights_at(u: torch.Tensor, j: int) -> torch.Tensor:
            return posterior_logits(u, logits, alphas[j] * scale[j], sigmas[j])

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
        step = (alphas[j - 1] - sigmas[j - 1] / sigmas[j] * alphas[j]) / scale[j - 1]
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


SMALL_K = 16
"""Up to this many categories (and from ``LARGE_NUMEL`` elements) the fused sampler puts the
categories first in memory: torch's CPU softmax and sums over a short last dimension are an order
of magnitude slower than over the first (5x at 81 x 9 already); below ``LARGE_NUMEL`` the copies
cost more than they save."""

LARGE_NUMEL = 512

STORE_LIMIT = 1 << 21
"""The fused sampler keeps its ``n_steps - 2`` intermediate denoiser outputs for the backward pass
when they hold at most this many elements (8 MiB in float32). Above, it keeps only the noise and the
backward pass recomputes the trajectory, ``CHUNK_NUMEL`` elements (whole rows) at a time, so that
the extra memory is one tensor of noise and every pass over a chunk stays in the cache."""

CHUNK_NUMEL = 1 << 16
"""Elements per chunk of the recomputing policy at one intra-op thread; with ``n`` threads the
chunk is ``n**2`` times larger, so that each thread's share grows and the per-operation cost of
waking the thread pool (thousands of operations per call) stays small (measured on 2 cores: 2^16
best at 1 thread, 2^18 at 2)."""


def _chunk_rows(k: int) -> int:
    return max(1, CHUNK_NUMEL * torch.get_num_threads() ** 2 // k)


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """One-hot draw from ``Cat(probs)`` by inversion, one uniform number per variable.

    ``uniform`` has the shape of ``probs`` with size 1 along ``dim`` and values in ``[0, 1)``. The
    category is the first ``k`` whose cumulative sum reaches ``(1 - u)`` times the total, so a
    category of probability zero is never drawn.
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
    hard = torch.zeros_like(probs)
    # out of place under functorch transforms (vmap has no batching rule for scatter_)
    return hard.scatter(dim, index, 1.0) if _transforms_active() else hard.scatter_(dim, index, 1.0)


def _category_dim(numel: int, k: int) -> int:
    """Where a ``(rows, K)`` block keeps its categories inside the fused sampler (0 or -1)."""
    return 0 if k <= SMALL_K and numel >= LARGE_NUMEL else -1


def _inside(rows: torch.Tensor, dim: int) -> torch.Tensor:
    """A ``(rows, K)`` block in the sampler's layout: ``(K, rows)`` contiguous when ``dim == 0``."""
    return rows.t().contiguous() if dim == 0 else rows


def _stores_trajectory(numel: int, n_steps: int) -> bool:
    return numel * (n_steps - 2) <= STORE_LIMIT


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


def _reinmax_surrogate(logits: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor):
    """A zero-valued term whose gradient in ``logits`` is ReinDGE's change for the hard sample
    (:func:`_reinmax_step`): added to the hard sample where no fused ReinDGE kernel runs. Masked
    (``-inf``) logits are replaced by 0 first (``-inf - -inf`` is NaN), which gives them the zero
    gradient they must have."""
    finite = torch.where(torch.isneginf(logits), torch.zeros_like(logits), logits)
    delta = finite - finite.detach()  # zero, with the logits' gradient
    # J(S) is symmetric, so <g, step(delta)> = <step(g), delta>: the gradient is step(g)
    return _reinmax_step(soft.detach(), hard.detach(), delta)


def _adjoint(
    denoised: list[torch.Tensor],
    grad: torch.Tensor,
    coefficients: tuple[tuple[tuple[float, float], ...], float],
    dim: int,
    want_noise: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of ``<grad, S>`` in the logits and the noise from the denoiser outputs.

    ``denoised`` holds ``D_1 = S, D_2, ..., D_{n_steps - 1}`` in the sampler's layout; see
    :class:`_FusedSampler` for the recursion.
    """
    soft, *rest = denoised
    steps, k_last = coefficients
    # J(D)^T g = D * g - D (D . g): torch's softmax backward kernel, one pass instead of three
    # j = 1: v_1 = g_w_1 = J(S)^T g (k_1 = c_1), which is also g_logits so far
    grad_logits = v = torch._softmax_backward_data(grad, soft, dim, soft.dtype)
    for i, (d, (to_logits, to_v)) in enumerate(zip(rest, steps, strict=True)):
        t = torch._softmax_backward_data(v, d, dim, d.dtype)  # J(D_j)^T v_{j-1}
        if want_noise or i + 1 < len(steps):
            # out of place at the first move: v is still grad_logits
            v = torch.add(v, t, alpha=to_v) if i == 0 else v.add_(t, alpha=to_v)
        grad_logits.add_(t, alpha=to_logits)
    return grad_logits, (v * k_last if want_noise else None)


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.dim() == 2 else t.reshape(-1, width)


def _sample_forward(
    logits: torch.Tensor, noise: torch.Tensor, uniform: torch.Tensor, n_steps: int, t_1: float,
    backend: str, variant: str = "plain",
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(hard, soft, kept)``: the samples, and the intermediate denoiser outputs
    ``D_{n_steps - 1}, ..., D_2`` in the sampler's layout when the trajectory is stored (else
    empty). The forward pass of :class:`_FusedSampler`."""
    shape, k = logits.shape, logits.shape[-1]
    if backend != "torch":
        extra = {"variant": "cov"} if variant == "cov" else {}  # ReinDGE samples as ReDGE
        hard, soft = _kernels(backend).sample(
            _rows(logits, k), _rows(noise, k), uniform.reshape(-1), n_steps, t_1, **extra
        )
        return hard.view(shape), soft.view(shape), ()
    if variant != "plain":
        raise ValueError(f"the PyTorch path of the fused sampler is plain ReDGE, got {variant!r}")
    if _stores_trajectory(logits.numel(), n_steps):
        dim = _category_dim(logits.numel(), k)
        if dim == 0:  # (movedim of the whole tensor copies several times faster than .t())
            logits, noise = logits.movedim(-1, 0).contiguous(), noise.movedim(-1, 0).contiguous()
            uniform = uniform.movedim(-1, 0)  # size 1 along the categories: already contiguous
        result = ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1, trajectory="denoised",
                             dim=dim)
        hard = inverse_cdf_sample(result.soft, uniform, dim)
        soft = result.soft
        if dim == 0:
            hard, soft = hard.movedim(0, -1), soft.movedim(0, -1)
        return hard, soft, result.denoised[:-1]
    rows, noise_rows, uniform_rows = _rows(logits, k), _rows(noise, k), _rows(uniform, 1)
    hard, soft = torch.empty_like(rows), torch.empty_like(rows)
    chunk = _chunk_rows(k)
    dim = _category_dim(chunk * k, k)
    for start in range(0, rows.shape[0], chunk):
        part = slice(start, start + chunk)
        result = ddim_sample(
            _inside(rows[part], dim), _inside(noise_rows[part], dim), n_steps=n_steps, t_1=t_1,
            trajectory="denoised", dim=dim,
        )
        drawn = inverse_cdf_sample(result.soft, _inside(uniform_rows[part], dim), dim)
        soft[part] = result.soft.t() if dim == 0 else result.soft
        hard[part] = drawn.t() if dim == 0 else drawn
    return hard.view(shape), soft.view(shape), ()


_NONE = (None,) * 5  # the gradients of uniform, n_steps, t_1, backend and variant


def _sample_backward(ctx, grad_hard: torch.Tensor | None, grad_soft: torch.Tensor | None):
    """The backward pass of :class:`_FusedSampler` (both forms)."""
    if grad_hard is None or grad_soft is None:
        grad = grad_soft if grad_hard is None else grad_hard
        if grad is None:
            return None, None, *_NONE
    else:
        grad = grad_hard + grad_soft
    logits, noise, soft, *kept = ctx.saved_tensors
    want_noise = ctx.needs_input_grad[1]
    n_steps, t_1, variant = ctx.n_steps, ctx.t_1, ctx.variant
    # ReinDGE: ReinMax's step for the hard sample's part of the gradient
    reinmax = variant == "reindge" and grad_hard is not None
    uniform = kept.pop() if variant == "reindge" else None
    if torch.is_grad_enabled():
        # create_graph=True: a differentiable backward, through the autograd reference
        needs = ctx.needs_input_grad[:2]
        want = [t for t, need in zip((logits, noise), needs, strict=True) if need]
        with torch.enable_grad():
            reference = ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1,
                                    variant="cov" if variant == "cov" else "plain").soft
            grads = list(torch.autograd.grad(reference, want, grad, create_graph=True))
        grad_logits = grads.pop(0) if ctx.needs_input_grad[0] else None
        if reinmax and grad_logits is not None:  # S and H held fixed, as in the surrogate
            fixed = soft.detach()
            hard = inverse_cdf_sample(fixed, uniform)
            grad_logits = grad_logits + _reinmax_step(fixed, hard, grad_hard)
        return grad_logits, (grads.pop(0) if want_noise else None), *_NONE
    shape, k = logits.shape, logits.shape[-1]
    if ctx.backend == "torch" and _stores_trajectory(logits.numel(), n_steps):
        dim = _category_dim(logits.numel(), k)
        if dim == 0:  # views: the first product in _adjoint takes the (contiguous) layout of soft
            soft, grad = soft.movedim(-1, 0), grad.movedim(-1, 0)
        grad_logits, grad_noise = _adjoint(
            [soft, *reversed(kept)], grad, _cached(_adjoint_coefficients, n_steps, t_1), dim,
            want_noise,
        )
        if dim == 0:
            grad_logits = grad_logits.movedim(0, -1)
            grad_noise = None if grad_noise is None else grad_noise.movedim(0, -1)
        return grad_logits, grad_noise, *_NONE
    grad_rows = _rows(grad, k)
    if ctx.backend != "torch":
        extra = {"variant": "cov"} if variant == "cov" else {}
        if reinmax:
            extra = {"grad_hard": _rows(grad_hard, k), "uniform": uniform.reshape(-1)}
        grad_logits, grad_noise = _kernels(ctx.backend).adjoint(
            _rows(logits, k), _rows(noise, k), grad_rows, n_steps, t_1, want_noise, **extra
        )
    else:
        grad_logits, grad_noise = _chunked_adjoint(
            _rows(logits, k), _rows(noise, k), grad_rows, n_steps, t_1, want_noise
        )
    grad_noise = None if grad_noise is None else grad_noise.reshape(shape)
    return grad_logits.reshape(shape), grad_noise, *_NONE


class _FusedSampler(torch.autograd.Function):
    """ReDGE's hard and soft samples with a hand-derived backward pass (the sampler's adjoint).

    The forward pass is :func:`ddim_sample` without autograd, then an inverse-CDF draw
    ``H ~ Cat(S)``. The first output has the value ``H`` and the gradient of ``S``; the second is
    ``S``. The backward pass walks the trajectory back from ``t_1``: with
    ``w_j = logits + c_j x_j`` (``c_j = alpha_j / sigma_j^2``), ``D_j = softmax(w_j)`` and
    ``x_{j-1} = r_j x_j + b_j D_j`` (``r_j = sigma_{j-1} / sigma_j``,
    ``b_j = alpha_{j-1} - r_j alpha_j``), the vector-Jacobian products are ``g_w = J(D_j)^T g_D``,
    ``g_logits += g_w`` and ``g_{x_j} = r_j g_{x_{j-1}} + c_j g_w``, ``g_{D_j} = b_j g_{x_{j-1}}``.
    The loop carries ``v_j = g_{x_j} / k_j`` with ``k_j = c_1 sigma_1 / sigma_j``, so that each
    step is one in-place update ``v += (c_j b_j / r_j) J(D_j)^T v``.

    Backends (:func:`_backend` picks one per call): ``"torch"`` is this recursion in PyTorch
    operations, the reference. Memory: small problems keep the denoiser outputs; above
    :data:`STORE_LIMIT` only the noise is kept and the backward pass recomputes the trajectory
    chunk by chunk. ``"cpp"`` (CPU float32/float64; :mod:`redge_mini._cpp_sampler`) and
    ``"triton"`` (CUDA float32; :mod:`redge_mini._triton_sampler`) run each pass as one
    compiled kernel, which always recomputes: they keep only the noise. A
    ``create_graph=True`` backward differentiates :func:`ddim_sample` with autograd instead, so
    higher derivatives are those of the reference sampler. Under functorch transforms
    (``torch.vmap``, ``torch.func``) :class:`_FusedSamplerTransformable` runs the same passes.
    """

    @staticmethod
    def forward(
        ctx, logits, noise, uniform, n_steps: int, t_1: float, backend: str,
        variant: str = "plain",
    ):
        hard, soft, kept = _sample_forward(logits, noise, uniform, n_steps, t_1, backend,
                                           variant)
        if variant == "reindge":  # the backward pass redraws H from S and the uniforms
            kept = (*kept, uniform)
        ctx.save_for_backward(logits, noise, soft, *kept)
        ctx.set_materialize_grads(False)
        ctx.n_steps, ctx.t_1, ctx.backend, ctx.variant = n_steps, t_1, backend, variant
        return hard, soft

    @staticmethod
    def backward(ctx, grad_hard: torch.Tensor | None, grad_soft: torch.Tensor | None):
        return _sample_backward(ctx, grad_hard, grad_soft)


class _FusedSamplerTransformable(torch.autograd.Function):
    """:class:`_FusedSampler` in the ``setup_context`` form that functorch transforms need
    (``generate_vmap_rule``): the kept denoiser outputs travel as extra, non-differentiable
    outputs. Slower per call than the plain form (extra outputs, argument binding), so it is used
    only under a transform."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, noise, uniform, n_steps: int, t_1: float, backend: str):
        hard, soft, kept = _sample_forward(logits, noise, uniform, n_steps, t_1, backend)
        return hard, soft, *kept

    @staticmethod
    def setup_context(ctx, inputs, output):
        # plain ReDGE only: under a transform the backend is "torch", and fused_sample runs
        # ReDGE-cov and ReinDGE without this Function there
        logits, noise, _, n_steps, t_1, backend = inputs
        _, soft, *kept = output
        ctx.mark_non_differentiable(*kept)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, noise, soft, *kept)
        ctx.n_steps, ctx.t_1, ctx.backend, ctx.variant = n_steps, t_1, backend, "plain"

    @staticmethod
    def backward(ctx, grad_hard: torch.Tensor | None, grad_soft: torch.Tensor | None, *_):
        # (the kept denoiser outputs are non-differentiable: their gradients are None)
        return _sample_backward(ctx, grad_hard, grad_soft)


def _chunked_adjoint(
    rows: torch.Tensor,
    noise_rows: torch.Tensor,
    grad_rows: torch.Tensor,
    n_steps: int,
    t_1: float,
    want_noise: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The adjoint with the trajectory recomputed from the noise, a chunk of rows at a time."""
    k = rows.shape[-1]
    coefficients = _cached(_adjoint_coefficients, n_steps, t_1)
    grad_logits = torch.empty_like(rows)
    grad_noise = torch.empty_like(rows) if want_noise else None
    chunk = _chunk_rows(k)
    dim = _category_dim(chunk * k, k)
    for start in range(0, rows.shape[0], chunk):
        part = slice(start, start + chunk)
        denoised = ddim_sample(
            _inside(rows[part], dim), _inside(noise_rows[part], dim), n_steps=n_steps, t_1=t_1,
            trajectory="denoised", dim=dim,
        ).denoised
        g_logits, g_noise = _adjoint(
            [denoised[-1], *reversed(denoised[:-1])], _inside(grad_rows[part], dim),
            coefficients, dim, want_noise,
        )
        grad_logits[part] = g_logits.t() if dim == 0 else g_logits
        if grad_noise is not None:
            grad_noise[part] = g_noise.t() if dim == 0 else g_noise
    return grad_logits, grad_noise


@functools.lru_cache(maxsize=256)
def _adjoint_coefficients(
    n_steps: int, t_1: float
) -> tuple[tuple[tuple[float, float], ...], float]:
    """Scalars of :class:`_FusedSampler`'s backward loop for ``j = 2, ..., n_steps - 1``.

    Returns ``((b_j k_{j-1}, c_j b_j / r_j) for each j, k_{n_steps - 1})`` with
    ``k_j = c_1 sigma_1 / sigma_j``: the weight of ``J(D_j)^T v_{j-1}`` in the logits' gradient and
    in ``v_j``, and the factor that turns ``v`` back into the noise's gradient.
    """
    alphas, sigmas = _cached(time_grid, n_steps, t_1)

    def k(j: int) -> float:
        return alphas[1] / (sigmas[1] * sigmas[j])

    steps = []
    for j in range(2, n_steps):
        ratio = sigmas[j - 1] / sigmas[j]
        b_j = alphas[j - 1] - ratio * alphas[j]
        steps.append((b_j * k(j - 1), alphas[j] / sigmas[j] ** 2 * b_j / ratio))
    return tuple(steps), k(n_steps - 1)


def _backend(logits: torch.Tensor) -> str:
    """Which implementation runs both passes of :class:`_FusedSampler`:

    * ``"triton"``: float32 CUDA tensors with ``K <= 16384`` when Triton imports;
    * ``"cpp"``: float32 and float64 CPU tensors when the C++ extension is built
      (:mod:`redge_mini._cpp_sampler`, compiled on the first call);
    * ``"torch"`` otherwise, and always under ``torch.vmap`` (batched tensors have no data
      pointer a kernel could read) and while ``torch.compile`` traces (it sees torch operations).
    """
    # (compiling first: Dynamo cannot trace the functorch check)
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(logits):
        return "torch"
    if logits.device.type == "cpu":
        if logits.dtype not in (torch.float32, torch.float64):
            return "torch"
        from . import _cpp_sampler

        return "cpp" if _cpp_sampler.available() else "torch"
    if not (logits.is_cuda and logits.dtype == torch.float32 and logits.shape[-1] <= 16384):
        return "torch"
    from . import _triton_sampler

    return "triton" if _triton_sampler.AVAILABLE else "torch"


def _kernels(backend: str):
    """The module with ``sample`` and ``adjoint`` of a kernel backend (``"triton"``, ``"cpp"``)."""
    if backend == "triton":
        from . import _triton_sampler

        return _triton_sampler
    from . import _cpp_sampler

    return _cpp_sampler


def fused_sample(
    logits: torch.Tensor,
    noise: torch.Tensor,
    uniform: torch.Tensor,
    *,
    n_steps: int,
    t_1: float,
    variant: Literal["plain", "cov", "reindge"] = "plain",
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReDGE's ``(hard, soft)`` samples for given noise, with a fused backward pass.

    ``hard`` has the value of a one-hot draw ``H ~ Cat(S)`` (by inversion with ``uniform``, shape
    ``(..., 1)``) and the gradient of ``S``; ``soft`` is
    ``S = ddim_sample(logits, noise, variant=variant).soft``. Same values and gradients as the
    autograd version, several times faster on small ``K``; a C++ kernel on CPU (compiled on
    first use; ``REDGE_MINI_CPP=0`` turns it off), a Triton kernel on CUDA (plain ReDGE). A
    ``create_graph=True`` backward goes through :func:`ddim_sample`. ``variant="cov"``
    (ReDGE-cov) has a fused backward pass in the C++ kernel only; elsewhere it differentiates
    :func:`ddim_sample` with autograd. ``variant="reindge"`` (ReinDGE) samples as ReDGE and
    gives ``hard`` ReinDGE's gradient: the trajectory's, with half of the last denoiser's direct
    term replaced by ReinMax's step, ``[J(S)^T g + (g . d) d] / 2`` in place of ``J(S)^T g``,
    ``d = H - S`` (in the C++ kernel's backward pass, elsewhere as a zero-valued surrogate).
    """
    if noise.shape != logits.shape:
        raise ValueError(
            f"noise must have the shape of logits {tuple(logits.shape)}, got {tuple(noise.shape)}"
        )
    if uniform.shape != logits.shape[:-1] + (1,):
        raise ValueError(
            f"uniform must have shape {tuple(logits.shape[:-1]) + (1,)}, got {tuple(uniform.shape)}"
        )
    # n_steps and t_1 are checked by time_grid (cached per valid pair)
    backend = _backend(logits)
    args = (logits, noise, uniform, n_steps, t_1, backend)
    if variant not in ("plain", "cov", "reindge"):
        raise ValueError(f"variant must be 'plain', 'cov' or 'reindge', got {variant!r}")
    if variant == "cov" and backend != "cpp":  # no PyTorch (or Triton) adjoint for ReDGE-cov
        soft = ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1, variant="cov").soft
        hard = inverse_cdf_sample(soft.detach(), uniform)
        return (hard - soft).detach() + soft, soft
    if variant == "reindge" and backend != "cpp":  # the plain sampler plus a surrogate
        hard, soft = fused_sample(logits, noise, uniform, n_steps=n_steps, t_1=t_1)
        return hard + _reinmax_surrogate(logits, hard, soft), soft
    if variant != "plain":
        args = (*args, variant)
    if _transforms_active():
        hard, soft, *_ = _FusedSamplerTransformable.apply(*args)
        return hard, soft
    if torch.compiler.is_compiling():
        return _FusedSampler.apply(*args)
    # outside transforms and compilation, Function.apply only forwards to this (after ~5 us of
    # checks for functorch wrappers, which cannot be present here)
    return _BASE_APPLY(*args)


_BASE_APPLY = super(torch.autograd.Function, _FusedSampler).apply


def _transforms_active() -> bool:
    """Whether a functorch transform (vmap, grad, ...) is tracing this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else active()
