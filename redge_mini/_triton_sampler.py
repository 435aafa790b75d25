"""ReDGE's fused sampler as two Triton kernels: one program per row of ``K <= 16384`` categories.

:func:`sample` runs the DDIM trajectory of :func:`redge_mini.diffusion.ddim_sample` from the given
noise to ``t_1`` and draws the hard sample by inversion with the given uniform numbers, in one
kernel that reads the logits, the noise and one uniform per row and writes ``(hard, soft)``.
:func:`adjoint` is the backward pass: it recomputes the trajectory in registers (no stored
states: the only memory beyond the inputs is the gradients it writes) and walks it back. Both
carry the scaled forms of :class:`redge_mini.schedule.StepTable`, as the PyTorch path and the C++
kernel do: the state ``u_j = x_j / scale_j``, with ``D_j = softmax(logits + weight_j u_j)`` and
``u_{j-1} = u_j + move_j D_j``, and the adjoint ``v_j = g_{x_j} / k_j``,

    t_j = J(D_j)^T v_{j-1},  g_logits += to_logits_j t_j,  v_j = v_{j-1} + to_state_j t_j,

from ``v_1 = g_logits = J(S)^T g``; the noise's gradient is ``k_{n_steps - 1} v`` (the derivation
is in :class:`redge_mini._op._FusedSampler`). State ``u_j`` is recomputed from the noise for each
``j``, ``(n_steps - 1) n_steps / 2`` softmaxes per row in all, which stays on chip.

Used by :func:`redge_mini._op.fused_sample` for float32 CUDA tensors; the PyTorch path is the
reference and the fallback. With ``TRITON_INTERPRET=1`` set before Triton is imported the kernels
run on CPU tensors through Triton's interpreter (how the tests check them without a GPU).
Needs ``triton`` (``pip install triton``); :data:`AVAILABLE` says whether it imported.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None

AVAILABLE = triton is not None
"""Whether Triton imported (the kernels exist)."""

MAX_K = 16384
"""Largest number of categories per row: a row lives in one program's registers."""


@functools.lru_cache(maxsize=64)
def _coefficients(n_steps: int, t_1: float, device: torch.device) -> torch.Tensor:
    """``(5, n_steps)`` float32 copy of the rows ``weight``, ``move``, ``to_logits``, ``to_state``
    and ``k`` of :func:`redge_mini.schedule.step_table`, the step coefficients every backend
    reads; cached per device: no host-to-device copy per call."""
    from .schedule import step_table

    table = step_table(n_steps, t_1)
    rows = [table.weight, table.move, table.to_logits, table.to_state, table.k]
    return torch.tensor(rows, dtype=torch.float32, device=device)


