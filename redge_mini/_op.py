"""The fused sampler: its autograd Functions, memory policy, backend choice and torch operators.

:mod:`redge_mini.diffusion` holds the reference mathematics (denoisers, DDIM, the inverse-CDF
draw); this module makes it fast. :func:`fused_sample` is ReDGE's ``(hard, soft)`` with a
hand-derived backward pass (:class:`_FusedSampler`), run by the C++ kernel on CPU, the Triton
kernels on CUDA or the PyTorch recursion below (which keeps the trajectory up to
:data:`STORE_LIMIT` elements, else recomputes it chunk by chunk).

The operators:

``torch.ops.redge_mini.sample(logits, noise, uniform, n_steps, t_1, variant)`` returns
``(hard, soft, drawn)`` (the one-hot draw, the soft sample ``S`` and the drawn categories) and
``torch.ops.redge_mini.adjoint(...)`` the gradients of ``<grad, S>`` in the logits and the noise,
with ReinDGE's ReinMax step when given the hard sample's gradient and the drawn categories. Both
are :func:`torch.library.custom_op` operators; each call picks its kernel from the tensors:

* the C++ kernel (:mod:`redge_mini._cpp_sampler`) for float32 and float64 CPU tensors when it is
  built (every variant);
* the Triton kernels (:mod:`redge_mini._triton_sampler`) for float32 CUDA tensors with
  ``K <= MAX_K`` (plain ReDGE and ReinDGE's sampling) when Triton imports;
* the PyTorch reference of :mod:`redge_mini.diffusion` otherwise (its backward pass recomputes
  the trajectory, chunk by chunk).

The C++ extension, when it loads (the first call on CPU builds or imports it), registers its own
kernels for the operators with the dispatcher: CPU kernels (which read the step coefficients of
:func:`redge_mini.schedule.step_tensor`, fetched once per ``(n_steps, t_1)``, and hand back to
the Python kernels :func:`_sample_kernel` and :func:`_adjoint_kernel` what they do not run:
``REDGE_MINI_CPP=0`` at the time of the call, dtypes other than float32/float64) and
AutogradCPU kernels, which go straight on to the CPU kernels when no gradient is asked for (as in
a compiled graph, whose forward and backward run without autograd) and otherwise hand over to
:class:`_SampleFunction`, the registered derivative below as an autograd Function. A compiled
graph on CPU thus calls C++ without a Python frame (measured by ``benchmarks/bench_compile.py``).

``register_autograd`` wires the adjoint in as the gradient (a ``create_graph=True`` backward
differentiates :func:`redge_mini.diffusion.ddim_sample` instead, so double backward works),
``register_fake`` gives the output shapes to ``torch.compile`` (which then keeps the operator in
its graph, with static or dynamic shapes), and ``register_vmap`` runs a batch as more rows of one
call (the sampler is row-wise). :func:`fused_sample` calls the operator while ``torch.compile``
traces and, eagerly, wherever the C++ kernels run (CPU float32/float64 tensors that no
``torch.func`` transform has wrapped: the same values as :class:`_FusedSampler` on the ``"cpp"``
backend, with less Python per call). Elsewhere it keeps :class:`_FusedSampler` (the PyTorch and
Triton paths, whose PyTorch path may store the trajectory) and, for tensors wrapped by
``torch.vmap``/``torch.func``, :class:`_FusedSamplerTransformable` on the PyTorch path; both
through the public ``Function.apply``. Importing :mod:`redge_mini` registers the operators.
"""

from typing import Literal

import torch
from torch import Tensor

from . import _cpp_sampler
from .diffusion import (
    _reinmax_step,
    _wrapped,
    ddim_sample,
    inverse_cdf_sample,
)
from .schedule import adjoint_coefficients, time_grid
from .schedule import cached as _cached
from .validation import get_validate_args

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


def _category_dim(numel: int, k: int) -> int:
    """Where a ``(rows, K)`` block keeps its categories inside the fused sampler (0 or -1)."""
    return 0 if k <= SMALL_K and numel >= LARGE_NUMEL else -1


