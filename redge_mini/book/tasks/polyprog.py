"""Polynomial programming: the toy optimisation problem of the ReinMax paper, used by ReDGE.

``L`` binary variables ``x_l`` (stored one-hot with ``K = 2``; the value of variable ``l`` is
``x[l, 1]``) are drawn independently with ``q_l = softmax(logits_l)[1]``; the goal is

``min_logits  F(logits) = E[ (1/L) sum_l |x_l - c|^p ]``.

Because the objective is separable and ``x_l`` only takes the values 0 and 1,

``F = (1/L) sum_l [(1 - q_l) c^p + q_l (1 - c)^p]``,

a closed form (:func:`exact_objective`). With ``c < 1/2`` the optimum is ``c^p`` (every variable
at 0), so the *optimality gap* ``F - c^p = ((1 - c)^p - c^p) * mean_l q_l`` measures progress
exactly, with no Monte-Carlo error (:func:`optimality_gap`).

:func:`optimise` runs Adam on the logits with any estimator of :mod:`redge_mini.registry` (or
``"reinforce"``, REINFORCE with a leave-one-out baseline) for several values of the estimator's
knob, several exponents ``p`` and several independent replicate runs **at once**: all of them are
slices of one logits tensor, and since Adam acts elementwise and the summed loss separates, each
slice follows exactly the trajectory it would follow alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ...registry import ALL_ESTIMATORS, check_knobs, get_spec, make_loss
from ...validation import check_int
from . import StopCallback, TrainingInterrupted

__all__ = [
    "PolyProgConfig",
    "PolyProgRun",
    "Problem",
    "exact_objective",
    "objective",
    "optimality_gap",
    "optimise",
    "optimise_problems",
    "optimum",
    "st_stationary_prob",
]

ESTIMATOR_NAMES = tuple(ALL_ESTIMATORS)
"""Every estimator :func:`optimise` accepts (``"reinforce"`` is RLOO over the batch)."""


def _check_c(c: object) -> float:
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"c must be a real number, got {type(c).__name__}")
    c = float(c)
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"c must lie in [0, 1], got {c}")
    return c


def _check_power(p: object, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(p).__name__}")
    p = float(p)
    if not (math.isfinite(p) and p >= 1.0):
        raise ValueError(f"{name} must be a finite number >= 1 (so |x - c|^p is "
                         f"differentiable at the soft samples), got {p}")
    return p


def objective(x: torch.Tensor, c: float, p: float | torch.Tensor) -> torch.Tensor:
    """``(1/L) sum_l |x[..., l, 1] - c|^p`` for one-hot (or soft) ``x`` of shape ``(..., L, 2)``.

    ``p`` is a number or a tensor broadcastable to ``x[..., 0, 1]`` (one exponent per problem).
    Differentiable in ``x``; returns shape ``x.shape[:-2]``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != 2:
        raise ValueError("x must be a tensor of shape (..., L, 2)")
    c = _check_c(c)
    if isinstance(p, torch.Tensor):
        p = p.unsqueeze(-1)
    else:
        p = _check_power(p)
    return (x[..., 1] - c).abs().pow(p).mean(dim=-1)