if AVAILABLE:

    @triton.jit
    def _softmax(w):
        top = tl.max(w, 0)
        e = tl.exp(w - top)
        return e / tl.sum(e, 0)

    @triton.jit
    def _denoise(logits, noise, coef_ptr, n_steps, j):
        """``D_j``: the DDIM trajectory from ``u_{n_steps - 1} = noise`` down to index ``j``
        (rows 0 and 1 of the coefficients: ``weight``, ``move``), then its denoiser."""
        u = noise
        last = n_steps - 1
        for i in range(0, last - j):
            m = last - i
            u = u + tl.load(coef_ptr + n_steps + m) * _softmax(logits + tl.load(coef_ptr + m) * u)
        return _softmax(logits + tl.load(coef_ptr + j) * u)

    @triton.jit
    def _softmax_vjp(d, g):
        """``J(d)^T g = d (g - d . g)`` (torch's softmax backward, in its order)."""
        return d * (g - tl.sum(d * g, 0))

    @triton.jit
    def _sample_kernel(
        logits_ptr, noise_ptr, uniform_ptr, coef_ptr, hard_ptr, soft_ptr, K, n_steps,
        BLOCK_K: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK_K)
        inside = offsets < K
        base = row * K
        logits = tl.load(logits_ptr + base + offsets, mask=inside, other=float("-inf"))
        noise = tl.load(noise_ptr + base + offsets, mask=inside, other=0.0)
        soft = _denoise(logits, noise, coef_ptr, n_steps, 1)
        tl.store(soft_ptr + base + offsets, soft, mask=inside)
        # inversion: the first k whose cumulative sum reaches (1 - u) times the total
        cdf = tl.cumsum(soft, 0)
        level = (1.0 - tl.load(uniform_ptr + row)) * tl.max(tl.where(inside, cdf, 0.0), 0)
        # at most K - 1 whatever the uniform; a NaN soft row (non-finite logits, or every
        # category masked) or a NaN uniform gives a NaN hard row, as on the other backends
        index = tl.minimum(tl.sum(tl.where(inside & (cdf < level), 1, 0), 0), K - 1)
        one_hot = tl.where(offsets == index, 1.0, 0.0)
        # NaN exactly when the soft row (or the uniform) is
        level = (1.0 - tl.load(uniform_ptr + row)) * tl.sum(tl.where(inside, soft, 0.0), 0)
        tl.store(hard_ptr + base + offsets, tl.where(level == level, one_hot, float("nan")),
                 mask=inside)

    @triton.jit
    def _adjoint_kernel(
        logits_ptr, noise_ptr, grad_ptr, coef_ptr, grad_logits_ptr, grad_noise_ptr, K, n_steps,
        WANT_NOISE: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK_K)
        inside = offsets < K
        base = row * K
        logits = tl.load(logits_ptr + base + offsets, mask=inside, other=float("-inf"))
        noise = tl.load(noise_ptr + base + offsets, mask=inside, other=0.0)
        grad = tl.load(grad_ptr + base + offsets, mask=inside, other=0.0)
        # j = 1: v_1 = g_logits = J(S)^T g; rows 2, 3 and 4: to_logits, to_state, k
        v = _softmax_vjp(_denoise(logits, noise, coef_ptr, n_steps, 1), grad)
        g_logits = v
        for j in range(2, n_steps):
            t = _softmax_vjp(_denoise(logits, noise, coef_ptr, n_steps, j), v)
            g_logits += tl.load(coef_ptr + 2 * n_steps + j) * t
            v = v + tl.load(coef_ptr + 3 * n_steps + j) * t
        tl.store(grad_logits_ptr + base + offsets, g_logits, mask=inside)
        if WANT_NOISE:
            g_noise = tl.load(coef_ptr + 5 * n_steps - 1) * v
            tl.store(grad_noise_ptr + base + offsets, g_noise, mask=inside)


def _launch_shape(k: int) -> tuple[int, int]:
    if not 2 <= k <= MAX_K:
        raise ValueError(f"the Triton sampler takes 2 <= K <= {MAX_K} categories, got K = {k}")
    block = triton.next_power_of_2(k)
    return block, min(16, max(1, block // 256))


def _check(*tensors: torch.Tensor) -> None:
    if not AVAILABLE:
        raise RuntimeError("the Triton sampler needs triton (pip install triton)")
    for t in tensors:
        if t.dtype != torch.float32:
            raise TypeError(f"the Triton sampler computes in float32, got {t.dtype}")


def sample(
    logits: torch.Tensor, noise: torch.Tensor, uniform: torch.Tensor, n_steps: int, t_1: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hard, soft)`` of ReDGE for ``(rows, K)`` float32 logits and noise, ``(rows,)`` uniforms.

    Same values as :func:`redge_mini._op.fused_sample` (to float32 rounding; a hard sample
    can differ only where a uniform falls within rounding of a cumulative sum).
    """
    _check(logits, noise, uniform)
    logits, noise, uniform = logits.contiguous(), noise.contiguous(), uniform.contiguous()
    rows, k = logits.shape
    block, warps = _launch_shape(k)
    hard, soft = torch.empty_like(logits), torch.empty_like(logits)
    if rows:
        _sample_kernel[(rows,)](
            logits, noise, uniform, _coefficients(n_steps, t_1, logits.device), hard, soft, k,
            n_steps, BLOCK_K=block, num_warps=warps,
        )
    return hard, soft


def adjoint(
    logits: torch.Tensor,
    noise: torch.Tensor,
    grad: torch.Tensor,
    n_steps: int,
    t_1: float,
    want_noise: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of ``<grad, S(logits, noise)>`` in the logits and (if asked) the noise."""
    _check(logits, noise, grad)
    logits, noise, grad = logits.contiguous(), noise.contiguous(), grad.contiguous()
    rows, k = logits.shape
    block, warps = _launch_shape(k)
    grad_logits = torch.empty_like(logits)
    grad_noise = torch.empty_like(logits) if want_noise else None
    if rows:
        _adjoint_kernel[(rows,)](
            logits, noise, grad, _coefficients(n_steps, t_1, logits.device), grad_logits,
            grad_logits if grad_noise is None else grad_noise, k, n_steps,
            WANT_NOISE=want_noise, BLOCK_K=block, num_warps=warps,
        )
    return grad_logits, grad_noise
