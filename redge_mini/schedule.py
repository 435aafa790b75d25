"""The time grid of ReDGE's DDIM sampler and the one table of its step coefficients.

One place for the numbers that every backend of the fused sampler uses (the PyTorch reference in
:mod:`redge_mini.diffusion` and :mod:`redge_mini._op`, the C++ kernel of
:mod:`redge_mini._cpp_sampler`, the Triton kernels of :mod:`redge_mini._triton_sampler`):
:func:`step_table` computes every step's coefficients once, in float64, and each backend reads
them (none derives its own from the grid). Imports nothing of the package but
:mod:`redge_mini.validation`, so no backend imports another.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .validation import check_n_steps, check_t_1

ALPHA_END = 1e-4
"""Signal level at the last grid point (almost pure noise), as in the authors' package."""


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


def cached(function, *args):
    """``function(*args)`` from its ``lru_cache``, or computed afresh while ``torch.compile``
    traces (Dynamo warns about cached functions; the values are Python floats either way)."""
    if torch.compiler.is_compiling():
        return function.__wrapped__(*args)
    return function(*args)


class StepTable(NamedTuple):
    """The fused sampler's step coefficients on one time grid, one float per grid index
    ``j = 0, ..., n_steps - 1`` in each field (float64; see :func:`step_table`).

    The mathematics (:mod:`redge_mini.diffusion`): ``w_j = logits + c_j x_j``,
    ``D_j = softmax(w_j)``, ``x_{j-1} = r_j x_j + b_j D_j``. The fused sampler carries the state
    as ``u_j = x_j / scale_j`` and its adjoint as ``v_j = g_{x_j} / k_j``, so that a step of
    either pass is one update (derived in :class:`redge_mini._op._FusedSampler`).
    """

    alpha: tuple[float, ...]
    """Signal level ``alpha_j``."""
    sigma: tuple[float, ...]
    """Noise level ``sigma_j = 1 - alpha_j``."""
    c: tuple[float, ...]
    """``c_j = alpha_j / sigma_j^2``: the denoiser's weight on ``x_j`` (0 at j = 0)."""
    r: tuple[float, ...]
    """``r_j = sigma_{j-1} / sigma_j``: the DDIM move's weight on ``x_j`` (0 at j < 2)."""
    b: tuple[float, ...]
    """``b_j = alpha_{j-1} - r_j alpha_j``: the move's weight on ``D_j`` (0 at j < 2)."""
    scale: tuple[float, ...]
    """``scale_j = sigma_j / sigma_{n_steps - 1}`` (``x_j = scale_j u_j``)."""
    weight: tuple[float, ...]
    """``c_j scale_j``: the denoiser's weight on ``u_j`` (0 at j = 0)."""
    move: tuple[float, ...]
    """``b_j / scale_{j-1}``: ``u_{j-1} = u_j + move_j D_j`` (0 at j < 2)."""
    k: tuple[float, ...]
    """``k_j = c_1 sigma_1 / sigma_j`` (0 at j = 0); ``k_{n_steps - 1} v`` is the noise's
    gradient."""
    to_logits: tuple[float, ...]
    """``b_j k_{j-1}``: the weight of ``t_j = J(D_j)^T v_{j-1}`` in the logits' gradient (1 at
    j = 1, 0 at j = 0)."""
    to_state: tuple[float, ...]
    """``c_j b_j / r_j``: ``v_j = v_{j-1} + to_state_j t_j`` (0 at j < 2)."""


STEP_COLUMNS = StepTable._fields
"""The rows of :func:`step_tensor`, in order (the C++ kernel reads them by position)."""


@functools.lru_cache(maxsize=256)
def step_table(n_steps: int, t_1: float) -> StepTable:
    """The one table of step coefficients that every backend of the fused sampler reads: the
    PyTorch reference (:func:`redge_mini.diffusion.ddim_sample` and the adjoint of
    :mod:`redge_mini._op`), the C++ kernel (through :func:`step_tensor`) and the Triton kernels
    (a float32 copy of four rows). Computed once per ``(n_steps, t_1)`` in float64 from
    :func:`time_grid`, so that the backends round the same numbers to their working dtype.

    Example:
        >>> table = step_table(3, 0.5)
        >>> [round(x, 4) for x in table.c]
        [0.0, 2.0, 0.0004]
    """
    alphas, sigmas = cached(time_grid, n_steps, t_1)
    n, last = n_steps, n_steps - 1
    zeros = [0.0] * n
    c, r, b, move, k, to_logits, to_state = (list(zeros) for _ in range(7))
    scale = [sigma / sigmas[last] for sigma in sigmas]
    weight = list(zeros)
    for j in range(1, n):
        c[j] = alphas[j] / (sigmas[j] * sigmas[j])
        weight[j] = alphas[j] * scale[j] / sigmas[j] ** 2
        k[j] = alphas[1] / (sigmas[1] * sigmas[j])
    to_logits[1] = 1.0
    for j in range(2, n):
        r[j] = sigmas[j - 1] / sigmas[j]
        b[j] = alphas[j - 1] - r[j] * alphas[j]
        move[j] = b[j] / scale[j - 1]
        to_logits[j] = b[j] * k[j - 1]
        to_state[j] = alphas[j] / sigmas[j] ** 2 * b[j] / r[j]
    columns = (alphas, sigmas, c, r, b, scale, weight, move, k, to_logits, to_state)
    return StepTable(*(tuple(float(x) for x in column) for column in columns))


@functools.lru_cache(maxsize=256)
def step_tensor(n_steps: int, t_1: float) -> torch.Tensor:
    """:func:`step_table` as one contiguous float64 CPU tensor of shape
    ``(len(STEP_COLUMNS), n_steps)``, rows in the order of :data:`STEP_COLUMNS`: the input of the
    C++ kernel (cached: no conversion per call; do not modify it)."""
    return torch.tensor(cached(step_table, n_steps, t_1), dtype=torch.float64)


@functools.lru_cache(maxsize=256)
def adjoint_coefficients(
    n_steps: int, t_1: float
) -> tuple[tuple[tuple[float, float], ...], float]:
    """Scalars of the fused sampler's backward loop for ``j = 2, ..., n_steps - 1``, read from
    :func:`step_table`.

    Returns ``((b_j k_{j-1}, c_j b_j / r_j) for each j, k_{n_steps - 1})`` with
    ``k_j = c_1 sigma_1 / sigma_j``: the weight of ``J(D_j)^T v_{j-1}`` in the logits' gradient and
    in ``v_j``, and the factor that turns ``v`` back into the noise's gradient (the recursion is
    derived in :class:`redge_mini._op._FusedSampler`).
    """
    table = cached(step_table, n_steps, t_1)
    steps = tuple(zip(table.to_logits[2:], table.to_state[2:], strict=True))
    return steps, table.k[-1]
