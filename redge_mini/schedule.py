"""The time grid of ReDGE's DDIM sampler and the scalars of its backward pass.

One place for the numbers that every backend of the fused sampler uses (the PyTorch reference in
:mod:`redge_mini.diffusion`, the C++ kernel of :mod:`redge_mini._cpp_sampler`, the Triton kernels
of :mod:`redge_mini._triton_sampler`): the kernels receive :func:`time_grid`'s Python floats and
derive their step coefficients from them in the same order of operations as
:func:`adjoint_coefficients`. Imports nothing of the package but :mod:`redge_mini.validation`, so
no backend imports another.
"""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=256)
def adjoint_coefficients(
    n_steps: int, t_1: float
) -> tuple[tuple[tuple[float, float], ...], float]:
    """Scalars of the fused sampler's backward loop for ``j = 2, ..., n_steps - 1``.

    Returns ``((b_j k_{j-1}, c_j b_j / r_j) for each j, k_{n_steps - 1})`` with
    ``k_j = c_1 sigma_1 / sigma_j``: the weight of ``J(D_j)^T v_{j-1}`` in the logits' gradient and
    in ``v_j``, and the factor that turns ``v`` back into the noise's gradient (the recursion is
    derived in :class:`redge_mini._op._FusedSampler`).
    """
    alphas, sigmas = cached(time_grid, n_steps, t_1)

    def k(j: int) -> float:
        return alphas[1] / (sigmas[1] * sigmas[j])

    steps = []
    for j in range(2, n_steps):
        ratio = sigmas[j - 1] / sigmas[j]
        b_j = alphas[j - 1] - ratio * alphas[j]
        steps.append((b_j * k(j - 1), alphas[j] / sigmas[j] ** 2 * b_j / ratio))
    return tuple(steps), k(n_steps - 1)
