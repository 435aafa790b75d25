"""Reward guidance of a masked image-token model: the book's stand-in for MaskGIT + CLIP.

The authors steer a large masked image-token model (MaskGIT) with a CLIP score. Neither model can
be downloaded here, so this module builds the same structure from scratch, small enough for a
laptop:

* **Image tokens.** scikit-learn's 1,797 digits (8 x 8 pixels, intensities 0..16) quantised to
  ``K = 4`` grey levels: an image is a sequence of ``L = 64`` categorical tokens. Four levels keep
  the variables genuinely categorical (``K > 2``, where the estimators differ most) while every
  model trains in seconds to a minute on a CPU.
* **Decoder.** A token's one-hot vector is mapped to its grey level by a matrix product,
  ``pixels = one_hot @ levels`` (:func:`decode`), the analogue of MaskGIT's VQ decoder: it is
  linear, hence differentiable in the one-hot input, so a pathwise estimator can pass a gradient
  through it.
* **Prior.** A class-conditional :class:`~redge_mini.book.masked_diffusion.MaskedDenoiser` trained
on
  the token images (:func:`train_prior`); it plays MaskGIT.
* **Reward.** A small CNN classifier trained from scratch on the decoded token images; the reward
  of an image is ``log p(target class | image)`` (:func:`class_log_prob`); it plays CLIP. A second
  classifier with another architecture and seed, the *judge*, never sees the guidance and checks
  whether a steered image really looks like the target class or merely fools the reward network.
* **Guidance.** Prior samples of a source class are steered towards a target class with the
  per-step variational procedure of :func:`redge_mini.book.guidance.guided_sample`: at every
  unmasking
  step the variational logits start at the prior's logits and take ``N`` Adam steps on
  ``-scale * reward(estimator sample) + lam * KL(q || prior)``.

Stored weights live in ``redge_mini/book/data/`` (``image_prior.pt`` for the prior,
``image_guidance_models.pt`` for both classifiers and the training record), made by
``python -m redge_mini.book.experiments.train_image_models``; :func:`load_image_models` finds them
from
any working directory.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from redge_mini.book.datasets import load_digits_8x8
from redge_mini.book.guidance import guided_sample
from redge_mini.book.masked_diffusion import (
    MaskedDenoiser,
    data_path,
    load_denoiser,
    save_denoiser,
    train_masked_denoiser,
)
from redge_mini.validation import check_int, check_real

__all__ = [
    "IMAGE_SIDE",
    "N_CLASSES",
    "N_LEVELS",
    "PRIOR_FILE",
    "SEQ_LEN",
    "WEIGHTS_FILE",
    "DigitCNN",
    "DigitMLP",
    "GuidanceRun",
    "ImageModels",
    "accuracy",
    "class_log_prob",
    "decode",
    "grey_levels",
    "guide_images",
    "image_grid",
    "load_digit_tokens",
    "load_image_models",
    "quantise",
    "save_image_models",
    "steering_targets",
    "train_classifier",
    "train_prior",
]

#: Side of a digit image in pixels.
IMAGE_SIDE: int = 8
#: Number of tokens per image (one per pixel).
SEQ_LEN: int = IMAGE_SIDE * IMAGE_SIDE
#: Number of grey levels, i.e. categories per token.
N_LEVELS: int = 4
#: Number of digit classes.
N_CLASSES: int = 10
#: File name of the stored models in ``redge_mini/book/data``.
WEIGHTS_FILE: str = "image_guidance_models.pt"

def _check_one_hot_shape(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating (one-hot or relaxed) tensor, got {x.dtype}")
    if x.dim() < 2 or x.shape[-1] != N_LEVELS or x.shape[-2] != SEQ_LEN:
        raise ValueError(
            f"{name} must have shape (..., {SEQ_LEN}, {N_LEVELS}) (tokens x grey levels), "
            f"got {tuple(x.shape)}"
        )
    return x


def grey_levels(n_levels: int = N_LEVELS) -> torch.Tensor:
    """Return the grey value of each token: ``k / (n_levels - 1)`` for ``k = 0..n_levels-1``.

    Parameters
    ----------
    n_levels : int
        Number of grey levels (>= 2).

    Returns
    -------
    torch.Tensor
        Float tensor of shape ``(n_levels,)`` from 0 (background) to 1 (ink).
    """
    n_levels = check_int(n_levels, "n_levels", 2)
    return torch.linspace(0.0, 1.0, n_levels)


def quantise(images: np.ndarray | torch.Tensor, n_levels: int = N_LEVELS) -> torch.Tensor:
    """Quantise intensities in ``[0, 1]`` to the nearest of ``n_levels`` evenly spaced levels.

    Parameters
    ----------
    images : array or tensor
        Intensities in ``[0, 1]``, any shape.
    n_levels : int
        Number of grey levels.

    Returns
    -------
    torch.Tensor
        Long tensor of tokens in ``{0, .., n_levels - 1}`` with the shape of ``images``: the index
        of the level of :func:`grey_levels` nearest to each intensity.
    """
    n_levels = check_int(n_levels, "n_levels", 2)
    x = torch.as_tensor(np.asarray(images, dtype=np.float64))
    if x.numel() and not (bool(torch.isfinite(x).all()) and x.min() >= 0 and x.max() <= 1):
        raise ValueError("images must hold finite intensities in [0, 1]")
    return torch.round(x * (n_levels - 1)).long()


def load_digit_tokens(split: str = "train", *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8 x 8 digits as token images, split as in :mod:`redge_mini.book.datasets`.

    The split is the data module's default (shuffled with ``seed``; 200 validation and 200 test
    images, 1,397 training images). The stored models were trained on ``split="train"`` with
    ``seed=0``; their accuracies are measured on ``"test"``.

    Parameters
    ----------
    split : {"train", "valid", "test"}
        Which part to return.
    seed : int
        Seed of the shuffle (keep 0 to stay disjoint from the stored models' training images).

    Returns
    -------
    tokens : torch.Tensor
        Long tensor ``(N, 64)`` with values in ``{0, 1, 2, 3}``, pixels in row-major order.
    labels : torch.Tensor
        Long tensor ``(N,)`` of digit classes.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    seed = check_int(seed, "seed", 0)
    parts = load_digits_8x8(seed=seed)
    images = getattr(parts, f"x_{split}")
    labels = torch.as_tensor(getattr(parts, f"y_{split}"), dtype=torch.long)
    return quantise(images).reshape(len(labels), SEQ_LEN), labels


def decode(one_hot: torch.Tensor) -> torch.Tensor:
    """Map token one-hots (or relaxed samples) to pixel intensities: ``one_hot @ grey_levels()``.

    Parameters
    ----------
    one_hot : torch.Tensor
        Float tensor ``(..., 64, 4)``; rows are one-hot (hard samples) or points of the simplex.

    Returns
    -------
    torch.Tensor
        Pixel intensities ``(..., 8, 8)`` in ``[0, 1]``, differentiable in ``one_hot``.
    """
    one_hot = _check_one_hot_shape(one_hot, "one_hot")
    pixels = one_hot @ _levels_on(one_hot.device, one_hot.dtype)
    return pixels.reshape(*one_hot.shape[:-2], IMAGE_SIDE, IMAGE_SIDE)


@functools.cache
def _levels_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`grey_levels` on ``device`` in ``dtype``, made once (no copy in the guidance loop)."""
    return grey_levels().to(device=device, dtype=dtype)


