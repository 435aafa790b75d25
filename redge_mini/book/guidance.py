"""Reward guidance of a masked diffusion model through a pathwise estimator (experiment E4).

The procedure is model-agnostic: it needs a
:class:`~redge_mini.book.masked_diffusion.MaskedDenoiser`
(any vocabulary ``K``, length ``N``, optional class conditioning) and an objective on one-hot
sequences ``(B, N, K) -> (B,)`` (a penalty to minimise, or a reward with ``maximize=True``).

At each of ``n_unmask_steps`` unmasking steps, counted down ``t = T - 1, ..., 0``:

1. ``ell = model(x)``: the model's log-probabilities (no gradient through the network);
2. variational logits ``phi <- ell`` at the still-masked cells;
3. ``n_inner`` Adam steps on
   ``objective(X) + lam * sum_{masked cells} KL(softmax(phi) || softmax(ell))``
   where ``X`` is the estimator's hard sample of ``phi`` at the masked cells and the one-hot of the
   revealed tokens elsewhere (the gradient reaches ``phi`` through the estimator's surrogate);
4. candidate tokens ``argmax phi``; every still-masked cell is revealed with probability
   ``1 / (t + 1)`` with its candidate (revealed cells are kept), so ``t = 0`` reveals the rest.

With ``n_inner = 0`` (or ``lam -> infinity``) the candidates are ``argmax ell``: greedy decoding of
the prior on the same unmasking schedule, the natural unguided baseline of the procedure.

:func:`guide_batched` runs many configurations (estimator, knobs, number of inner steps, model)
side by side in one loop over the rows of one batch: Adam acts on every logit separately, so the
rows do not interact, and a row whose inner budget ``N`` is smaller than the others' keeps a copy
of its logits taken after its ``N``-th step (only active rows are sampled). One loop of
``max N`` inner steps therefore gives the whole budget curve ``N = 10, 30, ..., 1000`` at the
cost of the sum of the budgets. :func:`guided_sample` is the one-configuration case.

Besides the tokens the function returns per-step information and, per sequence, the KL to the
prior accumulated over the cells revealed at each step (``kl_revealed``): the price in prior
likelihood that guidance paid.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from redge_mini.book.masked_diffusion import MaskedDenoiser
from redge_mini.registry import make_estimator
from redge_mini.validation import check_generator, check_int, check_real

__all__ = ["GuidanceConfig", "guide_batched", "guide_with_rates", "guided_sample", "kl_to_prior"]


def kl_to_prior(phi: torch.Tensor, prior_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(phi) || exp(prior_log_probs))`` per cell: ``(..., K) -> (...)``.

    ``prior_log_probs`` must be normalised (as returned by the model); terms with ``q = 0`` are 0.
    """
    log_q = torch.log_softmax(phi, dim=-1)
    q = log_q.exp()
    return (q * (log_q - prior_log_probs)).sum(-1)


@dataclass(frozen=True)
class GuidanceConfig:
    """One configuration of :func:`guide_batched`: estimator, knobs, inner steps, model index."""

    estimator: str
    n_inner: int
    knobs: dict[str, Any] = field(default_factory=dict)
    model: int = 0


def _check_model(model: object, name: str) -> MaskedDenoiser:
    if not isinstance(model, MaskedDenoiser):
        raise TypeError(f"{name} must be a MaskedDenoiser, got {type(model).__name__}")
    return model


