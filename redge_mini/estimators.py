"""Pathwise gradient estimators for categorical samples, all with torch's conventions.

Every estimator takes the arguments of ``torch.nn.functional.gumbel_softmax`` in the same order:
``logits``, its knobs (positional or by name), ``hard=False`` and ``dim=-1``, then the keyword-only
``generator``::

    y = redge(logits, 5, 0.5, hard=True)              # one-hot value, ReDGE gradient
    y = gumbel_softmax(logits, 0.5, True, dim=1)      # exactly torch's call
    hard, soft = sample("redge", logits)              # both samples from one call

* ``logits``: a floating tensor with ``K >= 2`` categories along ``dim``. ``-inf`` masks a category
  (probability zero: never drawn, zero gradient). NaN, ``+inf`` and a slice with every category
  masked are refused while validation is on (:func:`redge_mini.set_validate_args`). float16 and
  bfloat16 inputs are computed in float32 and the results are cast back to the input dtype.
* ``hard=True``: the value is a one-hot sample ``H``; the gradient is the estimator's surrogate.
  ``hard=False`` (the default, as in torch): the value is the differentiable soft sample.
* ``generator``: a :class:`torch.Generator` on the logits' device; every random draw of the call
  comes from it (``None``: the global generator).
* :func:`sample` returns both, as :class:`Sample` ``(hard, soft)``.

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

The knobs, their defaults and valid ranges are in the registry's one table,
:data:`redge_mini.registry.KNOBS` (also importable from here as ``KNOBS``); every function checks
them with :func:`redge_mini.registry.check_knobs`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._op import _fused_sample
from .diffusion import _reinmax_step, _softmax_vjp
from .registry import ALL_ESTIMATORS, KNOBS, _bind, check_knobs, check_name
from .validation import check_generator, check_logits, working_dtype

__all__ = [
    "KNOBS",
    "Sample",
    "gumbel_softmax",
    "redge",
    "redge_cov",
    "reindge",
    "reindge_detach",
    "reinmax",
    "reinmax_surrogate",
    "sample",
    "sample_categorical",
    "st",
    "straight_through",
]

# KNOBS (estimator name -> its knobs, in positional order, with default, range and kind) is the
# registry's one table (redge_mini.registry.KNOBS), kept importable from here.


class Sample(NamedTuple):
    """A hard sample (one-hot value carrying the estimator's gradient) and its soft sample."""

    hard: torch.Tensor
    soft: torch.Tensor


def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise ``-log(E)``, ``E ~ Exp(1)``, shaped like ``like`` (no gradient).

    ``E`` is floored at the dtype's smallest normal number, so the noise is always finite and a
    masked logit (``-inf``) stays ``-inf`` after the noise is added.
    """
    # preserve_format: for a permuted view of a dense tensor (``dim != -1``) the noise is drawn
    # in the memory order of the input, so that it matches torch's gumbel_softmax draw for draw
    exp = torch.empty_like(like, memory_format=torch.preserve_format)
    exp.exponential_(generator=generator)
    return exp.clamp(min=torch.finfo(exp.dtype).tiny).log_().neg_()


def gumbel_argmax(
    log_weights: torch.Tensor, generator: torch.Generator | None = None, dim: int = -1
) -> torch.Tensor:
    """Index of one exact draw from ``Cat(softmax(log_weights))`` along ``dim`` (Gumbel-max).

    Returns a long tensor without ``dim``. A ``-inf`` entry is never drawn.
    """
    scores = log_weights.detach()
    return (scores + gumbel_noise(scores, generator)).argmax(dim=dim)


def _one_hot_argmax(scores: torch.Tensor) -> torch.Tensor:
    """One-hot vector of the argmax of ``scores`` along the last dimension (no gradient)."""
    index = scores.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(scores, memory_format=torch.contiguous_format).scatter(-1, index, 1.0)


def sample_categorical(
    log_weights: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """An exact one-hot draw from ``Cat(softmax(log_weights))`` (last dim) by Gumbel-max."""
    scores = log_weights.detach()
    return _one_hot_argmax(scores + gumbel_noise(scores, generator))


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
    return (hard - soft).detach() + soft


class _ReinMax(torch.autograd.Function):
    """Forward: the given one-hot sample. Backward: ``2 J(pi_1)^T g - J(pi)^T g / 2``.

    Written with ``setup_context`` and ``generate_vmap_rule`` so that ``torch.vmap`` and
    ``torch.compile`` can trace it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: torch.Tensor, sample: torch.Tensor, tau: float) -> torch.Tensor:
        return sample.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        logits, sample, tau = inputs
        probs = torch.softmax(logits.detach(), dim=-1)
        probs_tau = probs if tau == 1.0 else torch.softmax(logits.detach() / tau, dim=-1)
        ctx.save_for_backward(probs, 0.5 * (sample.detach() + probs_tau))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        probs, probs_half = ctx.saved_tensors
        return 2.0 * _softmax_vjp(probs_half, grad) - 0.5 * _softmax_vjp(probs, grad), None, None