class DigitCNN(nn.Module):
    """The reward network: a two-layer CNN on decoded token images (about 10k parameters).

    ``forward(one_hot)`` takes ``(B, 64, 4)`` one-hot tokens and returns ``(B, 10)`` class logits.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        channels = check_int(channels, "channels", 1)
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.GELU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * channels * (IMAGE_SIDE // 2) ** 2, N_CLASSES),
        )

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, 10)`` of one-hot tokens ``(B, 64, 4)``."""
        return self.net(decode(one_hot).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE))


class DigitMLP(nn.Module):
    """The judge: a one-hidden-layer MLP on decoded token images, used only for evaluation.

    ``forward(one_hot)`` takes ``(B, 64, 4)`` one-hot tokens and returns ``(B, 10)`` class logits.
    """

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        hidden = check_int(hidden, "hidden", 1)
        self.net = nn.Sequential(
            nn.Linear(SEQ_LEN, hidden), nn.GELU(), nn.Linear(hidden, N_CLASSES)
        )

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, 10)`` of one-hot tokens ``(B, 64, 4)``."""
        return self.net(decode(one_hot).reshape(-1, SEQ_LEN))


_CLASSIFIERS = {"cnn": DigitCNN, "mlp": DigitMLP}


def train_classifier(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    arch: str = "cnn",
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-3,
    token_noise: float = 0.05,
    generator: torch.Generator,
) -> nn.Module:
    """Train a digit classifier on token images from scratch.

    Each epoch visits the images in a random order; a fraction ``token_noise`` of each image's
    tokens is replaced by random grey levels (a mild augmentation that makes the reward less
    easy to fool with isolated pixels).

    Parameters
    ----------
    tokens, labels : torch.Tensor
        Long tensors ``(N, 64)`` and ``(N,)`` (see :func:`load_digit_tokens`).
    arch : {"cnn", "mlp"}
        :class:`DigitCNN` (the reward) or :class:`DigitMLP` (the judge).
    epochs, batch_size : int
        Passes over the data and images per Adam step.
    lr : float
        Adam learning rate.
    token_noise : float
        Probability in ``[0, 1)`` that a token is resampled uniformly during training.
    generator : torch.Generator
        CPU generator for the initialisation, the order and the augmentation.

    Returns
    -------
    torch.nn.Module
        The trained classifier in eval mode, on the CPU.
    """
    if arch not in _CLASSIFIERS:
        raise ValueError(f"arch must be one of {sorted(_CLASSIFIERS)}, got {arch!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    tokens, labels = _check_tokens_labels(tokens, labels)
    epochs = check_int(epochs, "epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    if not (isinstance(token_noise, numbers.Real) and 0.0 <= float(token_noise) < 1.0):
        raise ValueError(f"token_noise must lie in [0, 1), got {token_noise!r}")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _CLASSIFIERS[arch]()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            idx = order[start : start + batch_size]
            batch = tokens[idx].clone()
            noisy = torch.rand(batch.shape, generator=generator) < token_noise
            batch[noisy] = torch.randint(
                0, N_LEVELS, (int(noisy.sum()),), generator=generator
            )
            loss = F.cross_entropy(model(F.one_hot(batch, N_LEVELS).float()), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def _check_tokens_labels(
    tokens: object, labels: object
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long:
        raise TypeError("tokens must be a torch.long tensor of shape (N, 64)")
    if tokens.dim() != 2 or tokens.shape[1] != SEQ_LEN:
        raise ValueError(f"tokens must have shape (N, {SEQ_LEN}), got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= N_LEVELS):
        raise ValueError(f"tokens must take values in 0..{N_LEVELS - 1}")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long:
        raise TypeError("labels must be a torch.long tensor of shape (N,)")
    if labels.shape != tokens.shape[:1]:
        raise ValueError(
            f"labels must have shape ({tokens.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"labels must take values in 0..{N_CLASSES - 1}")
    return tokens, labels


@torch.no_grad()
def accuracy(classifier: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of token images ``(N, 64)`` whose predicted class equals ``labels``."""
    tokens, labels = _check_tokens_labels(tokens, labels)
    param = next(classifier.parameters())
    logits = classifier(F.one_hot(tokens.to(param.device), N_LEVELS).to(param.dtype))
    return float((logits.argmax(-1).cpu() == labels).float().mean())