def _inside(rows: torch.Tensor, dim: int) -> torch.Tensor:
    """A ``(rows, K)`` block in the sampler's layout: ``(K, rows)`` contiguous when ``dim == 0``."""
    return rows.t().contiguous() if dim == 0 else rows


def _stores_trajectory(numel: int, n_steps: int) -> bool:
    return numel * (n_steps - 2) <= STORE_LIMIT


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
    empty; the C++ kernel's ReinDGE: the drawn categories). The forward pass of
    :class:`_FusedSampler`."""
    shape, k = logits.shape, logits.shape[-1]
    if backend == "cpp":
        # (ReinDGE samples as ReDGE and keeps the drawn categories for its backward pass)
        hard, soft, drawn = _kernels(backend).sample(
            _rows(logits, k), _rows(noise, k), uniform.reshape(-1), n_steps, t_1,
            variant="cov" if variant == "cov" else "plain", want_drawn=variant == "reindge",
        )
        return hard.view(shape), soft.view(shape), ((drawn,) if variant == "reindge" else ())
    if backend != "torch":
        hard, soft = _kernels(backend).sample(
            _rows(logits, k), _rows(noise, k), uniform.reshape(-1), n_steps, t_1
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
    # ReinDGE: ReinMax's step for the hard sample's part of the gradient, at the categories
    # drawn by the forward pass (the C++ kernel's only kept tensor)
    reinmax = variant == "reindge" and grad_hard is not None
    drawn = kept.pop() if variant == "reindge" else None
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
            hard = torch.zeros_like(fixed).scatter_(-1, drawn.view(*fixed.shape[:-1], 1), 1.0)
            grad_logits = grad_logits + _reinmax_step(fixed, hard, grad_hard)
        return grad_logits, (grads.pop(0) if want_noise else None), *_NONE
    shape, k = logits.shape, logits.shape[-1]
    if ctx.backend == "torch" and _stores_trajectory(logits.numel(), n_steps):
        dim = _category_dim(logits.numel(), k)
        if dim == 0:  # views: the first product in _adjoint takes the (contiguous) layout of soft
            soft, grad = soft.movedim(-1, 0), grad.movedim(-1, 0)
        grad_logits, grad_noise = _adjoint(
            [soft, *reversed(kept)], grad, _cached(adjoint_coefficients, n_steps, t_1), dim,
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
            extra = {"grad_hard": _rows(grad_hard, k), "drawn": drawn}
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
    compiled kernel, which always recomputes: they keep only the noise. All three carry the
    same scaled variables (``u_j = x_j / scale_j`` forward, ``v_j`` backward) with the same
    float32 coefficients, so their float32 roundings match closely. A
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
    coefficients = _cached(adjoint_coefficients, n_steps, t_1)
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


def _backend(logits: torch.Tensor) -> str:
    """Which implementation runs both passes of :class:`_FusedSampler`:

    * ``"triton"``: float32 CUDA tensors with ``K <= 16384`` when Triton imports;
    * ``"cpp"``: float32 and float64 CPU tensors when the C++ extension is built
      (:mod:`redge_mini._cpp_sampler`, compiled on the first call);
    * ``"torch"`` otherwise, and always under ``torch.vmap`` (batched tensors have no data
      pointer a kernel could read) and while ``torch.compile`` traces (it sees torch operations).
    """
    if _wrapped(logits):
        return "torch"
    if logits.device.type == "cpu":
        if logits.dtype not in (torch.float32, torch.float64):
            return "torch"
        from . import _cpp_sampler

        return "cpp" if _cpp_sampler.available() else "torch"
    k = logits.shape[-1]
    if not (logits.is_cuda and logits.dtype == torch.float32 and 2 <= k <= 16384):
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


def check_sampler_inputs(
    logits: torch.Tensor, noise: torch.Tensor, uniform: torch.Tensor, values: bool
) -> None:
    """What every kernel of the fused sampler assumes, checked before any of them runs.

    ``logits``: a floating tensor with ``K >= 1`` categories along its last dimension; ``noise``
    of its shape, ``uniform`` of shape ``(..., 1)``, both of its dtype and device. With
    ``values`` (validation on, see :func:`redge_mini.set_validate_args`) also the uniforms'
    values, in ``[0, 1)`` (one reduction and one host sync; not under ``torch.vmap`` or
    ``torch.compile``). Raises TypeError or ValueError naming the argument. (Out-of-range
    uniforms cannot crash a kernel either: every backend clamps the drawn index to
    ``[0, K - 1]``.)
    """
    for name, value in (("logits", logits), ("noise", noise), ("uniform", uniform)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    if logits.dim() == 0 or logits.shape[-1] < 1:
        raise ValueError(
            "logits must have at least one category (K >= 1) along its last dimension, got "
            f"shape {tuple(logits.shape)}"
        )
    if noise.shape != logits.shape:
        raise ValueError(
            f"noise must have the shape of logits {tuple(logits.shape)}, got {tuple(noise.shape)}"
        )
    if uniform.shape != logits.shape[:-1] + (1,):
        raise ValueError(
            f"uniform must have shape {tuple(logits.shape[:-1]) + (1,)}, got {tuple(uniform.shape)}"
        )
    for name, value in (("noise", noise), ("uniform", uniform)):
        if value.dtype != logits.dtype:
            raise ValueError(f"{name} must have the dtype of logits ({logits.dtype}), got "
                             f"{value.dtype}")
        if value.device != logits.device:
            raise ValueError(f"{name} must be on the device of logits ({logits.device}), got "
                             f"{value.device}")
    tracing = torch.compiler.is_compiling() or _wrapped(uniform)
    if values and uniform.numel() and not tracing:
        if not bool(((uniform >= 0) & (uniform < 1)).all()):
            raise ValueError("uniform must hold values in [0, 1)")


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
    ``(..., 1)``, values in ``[0, 1)``) and the gradient of ``S``; ``soft`` is
    ``S = ddim_sample(logits, noise, variant=variant).soft``. Same values and gradients as the
    autograd version, several times faster on small ``K``; a C++ kernel on CPU (compiled on
    first use; ``REDGE_MINI_CPP=0`` turns it off), a Triton kernel on CUDA (plain ReDGE). A
    ``create_graph=True`` backward goes through :func:`ddim_sample`. ``variant="cov"``
    (ReDGE-cov) has a fused backward pass in the C++ kernel only; elsewhere it differentiates
    :func:`ddim_sample` with autograd. ``variant="reindge"`` (ReinDGE) samples as ReDGE and
    gives ``hard`` ReinDGE's gradient: the trajectory's, with half of the last denoiser's direct
    term replaced by ReinMax's step, ``[J(S)^T g + (g . d) d] / 2`` in place of ``J(S)^T g``,
    ``d = H - S``, at the category drawn by the forward pass (in the C++ kernel's backward pass,
    elsewhere as a zero-valued surrogate).

    The arguments are checked by :func:`check_sampler_inputs` before any kernel runs. Non-finite
    logits (NaN, ``+inf``) and slices whose every entry is ``-inf``, which the estimators refuse
    while validation is on, give on every backend a NaN soft row and a NaN hard row. Under
    ``torch.compile``, and eagerly where the C++ kernels run, the sampler is the operator
    ``torch.ops.redge_mini.sample`` (:mod:`redge_mini._op`), which a compiled graph keeps whole.
    """
    check_sampler_inputs(logits, noise, uniform, get_validate_args())
    return _fused_sample(logits, noise, uniform, n_steps, t_1, variant)