def reinmax_surrogate(logits: torch.Tensor, sample: torch.Tensor, tau: float) -> torch.Tensor:
    """The value of the one-hot ``sample`` with ReinMax's gradient in ``logits`` (last dim).

    Backward: ``2 J(pi_1)^T g - J(pi)^T g / 2``, ``pi = softmax(logits)``,
    ``pi_1 = (sample + softmax(logits / tau)) / 2``. :func:`reinmax` draws the sample and calls
    this; it is public for callers that bring their own samples (e.g. exact enumeration).
    """
    return _ReinMax.apply(logits, sample, tau)


# ------------------------------------------------------------------ the estimators' kernels
# Each kernel acts on validated logits in the working dtype with the categories last and returns
# (hard sample carrying the estimator's gradient, soft sample).


def _st(work: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(work, dim=-1)
    return straight_through(sample_categorical(work, generator), probs), probs


def _gumbel(work, generator, tau):
    perturbed = work + gumbel_noise(work, generator)
    soft = torch.softmax(perturbed / tau, dim=-1)
    return straight_through(_one_hot_argmax(perturbed.detach()), soft), soft


def _reinmax(work, generator, tau):
    hard = reinmax_surrogate(work, sample_categorical(work, generator), tau)
    return hard, torch.softmax(work, dim=-1)


def _draws(work, generator):
    """The fused sampler's random inputs for ``work`` (categories last): standard normal noise
    of its shape, then one uniform number per row, in this order from ``generator``."""
    uniform_shape = work.shape[:-1] + (1,)
    if torch.compiler.is_compiling():
        # the same draws as below (torch.randn and torch.rand fill with normal_ and uniform_),
        # written so that torch.compile also takes symbolic sizes
        contiguous = torch.contiguous_format
        noise = torch.empty_like(work, memory_format=contiguous).normal_(generator=generator)
        uniform = work.new_empty(uniform_shape).uniform_(generator=generator)
    else:  # two operations instead of five: they count at small sizes
        noise = torch.randn(work.shape, generator=generator, device=work.device,
                            dtype=work.dtype)
        uniform = torch.rand(uniform_shape, generator=generator, device=work.device,
                             dtype=work.dtype)
    return noise, uniform


def _diffusion(work, generator, n_steps, t_1, variant, reinmax_step):
    noise, uniform = _draws(work, generator)
    # ReinDGE: the trajectory's gradient plus ReinMax's step at t_1 (see fused_sample)
    variant = "reindge" if reinmax_step else variant
    return _fused_sample(work, noise, uniform, n_steps, t_1, variant)


def _redge(work, generator, n_steps, t_1):
    return _diffusion(work, generator, n_steps, t_1, "plain", False)


def _redge_cov(work, generator, n_steps, t_1):
    return _diffusion(work, generator, n_steps, t_1, "cov", False)


def _reindge(work, generator, n_steps, t_1):
    return _diffusion(work, generator, n_steps, t_1, "plain", True)


def _reindge_detach(work, generator, n_steps, t_1):
    noise, uniform = _draws(work, generator)  # ReinDGE's draws, so the values are ReinDGE's
    hard, soft = _fused_sample(work.detach(), noise, uniform, n_steps, t_1)
    hard, soft = hard.detach(), soft.detach()
    # a zero with the logits' gradient (masked -inf logits count as 0: -inf - -inf is NaN); the
    # state x_{t_1} is a constant, so the last denoiser's logits theta + c_1 x move as theta
    finite = torch.where(torch.isneginf(work), torch.zeros_like(work), work)
    delta = finite - finite.detach()
    # J(S) and ReinMax's matrix [J(S) + d d^T] / 2 are symmetric: <g, M delta> has gradient M g
    direct = _softmax_vjp(soft, delta)
    return hard + direct + _reinmax_step(soft, hard, delta), soft + direct


_KERNELS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "st": _st,
    "gumbel": _gumbel,
    "reinmax": _reinmax,
    "redge": _redge,
    "redge_cov": _redge_cov,
    "reindge": _reindge,
}


