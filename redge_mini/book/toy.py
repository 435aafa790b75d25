"""The book's running toy problems: small objectives whose exact gradient can be enumerated.

Chapters 1–5 measure every estimator on the same family of problems. A problem has ``L``
independent categorical variables with ``K`` classes, logits ``θ`` of shape ``(L, K)`` and an
objective ``f`` on one-hot configurations, through one linear score

``s(x) = ⟨A, x⟩ / sqrt(L) = (1/sqrt(L)) Σ_l A[l, x_l]``     (``A`` has shape ``(L, K)``)

and a target ``b``:

===============  ======================  ===================================================
kind             ``f(x)``                what it teaches
===============  ======================  ===================================================
``"smooth"``     ``(s(x) − b)²``         a quadratic: pathwise estimators see a useful
                                         gradient, but the linearisation is not exact
``"nonsmooth"``  ``|s(x) − b|``          piecewise linear with a kink at ``s = b``: the
                                         gradient at a one-hot point says nothing about the
                                         other side of the kink
``"step"``       ``1[s(x) > b]``         an indicator: its gradient is zero almost
                                         everywhere, so every pathwise estimator returns 0
                                         while the score-function estimator still works
``"logcosh"``    ``log cosh(s(x) − b)``  smooth but not quadratic (quadratic near ``b``,
                                         linear far from it): the smooth counterpart of
                                         ``"nonsmooth"``, where no estimator is exact
===============  ======================  ===================================================

Each ``f`` is defined on all of ``R^{L×K}`` (soft samples too), maps ``(..., L, K)`` to ``(...)``
(in particular ``(B, L, K)`` to ``(B,)``, the convention of :mod:`redge_mini.exact`) and is
differentiable where the formula is. ``A ~ N(0, 1)`` and ``θ ~ N(0, logit_scale²)`` entrywise
come from a generator seeded with ``seed``; by default ``b = E_{π_θ}[s(X)] + SD_{π_θ}[s(X)] / 2``
(mean and standard deviation of the score under ``π_θ``, in closed form), which puts the kink (or
step) where the probability mass is, so that ``f`` is not one linear function on all the likely
configurations, and keeps it off-centre, so that no estimator is exact by symmetry.

:func:`reinforce_gradients` draws independent REINFORCE (leave-one-out) gradient estimates, the
score-function counterpart of :func:`redge_mini.exact.per_sample_gradients`.
:func:`hard_sample_gradient_moments` computes the mean and the variance of the Straight-Through and
ReinMax estimators exactly, by enumeration: their only randomness is the hard sample
``H ~ Cat(π)``, so both moments are finite sums over the ``K**L`` configurations.
:func:`reinforce_gradient_moments` does the same for REINFORCE with ``S`` samples, with or without
the leave-one-out baseline: RLOO is a U-statistic of order two, so its variance is a finite sum
too. :func:`random_toy_problems` draws a suite of problems whose size ``(L, K)`` and logit
sharpness vary from problem to problem, and :func:`stacked_gradients` draws a pathwise
estimator's gradients for many problems of the same ``K`` in one call.

Example:
    >>> from redge_mini.exact import exact_gradient
    >>> problem = make_toy_problem(3, 4, kind="smooth", seed=0)
    >>> exact_gradient(problem.f, problem.logits).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..estimators import reinmax_surrogate, straight_through
from ..exact import config_log_probs, enumerate_onehot, exact_expectation, exact_gradient
from ..score_function import reinforce_loss
from ..validation import check_generator, check_int, check_logits, check_real, check_tau

__all__ = [
    "KINDS",
    "GradientMoments",
    "HARD_SAMPLE_ESTIMATORS",
    "ToyObjective",
    "ToyProblem",
    "hard_sample_gradient_moments",
    "make_toy_problem",
    "random_toy_problems",
    "reinforce_gradient_moments",
    "reinforce_gradients",
    "stacked_gradients",
]

KINDS = ("smooth", "nonsmooth", "step", "logcosh")
"""The accepted values of ``make_toy_problem(kind=...)``."""

_FORMULAS = {
    "smooth": "(s(x) - b)^2",
    "nonsmooth": "|s(x) - b|",
    "step": "1[s(x) > b]",
    "logcosh": "log cosh(s(x) - b)",
}


class ToyObjective:
    """``f(x) = φ(s(x) − b)``, ``s(x) = ⟨A, x⟩ / sqrt(L)``, φ(u) = ``u²``, ``|u|``, ``1[u > 0]``
    or ``log cosh u``.

    Callable on tensors ``(..., L, K)`` (one-hot or soft), returning ``(...)`` in the input's
    dtype. Use :func:`make_toy_problem` rather than building one directly.
    """

    def __init__(self, weights: torch.Tensor, target: float, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(weights, torch.Tensor) or weights.dim() != 2:
            raise ValueError("weights must be a tensor of shape (L, K)")
        self.weights = weights.detach()
        self.target = check_real(target, "target")
        self.kind = kind

    @property
    def shape(self) -> tuple[int, int]:
        """``(L, K)``, the shape of one configuration."""
        return tuple(self.weights.shape)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``s(x) = ⟨A, x⟩ / sqrt(L)`` for ``x`` ``(..., L, K)``; returns ``(...)``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        L, K = self.shape
        if x.dim() < 2 or tuple(x.shape[-2:]) != (L, K):
            raise ValueError(
                f"x must have shape (..., L, K) = (..., {L}, {K}), "
                f"got {tuple(x.shape)}"
            )
        weights = self.weights.to(device=x.device, dtype=x.dtype)
        return (x * weights).sum(dim=(-2, -1)) / math.sqrt(L)

    def profile(self, score: torch.Tensor) -> torch.Tensor:
        """``f`` as a function of the score: ``φ(score − b)``, elementwise."""
        u = score - self.target
        if self.kind == "smooth":
            return u.square()
        if self.kind == "nonsmooth":
            return u.abs()
        if self.kind == "logcosh":  # log cosh u = |u| + log1p(exp(-2|u|)) - log 2, stable
            return u.abs() + torch.log1p(torch.exp(-2.0 * u.abs())) - math.log(2.0)
        # the step has zero gradient, but stays attached to the autograd graph
        return (u > 0).to(u.dtype) + 0.0 * u

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.profile(self.score(x))

    def __repr__(self) -> str:
        L, K = self.shape
        return f"ToyObjective(kind={self.kind!r}, L={L}, K={K}, target={self.target:.4f})"


@dataclass(frozen=True)
class ToyProblem:
    """A running toy problem: an objective ``f``, the logits ``θ`` it is studied at, a description.

    Attributes:
        f: the objective, ``(..., L, K) -> (...)`` (a :class:`ToyObjective`).
        logits: ``(L, K)`` float64 tensor (no gradient); ``π = softmax(logits)``.
        description: one line for captions and prose,
            e.g. ``"smooth f(x) = (s(x) - b)^2, L=3, K=4"``.
        kind: one of :data:`KINDS`.
        seed: the seed the problem was generated from.
        logit_scale: the standard deviation the logits were drawn with (their sharpness).
    """

    f: ToyObjective
    logits: torch.Tensor
    description: str
    kind: str
    seed: int
    logit_scale: float = 1.0

    @property
    def L(self) -> int:
        """Number of categorical variables."""
        return int(self.logits.shape[0])

    @property
    def K(self) -> int:
        """Number of classes per variable."""
        return int(self.logits.shape[1])

    @property
    def probs(self) -> torch.Tensor:
        """``π = softmax(logits)``, shape ``(L, K)``."""
        return torch.softmax(self.logits, dim=-1)

    def exact_value(self) -> float:
        """``F(θ) = E_{X ~ π}[f(X)]`` by enumeration of the ``K**L`` configurations."""
        return float(exact_expectation(self.f, self.logits))

    def exact_gradient(self) -> torch.Tensor:
        """``∇_θ F(θ)`` by enumeration, shape ``(L, K)``."""
        return exact_gradient(self.f, self.logits)


def make_toy_problem(
    L: int,
    K: int,
    *,
    kind: str = "smooth",
    seed: int = 0,
    logit_scale: float = 1.0,
    target: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> ToyProblem:
    """The running toy problem with ``L`` variables of ``K`` classes, deterministic given ``seed``.

    Parameters
    ----------
    L, K:
        Number of variables (``>= 1``) and classes per variable (``>= 2``).
    kind:
        ``"smooth"`` (``(s − b)²``), ``"nonsmooth"`` (``|s − b|``), ``"step"`` (``1[s > b]``) or
        ``"logcosh"`` (``log cosh(s − b)``); see the module docstring.
    seed:
        Seeds the draw of ``A`` and ``θ`` (a fresh CPU generator; the global RNG is untouched).
        Problems of the same ``seed``, ``L`` and ``K`` share ``A`` and ``θ`` whatever the kind.
    logit_scale:
        Standard deviation of the logits (``> 0``); larger values give peakier ``π``.
    target:
        ``b``; by default ``E_π[s(X)] + SD_π[s(X)] / 2`` where ``E_π[s] = Σ_l π_l · A_l / sqrt(L)``
        and ``Var_π[s] = Σ_l Var_{π_l}(A[l, X_l]) / L`` (the variables are independent).
    dtype:
        Floating dtype of ``A`` and of the logits (default float64, so exact references are
        accurate).

    Returns
    -------
    ToyProblem
    """
    L = check_int(L, "L", 1)
    K = check_int(K, "K", 2)
    seed = check_int(seed, "seed", 0)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    logit_scale = check_real(logit_scale, "logit_scale", minimum=0.0, strict=True)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(L, K, generator=generator, dtype=torch.float64)
    logits = logit_scale * torch.randn(L, K, generator=generator, dtype=torch.float64)
    if target is None:
        probs = torch.softmax(logits, dim=-1)
        mean_l = (probs * weights).sum(-1)
        var_l = (probs * weights.square()).sum(-1) - mean_l.square()
        target = float(mean_l.sum() / math.sqrt(L) + 0.5 * (var_l.sum() / L).sqrt())
    f = ToyObjective(weights.to(dtype), target, kind)
    description = f"{kind} f(x) = {_FORMULAS[kind]}, L={L}, K={K}"
    return ToyProblem(f=f, logits=logits.to(dtype), description=description, kind=kind, seed=seed,
                      logit_scale=logit_scale)


SUITE_L = (2, 3, 4)
"""Default choices of ``L`` in :func:`random_toy_problems`."""
SUITE_K = (2, 4, 8)
"""Default choices of ``K`` in :func:`random_toy_problems`."""
SUITE_LOGIT_SCALES = (0.5, 1.0, 2.0)
"""Default choices of the logit scale (flat, moderate, sharp ``π``) in
:func:`random_toy_problems`."""


def _choices(values: object, name: str, minimum: float) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a non-empty sequence of choices, got {values!r}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must hold at least one choice")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= minimum:
            raise ValueError(f"every choice of {name} must be a number >= {minimum}, got {v!r}")
    return values


def random_toy_problems(
    n: int,
    *,
    kind: str = "smooth",
    seed: int = 0,
    L: tuple[int, ...] = SUITE_L,
    K: tuple[int, ...] = SUITE_K,
    logit_scale: tuple[float, ...] = SUITE_LOGIT_SCALES,
) -> list[ToyProblem]:
    """``n`` toy problems whose size and sharpness vary from problem to problem.

    Problem ``i`` draws its number of variables, of classes and its logit scale uniformly and
    independently from the choices ``L``, ``K`` and ``logit_scale`` (a CPU generator seeded with
    ``seed``), then is ``make_toy_problem(L_i, K_i, kind=kind, seed=seed + i,
    logit_scale=scale_i)``. Suites of the same ``n`` and ``seed`` hold the same shapes, weights,
    logits and targets whatever the ``kind``, so one suite can be scored under several losses.

    Parameters
    ----------
    n:
        Number of problems (``>= 1``).
    kind:
        The loss of every problem, one of :data:`KINDS`.
    seed:
        ``>= 0``; problem ``i`` uses ``seed + i`` for its weights and logits.
    L, K, logit_scale:
        Non-empty sequences of choices (``L >= 1``, ``K >= 2`` integers, scales ``> 0``).

    Returns
    -------
    list[ToyProblem]
        Each with its ``logit_scale`` recorded.

    Example:
        >>> suite = random_toy_problems(5, kind="logcosh", seed=1)
        >>> [(p.L, p.K) for p in suite] == [(p.L, p.K) for p in random_toy_problems(5, seed=1)]
        True
    """
    n = check_int(n, "n", 1)
    seed = check_int(seed, "seed", 0)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    sizes = {"L": _choices(L, "L", 1), "K": _choices(K, "K", 2)}
    for name, values in sizes.items():
        if any(int(v) != v for v in values):
            raise ValueError(f"every choice of {name} must be an integer, got {values}")
    scales = _choices(logit_scale, "logit_scale", 0.0)
    if min(scales) <= 0:
        raise ValueError(f"every choice of logit_scale must be > 0, got {scales}")
    generator = torch.Generator().manual_seed(seed)
    picks = [torch.randint(len(c), (n,), generator=generator).tolist()
             for c in (sizes["L"], sizes["K"], scales)]
    return [
        make_toy_problem(int(sizes["L"][a]), int(sizes["K"][b]), kind=kind, seed=seed + i,
                         logit_scale=float(scales[c]))
        for i, (a, b, c) in enumerate(zip(*picks, strict=True))
    ]


def reinforce_gradients(
    f: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    n: int,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
    baseline: str | None = "loo",
) -> torch.Tensor:
    """``n`` independent REINFORCE estimates of ``∇_θ E_{X ~ softmax(θ)}[f(X)]``.

    Each estimate uses ``n_samples`` samples. The score-function counterpart of
    :func:`redge_mini.exact.per_sample_gradients`: the logits are copied ``n`` times and
    :func:`redge_mini.score_function.reinforce_loss` draws ``n_samples`` samples per copy, so
    one backward pass gives all ``n`` estimates (ready for
    :func:`redge_mini.exact.gradient_diagnostics`).

    Parameters
    ----------
    f:
        Maps ``(B, L, K)`` one-hot samples to ``(B,)``, each value depending on its
        own sample.
    logits:
        ``(L, K)``.
    n:
        Number of independent estimates (``>= 1``).
    n_samples:
        Samples per estimate (``>= 2`` with the leave-one-out baseline).
    generator:
        Source of the draws (``None``: the global RNG).
    baseline:
        ``"loo"`` (RLOO) or ``None`` (plain REINFORCE), as in
        ``reinforce_loss``.

    Returns
    -------
    torch.Tensor
        ``(n, L, K)``, detached, in the logits' dtype.
    """
    logits = check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (L, K), got shape {tuple(logits.shape)}"
        )
    n = check_int(n, "n", 1)
    check_generator(generator, logits.device)
    L, K = logits.shape
    copies = logits.detach().unsqueeze(0).repeat(n, 1, 1).requires_grad_(True)

    def batched(x: torch.Tensor) -> torch.Tensor:
        # (S, n, L, K) -> (S, n): one problem per copy of the logits.
        return f(x.reshape(-1, L, K)).reshape(x.shape[0], n)

    with torch.enable_grad():
        loss = reinforce_loss(
            batched, copies, n_samples, generator=generator, baseline=baseline
        )
        (grad,) = torch.autograd.grad(loss.sum(), copies)
    return grad


class GradientMoments(NamedTuple):
    """Exact mean and variance of a gradient estimator ``ĝ``."""

    mean: torch.Tensor
    """``E[ĝ]``, shape ``(L, K)``."""
    variance: float
    """``E‖ĝ − E[ĝ]‖²`` (the trace of the covariance)."""


HARD_SAMPLE_ESTIMATORS = ("st", "reinmax")
"""Estimators whose only randomness is ``H ~ Cat(π)`` (accepted by
:func:`hard_sample_gradient_moments`)."""


def hard_sample_gradient_moments(
    name: str,
    f: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    *,
    tau: float = 1.0,
    max_configs: int = 2**16,
) -> GradientMoments:
    """Exact mean and variance of the ST or ReinMax gradient of ``E[f(X)]``, by enumeration.

    Straight-Through and ReinMax draw ``H ~ Cat(softmax(logits))`` and then compute a
    deterministic surrogate gradient ``ĝ(H)``. So ``E[ĝ] = Σ_x π(x) ĝ(x)`` and
    ``E‖ĝ − E ĝ‖² = Σ_x π(x) ‖ĝ(x) − E ĝ‖²`` are finite sums, with no Monte-Carlo error. ``ĝ(x)``
    is obtained by backpropagating ``f`` through the package's own surrogates
    (:func:`redge_mini.estimators.straight_through` for ST, ReinMax's autograd function) with the
    hard sample set to ``x``, so this checks the implementation, not a re-derivation.

    Parameters
    ----------
    name:
        ``"st"`` or ``"reinmax"``.
    f:
        Maps ``(B, L, K)`` to ``(B,)``; differentiable (the pathwise estimators need ``∇f``).
    logits:
        ``(L, K)``.
    tau:
        ReinMax's temperature (``>= 1``); ignored by ST.
    max_configs:
        Refuse (``ValueError``) when ``K**L`` exceeds this (all configurations are
        backpropagated at once).

    Returns
    -------
    GradientMoments
        ``mean`` (``(L, K)``, detached, in the logits' dtype) and ``variance`` (a float).
    """
    if name not in HARD_SAMPLE_ESTIMATORS:
        raise ValueError(f"name must be one of {HARD_SAMPLE_ESTIMATORS}, got {name!r}")
    logits = check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (L, K), got shape {tuple(logits.shape)}")
    tau = check_tau(tau, minimum=1.0)
    L, K = logits.shape
    configs = enumerate_onehot(
        L, K, dtype=logits.dtype, device=logits.device, max_configs=max_configs
    )
    n = configs.shape[0]
    weights = config_log_probs(configs, torch.log_softmax(logits.detach(), -1)).exp()
    copies = logits.detach().unsqueeze(0).expand(n, L, K).clone().requires_grad_(True)
    with torch.enable_grad():
        if name == "st":
            surrogate = straight_through(configs, torch.softmax(copies, dim=-1))
        else:
            surrogate = reinmax_surrogate(copies, configs, tau)
        (grads,) = torch.autograd.grad(f(surrogate).sum(), copies)
    mean = torch.einsum("n,nlk->lk", weights, grads)
    variance = float(torch.einsum("n,n->", weights, (grads - mean).square().sum((-2, -1))))
    return GradientMoments(mean=mean, variance=variance)


def reinforce_gradient_moments(
    f: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    n_samples: int,
    *,
    baseline: str | None = "loo",
    max_configs: int = 2**16,
) -> GradientMoments:
    """Exact mean and variance of one REINFORCE estimate with ``n_samples`` samples.

    With the score ``u(x) = ∇_θ log π_θ(x)`` (for one-hot ``x``: ``x − π`` row by row), ``f``
    centred at ``F = E f(X)`` (``c(x) = f(x) − F``; neither estimator changes when a constant is
    added to ``f``) and ``g = ∇F = E[c(X) u(X)]``:

    * plain REINFORCE (``baseline=None``) averages ``S`` independent terms ``f(X_s) u(X_s)``,
      so its variance is ``(E[f² ‖u‖²] − ‖g‖²) / S``;
    * RLOO (``baseline="loo"``) equals ``(1 / (S (S − 1))) Σ_{s≠r} (f(X_s) − f(X_r)) u(X_s)``, the
      U-statistic of order two with kernel ``h(x, y) = ½ (f(x) − f(y)) (u(x) − u(y))``. Its
      variance is ``(4 (S − 2) ζ₁ + 2 ζ₂) / (S (S − 1))`` with ``ζ₁ = Var E[h(X, Y) | X] =
      ¼ (E[c² ‖u‖²] − ‖g‖²)`` and ``ζ₂ = Var h(X, Y) = ½ (E[c² ‖u‖²] + E[c²] E‖u‖²)``.

    Every expectation is a sum over the ``K**L`` configurations: no Monte-Carlo error.

    Parameters
    ----------
    f:
        Maps ``(B, L, K)`` one-hot samples to ``(B,)``.
    logits:
        ``(L, K)``.
    n_samples:
        ``S``, samples per estimate (``>= 2`` with the leave-one-out baseline).
    baseline:
        ``"loo"`` or ``None``, as in :func:`redge_mini.score_function.reinforce_loss`.
    max_configs:
        Refuse (``ValueError``) when ``K**L`` exceeds this.

    Returns
    -------
    GradientMoments
        ``mean`` is ``∇F`` (both estimators are unbiased), ``variance`` ``E‖ĝ − ∇F‖²``.
    """
    if baseline not in ("loo", None):
        raise ValueError(f"baseline must be 'loo' or None, got {baseline!r}")
    logits = check_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (L, K), got shape {tuple(logits.shape)}")
    n_samples = check_int(n_samples, "n_samples", 2 if baseline == "loo" else 1)
    L, K = logits.shape
    configs = enumerate_onehot(
        L, K, dtype=torch.float64, device=logits.device, max_configs=max_configs
    )
    log_probs = torch.log_softmax(logits.detach().double(), -1)
    weights = config_log_probs(configs, log_probs).exp()
    with torch.no_grad():
        values = f(configs.to(logits.dtype)).double()
    if values.shape != weights.shape:
        raise ValueError(f"f must map (B, L, K) to (B,), got shape {tuple(values.shape)}")
    scores = (configs - log_probs.exp()).reshape(configs.shape[0], -1)
    centred = values - weights @ values
    grad = (weights * centred) @ scores
    norm2 = (scores.square()).sum(-1)
    second = float(weights @ (centred.square() * norm2))
    g2 = float(grad.square().sum())
    S = n_samples
    if baseline is None:
        plain = float(weights @ (values.square() * norm2))
        variance = (plain - g2) / S
    else:
        zeta1 = 0.25 * (second - g2)
        zeta2 = 0.5 * (second + float(weights @ centred.square()) * float(weights @ norm2))
        variance = (4 * (S - 2) * zeta1 + 2 * zeta2) / (S * (S - 1))
    return GradientMoments(mean=grad.reshape(L, K).to(logits.dtype), variance=max(variance, 0.0))


def stacked_gradients(
    sampler: Callable[..., torch.Tensor],
    problems: list[ToyProblem],
    n: int,
    *,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """``n`` gradient draws of a pathwise estimator for each of several problems, in one pass.

    The problems must share ``K``. Their logits are stacked along the variable axis into one
    ``(Σ L_i, K)`` problem whose objective is ``Σ_i f_i(x_i)`` (``x_i`` the rows of problem
    ``i``). A pathwise estimator of the registry samples every row independently given its own
    logits and noise, and ``f_i`` sees only its rows, so the gradient of draw ``j`` with respect
    to the rows of problem ``i`` is a draw of the estimator's gradient of ``E f_i`` alone:
    :func:`redge_mini.exact.per_sample_gradients` on the stacked problem gives independent draws
    for every problem at the cost of one call.

    Parameters
    ----------
    sampler:
        ``sampler(logits, generator=...) -> sample``, acting on the last dimension row by row
        (e.g. ``registry.make_estimator(name, **knobs)``).
    problems:
        A non-empty list of :class:`ToyProblem` with the same ``K`` and dtype.
    n:
        Draws per problem (``>= 1``).
    generator:
        Source of every random draw (``None``: the global RNG).

    Returns
    -------
    list[torch.Tensor]
        One ``(n, L_i, K)`` tensor per problem, in order.
    """
    from ..exact import per_sample_gradients

    problems = list(problems)
    if not problems or not all(isinstance(p, ToyProblem) for p in problems):
        raise TypeError("problems must be a non-empty list of ToyProblem")
    if len({p.K for p in problems}) != 1:
        raise ValueError(f"problems must share K, got K = {sorted({p.K for p in problems})}")
    if len({p.logits.dtype for p in problems}) != 1:
        raise ValueError("problems must share the dtype of their logits")
    sizes = [p.L for p in problems]
    logits = torch.cat([p.logits for p in problems])

    def total(x: torch.Tensor) -> torch.Tensor:
        blocks = torch.split(x, sizes, dim=-2)
        return sum(p.f(block) for p, block in zip(problems, blocks, strict=True))

    draws = per_sample_gradients(sampler, total, logits, n, generator=generator)
    return list(torch.split(draws, sizes, dim=-2))
