"""Discrete variational auto-encoder: the ReDGE paper's latent-variable experiment.

Model (the authors' architecture): ``L`` categorical latents with ``K`` classes each, a uniform
prior ``p(z)``, an MLP encoder ``784 -> 512 -> 256 -> L*K`` giving the logits of
``q(z | x) = prod_l Cat(softmax(logits_l))``, an MLP decoder ``L*K -> 256 -> 512 -> 784`` giving
Bernoulli logits of ``p(x | z)``, LeakyReLU activations. The training loss is the single-sample
negative ELBO

``-ELBO(x) = -log p(x | z) + KL(q(z | x) || p(z))``,  ``z`` drawn by a gradient estimator,

with the KL term in closed form. Evaluation goes further than the authors: the negative ELBO with
an exact categorical sample (which exposes a biased forward sample), the importance-weighted bound
``log p(x) >= E[log (1/S) sum_s p(x, z_s) / q(z_s | x)]`` (:func:`importance_weighted_bound`) and,
when ``K^L`` is small, the exact ``log p(x)`` by enumerating every latent configuration
(:func:`exact_log_likelihood`).

**Ensembles.** :class:`EnsembleVAE` holds ``R`` independent VAEs as stacked weight tensors
(batched matrix products); :func:`train` trains them side by side, each with its own estimator,
knob values, initialisation and mini-batch order. Adam acts elementwise and the loss is a sum of
per-model losses, so every model follows exactly the trajectory it would follow alone, while a GPU
runs all of them for little more than the price of one. The whole data set is a tensor on the
device; mini-batches are index gathers, no ``DataLoader``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...exact import enumerate_onehot
from ...registry import check_knobs, get_spec, make_estimator, make_loss
from ...score_function import sample_onehot
from ...validation import check_int
from . import StopCallback, TrainingInterrupted

__all__ = [
    "EnsembleAdam",
    "EnsembleLinear",
    "EnsembleVAE",
    "Member",
    "VAEConfig",
    "enumerate_latents",
    "epoch_order",
    "evaluate",
    "exact_log_likelihood",
    "importance_weighted_bound",
    "initialise_by_seed",
    "kl_to_uniform",
    "mean_negative_elbo",
    "negative_elbo",
    "negative_elbo_per_datum",
    "prior_samples",
    "reconstruct",
    "score_function_elbo",
    "share_initialisation",
    "time_training_steps",
    "train",
]


@dataclass(frozen=True)
class VAEConfig:
    """Architecture and optimiser of the discrete VAE.

    Attributes:
        n_latent: number ``L`` of categorical latents.
        n_classes: classes ``K`` per latent (2: binary latents, one-hot as the authors do).
        n_pixels: data dimension (784 for 28 x 28 images).
        hidden: widths of the encoder's hidden layers; the decoder mirrors them.
        negative_slope: slope of the LeakyReLU for negative inputs.
        lr: Adam learning rate.
        batch_size: mini-batch size.
        n_epochs: passes over the training set.
        eval_every: epochs between two evaluations recorded in the history (and at the end).
    """

    n_latent: int = 48
    n_classes: int = 2
    n_pixels: int = 784
    hidden: tuple[int, ...] = (512, 256)
    negative_slope: float = 0.01
    lr: float = 5e-4
    batch_size: int = 200
    n_epochs: int = 200
    eval_every: int = 10

    def __post_init__(self) -> None:
        check_int(self.n_latent, "n_latent", 1)
        check_int(self.n_classes, "n_classes", 2)
        check_int(self.n_pixels, "n_pixels", 1)
        check_int(self.batch_size, "batch_size", 1)
        check_int(self.n_epochs, "n_epochs", 1)
        check_int(self.eval_every, "eval_every", 1)
        if not isinstance(self.hidden, tuple) or not self.hidden:
            raise TypeError("hidden must be a non-empty tuple of ints")
        for width in self.hidden:
            check_int(width, "hidden", 1)
        for name in ("negative_slope", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
                value
            ):
                raise TypeError(f"{name} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.negative_slope < 1:
            raise ValueError(f"negative_slope must lie in [0, 1), got {self.negative_slope}")

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(L, K)``."""
        return (self.n_latent, self.n_classes)

    @property
    def n_configurations(self) -> int:
        """``K^L``, the number of latent configurations."""
        return self.n_classes**self.n_latent