def _run(
    name: str, logits: object, knobs: dict[str, object], dim: object, generator: object,
    kernel: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Sample:
    """Validate every argument, run estimator ``name`` along ``dim``; return ``(hard, soft)``.
    ``kernel``: run this kernel instead of the registry's (with ``name``'s knobs)."""
    values = check_knobs(name, **knobs).values()  # the registry's one check
    logits = check_logits(logits, dim=dim)
    dim = dim % logits.dim()
    generator = check_generator(generator, logits.device)
    dtype = working_dtype(logits.dtype)
    work = logits if dtype == logits.dtype else logits.to(dtype)
    last = dim == logits.dim() - 1
    if not last:
        work = work.movedim(dim, -1)
    if kernel is None:
        kernel = ALL_ESTIMATORS[name].kernel  # the registry's kernel
    hard, soft = kernel(work, generator, *values)
    if not last:
        hard, soft = hard.movedim(-1, dim), soft.movedim(-1, dim)
    if hard.dtype != logits.dtype:
        hard, soft = hard.to(logits.dtype), soft.to(logits.dtype)
    return Sample(hard, soft)


def _check_hard(hard: object) -> bool:
    # torch's ``if hard:`` also takes 0 and 1; anything else is more likely a misplaced argument
    if isinstance(hard, bool):
        return hard
    if isinstance(hard, int) and hard in (0, 1):
        return bool(hard)
    raise TypeError(f"hard must be a bool, got {hard!r}")


def sample(
    name: str,
    logits: torch.Tensor,
    *,
    dim: int = -1,
    generator: torch.Generator | None = None,
    **knobs: float | int,
) -> Sample:
    """Both samples of estimator ``name`` from one draw: :class:`Sample` ``(hard, soft)``.

    ``hard`` is what ``hard=True`` returns (one-hot value, the estimator's gradient), ``soft``
    what ``hard=False`` returns, from the same random draws. Knobs by name, with the defaults of
    :data:`redge_mini.registry.KNOBS` for those not given.

    Example:
        >>> logits = torch.zeros(4, 3, requires_grad=True)
        >>> gen = torch.Generator().manual_seed(0)
        >>> hard, soft = sample("redge", logits, t_1=0.3, generator=gen)
        >>> hard.sum(-1)
        tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>)
    """
    name = check_name(name, kernel=True)
    return _run(name, logits, knobs, dim, generator)


def st(
    logits: torch.Tensor,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Straight-Through: ``H ~ Cat(pi)`` forward, the gradient of ``pi = softmax(logits)`` backward.

    ``hard=False`` returns ``pi`` itself (the soft sample).

    Example:
        >>> y = st(torch.zeros(4, 3, requires_grad=True), hard=True)
        >>> y.sum(-1)
        tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>)
    """
    out = _run("st", logits, {}, dim, generator)
    return out.hard if _check_hard(hard) else out.soft


def gumbel_softmax(
    logits: torch.Tensor,
    tau: float = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gumbel-Softmax (Concrete), straight-through when ``hard=True``.

    Accepts every call of ``torch.nn.functional.gumbel_softmax(logits, tau, hard, eps, dim)`` and
    draws the same noise from the same generator state. ``hard=True``: forward
    ``H = onehot(argmax(logits + G))`` (an exact draw from ``Cat(softmax(logits))``), backward
    through ``P = softmax((logits + G) / tau)``; ``hard=False``: ``P``. ``eps`` is unused, as in
    torch (deprecated there). Small ``tau``: little bias, large variance; large ``tau``: the
    reverse.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise TypeError(f"eps must be a finite real number, got {eps!r}")
    if eps != 1e-10:
        warnings.warn("`eps` parameter is deprecated and has no effect.", stacklevel=2)
    out = _run("gumbel", logits, {"tau": tau}, dim, generator)
    return out.hard if _check_hard(hard) else out.soft


def reinmax(
    logits: torch.Tensor,
    tau: float = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ReinMax (Liu et al., 2023): second-order accurate straight-through.

    Forward ``H ~ Cat(pi)``; backward ``2 J(pi_1)^T g - J(pi)^T g / 2`` with
    ``pi_1 = (H + softmax(logits / tau)) / 2``. ``tau >= 1`` as the ReinMax authors require. The
    soft sample (``hard=False``) is ``softmax(logits)``, as for Straight-Through.
    """
    out = _run("reinmax", logits, {"tau": tau}, dim, generator)
    return out.hard if _check_hard(hard) else out.soft


def redge(
    logits: torch.Tensor,
    n_steps: int = 5,
    t_1: float = 0.5,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ReDGE: reparameterise a categorical sample through an exact diffusion sampler.

    Draw ``x ~ N(0, I)``, run ``n_steps - 2`` deterministic DDIM moves of the closed-form
    categorical denoiser down to ``t_1``, take the soft sample ``S = D_{t_1}(x)`` and the hard
    sample ``H ~ Cat(S)``; ``hard=True`` returns ``H`` with the pathwise gradient of
    ``S(logits, noise)``, ``hard=False`` returns ``S``.

    Args:
        logits: floating tensor with ``K >= 2`` categories along ``dim`` (``-inf``: masked).
        n_steps: grid points (an int ``>= 2``); more steps make the law of ``H`` closer to
            ``softmax(logits)``. The authors suggest 3-9 (start at 5).
        t_1: stopping time in ``(0, 1]``; ``t_1 = 1`` is exactly Straight-Through, small ``t_1``
            makes ``S`` nearly one-hot. The authors suggest 0.3-0.9 (start at 0.5).
        hard: return the one-hot sample (``True``) or the soft sample (``False``, as torch).
        dim: the dimension of the categories.
        generator: source of the Gaussian noise and of the uniform of the hard draw.

    Example:
        >>> logits = torch.randn(8, 4, requires_grad=True)
        >>> y = redge(logits, 5, 0.5, hard=True, generator=torch.Generator().manual_seed(0))
        >>> (y * torch.arange(4.0)).sum().backward()   # gradients reach the logits
    """
    out = _run("redge", logits, {"n_steps": n_steps, "t_1": t_1}, dim, generator)
    return out.hard if _check_hard(hard) else out.soft


def redge_cov(
    logits: torch.Tensor,
    n_steps: int = 5,
    t_1: float = 0.5,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ReDGE-cov: ReDGE with reference noise ``N(pi, diag(max(pi (1 - pi), 0.1)))``.

    The reference Gaussian matches the first two moments of ``Cat(pi)`` (floored), so the sampler
    starts closer to the data; ``pi`` and the variance are differentiated too. Arguments as
    :func:`redge`.
    """
    out = _run("redge_cov", logits, {"n_steps": n_steps, "t_1": t_1}, dim, generator)
    return out.hard if _check_hard(hard) else out.soft


def reindge(
    logits: torch.Tensor,
    n_steps: int = 5,
    t_1: float = 0.5,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ReinDGE: ReDGE's trajectory gradient plus a ReinMax correction at ``t_1``.

    Forward as :func:`redge`. Backward: the gradient through the trajectory (``logits`` held fixed
    in the last denoiser) plus ``[J(S)^T g + (g . (H - S)) (H - S)] / 2``, the ReinMax (``tau = 1``)
    estimator of the conditional categorical ``Cat(S)``. On CPU (float32/float64) this is part of
    the C++ sampler's backward pass; elsewhere a zero-valued surrogate adds it, with no tensor
    hooks either way, so repeated backward passes and other paths to the logits are handled by
    autograd. The
    soft sample (``hard=False``) is ReDGE's ``S`` with its full pathwise gradient. Arguments as
    :func:`redge`.
    """
    out = _run("reindge", logits, {"n_steps": n_steps, "t_1": t_1}, dim, generator)
    return out.hard if _check_hard(hard) else out.soft


def reindge_detach(
    logits: torch.Tensor,
    n_steps: int = 5,
    t_1: float = 0.5,
    hard: bool = False,
    dim: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ReinDGE with the trajectory's gradient detached: an ablation, not a registered estimator.

    Forward exactly as :func:`reindge` (the same draws from ``generator``: the same ``H`` and
    ``S``). Backward: the DDIM states up to ``t_1`` are constants, so only the last denoiser's
    direct dependence on ``logits`` is left, and the gradient is ReinMax's (``tau = 1``) at the
    logits ``logits + c_1 x_{t_1}`` of the conditional categorical ``Cat(S)``:
    ``[J(S)^T g + (g . d) d] / 2``, ``d = H - S``, with ``c_1 = alpha_1 / sigma_1^2``. It is
    ReinDGE's gradient minus the trajectory's part. The soft sample (``hard=False``) is ``S``
    with the gradient ``J(S)^T g`` of the last denoiser alone. Knobs and arguments as
    :func:`redge` (checked by the registry's row of ``reindge``). It is kept out of
    :data:`redge_mini.registry.ESTIMATORS`, which every experiment iterates over;
    :func:`redge_mini.book.ablations.registered` adds it for the span of an ablation.
    """
    out = _run("reindge", logits, {"n_steps": n_steps, "t_1": t_1}, dim, generator,
               kernel=_reindge_detach)
    return out.hard if _check_hard(hard) else out.soft


# every function and its kernel, bound to the registry's row of the same name
for _name, _fn in (("st", st), ("gumbel", gumbel_softmax), ("reinmax", reinmax), ("redge", redge),
                   ("redge_cov", redge_cov), ("reindge", reindge)):
    _bind(_name, fn=_fn, kernel=_KERNELS[_name])
del _name, _fn