def exact_objective(logits: torch.Tensor, c: float, p: float | torch.Tensor) -> torch.Tensor:
    """``E[objective(X)]`` under ``X_l ~ Cat(softmax(logits_l))``, in closed form.

    ``logits`` has shape ``(..., L, 2)``; ``p`` as in :func:`objective`. Returns ``(...)``.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or logits.shape[-1] != 2:
        raise ValueError("logits must be a tensor of shape (..., L, 2)")
    c = _check_c(c)
    if not isinstance(p, torch.Tensor):
        p = torch.tensor(_check_power(p), dtype=logits.dtype, device=logits.device)
    q = torch.softmax(logits, dim=-1)[..., 1].mean(dim=-1)
    return (1.0 - q) * c**p + q * (1.0 - c) ** p


def optimum(c: float, p: float) -> float:
    """The minimum of the objective over all configurations, ``min(c, 1 - c)^p``."""
    c, p = _check_c(c), _check_power(p)
    return min(c, 1.0 - c) ** p


def optimality_gap(logits: torch.Tensor, c: float, p: float | torch.Tensor) -> torch.Tensor:
    """``exact_objective - optimum``, computed without cancellation.

    For ``c <= 1/2`` it is ``((1 - c)^p - c^p) mean_l q_l``: exact even when the gap is far below
    the float32 resolution of the objective itself.
    """
    c = _check_c(c)
    if c > 0.5:
        raise ValueError(f"optimality_gap assumes c <= 1/2 (optimum at x = 0), got c={c}")
    if not isinstance(p, torch.Tensor):
        p = torch.tensor(_check_power(p), dtype=logits.dtype, device=logits.device)
    q = torch.softmax(logits, dim=-1)[..., 1].mean(dim=-1)
    return q * ((1.0 - c) ** p - c**p)


def st_stationary_prob(c: float, p: float) -> float:
    """The probability ``q*`` at which Straight-Through's expected gradient vanishes.

    With ``g(x) = d/dx |x - c|^p`` Straight-Through's expected update of a variable's logit is
    proportional to ``q (1 - q) E[g(x)]`` and ``E[g(x)] = p[q (1 - c)^(p-1) - (1 - q) c^(p-1)]``,
    which changes sign at ``q* = c^(p-1) / (c^(p-1) + (1 - c)^(p-1))``. For ``c < 1/2`` this
    ``q*`` is far from the optimum ``q = 0``: Straight-Through stalls there.
    """
    c, p = _check_c(c), _check_power(p)
    a, b = c ** (p - 1.0), (1.0 - c) ** (p - 1.0)
    return a / (a + b)


@dataclass(frozen=True)
class PolyProgConfig:
    """One polynomial-programming protocol.

    Attributes:
        n_vars: number ``L`` of binary variables.
        c: the target in ``|x - c|^p`` (``0 <= c <= 1/2``).
        powers: exponents ``p`` optimised side by side.
        n_samples: Monte-Carlo samples per step (a batch of independent draws of all ``L``).
        n_iters: Adam steps.
        lr: Adam learning rate.
        n_runs: independent replicate runs per (knob value, ``p``).
        record_every: record the optimality gap every this many steps (and at the last one).
    """

    n_vars: int = 128
    c: float = 0.45
    powers: tuple[float, ...] = (1.5, 2.0, 3.0)
    n_samples: int = 256
    n_iters: int = 1000
    lr: float = 0.05
    n_runs: int = 8
    record_every: int = 10

    def __post_init__(self) -> None:
        for name in ("n_vars", "n_samples", "n_iters", "n_runs", "record_every"):
            check_int(getattr(self, name), name, 1)
        c = _check_c(self.c)
        if c > 0.5:
            raise ValueError(f"c must be <= 1/2 (the optimum is then all zeros), got {c}")
        if not isinstance(self.powers, tuple) or not self.powers:
            raise TypeError("powers must be a non-empty tuple of numbers")
        for p in self.powers:
            _check_power(p, "powers")
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not (
            math.isfinite(self.lr) and self.lr > 0
        ):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")


@dataclass(frozen=True)
class PolyProgRun:
    """The outcome of :func:`optimise`.

    Attributes:
        estimator: estimator name.
        knob_values: the knob settings, one per leading index of the tensors below.
        powers: the exponents, one per second index.
        steps: ``(T,)`` Adam step counts at which the gap was recorded (0 = initial logits).
        gaps: ``(G, P, R, T)`` optimality gaps (knob value, power, run, record).
        final_probs: ``(G, P, R)`` mean of ``q_l`` over the variables after the last step.
    """

    estimator: str
    knob_values: tuple[dict[str, float | int], ...]
    powers: tuple[float, ...]
    steps: torch.Tensor
    gaps: torch.Tensor
    final_probs: torch.Tensor


def _check_estimator(estimator: object) -> str:
    if not isinstance(estimator, str):
        raise TypeError(f"estimator must be a str, got {type(estimator).__name__}")
    if estimator not in ALL_ESTIMATORS:  # the live registry: redge_mini.register's too
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {list(ALL_ESTIMATORS)}")
    return estimator


def normalise_grid(
    estimator: str, knob_values: Sequence[dict[str, float | int]] | None
) -> tuple[dict[str, float | int], ...]:
    """Validate a list of knob settings for ``estimator`` (``None``: the defaults only).

    An entry may also set ``lr``, the Adam learning rate of that setting (a positive number);
    it is kept as given and is not filled in when absent.
    """
    estimator = _check_estimator(estimator)
    if knob_values is None:
        knob_values = [{}]
    if isinstance(knob_values, dict) or not isinstance(knob_values, Sequence) or not knob_values:
        raise TypeError("knob_values must be a non-empty list of dicts (one knob setting each)")
    out = []
    for knobs in knob_values:
        if not isinstance(knobs, dict):
            raise TypeError(f"every entry of knob_values must be a dict, got {knobs!r}")
        knobs = dict(knobs)
        lr = knobs.pop("lr", None)
        checked = check_knobs(estimator, **knobs)
        if lr is not None:
            if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (
                    math.isfinite(lr) and lr > 0):
                raise ValueError(f"lr must be a positive finite number, got {lr!r}")
            checked["lr"] = float(lr)
        out.append(checked)
    return tuple(out)


@dataclass(frozen=True)
class Problem:
    """One series of :func:`optimise_problems`: an estimator setting (knobs, ``lr`` included)
    on the exponent ``p``; ``config.n_runs`` replicate runs of it are optimised."""

    knobs: dict[str, float | int]
    p: float


def _adam_step(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
               lr: torch.Tensor, step: int, betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8) -> None:
    """One step of Adam (the update of :class:`torch.optim.Adam` with its defaults), in place,
    with ``lr`` a tensor broadcast against ``param`` (one learning rate per problem)."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v / (1 - b2**step)).sqrt_().add_(eps)
    param.sub_(lr * (m / (1 - b1**step)) / denom)


