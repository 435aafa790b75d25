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
* **Prior.** A class-conditional :class:`~redge_mini.masked_diffusion.MaskedDenoiser` trained on
  the token images (:func:`train_prior`); it plays MaskGIT.
* **Reward.** A small CNN classifier trained from scratch on the decoded token images; the reward
  of an image is ``log p(target class | image)`` (:func:`class_log_prob`); it plays CLIP. A second
  classifier with another architecture and seed, the *judge*, never sees the guidance and checks
  whether a steered image really looks like the target class or merely fools the reward network.
* **Guidance.** Prior samples of a source class are steered towards a target class with the
  per-step variational procedure of :func:`redge_mini.guidance.guided_sample`: at every unmasking
  step the variational logits start at the prior's logits and take ``N`` Adam steps on
  ``-scale * reward(estimator sample) + lam * KL(q || prior)``.

Stored weights live in ``redge_mini/data/image_guidance_models.pt`` (made by
``python -m redge_mini.experiments.train_image_models``) and load from any working directory
(:func:`load_image_models`).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "IMAGE_SIDE",
    "N_CLASSES",
    "N_LEVELS",
    "SEQ_LEN",
    "WEIGHTS_FILE",
    "DigitCNN",
    "DigitMLP",
    "ImageModels",
    "accuracy",
    "class_log_prob",
    "decode",
    "grey_levels",
    "image_grid",
    "load_digit_tokens",
    "load_image_models",
    "quantise",
    "train_classifier",
]

#: Side of a digit image in pixels.
IMAGE_SIDE: int = 8
#: Number of tokens per image (one per pixel).
SEQ_LEN: int = IMAGE_SIDE * IMAGE_SIDE
#: Number of grey levels, i.e. categories per token.
N_LEVELS: int = 4
#: Number of digit classes.
N_CLASSES: int = 10
#: File name of the stored models in ``redge_mini/data``.
WEIGHTS_FILE: str = "image_guidance_models.pt"

_MAX_INTENSITY = 16.0  # scikit-learn's digits take integer values 0..16


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


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
    n_levels = _check_int(n_levels, "n_levels", 2)
    return torch.linspace(0.0, 1.0, n_levels)


def quantise(images: np.ndarray | torch.Tensor, n_levels: int = N_LEVELS) -> torch.Tensor:
    """Quantise intensities in ``[0, 16]`` to the nearest of ``n_levels`` evenly spaced levels.

    Parameters
    ----------
    images : array or tensor
        Intensities in ``[0, 16]`` (scikit-learn's digits), any shape.
    n_levels : int
        Number of grey levels.

    Returns
    -------
    torch.Tensor
        Long tensor of tokens in ``{0, .., n_levels - 1}`` with the shape of ``images``; decoding a
        token with :func:`grey_levels` returns the level nearest to ``intensity / 16``.
    """
    n_levels = _check_int(n_levels, "n_levels", 2)
    x = torch.as_tensor(np.asarray(images, dtype=np.float64))
    if x.numel() and (x.min() < 0 or x.max() > _MAX_INTENSITY):
        raise ValueError(f"images must lie in [0, {_MAX_INTENSITY:g}]")
    return torch.round(x / _MAX_INTENSITY * (n_levels - 1)).long()


def _digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8 x 8 digits as ``(images (N, 8, 8) in 0..16, labels (N,))``."""
    try:
        from redge_mini.datasets import load_digits_8x8
    except ImportError:
        load_digits_8x8 = None
    if load_digits_8x8 is not None:
        loaded = load_digits_8x8()
        images, labels = loaded[0], loaded[1]
        images = np.asarray(images, dtype=np.float64).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
        if images.max() <= 1.0:  # a loader that rescales to [0, 1]
            images = images * _MAX_INTENSITY
        return images, np.asarray(labels)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def load_digit_tokens(
    split: str = "train", *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the 8 x 8 digits as token images, with a fixed stratified train/test split.

    Parameters
    ----------
    split : {"train", "test", "all"}
        Which part to return.
    test_fraction : float
        Fraction of each class held out for testing (in ``(0, 1)``).
    seed : int
        Seed of the split (the stored models use ``seed=0``).

    Returns
    -------
    tokens : torch.Tensor
        Long tensor ``(N, 64)`` with values in ``{0, 1, 2, 3}``, row-major pixels.
    labels : torch.Tensor
        Long tensor ``(N,)`` of digit classes.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not (isinstance(test_fraction, numbers.Real) and 0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    seed = _check_int(seed, "seed", 0)
    images, labels = _digits_8x8()
    tokens = quantise(images).reshape(len(images), SEQ_LEN)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    if split == "all":
        return tokens, labels_t
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in range(N_CLASSES):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(float(test_fraction) * len(idx)))
        test_mask[rng.choice(idx, size=n_test, replace=False)] = True
    keep = torch.as_tensor(test_mask if split == "test" else ~test_mask)
    return tokens[keep], labels_t[keep]


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
    pixels = one_hot @ grey_levels().to(device=one_hot.device, dtype=one_hot.dtype)
    return pixels.reshape(*one_hot.shape[:-2], IMAGE_SIDE, IMAGE_SIDE)


class DigitCNN(nn.Module):
    """The reward network: a two-layer CNN on decoded token images (about 10k parameters).

    ``forward(one_hot)`` takes ``(B, 64, 4)`` one-hot tokens and returns ``(B, 10)`` class logits.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        channels = _check_int(channels, "channels", 1)
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
        hidden = _check_int(hidden, "hidden", 1)
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
    epochs = _check_int(epochs, "epochs", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    lr = _check_positive(lr, "lr")
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
        target = torch.full((batch,), _check_int(target, "target", 0), device=one_hot.device)
    if target.numel() and (target.min() < 0 or target.max() >= N_CLASSES):
        raise ValueError(f"target must take values in 0..{N_CLASSES - 1}")
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
    n_cols = _check_int(n_cols, "n_cols", 1)
    pad = _check_int(pad, "pad", 0)
    pixels = grey_levels()[tokens.detach().cpu().long()].reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    n_rows = max(1, math.ceil(len(pixels) / n_cols))
    step = IMAGE_SIDE + pad
    grid = np.full((n_rows * step - pad, n_cols * step - pad), np.nan)
    for i, image in enumerate(pixels.numpy()):
        r, c = divmod(i, n_cols)
        grid[r * step : r * step + IMAGE_SIDE, c * step : c * step + IMAGE_SIDE] = image
    return grid
