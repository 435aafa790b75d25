"""Pathwise gradient estimators for categorical samples, all with one signature.

Every estimator is a drop-in for ``torch.nn.functional.gumbel_softmax(logits, tau, hard=True)``::

    y = redge(logits, n_steps=5, t_1=0.5)          # one-hot value, ReDGE gradient
    y = gumbel_softmax(logits, tau=0.5)            # one-hot value, Gumbel-Softmax gradient
    hard, soft = redge(logits, return_soft=True)   # both samples from one call

* ``logits``: a finite floating tensor ``(..., K)`` with ``K >= 2``; float16 and bfloat16 inputs are
  computed in float32 and the result is cast back to the input dtype.
* ``hard=True``: the value is a one-hot sample ``H``; the gradient is the estimator's surrogate.
  ``hard=False``: the value is the differentiable soft sample.
* ``return_soft=True``: return :class:`Sample` ``(hard, soft)`` instead of a single tensor.
* ``generator``: a :class:`torch.Generator` on the logits' device; every random draw of the call
  comes from it (``None``: the global generator).

=============  ============================================  =======================================
estimator      forward value ``H``                           what the gradient sees
=============  ============================================  =======================================
st             ``H ~ Cat(softmax(logits))``                  ``softmax(logits)``
gumbel         ``argmax(logits + G)`` (an exact draw)        ``softmax((logits + G) / tau)``
reinmax        ``H ~ Cat(softmax(logits))``                  ``2 J(pi_1) g - J(pi) g / 2``
redge          ``H ~ Cat(S)``, ``S`` from the DDIM sampler   ``S(logits, noise)``, whole trajectory
redge_cov      as redge, moment-matched reference noise      as redge
reindge        as redge                                      trajectory + ReinMax step at ``t_1``
=============  ============================================  =======================================
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .diffusion import ddim_sample, fused_sample, inverse_cdf_sample
from .validation import (
    check_generator,
    check_logits,
    check_n_steps,
    check_t_1,
    check_tau,
    working_dtype,
)


class Sample(NamedTuple):
    """A hard sample (one-hot value carrying the estimator's gradient) and its soft sample."""

    hard: torch.Tensor
    soft: torch.Tensor


def _prepare(
    logits: object, generator: object
) -> tuple[torch.Tensor, torch.Generator | None, torch.dtype]:
    """Validate the common arguments; return the working logits (half precision moved to
    float32), the generator and the input dtype (the dtype of the results)."""
    logits = check_logits(logits)
    generator = check_generator(generator, logits.device)
    dtype = working_dtype(logits.dtype)
    work = logits if dtype == logits.dtype else logits.to(dtype)
    return work, generator, logits.dtype


def _gumbel(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard Gumbel noise ``-log(E)``, ``E ~ Exp(1)``, shaped like ``like`` (no gradient)."""
    exp = torch.empty_like(like, memory_format=torch.contiguous_format)
    exp.exponential_(generator=generator)
    return exp.log_().neg_()


def _one_hot_argmax(scores: torch.Tensor) -> torch.Tensor:
    """One-hot vector of the argmax of ``scores`` along the last dimension (no gradient)."""
    index = scores.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(scores, memory_format=torch.contiguous_format).scatter_(-1, index, 1.0)


def sample_categorical(
    log_weights: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """An exact one-hot draw from ``Cat(softmax(log_weights))`` by the Gumbel-max trick."""
    scores = log_weights.detach()
    return _one_hot_argmax(scores + _gumbel(scores, generator))


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return (hard - soft).detach() + soft


def _finish(
    hard: torch.Tensor,
    soft: torch.Tensor,
    *,
    hard_flag: bool,
    return_soft: bool,
    dtype: torch.dtype,
) -> torch.Tensor | Sample:
    if hard.dtype != dtype:
        hard, soft = hard.to(dtype), soft.to(dtype)
    if return_soft:
        return Sample(hard, soft)
    return hard if hard_flag else soft


def st(
    logits: torch.Tensor,
    *,
    hard: bool = True,
    generator: torch.Generator | None = None,
    return_soft: bool = False,
) -> torch.Tensor | Sample:
    """Straight-Through: ``H ~ Cat(pi)`` forward, the gradient of ``pi = softmax(logits)`` backward.

    Example:
        >>> y = st(torch.zeros(4, 3, requires_grad=True))
        >>> y.sum(-1)
        tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>)
    """
    work, generator, dtype = _prepare(logits, generator)
    probs = torch.softmax(work, dim=-1)
    sample = sample_categorical(work, generator)
    return _finish(straight_through(sample, probs), probs, hard_flag=hard,
                   return_soft=return_soft, dtype=dtype)


def gumbel_softmax(
    logits: torch.Tensor,
    *,
    tau: float = 1.0,
    hard: bool = True,
    generator: torch.Generator | None = None,
    return_soft: bool = False,
) -> torch.Tensor | Sample:
    """Gumbel-Softmax (Concrete), straight-through when ``hard=True``.

    Forward ``H = onehot(argmax(logits + G))`` (an exact draw from ``Cat(softmax(logits))``);
    backward through ``P = softmax((logits + G) / tau)``. Same as
    ``torch.nn.functional.gumbel_softmax`` but with a validated ``tau`` and a ``generator``.
    Small ``tau``: little bias, large variance; large ``tau``: the reverse.
    """
    tau = check_tau(tau)
    work, generator, dtype = _prepare(logits, generator)
    perturbed = work + _gumbel(work, generator)
    soft = torch.softmax(perturbed / tau, dim=-1)
    sample = _one_hot_argmax(perturbed.detach())
    return _finish(straight_through(sample, soft), soft, hard_flag=hard,
                   return_soft=return_soft, dtype=dtype)


def _softmax_vjp(probs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``J(probs)^T grad`` with ``J(q) = diag(q) - q q^T``, the softmax Jacobian at ``q``."""
    weighted = probs * grad
    return weighted - probs * weighted.sum(dim=-1, keepdim=True)


class _ReinMax(torch.autograd.Function):
    """Forward: the given one-hot sample. Backward: ``2 J(pi_1)^T g - J(pi)^T g / 2``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, sample: torch.Tensor, tau: float) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        probs_tau = probs if tau == 1.0 else torch.softmax(logits / tau, dim=-1)
        ctx.save_for_backward(probs, 0.5 * (sample + probs_tau))
        return sample.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        probs, probs_half = ctx.saved_tensors
        return 2.0 * _softmax_vjp(probs_half, grad) - 0.5 * _softmax_vjp(probs, grad), None, None


def reinmax_surrogate(logits: torch.Tensor, sample: torch.Tensor, tau: float) -> torch.Tensor:
    """The value of the one-hot ``sample`` with ReinMax's gradient in ``logits``.

    Backward: ``2 J(pi_1)^T g - J(pi)^T g / 2``, ``pi = softmax(logits)``,
    ``pi_1 = (sample + softmax(logits / tau)) / 2``. :func:`reinmax` draws the sample and calls
    this; it is public for callers that bring their own samples (e.g. exact enumeration).
    """
    return _ReinMax.apply(logits, sample, tau)


def reinmax(
    logits: torch.Tensor,
    *,
    tau: float = 1.0,
    hard: bool = True,
    generator: torch.Generator | None = None,
    return_soft: bool = False,
) -> torch.Tensor | Sample:
    """ReinMax (Liu et al., 2023): second-order accurate straight-through.

    Forward ``H ~ Cat(pi)``; backward ``2 J(pi_1)^T g - J(pi)^T g / 2`` with
    ``pi_1 = (H + softmax(logits / tau)) / 2``. ``tau >= 1`` as the ReinMax authors require. The
    soft sample (``hard=False``) is ``softmax(logits)``, as for Straight-Through.
    """
    tau = check_tau(tau, minimum=1.0)
    work, generator, dtype = _prepare(logits, generator)
    sample = sample_categorical(work, generator)
    hard_sample = reinmax_surrogate(work, sample, tau)
    return _finish(hard_sample, torch.softmax(work, dim=-1), hard_flag=hard,
                   return_soft=return_soft, dtype=dtype)


def _redge_family(
    logits: torch.Tensor,
    n_steps: int,
    t_1: float,
    hard: bool,
    generator: torch.Generator | None,
    return_soft: bool,
    variant: str,
    reinmax_step: bool,
) -> torch.Tensor | Sample:
    n_steps = check_n_steps(n_steps)
    t_1 = check_t_1(t_1)
    work, generator, dtype = _prepare(logits, generator)
    noise = torch.randn(work.shape, generator=generator, device=work.device, dtype=work.dtype)
    uniform_shape = work.shape[:-1] + (1,)
    uniform = torch.rand(uniform_shape, generator=generator, device=work.device, dtype=work.dtype)
    if variant == "plain":
        sample_st, soft = fused_sample(work, noise, uniform, n_steps=n_steps, t_1=t_1)
    else:
        soft = ddim_sample(work, noise, n_steps=n_steps, t_1=t_1, variant=variant).soft
        sample = inverse_cdf_sample(soft.detach(), uniform)
        sample_st = straight_through(sample, soft)
    if not reinmax_step:
        return _finish(sample_st, soft, hard_flag=hard, return_soft=return_soft, dtype=dtype)
    # ReinDGE. The surrogate's value is exactly H; its gradient in the logits is
    #   J(S)^T g (dlogits + c dx)       (S through the whole trajectory, as ReDGE)
    # - J(S)^T g dlogits / 2            (keep half of the last denoiser's direct term)
    # + (g . d) d / 2,  d = H - S       (ReinMax's correction at t_1)
    # i.e. trajectory part + [J(S)^T g + (g . d) d] / 2, with no tensor hooks.
    probs = soft.detach()
    delta = work - work.detach()
    direction = (sample_st.detach() if variant == "plain" else sample) - probs
    correction = 0.5 * (
        direction * (direction * delta).sum(dim=-1, keepdim=True) - _softmax_vjp(probs, delta)
    )
    hard_sample = sample_st + correction
    return _finish(hard_sample, soft, hard_flag=hard, return_soft=return_soft, dtype=dtype)


def redge(
    logits: torch.Tensor,
    *,
    n_steps: int = 5,
    t_1: float = 0.5,
    hard: bool = True,
    generator: torch.Generator | None = None,
    return_soft: bool = False,
) -> torch.Tensor | Sample:
    """ReDGE: reparameterise a categorical sample through an exact diffusion sampler.

    Draw ``x ~ N(0, I)``, run ``n_steps - 2`` deterministic DDIM moves of the closed-form
    categorical denoiser down to ``t_1``, take the soft sample ``S = D_{t_1}(x)`` and the hard
    sample ``H ~ Cat(S)``; return ``H`` with the pathwise gradient of ``S(logits, noise)``.

    Args:
        logits: ``(..., K)`` finite floating tensor.
        n_steps: grid points (``>= 2``); more steps make the law of ``H`` closer to
            ``softmax(logits)``. The authors suggest 3-9 (start at 5).
        t_1: stopping time in ``(0, 1]``; ``t_1 = 1`` is exactly Straight-Through, small ``t_1``
            makes ``S`` nearly one-hot. The authors suggest 0.3-0.9 (start at 0.5).
        hard: return the one-hot sample (``True``) or the soft sample (``False``).
        generator: source of the Gaussian and Gumbel noise.
        return_soft: return ``Sample(hard, soft)``.

    Example:
        >>> logits = torch.randn(8, 4, requires_grad=True)
        >>> y = redge(logits, n_steps=5, t_1=0.5, generator=torch.Generator().manual_seed(0))
        >>> (y * torch.arange(4.0)).sum().backward()   # gradients reach the logits
    """
    return _redge_family(logits, n_steps, t_1, hard, generator, return_soft, "plain", False)


def redge_cov(
    logits: torch.Tensor,
    *,
    n_steps: int = 5,
    t_1: float = 0.5,
    hard: bool = True,
    generator: torch.Generator | None = None,
    return_soft: bool = False,
) -> torch.Tensor | Sample:
    """ReDGE-cov: ReDGE with reference noise ``N(pi, diag(max(pi (1 - pi), 0.1)))``.

    The reference Gaussian matches the first two moments of ``Cat(pi)`` (floored), so the sampler
    starts closer to the data; ``pi`` and the variance are differentiated too.
    """
    return _redge_family(logits, n_steps, t_1, hard, generator, return_soft, "cov", False)


def reindge(
    logits: torch.Tensor,
    *,
    n_steps: int = 5,
    t_1: float = 0.5,
    hard: bool = True,
    generator: torch.Generator | None = None,
    return_soft: bool = False,
) -> torch.Tensor | Sample:
    """ReinDGE: ReDGE's trajectory gradient plus a ReinMax correction at ``t_1``.

    Forward as :func:`redge`. Backward: the gradient through the trajectory (``logits`` held fixed
    in the last denoiser) plus ``[J(S)^T g + (g . (H - S)) (H - S)] / 2``, the ReinMax (``tau = 1``)
    estimator of the conditional categorical ``Cat(S)``. Implemented as a surrogate with no tensor
    hooks, so repeated backward passes and other paths to the logits are handled by autograd. The
    soft sample (``hard=False``) is ReDGE's ``S`` with its full pathwise gradient.
    """
    return _redge_family(logits, n_steps, t_1, hard, generator, return_soft, "plain", True)