def _fused_sample(logits, noise, uniform, n_steps, t_1, variant="plain"):
    """:func:`fused_sample` after its checks (the estimators' own draws need none)."""
    if variant not in ("plain", "cov", "reindge"):
        raise ValueError(f"variant must be 'plain', 'cov' or 'reindge', got {variant!r}")
    if torch.compiler.is_compiling():  # one opaque operator: registered by redge_mini._op
        _cached(time_grid, n_steps, t_1)  # (checks n_steps and t_1 while tracing)
        hard, soft, _ = torch.ops.redge_mini.sample(logits, noise, uniform, n_steps, t_1,
                                                    variant)
        return hard, soft
    _cached(time_grid, n_steps, t_1)  # checks n_steps and t_1 (cached per valid pair)
    # tensors wrapped by torch.vmap/torch.func (diffusion._wrapped) take the PyTorch path
    transformed = _wrapped(logits) or _wrapped(noise) or _wrapped(uniform)
    if not transformed and _cpp_runs(logits):
        # the operator: the dispatcher goes to the extension's C++ kernels, and with a gradient
        # asked for to _SampleFunction (whose forward calls them too)
        hard, soft, _ = torch.ops.redge_mini.sample(logits, noise, uniform, n_steps, t_1,
                                                    variant)
        return hard, soft
    backend = "torch" if transformed else _backend(logits)
    args = (logits, noise, uniform, n_steps, t_1, backend)
    if variant == "cov" and backend != "cpp":  # no PyTorch (or Triton) adjoint for ReDGE-cov
        soft = ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1, variant="cov").soft
        hard = inverse_cdf_sample(soft.detach(), uniform)
        return (hard - soft).detach() + soft, soft
    if variant == "reindge" and backend != "cpp":  # the plain sampler plus a surrogate
        hard, soft = _fused_sample(logits, noise, uniform, n_steps, t_1)
        return hard + _reinmax_surrogate(logits, hard, soft), soft
    if variant != "plain":
        args = (*args, variant)
    if transformed:
        hard, soft, *_ = _FusedSamplerTransformable.apply(*args)
        return hard, soft
    return _FusedSampler.apply(*args)