def class_log_prob(
    classifier: nn.Module, one_hot: torch.Tensor, target: torch.Tensor | int
) -> torch.Tensor:
    """The reward: ``log p(target | decode(one_hot))`` under ``classifier``, differentiable.

    Parameters
    ----------
    classifier : torch.nn.Module
        A :class:`DigitCNN` or :class:`DigitMLP`.
    one_hot : torch.Tensor
        Float tensor ``(B, 64, 4)`` of one-hot (or relaxed) tokens.
    target : int or torch.Tensor
        Target class, one for all images or a long tensor ``(B,)``.

    Returns
    -------
    torch.Tensor
        Log-probabilities ``(B,)`` (at most 0).
    """
    one_hot = _check_one_hot_shape(one_hot, "one_hot")
    if one_hot.dim() != 3:
        raise ValueError(f"one_hot must have shape (B, 64, 4), got {tuple(one_hot.shape)}")
    batch = one_hot.shape[0]
    if isinstance(target, torch.Tensor):
        target = target.to(device=one_hot.device, dtype=torch.long)
        if target.dim() == 0:
            target = target.expand(batch)
        if target.shape != (batch,):
            raise ValueError(f"target must have shape ({batch},), got {tuple(target.shape)}")
    else:
        target = torch.full((batch,), check_int(target, "target", 0), device=one_hot.device)
    if target.numel() and (target.min() < 0 or target.max() >= N_CLASSES):
        raise ValueError(f"target must take values in 0..{N_CLASSES - 1}")
    return _log_prob(classifier, one_hot, target)