@dataclass(frozen=True)
class Member:
    """One model of an ensemble: the estimator that trains it, its knobs, a replicate label
    (the training seed, see :func:`initialise_by_seed`), its own Adam learning rate
    (``None``: the config's) and the latent samples it draws per image (``n_samples``).

    A pathwise estimator draws one sample per image (``n_samples=1``). A score-function
    estimator (REINFORCE with the leave-one-out baseline, ``"reinforce"``) needs at least two;
    :func:`train` then gives it ``batch_size // n_samples`` images per step, so that every
    member spends the same ``batch_size`` decoder evaluations per optimiser step.
    """

    estimator: str
    knobs: dict[str, float | int] = field(default_factory=dict)
    replicate: int = 0
    lr: float | None = None
    n_samples: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", check_knobs(self.estimator, **self.knobs))
        check_int(self.replicate, "replicate", 0)
        if self.lr is not None and (isinstance(self.lr, bool)
                                    or not isinstance(self.lr, numbers.Real)
                                    or not math.isfinite(self.lr) or self.lr <= 0):
            raise ValueError(f"lr must be a positive finite number or None, got {self.lr!r}")
        check_int(self.n_samples, "n_samples", 1)
        spec = get_spec(self.estimator)
        if spec.pathwise and self.n_samples != 1:
            raise ValueError(f"n_samples must be 1 for the pathwise estimator "
                             f"{self.estimator!r}, got {self.n_samples}")
        if not spec.pathwise and self.n_samples < spec.min_samples:
            raise ValueError(f"n_samples must be >= {spec.min_samples} for "
                             f"{self.estimator!r}, got {self.n_samples}")

    @property
    def pathwise(self) -> bool:
        """Whether the estimator returns a differentiable sample (else: a surrogate loss)."""
        return get_spec(self.estimator).pathwise

    @property
    def key(self) -> tuple[str, tuple[tuple[str, float | int], ...]]:
        """``(estimator, sorted knobs)``: members with the same key share one estimator call."""
        return (self.estimator, tuple(sorted(self.knobs.items())))


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator | None,
             device: torch.device | None) -> torch.Tensor:
    out = torch.empty(shape, device=device)
    return out.uniform_(-bound, bound, generator=generator)