def optimise_problems(
    estimator: str,
    problems: Sequence[Problem],
    config: PolyProgConfig | None = None,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    stop: StopCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise the objective for every problem, ``config.n_runs`` replicate runs each, at once.

    The logits of all problems form one tensor ``(N, R, L, 2)`` starting at 0. At each step,
    problems with the same knobs (apart from ``lr``) are one contiguous slice and one call of
    the estimator's surrogate loss (``config.n_samples`` draws per run, the Monte-Carlo mean of
    :func:`objective` at each problem's ``p``); Adam then updates every logit with its own
    problem's learning rate (default ``config.lr``). Adam acts elementwise and the summed loss
    separates, so each run follows the trajectory it would follow alone given its random
    draws, which all come from one generator seeded with ``seed``.

    Returns ``(steps (T,), gaps (N, R, T), final_probs (N, R))`` on the CPU.
    """
    estimator = _check_estimator(estimator)
    config = PolyProgConfig() if config is None else config
    if not isinstance(config, PolyProgConfig):
        raise TypeError(f"config must be a PolyProgConfig, got {type(config).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(problems, Problem) or not isinstance(problems, Sequence) or not problems:
        raise TypeError("problems must be a non-empty list of Problem")
    grid = normalise_grid(estimator, [dict(pr.knobs) for pr in problems])
    powers_list = [_check_power(pr.p, "p") for pr in problems]
    device = torch.device("cpu") if device is None else torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    # every estimator's surrogate loss says how many samples it needs (RLOO: 2)
    check_int(config.n_samples, "n_samples", get_spec(estimator).min_samples)

    # group problems by their estimator knobs (without lr) into contiguous slices
    def key(knobs: dict[str, float | int]) -> tuple:
        return tuple(sorted((k, v) for k, v in knobs.items() if k != "lr"))

    keys: list[tuple] = []
    for knobs in grid:
        if key(knobs) not in keys:
            keys.append(key(knobs))
    order = sorted(range(len(grid)), key=lambda i: keys.index(key(grid[i])))
    slices, start = [], 0
    for k in keys:
        size = sum(1 for i in order if key(grid[i]) == k)
        slices.append((slice(start, start + size), make_loss(estimator, **dict(k))))
        start += size

    n, runs = len(grid), config.n_runs
    logits = torch.zeros(n, runs, config.n_vars, 2, device=device, requires_grad=True)
    powers = torch.tensor([powers_list[i] for i in order], dtype=torch.float32,
                          device=device).view(n, 1)
    lr = torch.tensor([float(grid[i].get("lr", config.lr)) for i in order],
                      dtype=torch.float32, device=device).view(n, 1, 1, 1)
    m, v = torch.zeros_like(logits), torch.zeros_like(logits)
    c, n_samples = config.c, config.n_samples
    p_runs = powers.expand(n, runs)

    records, steps = [], []
    with torch.no_grad():
        records.append(optimality_gap(logits, c, p_runs))
    steps.append(0)
    for step in tqdm(range(1, config.n_iters + 1), disable=not progress,
                     desc=f"polyprog {estimator}", leave=False):
        if stop is not None and step % 50 == 0 and stop():
            raise TrainingInterrupted(f"polyprog {estimator} stopped at step {step}")
        loss = sum(loss_fn(lambda x, p=powers[s]: objective(x, c, p), logits[s], n_samples,
                           generator=generator).sum() for s, loss_fn in slices)
        (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            _adam_step(logits, grad, m, v, lr, step)
        if step % config.record_every == 0 or step == config.n_iters:
            with torch.no_grad():
                records.append(optimality_gap(logits, c, p_runs))
            steps.append(step)
    with torch.no_grad():
        final_probs = torch.softmax(logits, dim=-1)[..., 1].mean(dim=-1)
    inverse = torch.empty(n, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(n)
    return (torch.tensor(steps), torch.stack(records, dim=-1)[inverse].cpu(),
            final_probs[inverse].cpu())


def optimise(
    estimator: str,
    knob_values: Sequence[dict[str, float | int]] | None = None,
    config: PolyProgConfig | None = None,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    stop: StopCallback | None = None,
) -> PolyProgRun:
    """Minimise the polynomial programming objective with Adam and one estimator.

    Every combination of knob setting (which may set its own ``lr``), exponent of
    ``config.powers`` and replicate run is optimised in the same batch
    (:func:`optimise_problems`), all logits starting at 0. ``"reinforce"`` uses the score
    function with a leave-one-out baseline over the same number of samples.

    Args:
        estimator: a name of :data:`ESTIMATOR_NAMES`.
        knob_values: knob settings (e.g. ``[{"t_1": 0.1}, {"t_1": 0.5, "lr": 0.1}]``);
            defaults when None.
        config: the protocol (default :class:`PolyProgConfig()`, the authors' problem).
        seed: seed of the generator every random draw comes from.
        device: where to compute (default CPU).
        progress: show a ``tqdm`` progress bar.
        stop: checked every 50 steps; when it returns True the run is abandoned by raising
            :class:`~redge_mini.book.tasks.TrainingInterrupted`.

    Returns:
        A :class:`PolyProgRun` with the recorded optimality gaps on the CPU.
    """
    estimator = _check_estimator(estimator)
    grid = normalise_grid(estimator, knob_values)
    config = PolyProgConfig() if config is None else config
    if not isinstance(config, PolyProgConfig):
        raise TypeError(f"config must be a PolyProgConfig, got {type(config).__name__}")
    problems = [Problem(knobs, p) for knobs in grid for p in config.powers]
    steps, gaps, probs = optimise_problems(estimator, problems, config, seed=seed,
                                           device=device, progress=progress, stop=stop)
    shape = (len(grid), len(config.powers), config.n_runs)
    return PolyProgRun(
        estimator=estimator,
        knob_values=grid,
        powers=tuple(float(p) for p in config.powers),
        steps=steps,
        gaps=gaps.reshape(*shape, -1),
        final_probs=probs.reshape(shape),
    )