def _log_prob(classifier: nn.Module, one_hot: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`class_log_prob` without the checks, for the guidance loop (``target`` is ``(B,)``)."""
    log_probs = F.log_softmax(classifier(one_hot), dim=-1)
    return log_probs.gather(-1, target[:, None]).squeeze(-1)


def image_grid(tokens: torch.Tensor, n_cols: int, *, pad: int = 1) -> np.ndarray:
    """Tile token images ``(N, 64)`` into one grey-level array for ``imshow``.

    Parameters
    ----------
    tokens : torch.Tensor
        Long tensor ``(N, 64)`` of grey-level tokens.
    n_cols : int
        Images per row.
    pad : int
        Pixels of padding between images (drawn at value ``nan``, i.e. blank with a colormap
        that sets a ``bad`` colour).

    Returns
    -------
    numpy.ndarray
        Float array ``(rows * (8 + pad) - pad, n_cols * (8 + pad) - pad)``, intensities in
        ``[0, 1]``.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] != SEQ_LEN:
        raise ValueError(f"tokens must be a tensor of shape (N, {SEQ_LEN})")
    n_cols = check_int(n_cols, "n_cols", 1)
    pad = check_int(pad, "pad", 0)
    pixels = grey_levels()[tokens.detach().cpu().long()].reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    n_rows = max(1, math.ceil(len(pixels) / n_cols))
    step = IMAGE_SIDE + pad
    grid = np.full((n_rows * step - pad, n_cols * step - pad), np.nan)
    for i, image in enumerate(pixels.numpy()):
        r, c = divmod(i, n_cols)
        grid[r * step : r * step + IMAGE_SIDE, c * step : c * step + IMAGE_SIDE] = image
    return grid