class EnsembleLinear(nn.Module):
    """``R`` independent affine maps ``x_r W_r + b_r`` applied by one batched product.

    Initialised like :class:`torch.nn.Linear`: weights and biases uniform in
    ``(-1/sqrt(d_in), 1/sqrt(d_in))``.
    """

    def __init__(self, n_models: int, d_in: int, d_out: int, *,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        n_models = check_int(n_models, "n_models", 1)
        bound = 1.0 / math.sqrt(check_int(d_in, "d_in", 1))
        device = None if device is None else torch.device(device)
        self.weight = nn.Parameter(_uniform((n_models, d_in, d_out), bound, generator, device))
        self.bias = nn.Parameter(_uniform((n_models, 1, d_out), bound, generator, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(R, B, d_in)`` -> ``(R, B, d_out)``."""
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleVAE(nn.Module):
    """``R`` independent discrete VAEs with the authors' MLP encoder and decoder.

    Args:
        n_models: ``R``.
        config: architecture (:class:`VAEConfig`).
        generator: source of the initial weights (a generator on ``device``).
        device: where the weights live.
    """

    def __init__(self, n_models: int, config: VAEConfig, *,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = config
        self.n_models = check_int(n_models, "n_models", 1)
        latent = config.n_latent * config.n_classes
        enc = (config.n_pixels, *config.hidden, latent)
        dec = (latent, *reversed(config.hidden), config.n_pixels)

        def stack(widths: tuple[int, ...]) -> nn.ModuleList:
            return nn.ModuleList(
                EnsembleLinear(n_models, a, b, generator=generator, device=device)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )

        self.encoder = stack(enc)
        self.decoder = stack(dec)

    def _mlp(self, layers: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < len(layers) - 1:
                h = F.leaky_relu(h, self.config.negative_slope)
        return h

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(R, B, n_pixels)`` (or ``(B, n_pixels)``, shared) -> logits ``(R, B, L, K)``."""
        if x.dim() == 2:
            x = x.expand(self.n_models, *x.shape)
        out = self._mlp(self.encoder, x)
        return out.view(*out.shape[:-1], *self.config.latent_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """One-hot (or soft) latents ``(R, B, L, K)`` -> Bernoulli logits ``(R, B, n_pixels)``."""
        return self._mlp(self.decoder, z.flatten(start_dim=-2))


@torch.no_grad()
def share_initialisation(model: EnsembleVAE, members: Sequence[Member]) -> EnsembleVAE:
    """Give every member the initial weights of the first member with the same replicate.

    With :func:`train`'s mini-batch order also shared by replicate, replicate ``r`` of two
    estimators then starts from the same network and sees the same batches: only the estimator
    (and its random draws) differs, so results can be compared *paired* by replicate.
    """
    if len(members) != model.n_models:
        raise ValueError(f"members has {len(members)} entries for {model.n_models} models")
    first: dict[int, int] = {}
    source = [first.setdefault(m.replicate, i) for i, m in enumerate(members)]
    index = torch.tensor(source, device=next(model.parameters()).device)
    for parameter in model.parameters():
        parameter.copy_(parameter[index])
    return model


@torch.no_grad()
def initialise_by_seed(model: EnsembleVAE, members: Sequence[Member]) -> EnsembleVAE:
    """Give every member the initial weights of a single VAE built from its seed alone.

    Member ``i`` gets the weights of ``EnsembleVAE(1, config)`` drawn from a generator seeded
    with ``members[i].replicate``: the same seed gives the same network in every ensemble,
    whatever else trains beside it (with ``train(..., order_seed=...)`` the mini-batch order is
    a function of the seed too), so runs of one seed are paired across stages and estimators.
    """
    if len(members) != model.n_models:
        raise ValueError(f"members has {len(members)} entries for {model.n_models} models")
    device = next(model.parameters()).device
    for seed in sorted({m.replicate for m in members}):
        single = EnsembleVAE(1, model.config, device=device,
                             generator=torch.Generator(device=device).manual_seed(seed))
        rows = torch.tensor([i for i, m in enumerate(members) if m.replicate == seed],
                            device=device)
        for target, source in zip(model.parameters(), single.parameters(), strict=True):
            target[rows] = source.expand(len(rows), *source.shape[1:])
    return model


class EnsembleAdam:
    """Adam (:class:`torch.optim.Adam`'s update, no weight decay) with one learning rate per
    model of an ensemble: ``lr`` is an ``(R,)`` tensor and every parameter has ``R`` leading
    rows. Adam acts elementwise, so model ``r`` follows Adam at ``lr[r]`` exactly."""

    def __init__(self, params: Sequence[torch.Tensor], lr: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        if lr.dim() != 1 or any(p.shape[0] != lr.shape[0] for p in self.params):
            raise ValueError(f"lr must be a (R,) tensor with R = the parameters' first dim; got "
                             f"{tuple(lr.shape)}")
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        """Drop the gradients."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every model."""
        self.t += 1
        b1, b2 = self.betas
        root_bc2 = math.sqrt(1 - b2**self.t)
        # lr m_hat / (sqrt(v_hat) + eps) = (lr root_bc2 / bc1) m / (sqrt(v) + eps root_bc2)
        step_size = self.lr * (root_bc2 / (1 - b1**self.t))
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            g = p.grad
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().add_(self.eps * root_bc2)
            shape = (-1,) + (1,) * (p.dim() - 1)
            p.addcdiv_(m * step_size.view(shape), denom, value=-1.0)


def epoch_order(replicate: torch.Tensor, n_data: int, generator: torch.Generator | None = None,
                n_orders: int | None = None) -> torch.Tensor:
    """One random permutation of ``range(n_data)`` per replicate label: ``(R, n_data)``.

    Row ``i`` is the permutation of label ``replicate[i]``, so members with the same label see
    the same mini-batches. ``n_orders`` (default ``max(replicate) + 1``) permutations are drawn.
    """
    n_orders = int(replicate.max()) + 1 if n_orders is None else n_orders
    return torch.rand(n_orders, n_data, device=replicate.device,
                      generator=generator).argsort(dim=1)[replicate]


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """``KL(q || Uniform)`` summed over the latents: ``sum_l sum_k q log q + L log K``.

    ``logits``: ``(..., L, K)``; returns ``(...)``.
    """
    log_q = torch.log_softmax(logits, dim=-1)
    n_latent, n_classes = logits.shape[-2:]
    return (log_q.exp() * log_q).sum(dim=(-2, -1)) + n_latent * math.log(n_classes)


def log_likelihood(pixel_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | z) = sum_d [x_d l_d - softplus(l_d)]`` (Bernoulli with logits ``l``)."""
    return (x * pixel_logits - F.softplus(pixel_logits)).sum(dim=-1)


def negative_elbo(model: EnsembleVAE, x: torch.Tensor, z: torch.Tensor,
                  logits: torch.Tensor) -> torch.Tensor:
    """Single-sample ``-ELBO`` per model and datum, ``(R, B)``: ``-log p(x|z) + KL(q || p)``."""
    return -log_likelihood(model.decode(z), x) + kl_to_uniform(logits)


def _groups(members: Sequence[Member]) -> list[tuple[int, int, Callable[..., torch.Tensor]]]:
    """Consecutive members with the same estimator and knobs: ``(start, stop, sampler)``."""
    out: list[tuple[int, int, Callable[..., torch.Tensor]]] = []
    start = 0
    for i in range(1, len(members) + 1):
        if i == len(members) or members[i].key != members[start].key:
            m = members[start]
            # a score-function estimator's forward sample is an exact draw from q
            sampler = (make_estimator(m.estimator, **m.knobs) if m.pathwise else exact_sample)
            out.append((start, i, sampler))
            start = i
    return out


def sample_latents(logits: torch.Tensor, members: Sequence[Member],
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Each model's latent sample drawn by its own estimator: ``(R, B, L, K)`` one-hot."""
    if logits.shape[0] != len(members):
        raise ValueError(f"logits has {logits.shape[0]} models but members has {len(members)}")
    return _sample_groups(logits, _groups(members), generator)


def _sample_groups(logits: torch.Tensor,
                   groups: list[tuple[int, int, Callable[..., torch.Tensor]]],
                   generator: torch.Generator | None) -> torch.Tensor:
    parts = [sampler(logits[a:b], generator=generator) for a, b, sampler in groups]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def score_function_elbo(model: EnsembleVAE, x: torch.Tensor, logits: torch.Tensor,
                        members: Sequence[Member],
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Surrogate ``-ELBO`` per model and image, ``(R, B)``, of score-function members.

    ``S = n_samples`` exact codes are drawn per image; the value is the mean of their
    single-sample ``-ELBO``; the gradient is the estimator's surrogate loss
    (:func:`redge_mini.registry.make_loss`, for ``"reinforce"`` RLOO) for the encoder through
    ``log q``, the ordinary gradient for the decoder, and the exact gradient of the closed-form
    KL term. The decoder runs ``S * B`` times. Every member must share the estimator, its knobs
    and ``n_samples`` (one surrogate loss for the whole ensemble).
    """
    first = members[0]
    if first.pathwise or any(m.key != first.key or m.n_samples != first.n_samples
                             for m in members):
        raise ValueError("score_function_elbo needs members that share one score-function "
                         "estimator, its knobs and n_samples")
    n_models, batch = x.shape[:2]

    def reconstruction(z: torch.Tensor) -> torch.Tensor:     # (S, R, B, L, K) -> (S, R, B)
        n = z.shape[0]
        flat = z.transpose(0, 1).reshape(n_models, n * batch, *z.shape[-2:])
        pixels = model.decode(flat).view(n_models, n, batch, -1)
        return -log_likelihood(pixels, x[:, None]).transpose(0, 1)

    surrogate = make_loss(first.estimator, **first.knobs)(reconstruction, logits,
                                                          first.n_samples, generator=generator)
    return surrogate + kl_to_uniform(logits)


def exact_sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """An exact draw from ``q = Cat(softmax(logits))``, one-hot and without gradient."""
    return sample_onehot(logits.detach(), 1, generator=generator)[0]


@dataclass
class History:
    """What :func:`train` records (tensors on the CPU).

    Attributes:
        epochs: ``(E,)`` epochs (1-based) of ``train_loss``.
        train_loss: ``(R, E)`` mean training loss of each epoch (estimator's own sample).
        eval_epochs: ``(T,)`` epochs at which the evaluations below were made.
        train_neg_elbo_exact: ``(R, T)`` ``-ELBO`` on the ``monitor`` subset of the training set,
            with exact samples.
        valid_neg_elbo: ``(R, T)`` ``-ELBO`` on the validation set with exact samples (empty if
            no validation set was given).
        seconds: wall time of the training loop.
        test_neg_elbo: ``(R, T)`` ``-ELBO`` on the test set with exact samples (empty if no test
            set was given); with ``valid_neg_elbo`` it gives the held-out ``-ELBO`` at the
            best-validation evaluation (:meth:`at_best_validation`).
        steps_per_epoch: optimiser steps per epoch.
    """

    epochs: torch.Tensor
    train_loss: torch.Tensor
    eval_epochs: torch.Tensor
    train_neg_elbo_exact: torch.Tensor
    valid_neg_elbo: torch.Tensor
    seconds: float
    test_neg_elbo: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    steps_per_epoch: int = 0

    def at_best_validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(epoch, test -ELBO)`` per model at its lowest recorded validation ``-ELBO``."""
        if self.valid_neg_elbo.numel() == 0 or self.test_neg_elbo.numel() == 0:
            raise ValueError("at_best_validation needs validation and test histories")
        best = self.valid_neg_elbo.argmin(dim=1)
        test = self.test_neg_elbo.gather(1, best[:, None])[:, 0]
        return self.eval_epochs[best], test


@torch.no_grad()
def negative_elbo_per_datum(
    model: EnsembleVAE,
    x: torch.Tensor,
    *,
    members: Sequence[Member] | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    chunk: int = 1000,
) -> torch.Tensor:
    """``-ELBO`` of every image of ``x`` (``(N, D)``, shared by the models), averaged over
    ``n_samples`` single-sample estimates: ``(R, N)``.

    ``members=None`` draws exact samples from ``q``; otherwise each model's own estimator draws
    (its forward value, which for the ReDGE family is ``Cat(S)`` rather than ``q``).
    """
    n_samples = check_int(n_samples, "n_samples", 1)
    out = torch.zeros(model.n_models, x.shape[0], device=x.device)
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        logits = model.encode(xb)
        for _ in range(n_samples):
            z = (exact_sample(logits, generator) if members is None
                 else sample_latents(logits, members, generator))
            out[:, start:start + xb.shape[0]] += negative_elbo(model, xb, z, logits)
    return out / n_samples


def mean_negative_elbo(model: EnsembleVAE, x: torch.Tensor, *,
                       members: Sequence[Member] | None = None, n_samples: int = 1,
                       generator: torch.Generator | None = None, chunk: int = 1000,
                       ) -> torch.Tensor:
    """The mean over ``x`` of :func:`negative_elbo_per_datum`: ``(R,)``."""
    return negative_elbo_per_datum(model, x, members=members, n_samples=n_samples,
                                   generator=generator, chunk=chunk).mean(dim=1)


def train(
    model: EnsembleVAE,
    members: Sequence[Member],
    x_train: torch.Tensor,
    *,
    x_valid: torch.Tensor | None = None,
    x_test: torch.Tensor | None = None,
    n_epochs: int | None = None,
    generator: torch.Generator | None = None,
    monitor: int = 1000,
    progress: bool = False,
    stop: StopCallback | None = None,
    order_seed: int | None = None,
) -> History:
    """Train every model of ``model`` with its member's estimator; return the :class:`History`.

    Every epoch draws one random permutation of ``x_train`` per replicate label (members with
    the same :attr:`Member.replicate` see the same mini-batches; the last incomplete batch is
    dropped); each model draws its latent sample from its estimator and takes one Adam step
    (:class:`EnsembleAdam`, at the member's own ``lr`` or the config's) on its mean
    single-sample ``-ELBO``. Members of a score-function estimator (``n_samples = S >= 2``,
    :func:`score_function_elbo`) take the first ``batch_size / S`` images of each mini-batch and
    draw ``S`` codes for each: every model spends ``batch_size`` decoder evaluations per step,
    over the same steps (the images of a step are a subset of the pathwise batch of that step);
    an ensemble cannot mix the two kinds. Every ``config.eval_every`` epochs (and after the last)
    the exact-sample ``-ELBO`` on ``x_valid``, on ``x_test`` and on the first ``monitor``
    training images is recorded.

    Args:
        model: the ensemble (trained in place).
        members: one :class:`Member` per model, in order.
        x_train: ``(N, n_pixels)`` tensor on the model's device.
        x_valid: optional validation images.
        x_test: optional test images (recorded so that the test ``-ELBO`` at the
            best-validation evaluation can be reported: early stopping without checkpoints).
        n_epochs: overrides ``model.config.n_epochs``.
        generator: source of every random draw (permutations, samples), on the model's device.
        monitor: number of training images in the recorded exact-sample ``-ELBO``.
        progress: show a ``tqdm`` progress bar over epochs.
        stop: checked before every epoch; when it returns True training is abandoned by raising
            :class:`~redge_mini.book.tasks.TrainingInterrupted`.
        order_seed: when given, the permutations of replicate label ``r`` come from a generator
            of their own seeded with ``order_seed * 2**20 + r``: the mini-batch order is then a
            function of the seed alone, the same in every ensemble (else from ``generator``).
    """
    config = model.config
    if len(members) != model.n_models:
        raise ValueError(f"members has {len(members)} entries for {model.n_models} models")
    if not all(isinstance(m, Member) for m in members):
        raise TypeError("members must be a sequence of Member")
    if x_train.dim() != 2 or x_train.shape[1] != config.n_pixels:
        raise ValueError(f"x_train must have shape (N, {config.n_pixels}), got "
                         f"{tuple(x_train.shape)}")
    n_epochs = config.n_epochs if n_epochs is None else check_int(n_epochs, "n_epochs", 1)
    n_models, n_data, batch = model.n_models, x_train.shape[0], config.batch_size
    n_batches = n_data // batch
    if n_batches < 1:
        raise ValueError(f"batch_size={batch} exceeds the {n_data} training images")
    score = not members[0].pathwise
    if any(m.pathwise == score or m.n_samples != members[0].n_samples for m in members):
        raise ValueError("members mixes pathwise and score-function estimators or different "
                         "n_samples; train them in separate ensembles")
    per_step = batch // members[0].n_samples      # images per step: batch decoder evaluations
    if per_step * members[0].n_samples != batch:
        raise ValueError(f"batch_size={batch} must be a multiple of n_samples="
                         f"{members[0].n_samples} (equal decoder evaluations per step)")
    device = x_train.device
    lr = torch.tensor([config.lr if m.lr is None else m.lr for m in members], device=device)
    optimiser = EnsembleAdam(list(model.parameters()), lr)
    groups = _groups(members)
    replicate = torch.tensor([m.replicate for m in members], device=device)
    n_orders = int(replicate.max()) + 1
    labels = sorted({m.replicate for m in members})
    streams = ({r: torch.Generator().manual_seed(order_seed * 2**20 + r) for r in labels}
               if order_seed is not None else {})
    losses, evals = [], []
    eval_epochs: list[int] = []
    start = time.perf_counter()
    for epoch in tqdm(range(1, n_epochs + 1), disable=not progress, desc="VAE", leave=False):
        if stop is not None and stop():
            raise TrainingInterrupted(f"VAE training stopped before epoch {epoch}")
        if streams:
            rows = {r: torch.randperm(n_data, generator=g).to(device) for r, g in streams.items()}
            order = torch.stack([rows[m.replicate] for m in members])
        else:
            order = epoch_order(replicate, n_data, generator, n_orders)
        epoch_loss = torch.zeros(n_models, device=device)
        for b in range(n_batches):
            index = order[:, b * batch:b * batch + per_step]
            xb = x_train[index]                                   # (R, B / S, D)
            logits = model.encode(xb)
            if score:
                loss = score_function_elbo(model, xb, logits, members, generator).mean(dim=1)
            else:
                z = _sample_groups(logits, groups, generator)
                loss = negative_elbo(model, xb, z, logits).mean(dim=1)  # (R,)
            optimiser.zero_grad()
            loss.sum().backward()
            optimiser.step()
            epoch_loss += loss.detach()
        losses.append(epoch_loss / n_batches)
        if epoch % config.eval_every == 0 or epoch == n_epochs:
            eval_epochs.append(epoch)
            row = [mean_negative_elbo(model, x_train[:monitor], generator=generator)]
            for extra in (x_valid, x_test):
                if extra is not None:
                    row.append(mean_negative_elbo(model, extra, generator=generator))
            evals.append(torch.stack(row))
    seconds = time.perf_counter() - start
    stacked = torch.stack(evals, dim=-1).cpu()                    # (1 to 3, R, T)
    empty = torch.empty(n_models, 0)
    return History(
        epochs=torch.arange(1, n_epochs + 1),
        train_loss=torch.stack(losses, dim=-1).cpu(),
        eval_epochs=torch.tensor(eval_epochs),
        train_neg_elbo_exact=stacked[0],
        valid_neg_elbo=stacked[1] if x_valid is not None else empty,
        seconds=seconds,
        test_neg_elbo=stacked[-1] if x_test is not None else empty,
        steps_per_epoch=n_batches,
    )


@torch.no_grad()
def importance_weighted_bound(
    model: EnsembleVAE,
    x: torch.Tensor,
    n_samples: int,
    *,
    generator: torch.Generator | None = None,
    max_rows: int = 200_000,
) -> torch.Tensor:
    """The importance-weighted lower bound on ``log p(x)``, per model and datum: ``(R, N)``.

    ``log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s | x)`` with ``z_s ~ q(z | x)`` exact draws. It
    equals the ELBO for ``S = 1``, increases with ``S`` in expectation and tends to ``log p(x)``.
    Samples are processed in chunks of at most ``max_rows`` decoder evaluations.
    """
    n_samples = check_int(n_samples, "n_samples", 1)
    config = model.config
    log_prior = -config.n_latent * math.log(config.n_classes)
    n_models, n_data = model.n_models, x.shape[0]
    out = torch.empty(n_models, n_data, device=x.device)
    data_chunk = max(1, min(n_data, max_rows // max(1, n_models)))
    for d0 in range(0, n_data, data_chunk):
        xb = x[d0:d0 + data_chunk]
        logits = model.encode(xb)                                 # (R, b, L, K)
        log_q = torch.log_softmax(logits, dim=-1)
        b = xb.shape[0]
        per_chunk = max(1, max_rows // (n_models * b))
        acc = torch.full((n_models, b), -math.inf, device=x.device)
        done = 0
        while done < n_samples:
            s = min(per_chunk, n_samples - done)
            z = sample_onehot(logits, s, generator=generator)     # (s, R, b, L, K)
            log_qz = (z * log_q).sum(dim=(-2, -1))                # (s, R, b)
            z_flat = z.transpose(0, 1).reshape(n_models, s * b, *config.latent_shape)
            log_px = log_likelihood(model.decode(z_flat).view(n_models, s, b, -1), xb)
            log_w = log_px + log_prior - log_qz.transpose(0, 1)   # (R, s, b)
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, dim=1))
            done += s
        out[:, d0:d0 + b] = acc - math.log(n_samples)
    return out


def enumerate_latents(n_latent: int, n_classes: int, *, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32, start: int = 0,
                      stop: int | None = None) -> torch.Tensor:
    """One-hot codes ``(M, L, K)`` of the configurations ``start..stop-1`` of ``K^L``:
    :func:`redge_mini.exact.enumerate_onehot` (base-``K`` digits, latent 0 the slowest)."""
    return enumerate_onehot(n_latent, n_classes, dtype=dtype, device=device,
                            max_configs=n_classes**n_latent, start=start, stop=stop)


@torch.no_grad()
def exact_log_likelihood(
    model: EnsembleVAE,
    x: torch.Tensor,
    *,
    max_configurations: int = 2**16,
    chunk: int = 4096,
) -> torch.Tensor:
    """``log p(x) = log sum_z p(z) p(x | z)`` by enumerating all ``K^L`` latents: ``(R, N)``.

    The decoder runs once per configuration (independently of ``x``); ``log p(x | z)`` for all
    pairs is then one matrix product. Refuses ``K^L > max_configurations``.
    """
    config = model.config
    total = config.n_configurations
    if total > max_configurations:
        raise ValueError(
            f"K^L = {config.n_classes}^{config.n_latent} = {total} latent configurations exceed "
            f"max_configurations={max_configurations}; exact enumeration is only for small latents"
        )
    log_prior = -config.n_latent * math.log(config.n_classes)
    acc = torch.full((model.n_models, x.shape[0]), -math.inf, device=x.device)
    for start in range(0, total, chunk):
        z = enumerate_latents(config.n_latent, config.n_classes, device=x.device, dtype=x.dtype,
                              start=start, stop=start + chunk)
        pixel_logits = model.decode(z.expand(model.n_models, *z.shape))    # (R, M, D)
        log_px = x @ pixel_logits.transpose(1, 2) - F.softplus(pixel_logits).sum(-1)[:, None, :]
        acc = torch.logaddexp(acc, torch.logsumexp(log_px, dim=-1))
    return acc + log_prior


@torch.no_grad()
def reconstruct(model: EnsembleVAE, x: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixel probabilities ``p(x | z)`` for ``z ~ q(z | x)`` (exact draw): ``(R, N, D)``."""
    logits = model.encode(x)
    return torch.sigmoid(model.decode(exact_sample(logits, generator)))


@torch.no_grad()
def prior_samples(model: EnsembleVAE, n: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixel probabilities ``p(x | z)`` for ``z`` from the uniform prior: ``(R, n, D)``.

    The same prior draws are decoded by every model, so their outputs can be compared.
    """
    n = check_int(n, "n", 1)
    config = model.config
    weight = next(model.parameters())
    logits = torch.zeros(n, *config.latent_shape, device=weight.device, dtype=weight.dtype)
    z = sample_onehot(logits, 1, generator=generator)[0]
    return torch.sigmoid(model.decode(z.expand(model.n_models, *z.shape)))


@torch.no_grad()
def evaluate(
    model: EnsembleVAE,
    members: Sequence[Member],
    *,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    x_valid: torch.Tensor | None = None,
    iw_samples: int = 1000,
    n_elbo_samples: int = 1,
    generator: torch.Generator | None = None,
    max_configurations: int = 2**16,
) -> dict[str, torch.Tensor]:
    """Every metric of the chapter, per model (``(R,)`` tensors on the CPU, nats per image).

    Keys: ``train_neg_elbo_own`` (training set, each estimator's own forward sample),
    ``train_neg_elbo_exact`` (training set, exact samples from ``q``), ``valid_neg_elbo``,
    ``test_neg_elbo`` (exact samples), ``test_iw_nll`` (minus the importance-weighted bound with
    ``iw_samples`` samples: an upper bound on the test negative log-likelihood) and, when
    ``K^L <= max_configurations``, ``test_exact_nll`` (by enumeration). ``se_test_elbo_minus_iw``
    and ``se_test_iw_minus_exact`` are standard errors of the paired per-image differences of
    those test metrics: they size the Monte-Carlo allowance when checking their ordering.
    """
    def paired_se(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a - b
        return diff.std(dim=1) / math.sqrt(diff.shape[1])

    test_elbo = negative_elbo_per_datum(model, x_test, n_samples=n_elbo_samples,
                                        generator=generator)
    test_iw = -importance_weighted_bound(model, x_test, iw_samples, generator=generator)
    out = {
        "train_neg_elbo_own": mean_negative_elbo(model, x_train, members=members,
                                                 n_samples=n_elbo_samples, generator=generator),
        "train_neg_elbo_exact": mean_negative_elbo(model, x_train, n_samples=n_elbo_samples,
                                                   generator=generator),
        "test_neg_elbo": test_elbo.mean(dim=1),
        "test_iw_nll": test_iw.mean(dim=1),
        "se_test_elbo_minus_iw": paired_se(test_elbo, test_iw),
    }
    if x_valid is not None:
        out["valid_neg_elbo"] = mean_negative_elbo(model, x_valid, n_samples=n_elbo_samples,
                                                   generator=generator)
    if model.config.n_configurations <= max_configurations:
        exact = -exact_log_likelihood(model, x_test, max_configurations=max_configurations)
        out["test_exact_nll"] = exact.mean(dim=1)
        out["se_test_iw_minus_exact"] = paired_se(test_iw, exact)
    return {k: v.cpu() for k, v in out.items()}


def time_training_steps(
    estimators: Sequence[tuple[str, dict[str, float | int]]],
    x_train: torch.Tensor,
    config: VAEConfig,
    *,
    n_steps: int = 20,
    n_warmup: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Median wall time (seconds) of one training step of a single VAE, per estimator.

    All estimators are timed in the same process, interleaved step by step (round robin) so that
    a slow phase of the machine affects them alike; CUDA work is synchronised before each clock
    reading. A step is: forward of encoder, latent sample, decoder, loss, backward, Adam update.
    """
    n_steps = check_int(n_steps, "n_steps", 1)
    n_warmup = check_int(n_warmup, "n_warmup", 0)
    device = x_train.device
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = config.batch_size
    if x_train.shape[0] < batch:
        raise ValueError(f"x_train has {x_train.shape[0]} images, fewer than batch_size={batch}")
    setups = []
    for name, knobs in estimators:
        if not get_spec(name).pathwise:
            raise ValueError(f"time_training_steps times pathwise estimators only, got {name!r}")
        member = Member(name, knobs)
        model = EnsembleVAE(1, config, generator=generator, device=device)
        setups.append((name, model, torch.optim.Adam(model.parameters(), lr=config.lr),
                       _groups([member])))
    names = [name for name, *_ in setups]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators lists a name twice: {names}")
    times: dict[str, list[float]] = {name: [] for name in names}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in range(n_warmup + n_steps):
        index = torch.randint(0, x_train.shape[0], (1, batch), device=device,
                              generator=generator)
        xb = x_train[index]
        for name, model, optimiser, groups in setups:
            sync()
            tic = time.perf_counter()
            logits = model.encode(xb)
            z = groups[0][2](logits, generator=generator)
            loss = negative_elbo(model, xb, z, logits).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            sync()
            if step >= n_warmup:
                times[name].append(time.perf_counter() - tic)
    return {name: float(torch.tensor(t).median()) for name, t in times.items()}
