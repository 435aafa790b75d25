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

Besides the tokens the function returns per-step information and, per sequence, the KL to the
prior accumulated over the cells revealed at each step (``kl_revealed``): the price in prior
likelihood that guidance paid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from redge_mini.book.masked_diffusion import MaskedDenoiser
from redge_mini.registry import make_estimator
from redge_mini.validation import check_generator, check_int, check_real

__all__ = ["guided_sample", "kl_to_prior"]


def kl_to_prior(phi: torch.Tensor, prior_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(phi) || exp(prior_log_probs))`` per cell: ``(..., K) -> (...)``.

    ``prior_log_probs`` must be normalised (as returned by the model); terms with ``q = 0`` are 0.
    """
    log_q = torch.log_softmax(phi, dim=-1)
    q = log_q.exp()
    return (q * (log_q - prior_log_probs)).sum(-1)


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
    if not isinstance(model, MaskedDenoiser):
        raise TypeError(f"model must be a MaskedDenoiser, got {type(model).__name__}")
    if not callable(objective):
        raise TypeError("objective must be callable: one-hot (B, N, K) -> (B,)")
    estimator = make_estimator(estimator_name, **(knobs or {}))
    n_unmask_steps = check_int(n_unmask_steps, "n_unmask_steps", 1)
    n_inner = check_int(n_inner, "n_inner", 0)
    lam = check_real(lam, "lam", minimum=0.0)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    dev = next(model.parameters()).device
    check_generator(generator, dev)
    if init is None:
        if n is None:
            raise ValueError("give either n (batch size) or init (starting tokens)")
        n = check_int(n, "n", 1)
        x = torch.full((n, model.seq_len), model.mask_id, dtype=torch.long, device=dev)
    else:
        x = model.check_tokens(init, "init").to(dev).clone()
        if n is not None and n != x.shape[0]:
            raise ValueError(f"n={n} does not match init's {x.shape[0]} rows")
    batch = x.shape[0]
    sign = -1.0 if maximize else 1.0
    model.eval()
    info: dict[str, Any] = {"t": [], "n_masked": [], "kl": [], "objective": [], "seconds": []}
    kl_revealed = torch.zeros(batch, device=dev)
    nll_prior = torch.zeros(batch, device=dev)
    start_all = time.perf_counter()
    steps = range(n_unmask_steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"guidance ({estimator_name})", leave=False)
    for t in steps:
        start = time.perf_counter()
        masked = x == model.mask_id
        with torch.no_grad():
            prior = model(x, cond).float()
        revealed_onehot = torch.nn.functional.one_hot(
            x.clamp(max=model.vocab_size - 1), model.vocab_size).float()
        phi = prior.clone().requires_grad_(n_inner > 0)
        keep = masked[..., None]
        weight = masked.float()
        value = torch.full((batch,), float("nan"), device=dev)
        if n_inner > 0:
            optimiser = torch.optim.Adam([phi], lr=lr)
            # first inner step whose objective had a NaN (0: none); checked once per unmasking
            # step, so that a GPU run does not wait for the device after every inner step
            first_nan = torch.zeros((), dtype=torch.long, device=dev)
            for inner in range(1, n_inner + 1):
                hard = estimator(phi, generator=generator)
                sequence = torch.where(keep, hard, revealed_onehot)
                value = objective(sequence)
                if not isinstance(value, torch.Tensor) or value.shape != (batch,):
                    raise ValueError(
                        f"objective must return a tensor of shape ({batch},), got "
                        f"{getattr(value, 'shape', type(value).__name__)}")
                nan_now = torch.isnan(value).any() & (first_nan == 0)
                first_nan = torch.where(nan_now, inner, first_nan)
                kl = (kl_to_prior(phi, prior) * weight).sum(-1)
                loss = (sign * value + lam * kl).sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                # after a NaN, freeze the gradient so phi stays finite until the check below
                phi.grad = torch.where(first_nan > 0, torch.zeros_like(phi.grad), phi.grad)
                optimiser.step()
            if int(first_nan):
                raise ValueError(
                    f"objective returned NaN at unmasking step t={t} "
                    f"({n_unmask_steps - t} of {n_unmask_steps}), inner step {int(first_nan)}; "
                    "guidance stopped")
        with torch.no_grad():
            phi = phi.detach()
            kl_cell = kl_to_prior(phi, prior)
            candidates = phi.argmax(-1)
            u = torch.rand(x.shape, generator=generator, device=dev)
            reveal = masked & (u < 1.0 / (t + 1))
            kl_revealed += (kl_cell * reveal).sum(-1)
            nll_prior -= (prior.gather(-1, candidates[..., None]).squeeze(-1) * reveal).sum(-1)
            x = torch.where(reveal, candidates, x)
        info["t"].append(t)
        info["n_masked"].append(int(masked.sum()))
        info["kl"].append(float((kl_cell * weight).sum(-1).mean()))
        info["objective"].append(float(value.detach().mean()))
        info["seconds"].append(time.perf_counter() - start)
    info["kl_revealed"] = kl_revealed.cpu()
    info["nll_prior"] = nll_prior.cpu()
    info["seconds_total"] = time.perf_counter() - start_all
    return x, info