def train_prior(
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    label_dropout: float = 0.1,
    generator: torch.Generator,
    progress: bool = False,
) -> tuple[MaskedDenoiser, dict[str, list[float]]]:
    """Train the class-conditional masked token model (the prior) on token images.

    A :class:`~redge_mini.book.masked_diffusion.MaskedDenoiser` over ``K = 4`` grey levels and
    ``L = 64`` positions with 10 classes (plus the "no class" label used with probability
    ``label_dropout``), trained by :func:`~redge_mini.book.masked_diffusion.train_masked_denoiser`.

    Parameters
    ----------
    tokens, labels : torch.Tensor
        Long tensors ``(N, 64)`` and ``(N,)``.
    width, depth, heads : int
        Transformer size.
    steps, batch_size : int
        Adam steps and images per step.
    lr : float
        Peak learning rate.
    label_dropout : float
        Probability of training a sequence without its class.
    generator : torch.Generator
        CPU generator for the initialisation and every training draw.
    progress : bool
        Show a progress bar.

    Returns
    -------
    (MaskedDenoiser, dict)
        The model in eval mode and the loss history ``{"step", "loss"}``.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    tokens, labels = _check_tokens_labels(tokens, labels)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MaskedDenoiser(
            N_LEVELS, SEQ_LEN, width=width, depth=depth, heads=heads, n_classes=N_CLASSES
        )
    history = train_masked_denoiser(
        model, tokens, steps=steps, batch_size=batch_size, lr=lr, generator=generator,
        labels=labels, label_dropout=label_dropout, progress=progress,
    )
    return model, history


@dataclass
class ImageModels:
    """The three trained models of the image experiment and what is known about their training.

    Attributes
    ----------
    prior : MaskedDenoiser
        Class-conditional masked token model (plays MaskGIT).
    reward : DigitCNN
        Classifier whose log-probability is the reward (plays CLIP).
    judge : DigitMLP
        Independent classifier used only to evaluate guided samples.
    meta : dict
        Training configuration, losses and held-out accuracies recorded when the models were made.
    """

    prior: MaskedDenoiser
    reward: nn.Module
    judge: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ImageModels:
        """Move the three models to ``device`` (in place) and return ``self``."""
        for model in (self.prior, self.reward, self.judge):
            model.to(device)
        return self


PRIOR_FILE: str = "image_prior.pt"


def save_image_models(models: ImageModels, folder: str | Path | None = None) -> list[Path]:
    """Store the models: the prior with :func:`~redge_mini.book.masked_diffusion.save_denoiser`
    (float16) and both classifiers (float32 state dicts) in :data:`WEIGHTS_FILE`.

    Parameters
    ----------
    models : ImageModels
        The models to store.
    folder : str, pathlib.Path or None
        Destination folder; default the package's ``redge_mini/book/data``.

    Returns
    -------
    list of pathlib.Path
        The two files written.
    """
    if not isinstance(models, ImageModels):
        raise TypeError(f"models must be an ImageModels, got {type(models).__name__}")
    folder = Path(folder) if folder is not None else data_path(WEIGHTS_FILE).parent
    folder.mkdir(parents=True, exist_ok=True)
    prior_path = save_denoiser(
        models.prior, folder / PRIOR_FILE, half=True, meta=models.meta.get("prior", {})
    )
    record = {
        "reward": {k: v.detach().cpu() for k, v in models.reward.state_dict().items()},
        "judge": {k: v.detach().cpu() for k, v in models.judge.state_dict().items()},
        "meta": models.meta,
    }
    classifier_path = folder / WEIGHTS_FILE
    torch.save(record, classifier_path)
    return [prior_path, classifier_path]


def load_image_models(
    folder: str | Path | None = None, *, device: torch.device | str | None = None
) -> ImageModels:
    """Load the stored prior, reward classifier and judge (from any working directory).

    Parameters
    ----------
    folder : str, pathlib.Path or None
        Folder holding :data:`PRIOR_FILE` and :data:`WEIGHTS_FILE`; default the package's
        ``redge_mini/book/data`` (found through :mod:`importlib.resources`).
    device : torch.device, str or None
        Where to put the models (default CPU).

    Returns
    -------
    ImageModels
        The three models in eval mode, float32.

    Raises
    ------
    FileNotFoundError
        If the weights were never made (see ``redge_mini.book.experiments.train_image_models``).
    """
    if folder is None:
        classifier_path = data_path(WEIGHTS_FILE)
        prior_path = data_path(PRIOR_FILE)
    else:
        classifier_path = Path(folder) / WEIGHTS_FILE
        prior_path = Path(folder) / PRIOR_FILE
    for path in (classifier_path, prior_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"no stored image model at {path}; make it with "
                "`python -m redge_mini.book.experiments.train_image_models`"
            )
    prior, _ = load_denoiser(prior_path, device=device)
    record = torch.load(classifier_path, map_location="cpu", weights_only=True)
    reward, judge = DigitCNN(), DigitMLP()
    reward.load_state_dict(record["reward"])
    judge.load_state_dict(record["judge"])
    models = ImageModels(prior, reward.eval(), judge.eval(), dict(record.get("meta", {})))
    return models.to(device or "cpu")


def steering_targets(source: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """The target class of each source class: ``(source + shift) mod 10``.

    A fixed rule rather than hand-picked pairs, so that easy and hard conversions (``1 -> 2``,
    ``7 -> 8``, ...) are averaged alike.
    """
    shift = check_int(shift, "shift", 1)
    if shift % N_CLASSES == 0:
        raise ValueError(f"shift must not be a multiple of {N_CLASSES}, got {shift}")
    return (source + shift) % N_CLASSES


@dataclass
class GuidanceRun:
    """One batch of guided (or unguided) samples and its per-image metrics.

    Attributes
    ----------
    tokens : torch.Tensor
        ``(B, 64)`` generated token images (CPU).
    source, target : torch.Tensor
        ``(B,)`` class given to the prior and class the reward asks for.
    per_image : dict of torch.Tensor
        ``(B,)`` tensors: ``reward`` (``log p_reward(target | x)``), ``reward_hit`` (the reward
        classifier's top class is the target), ``judge_hit`` (the judge's top class is the
        target), ``judge_source`` (the judge still sees the source class), ``kl`` (KL of the
        variational distributions to the prior, summed over each cell at its reveal step) and
        ``nll_prior`` (minus the prior log-probability of the revealed tokens).
    seconds : float
        Wall time of the sampling.
    """

    tokens: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    per_image: dict[str, torch.Tensor]
    seconds: float


def guide_images(
    models: ImageModels,
    estimator: str,
    *,
    n_per_class: int,
    n_inner: int,
    lr: float = 0.1,
    knobs: dict[str, Any] | None = None,
    lam: float = 1.0,
    reward_scale: float = 10.0,
    n_unmask_steps: int = 12,
    shift: int = 1,
    seed: int = 0,
) -> GuidanceRun:
    """Generate ``n_per_class`` images of every class and steer them towards another class.

    The prior is conditioned on the source class ``c``; the reward is
    ``reward_scale * log p_reward(target | x)`` with ``target = (c + shift) mod 10``; guidance is
    :func:`redge_mini.book.guidance.guided_sample` with ``maximize=True`` (so the inner loss is
    ``-reward_scale * log p + lam * KL``). ``n_inner = 0`` gives the unguided baseline (greedy
    decoding of the prior on the same unmasking schedule). Every image is independent of the others
    (Adam acts elementwise and the loss is a sum over images), so standard errors over images are
    valid. The three models are put in eval mode and their parameters frozen
    (``requires_grad_(False)``): guidance differentiates with respect to the tokens only.

    Parameters
    ----------
    models : ImageModels
        Prior, reward and judge, all on the same device.
    estimator : str
        Name in :data:`redge_mini.registry.ESTIMATORS`.
    n_per_class : int
        Images per source class (batch size ``10 * n_per_class``).
    n_inner : int
        Adam steps per unmasking step (the budget ``N``).
    lr : float
        Adam learning rate on the variational logits.
    knobs : dict or None
        The estimator's knobs.
    lam : float
        Weight of the KL to the prior.
    reward_scale : float
        Multiplier of the log-probability reward (the authors use ``100 * CLIP``).
    n_unmask_steps : int
        Unmasking steps ``T``.
    shift : int
        Target class offset, see :func:`steering_targets`.
    seed : int
        Seed of the sampling generator.

    Returns
    -------
    GuidanceRun
        The samples and per-image metrics.
    """
    if not isinstance(models, ImageModels):
        raise TypeError(f"models must be an ImageModels, got {type(models).__name__}")
    n_per_class = check_int(n_per_class, "n_per_class", 1)
    reward_scale = check_real(reward_scale, "reward_scale", minimum=0.0, strict=True)
    seed = check_int(seed, "seed", 0)
    dev = next(models.prior.parameters()).device
    source = torch.arange(N_CLASSES, device=dev).repeat_interleave(n_per_class)
    target = steering_targets(source, shift)
    reward_model = models.reward

    def objective(one_hot: torch.Tensor) -> torch.Tensor:
        # class_log_prob without its checks: the loop calls this n_unmask_steps * n_inner times,
        # and checking the targets' range would synchronise a GPU at every call
        return reward_scale * _log_prob(reward_model, one_hot, target)

    generator = torch.Generator(device=dev)
    generator.manual_seed(seed)
    for model in (models.prior, models.reward, models.judge):
        model.eval().requires_grad_(False)
    start = time.perf_counter()
    tokens, info = guided_sample(
        models.prior, objective, estimator, n_unmask_steps=n_unmask_steps, n_inner=n_inner,
        lam=lam, lr=lr, knobs=knobs, generator=generator, n=len(source), cond=source,
        maximize=True,
    )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        one_hot = F.one_hot(tokens, N_LEVELS).float()
        reward = class_log_prob(models.reward, one_hot, target)
        reward_top = models.reward(one_hot).argmax(-1)
        judge_top = models.judge(one_hot).argmax(-1)
    per_image = {
        "reward": reward.cpu(),
        "reward_hit": (reward_top == target).float().cpu(),
        "judge_hit": (judge_top == target).float().cpu(),
        "judge_source": (judge_top == source).float().cpu(),
        "kl": info["kl_revealed"].float().clamp(min=0.0).cpu(),  # KL >= 0 up to rounding
        "nll_prior": info["nll_prior"].float().cpu(),
    }
    return GuidanceRun(tokens.cpu(), source.cpu(), target.cpu(), per_image, seconds)