def guide_batched(
    models: MaskedDenoiser | Sequence[MaskedDenoiser],
    objective: Callable[[torch.Tensor], torch.Tensor],
    configs: Sequence[GuidanceConfig],
    *,
    n_unmask_steps: int,
    lam: float,
    lr: float,
    generator: torch.Generator | None,
    n: int | None = None,
    cond: object = None,
    init: torch.Tensor | None = None,
    maximize: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Guided sampling (module docstring) for several configurations at once.

    Every configuration gets its own copy of the ``B`` starting rows (``init``, or ``n`` fully
    masked rows): the batch has ``C * B`` rows, configuration-major (row ``c * B + b``).

    Parameters
    ----------
    models : MaskedDenoiser or sequence of MaskedDenoiser
        The prior(s); :attr:`GuidanceConfig.model` indexes this sequence. All must share ``K``
        and ``N`` and live on one device.
    objective : callable
        ``objective(X) -> (A,)`` on one-hot float rows ``X`` of shape ``(A, N, K)``; it is called
        on the rows still optimising, so it must act row by row.
    configs : sequence of GuidanceConfig
        The configurations (knobs validated by :func:`redge_mini.registry.make_estimator`).
    n_unmask_steps, lam, lr, generator, n, cond, init, maximize, progress
        As in :func:`guided_sample` (``cond``: None, an int, or a ``(B,)`` tensor shared by the
        configurations).

    Returns
    -------
    (tokens, info)
        ``tokens``: ``(C * B, N)``. ``info``: ``t``, ``n_masked`` (total over rows), ``seconds``
        per unmasking step; ``kl`` and ``objective``: per step, a list of per-configuration means
        (KL of the final logits at the masked cells; objective at each row's last inner step);
        per row ``kl_revealed`` and ``nll_prior``; ``seconds_total``; ``n_rows_per_config``.
    """
    models = [models] if isinstance(models, MaskedDenoiser) else list(models)
    if not models:
        raise ValueError("models must hold at least one MaskedDenoiser")
    models = [_check_model(m, f"models[{i}]") for i, m in enumerate(models)]
    first = models[0]
    for i, m in enumerate(models[1:], 1):
        if (m.vocab_size, m.seq_len) != (first.vocab_size, first.seq_len):
            raise ValueError(f"models[{i}] has (K, N) = {(m.vocab_size, m.seq_len)}, "
                             f"models[0] has {(first.vocab_size, first.seq_len)}")
    if not callable(objective):
        raise TypeError("objective must be callable: one-hot (B, N, K) -> (B,)")
    configs = list(configs)
    if not configs:
        raise ValueError("configs must hold at least one GuidanceConfig")
    samplers: dict[tuple[str, tuple[tuple[str, Any], ...]], Callable[..., torch.Tensor]] = {}
    for c, config in enumerate(configs):
        if not isinstance(config, GuidanceConfig):
            raise TypeError(f"configs[{c}] must be a GuidanceConfig, got {type(config).__name__}")
        check_int(config.n_inner, f"configs[{c}].n_inner", 0)
        if not 0 <= config.model < len(models):
            raise ValueError(f"configs[{c}].model={config.model} but {len(models)} model(s)")
        key = (config.estimator, tuple(sorted(config.knobs.items())))
        if key not in samplers:
            samplers[key] = make_estimator(config.estimator, **config.knobs)
    n_unmask_steps = check_int(n_unmask_steps, "n_unmask_steps", 1)
    lam = check_real(lam, "lam", minimum=0.0)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    dev = next(first.parameters()).device
    check_generator(generator, dev)
    if init is None:
        if n is None:
            raise ValueError("give either n (batch size) or init (starting tokens)")
        n = check_int(n, "n", 1)
        x0 = torch.full((n, first.seq_len), first.mask_id, dtype=torch.long, device=dev)
    else:
        x0 = first.check_tokens(init, "init").to(dev)
        if n is not None and n != x0.shape[0]:
            raise ValueError(f"n={n} does not match init's {x0.shape[0]} rows")
    n_configs, per = len(configs), x0.shape[0]
    x = x0.repeat(n_configs, 1)
    batch = x.shape[0]
    if isinstance(cond, torch.Tensor) and n_configs > 1:
        cond = cond.repeat(n_configs)
    sign = -1.0 if maximize else 1.0
    for m in models:
        m.eval()
    # rows of each model and of each sampler; per sampler, rows sorted by decreasing N so that
    # the rows still optimising at inner step k are a prefix
    config_rows = [torch.arange(c * per, (c + 1) * per, device=dev) for c in range(n_configs)]
    model_rows = [torch.cat([config_rows[c] for c, g in enumerate(configs) if g.model == m])
                  if any(g.model == m for g in configs) else None for m in range(len(models))]
    groups = []
    for key, sampler in samplers.items():
        members = sorted((c for c, g in enumerate(configs)
                          if (g.estimator, tuple(sorted(g.knobs.items()))) == key),
                         key=lambda c: -configs[c].n_inner)
        rows = torch.cat([config_rows[c] for c in members])
        budgets = [configs[c].n_inner for c in members for _ in range(per)]
        groups.append((sampler, rows, [-b for b in budgets]))  # ascending, for bisect
    snapshots: dict[int, torch.Tensor] = {}
    for c, config in enumerate(configs):
        if config.n_inner > 0:
            rows = config_rows[c]
            snapshots[config.n_inner] = (torch.cat([snapshots[config.n_inner], rows])
                                         if config.n_inner in snapshots else rows)
    max_inner = max(g.n_inner for g in configs)
    single = len(models) == 1 and len(groups) == 1 and len(snapshots) <= 1
    info: dict[str, Any] = {"t": [], "n_masked": [], "kl": [], "objective": [], "seconds": [],
                            "n_rows_per_config": per}
    kl_revealed = torch.zeros(batch, device=dev)
    nll_prior = torch.zeros(batch, device=dev)
    start_all = time.perf_counter()
    steps = range(n_unmask_steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="guidance", leave=False)
    for t in steps:
        start = time.perf_counter()
        masked = x == first.mask_id
        with torch.no_grad():
            if len(models) == 1:
                prior = first(x, cond).float()
            else:
                prior = torch.empty(batch, first.seq_len, first.vocab_size, device=dev)
                for m, rows in enumerate(model_rows):
                    if rows is not None:
                        sub = cond[rows] if isinstance(cond, torch.Tensor) else cond
                        prior[rows] = models[m](x[rows], sub).float()
        revealed_onehot = torch.nn.functional.one_hot(
            x.clamp(max=first.vocab_size - 1), first.vocab_size).float()
        weight = masked.float()
        final_phi = prior.clone()
        last_value = torch.full((batch,), float("nan"), device=dev)
        if max_inner > 0:
            phi = prior.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([phi], lr=lr)
            # first inner step whose objective had a NaN (0: none); checked once per unmasking
            # step, so that a GPU run does not wait for the device after every inner step
            first_nan = torch.zeros((), dtype=torch.long, device=dev)
            for inner in range(1, max_inner + 1):
                if single:
                    active = None
                    hard = groups[0][0](phi, generator=generator, hard=True)
                else:
                    parts, hards = [], []
                    for sampler, rows, negative_budgets in groups:
                        count = bisect.bisect_right(negative_budgets, -inner)
                        if count:
                            parts.append(rows[:count])
                            hards.append(sampler(phi[rows[:count]], generator=generator,
                                                 hard=True))
                    active = torch.cat(parts) if len(parts) > 1 else parts[0]
                    hard = torch.cat(hards) if len(hards) > 1 else hards[0]
                keep = masked[..., None] if active is None else masked[active][..., None]
                revealed = revealed_onehot if active is None else revealed_onehot[active]
                sequence = torch.where(keep, hard, revealed)
                value = objective(sequence)
                size = batch if active is None else active.shape[0]
                if not isinstance(value, torch.Tensor) or value.shape != (size,):
                    raise ValueError(
                        f"objective must return a tensor of shape ({size},), got "
                        f"{getattr(value, 'shape', type(value).__name__)}")
                nan_now = torch.isnan(value).any() & (first_nan == 0)
                first_nan = torch.where(nan_now, inner, first_nan)
                phi_active = phi if active is None else phi[active]
                prior_active = prior if active is None else prior[active]
                weight_active = weight if active is None else weight[active]
                kl = (kl_to_prior(phi_active, prior_active) * weight_active).sum(-1)
                loss = (sign * value + lam * kl).sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                # after a NaN, freeze the gradient so phi stays finite until the check below
                phi.grad = torch.where(first_nan > 0, torch.zeros_like(phi.grad), phi.grad)
                optimiser.step()
                with torch.no_grad():
                    if active is None:
                        last_value = value.detach()
                    else:
                        last_value[active] = value.detach()
                    if inner in snapshots:
                        rows = snapshots[inner]
                        final_phi[rows] = phi.detach()[rows]
            if int(first_nan):
                raise ValueError(
                    f"objective returned NaN at unmasking step t={t} "
                    f"({n_unmask_steps - t} of {n_unmask_steps}), inner step {int(first_nan)}; "
                    "guidance stopped")
        with torch.no_grad():
            kl_cell = kl_to_prior(final_phi, prior)
            candidates = final_phi.argmax(-1)
            u = torch.rand(x.shape, generator=generator, device=dev)
            reveal = masked & (u < 1.0 / (t + 1))
            kl_revealed += (kl_cell * reveal).sum(-1)
            nll_prior -= (prior.gather(-1, candidates[..., None]).squeeze(-1) * reveal).sum(-1)
            x = torch.where(reveal, candidates, x)
            kl_rows = (kl_cell * weight).sum(-1).reshape(n_configs, per).mean(-1)
            objective_rows = last_value.reshape(n_configs, per).mean(-1)
        info["t"].append(t)
        info["n_masked"].append(int(masked.sum()))
        info["kl"].append(kl_rows.tolist())
        info["objective"].append(objective_rows.tolist())
        info["seconds"].append(time.perf_counter() - start)
    info["kl_revealed"] = kl_revealed.cpu()
    info["nll_prior"] = nll_prior.cpu()
    info["seconds_total"] = time.perf_counter() - start_all
    return x, info


def guided_sample(
    model: MaskedDenoiser,
    objective: Callable[[torch.Tensor], torch.Tensor],
    estimator_name: str,
    *,
    n_unmask_steps: int,
    n_inner: int,
    lam: float,
    lr: float,
    knobs: dict[str, Any] | None = None,
    generator: torch.Generator | None,
    n: int | None = None,
    cond: object = None,
    init: torch.Tensor | None = None,
    maximize: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sample from ``model`` guided towards a low penalty (or high reward) with an estimator.

    Parameters
    ----------
    model : MaskedDenoiser
        The prior (any ``K``, ``N``; conditional models take ``cond``). Used in eval mode without
        gradient.
    objective : callable
        ``objective(X) -> (B,)`` on one-hot float sequences ``X`` of shape ``(B, N, K)``,
        differentiable in ``X``. A penalty (minimised) or, with ``maximize=True``, a reward.
    estimator_name : str
        A name of :data:`redge_mini.registry.ESTIMATORS` (``"st"``, ``"redge"``, ...).
    n_unmask_steps : int
        Number ``T`` of unmasking steps (network calls).
    n_inner : int
        Adam steps per unmasking step (``0``: greedy decoding of the prior).
    lam : float
        Weight ``lambda >= 0`` of the KL to the prior.
    lr : float
        Adam learning rate for the variational logits.
    knobs : dict or None
        The estimator's knobs (validated by :func:`redge_mini.registry.make_estimator`).
    generator : torch.Generator or None
        Source of every random draw, on the model's device.
    n : int or None
        Batch size when ``init`` is None (all cells masked).
    cond : None, int or torch.Tensor
        Class labels for a conditional model.
    init : torch.Tensor or None
        ``(B, N)`` starting tokens (mask id ``K`` where unknown), e.g. a puzzle.
    maximize : bool
        Treat ``objective`` as a reward: the inner loss uses ``-objective``.
    progress : bool
        Show a tqdm bar over the unmasking steps.

    Returns
    -------
    (tokens, info)
        ``tokens``: ``(B, N)`` ids in ``[0, K)``. ``info``: lists over steps ``t`` (counted
        down), ``n_masked`` (cells still masked before the step), ``kl`` and ``objective``
        (batch means at the last inner step), ``seconds`` (wall time of the step); per sequence
        tensors ``kl_revealed`` (KL to the prior summed over the cells revealed at their reveal
        step) and ``nll_prior`` (minus the prior log-probability of the revealed tokens at their
        reveal step); ``seconds_total``.

    Raises
    ------
    ValueError
        Bad arguments, or an objective that returns NaN (the message names the unmasking step
        and the inner step) or a wrong shape.
    """
    model = _check_model(model, "model")
    n_inner = check_int(n_inner, "n_inner", 0)
    config = GuidanceConfig(estimator_name, n_inner, dict(knobs or {}))
    tokens, info = guide_batched(model, objective, [config], n_unmask_steps=n_unmask_steps,
                                 lam=lam, lr=lr, generator=generator, n=n, cond=cond, init=init,
                                 maximize=maximize, progress=progress)
    info["kl"] = [values[0] for values in info["kl"]]
    info["objective"] = [values[0] for values in info["objective"]]
    del info["n_rows_per_config"]
    return tokens, info



def guide_with_rates(
    model: MaskedDenoiser,
    objective: Callable[[torch.Tensor], torch.Tensor],
    configs: Sequence[GuidanceConfig],
    lrs: Sequence[float],
    *,
    n_unmask_steps: int,
    lam: float,
    generator: torch.Generator | None,
    init: torch.Tensor,
    cond: object = None,
    maximize: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """:func:`guide_batched` for one model with one Adam learning rate per configuration.

    Configuration ``c`` (estimator, knobs, ``n_inner``; ``model`` must be 0) optimises its copy
    of the ``B`` rows of ``init`` with learning rate ``lrs[c]``. Adam (``betas = (0.9, 0.999)``,
    ``eps = 1e-8``, bias-corrected, as :class:`torch.optim.Adam`) is written out with a per-row
    learning rate, so configurations that differ in every knob, the learning rate included, share
    one batch and one loop. Inside, the rows are laid out by decreasing ``n_inner``, so the rows
    still optimising at an inner step are a leading slice (no gathers; a row whose budget is spent
    is frozen). A configuration with ``n_inner = 0`` is greedy decoding. One configuration alone
    gives what :func:`guided_sample` gives with the same seed.

    Returns
    -------
    (tokens, info)
        ``tokens``: ``(C * B, N)`` ids in ``[0, K)``, configuration-major (row ``c * B + b``).
        ``info``: per row ``kl_revealed`` and ``nll_prior`` (as in :func:`guide_batched`),
        ``seconds_total``, ``n_rows_per_config``.
    """
    model = _check_model(model, "model")
    if not callable(objective):
        raise TypeError("objective must be callable: one-hot (B, N, K) -> (B,)")
    configs, lrs = list(configs), list(lrs)
    if not configs:
        raise ValueError("configs must hold at least one GuidanceConfig")
    if len(lrs) != len(configs):
        raise ValueError(f"lrs has {len(lrs)} entries for {len(configs)} configs")
    lrs = [check_real(r, f"lrs[{i}]", minimum=0.0, strict=True) for i, r in enumerate(lrs)]
    samplers: dict[tuple[str, tuple[tuple[str, Any], ...]], Callable[..., torch.Tensor]] = {}
    keys = []
    for c, config in enumerate(configs):
        if not isinstance(config, GuidanceConfig):
            raise TypeError(f"configs[{c}] must be a GuidanceConfig, got {type(config).__name__}")
        check_int(config.n_inner, f"configs[{c}].n_inner", 0)
        if config.model != 0:
            raise ValueError(f"configs[{c}].model={config.model} but one model")
        keys.append((config.estimator, tuple(sorted(config.knobs.items()))))
        if keys[-1] not in samplers:
            samplers[keys[-1]] = make_estimator(config.estimator, **config.knobs)
    n_unmask_steps = check_int(n_unmask_steps, "n_unmask_steps", 1)
    lam = check_real(lam, "lam", minimum=0.0)
    dev = next(model.parameters()).device
    check_generator(generator, dev)
    x0 = model.check_tokens(init, "init").to(dev)
    n_configs, per = len(configs), x0.shape[0]
    index = {key: i for i, key in enumerate(samplers)}
    order = sorted(range(n_configs), key=lambda c: (-configs[c].n_inner, index[keys[c]], c))
    # blocks of consecutive rows (inner layout) sharing a sampler and a budget
    blocks: list[list[Any]] = []   # [sampler, n_rows, budget]
    for c in order:
        budget = configs[c].n_inner
        if blocks and blocks[-1][0] is samplers[keys[c]] and blocks[-1][2] == budget:
            blocks[-1][1] += per
        elif budget > 0:
            blocks.append([samplers[keys[c]], per, budget])
    x = x0.repeat(n_configs, 1)
    batch = x.shape[0]
    if isinstance(cond, torch.Tensor):
        cond = cond.to(dev).repeat(n_configs)
    sign = -1.0 if maximize else 1.0
    model.eval()
    rate = torch.tensor([lrs[c] for c in order], device=dev).repeat_interleave(per)[:, None, None]
    max_inner = max(g.n_inner for g in configs)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    kl_revealed = torch.zeros(batch, device=dev)
    nll_prior = torch.zeros(batch, device=dev)
    start_all = time.perf_counter()
    steps = range(n_unmask_steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="guidance", leave=False)
    for t in steps:
        masked = x == model.mask_id
        with torch.no_grad():
            prior = model(x, cond).float()
        revealed_onehot = torch.nn.functional.one_hot(
            x.clamp(max=model.vocab_size - 1), model.vocab_size).float()
        weight = masked.float()
        phi = prior.clone()
        if max_inner > 0:
            first_moment = torch.zeros_like(prior)
            second_moment = torch.zeros_like(prior)
            first_nan = torch.zeros((), dtype=torch.long, device=dev)
            for inner in range(1, max_inner + 1):
                live = [b for b in blocks if b[2] >= inner]
                n = sum(b[1] for b in live)
                leaf = phi[:n].detach().requires_grad_(True)
                chunks = leaf.split([b[1] for b in live]) if len(live) > 1 else (leaf,)
                hards = [b[0](chunk, generator=generator, hard=True)
                         for b, chunk in zip(live, chunks, strict=True)]
                hard = torch.cat(hards) if len(hards) > 1 else hards[0]
                sequence = torch.where(masked[:n, :, None], hard, revealed_onehot[:n])
                value = objective(sequence)
                if not isinstance(value, torch.Tensor) or value.shape != (n,):
                    raise ValueError(f"objective must return a tensor of shape ({n},), got "
                                     f"{getattr(value, 'shape', type(value).__name__)}")
                first_nan = torch.where(torch.isnan(value).any() & (first_nan == 0), inner,
                                        first_nan)
                kl = (kl_to_prior(leaf, prior[:n]) * weight[:n]).sum(-1)
                (grad,) = torch.autograd.grad((sign * value + lam * kl).sum(), leaf)
                with torch.no_grad():
                    grad = torch.where(first_nan > 0, torch.zeros_like(grad), grad)
                    m, v = first_moment[:n], second_moment[:n]
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (v.sqrt() / (1 - beta2**inner) ** 0.5).add_(eps)
                    phi[:n].addcdiv_(m * (rate[:n] / (1 - beta1**inner)), denom, value=-1.0)
            if int(first_nan):
                raise ValueError(
                    f"objective returned NaN at unmasking step t={t} "
                    f"({n_unmask_steps - t} of {n_unmask_steps}), inner step {int(first_nan)}; "
                    "guidance stopped")
        with torch.no_grad():
            kl_cell = kl_to_prior(phi, prior)
            candidates = phi.argmax(-1)
            u = torch.rand(x.shape, generator=generator, device=dev)
            reveal = masked & (u < 1.0 / (t + 1))
            kl_revealed += (kl_cell * reveal).sum(-1)
            nll_prior -= (prior.gather(-1, candidates[..., None]).squeeze(-1) * reveal).sum(-1)
            x = torch.where(reveal, candidates, x)
    # back to configuration-major rows
    inner_rows = torch.cat([torch.arange(c * per, (c + 1) * per, device=dev) for c in order])
    out = torch.empty_like(x)
    out[inner_rows] = x
    kl_out, nll_out = torch.empty_like(kl_revealed), torch.empty_like(nll_prior)
    kl_out[inner_rows], nll_out[inner_rows] = kl_revealed, nll_prior
    return out, {"kl_revealed": kl_out.cpu(), "nll_prior": nll_out.cpu(),
                 "seconds_total": time.perf_counter() - start_all, "n_rows_per_config": per}