def _cpp_runs(logits: torch.Tensor) -> bool:
    """Whether the extension's kernels run for these (unwrapped) logits: float32 or float64 CPU
    tensors, the extension switched on and built (which registers its kernels)."""
    return (logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64)
            and _cpp_sampler.available())


VARIANTS = ("plain", "cov", "reindge")


def kernel(logits: Tensor, variant: str) -> str:
    """The kernel that runs both passes for these logits: ``"cpp"``, ``"triton"`` or
    ``"torch"`` (see the module's docstring)."""
    if logits.device.type == "cpu":
        ok = logits.dtype in (torch.float32, torch.float64)
        return "cpp" if ok and _cpp_sampler.available() else "torch"
    if not (logits.is_cuda and logits.dtype == torch.float32 and variant != "cov"):
        return "torch"
    from . import _triton_sampler  # (imports triton: only where it can run)

    ok = 2 <= logits.shape[-1] <= _triton_sampler.MAX_K and _triton_sampler.AVAILABLE
    return "triton" if ok else "torch"


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


@torch.library.custom_op("redge_mini::sample", mutates_args=())
def sample(
    logits: Tensor, noise: Tensor, uniform: Tensor, n_steps: int, t_1: float, variant: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(hard, soft, drawn)`` of the fused sampler for ``(..., K)`` logits and noise and
    ``(..., 1)`` uniforms; ``drawn`` holds the categories, shape ``(...)``, int64."""
    return _sample_kernel(logits, noise, uniform, n_steps, t_1, variant)


def _sample_kernel(logits, noise, uniform, n_steps, t_1, variant):
    """The Python kernel of :func:`sample` (every device; on CPU, until the C++ extension has
    registered its own kernel, and after that for what it does not run)."""
    _check_variant(variant)
    shape, k = logits.shape, logits.shape[-1]
    which = kernel(logits, variant)
    rows, noise_rows = _rows(logits, k), _rows(noise, k)
    if which == "cpp":
        hard, soft, drawn = _cpp_sampler.sample(
            rows, noise_rows, uniform.reshape(-1), n_steps, t_1,
            variant="cov" if variant == "cov" else "plain",
        )
    elif which == "triton":
        from . import _triton_sampler

        hard, soft = _triton_sampler.sample(rows, noise_rows, uniform.reshape(-1), n_steps, t_1)
        drawn = hard.argmax(-1)
    else:
        if variant == "cov":
            soft = ddim_sample(rows, noise_rows, n_steps=n_steps, t_1=t_1, variant="cov").soft
            hard = inverse_cdf_sample(soft, _rows(uniform, 1))
        else:
            hard, soft, _ = _sample_forward(rows, noise_rows, _rows(uniform, 1), n_steps, t_1,
                                            "torch")
        hard, soft = hard.contiguous(), soft.contiguous()
        drawn = hard.argmax(-1)
    return hard.view(shape), soft.view(shape), drawn.view(shape[:-1])


@sample.register_fake
def _(logits, noise, uniform, n_steps, t_1, variant):
    like = torch.empty_like(logits, memory_format=torch.contiguous_format)
    return like, torch.empty_like(like), logits.new_empty(logits.shape[:-1], dtype=torch.long)


@torch.library.custom_op("redge_mini::adjoint", mutates_args=())
def adjoint(
    logits: Tensor, noise: Tensor, grad: Tensor, grad_hard: Tensor | None,
    drawn: Tensor | None, n_steps: int, t_1: float, variant: str, want_noise: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``<grad, S(logits, noise)>`` in the logits and (``want_noise``; else an empty
    tensor) the noise. ReinDGE (``grad_hard`` and ``drawn`` given): plus ReinMax's step
    ``[(g . d) d - J(S)^T g] / 2``, ``g = grad_hard``, ``d = H - S``, at the drawn categories."""
    return _adjoint_kernel(logits, noise, grad, grad_hard, drawn, n_steps, t_1, variant,
                           want_noise)


def _adjoint_kernel(logits, noise, grad, grad_hard, drawn, n_steps, t_1, variant, want_noise):
    """The Python kernel of :func:`adjoint` (as :func:`_sample_kernel`)."""
    _check_variant(variant)
    shape, k = logits.shape, logits.shape[-1]
    rows, noise_rows, grad_rows = _rows(logits, k), _rows(noise, k), _rows(grad, k)
    which = kernel(logits, variant)
    reinmax = grad_hard is not None and drawn is not None
    if which == "cpp":
        extra = {"variant": "cov"} if variant == "cov" else {}
        if reinmax:
            extra = {"grad_hard": _rows(grad_hard, k), "drawn": drawn.reshape(-1)}
        grad_logits, grad_noise = _cpp_sampler.adjoint(rows, noise_rows, grad_rows, n_steps,
                                                       t_1, want_noise, **extra)
    elif which == "triton" and variant != "cov":
        from . import _triton_sampler

        grad_logits, grad_noise = _triton_sampler.adjoint(rows, noise_rows, grad_rows, n_steps,
                                                          t_1, want_noise)
    elif variant == "cov":  # the reference, differentiated by functorch
        def soft_of(lg, nz):
            return ddim_sample(lg, nz, n_steps=n_steps, t_1=t_1, variant="cov").soft

        _, pullback = torch.func.vjp(soft_of, rows, noise_rows)
        grad_logits, grad_noise = pullback(grad_rows)
    else:
        grad_logits, grad_noise = _chunked_adjoint(rows, noise_rows, grad_rows, n_steps, t_1,
                                                   want_noise)
    if reinmax and which != "cpp":
        soft = ddim_sample(rows, noise_rows, n_steps=n_steps, t_1=t_1).soft
        hard = torch.zeros_like(soft).scatter_(-1, drawn.reshape(-1, 1), 1.0)
        grad_logits = grad_logits + _reinmax_step(soft, hard, _rows(grad_hard, k))
    grad_noise = grad_noise.reshape(shape) if want_noise else logits.new_empty(0)
    return grad_logits.reshape(shape).clone(), grad_noise


@adjoint.register_fake
def _(logits, noise, grad, grad_hard, drawn, n_steps, t_1, variant, want_noise):
    like = torch.empty_like(logits, memory_format=torch.contiguous_format)
    return like, (torch.empty_like(like) if want_noise else logits.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    logits, noise, _, n_steps, t_1, variant = inputs
    _, soft, drawn = output
    ctx.save_for_backward(logits, noise, soft, drawn)
    ctx.n_steps, ctx.t_1, ctx.variant = n_steps, t_1, variant


def _backward(ctx, grad_hard, grad_soft, _grad_drawn):
    logits, noise, soft, drawn = ctx.saved_tensors
    needs_logits, needs_noise = ctx.needs_input_grad[:2]
    nothing = (None,) * 4
    if grad_hard is None and grad_soft is None:
        return None, None, *nothing
    grad = grad_soft if grad_hard is None else grad_hard if grad_soft is None else (
        grad_hard + grad_soft)
    reinmax = ctx.variant == "reindge" and grad_hard is not None
    if torch.is_grad_enabled():  # create_graph=True: differentiate the reference sampler
        variant = "cov" if ctx.variant == "cov" else "plain"
        want = [t for t, need in ((logits, needs_logits), (noise, needs_noise)) if need]
        with torch.enable_grad():
            reference = ddim_sample(logits, noise, n_steps=ctx.n_steps, t_1=ctx.t_1,
                                    variant=variant).soft
            grads = list(torch.autograd.grad(reference, want, grad, create_graph=True))
        grad_logits = grads.pop(0) if needs_logits else None
        if reinmax and grad_logits is not None:
            fixed = soft.detach()
            hard = torch.zeros_like(fixed).scatter_(-1, drawn.unsqueeze(-1), 1.0)
            grad_logits = grad_logits + _reinmax_step(fixed, hard, grad_hard)
        return grad_logits, (grads.pop(0) if needs_noise else None), *nothing
    grad_logits, grad_noise = adjoint(
        logits, noise, grad, grad_hard if reinmax else None, drawn if reinmax else None,
        ctx.n_steps, ctx.t_1, ctx.variant, needs_noise,
    )
    return grad_logits, (grad_noise if needs_noise else None), *nothing


sample.register_autograd(_backward, setup_context=_setup_context)


class _SampleFunction(torch.autograd.Function):
    """:func:`sample` with the derivative registered above, as an autograd Function: the C++
    extension's AutogradCPU kernel of the operator calls it (through :func:`_sample_autograd`)
    when a gradient is asked for, and otherwise goes on to its CPU kernel without Python. (As
    with custom_op's own autograd kernel, ``torch.func.grad`` of the operator itself is not
    supported; the estimators are, through :class:`_FusedSamplerTransformable`.)"""

    @staticmethod
    def forward(ctx, logits, noise, uniform, n_steps, t_1, variant):
        # (the combined form: Function.apply binds the arguments of a setup_context form with
        # inspect.signature at every call, which costs more than the kernel on small problems)
        output = sample(logits, noise, uniform, n_steps, t_1, variant)
        _setup_context(ctx, (logits, noise, uniform, n_steps, t_1, variant), output)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None
        return output

    @staticmethod
    def backward(ctx, grad_hard, grad_soft, grad_drawn):
        return _backward(ctx, grad_hard, grad_soft, grad_drawn)


def _sample_autograd(logits, noise, uniform, n_steps, t_1, variant):
    return _SampleFunction.apply(logits, noise, uniform, n_steps, t_1, variant)


def _front(tensor: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    if tensor is None:
        return None
    return tensor.expand(size, *tensor.shape) if dim is None else tensor.movedim(dim, 0)


@torch.library.register_vmap("redge_mini::sample")
def _(info, in_dims, logits, noise, uniform, n_steps, t_1, variant):
    tensors = (logits, noise, uniform)
    batched = [_front(t, d, info.batch_size) for t, d in zip(tensors, in_dims[:3], strict=True)]
    return sample(*batched, n_steps, t_1, variant), (0, 0, 0)


@torch.library.register_vmap("redge_mini::adjoint")
def _(info, in_dims, logits, noise, grad, grad_hard, drawn, n_steps, t_1, variant, want_noise):
    tensors = (logits, noise, grad, grad_hard, drawn)
    batched = [_front(t, d, info.batch_size) for t, d in zip(tensors, in_dims[:5], strict=True)]
    out = adjoint(*batched, n_steps, t_1, variant, want_noise)
    return out, (0, 0 if want_noise else None)
