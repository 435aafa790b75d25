"""Reward guidance of a masked image-token model: the book's stand-in for Halton-MaskGIT + CLIP.

The authors steer Halton-MaskGIT (a masked token model over a 24 x 24 grid of LlamaGen VQ-16 codes,
16,384 codes) with a CLIP score. Neither model can be downloaded here, so this module builds the
same pipeline from scratch on the 5,000 MNIST digits of :func:`~redge_mini.book.datasets.
load_mnist_5k`, small enough to train in minutes on one CPU thread but with a vocabulary of
hundreds of codes:

* **VQ tokens.** Each 28 x 28 digit is cut into 4 x 4 patches (a 7 x 7 grid, ``L = 49`` tokens);
  every patch is replaced by the nearest of ``K = 256`` code vectors learned by k-means on the
  training patches (:func:`fit_codebook`, :func:`encode`).
* **Decoder.** :class:`VQDecoder` maps one-hot codes ``(B, 49, K)`` to pixels: ``one_hot @ E`` (a
  learned code embedding, as ``x0 @ codebook`` in the authors' code) followed by a small
  convolutional network with non-linearities; it is trained to reconstruct the *original* digit
  from its codes, so it is differentiable in the one-hot input and not a table look-up.
* **Prior.** A class-conditional :class:`~redge_mini.book.masked_diffusion.MaskedDenoiser` over
  the codes (with row and column position groups), sampled with classifier-free guidance.
* **Reward.** ``log p(target | decode(X))`` of a small CNN trained on decoded digits
  (:class:`DigitCNN`); a second classifier (:class:`DigitMLP`, the *judge*) never sees the
  guidance and checks whether a steered image looks like the target to an independent reader.
* **Sampler.** :func:`guided_remdm_sample`, the authors' structure: at each step, variational
  logits ``phi`` start at the prior's (classifier-free guided) logits, take ``N`` Adam steps on
  ``-s * reward(decode(X)) + lam * KL(q_phi || prior)`` with ``X`` the estimator's one-hot sample
  of ``phi``; then codes are drawn from ``Cat(phi)`` and the grid moves to the next noise level by
  the ReMDM bridge with remasking ``sigma`` (:func:`remdm_bridge`).

The weights live in ``redge_mini/book/data/`` (:data:`MODELS_FILE`: codebook, decoder, reward and
judge, with the training record; :data:`PRIOR_FILE`: the prior), made by
``python -m redge_mini.book.experiments.train_image_models``.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from redge_mini.book.guidance import kl_to_prior
from redge_mini.book.masked_diffusion import (
    MaskedDenoiser,
    data_path,
    load_denoiser,
    save_denoiser,
)
from redge_mini.registry import make_estimator
from redge_mini.validation import check_generator, check_int, check_real

__all__ = [
    "GRID",
    "IMAGE_SIDE",
    "MODELS_FILE",
    "N_CLASSES",
    "N_CODES",
    "PATCH",
    "PRIOR_FILE",
    "SEQ_LEN",
    "RewardEnsemble",
    "DigitCNN",
    "DigitMLP",
    "GuidanceRun",
    "ImageModels",
    "SamplerConfig",
    "VQDecoder",
    "accuracy",
    "cfg_log_probs",
    "class_log_prob",
    "code_usage",
    "encode",
    "fit_codebook",
    "guide_configs",
    "guide_images",
    "guided_remdm_sample",
    "image_grid",
    "linear_schedule",
    "load_image_models",
    "patches",
    "remdm_bridge",
    "save_image_models",
    "steering_targets",
    "unpatch",
]

#: Side of a digit in pixels.
IMAGE_SIDE: int = 28
#: Side of a patch (one token) in pixels.
PATCH: int = 4
#: Side of the token grid.
GRID: int = IMAGE_SIDE // PATCH
#: Tokens per image.
SEQ_LEN: int = GRID * GRID
#: Codebook size (the vocabulary of the prior and of the estimators).
N_CODES: int = 256
#: Digit classes.
N_CLASSES: int = 10
#: File of the codebook, decoder, reward and judge in ``redge_mini/book/data``.
MODELS_FILE: str = "image_models.pt"
#: File of the prior in ``redge_mini/book/data``.
PRIOR_FILE: str = "image_prior.pt"


# ----------------------------------------------------------------------------------- VQ tokens
def patches(images: torch.Tensor) -> torch.Tensor:
    """Cut images ``(N, 784)`` or ``(N, 28, 28)`` into patches ``(N, 49, 16)`` (row-major grid)."""
    if not isinstance(images, torch.Tensor) or images.dim() not in (2, 3) or (
            images.shape[1:].numel() != IMAGE_SIDE * IMAGE_SIDE):
        raise ValueError(f"images must be a tensor (N, 784) or (N, 28, 28), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    x = images.reshape(-1, GRID, PATCH, GRID, PATCH)
    return x.permute(0, 1, 3, 2, 4).reshape(-1, SEQ_LEN, PATCH * PATCH)


def unpatch(tiles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patches`: ``(N, 49, 16) -> (N, 28, 28)``."""
    if tiles.dim() != 3 or tiles.shape[1:] != (SEQ_LEN, PATCH * PATCH):
        raise ValueError(f"tiles must have shape (N, {SEQ_LEN}, {PATCH * PATCH}), "
                         f"got {tuple(tiles.shape)}")
    x = tiles.reshape(-1, GRID, GRID, PATCH, PATCH).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def fit_codebook(images: torch.Tensor, n_codes: int = N_CODES, *, seed: int = 0) -> torch.Tensor:
    """Learn ``n_codes`` code vectors (4 x 4 patches) by k-means on the patches of ``images``.

    scikit-learn's :class:`~sklearn.cluster.KMeans` (Lloyd's algorithm, k-means++ start); the
    result is sorted by the patches' mean intensity so that code 0 is the blank patch.

    Returns
    -------
    torch.Tensor
        Float tensor ``(n_codes, 16)``.
    """
    from sklearn.cluster import KMeans

    n_codes = check_int(n_codes, "n_codes", 2)
    seed = check_int(seed, "seed", 0)
    data = patches(images).reshape(-1, PATCH * PATCH).double().numpy()
    km = KMeans(n_clusters=n_codes, n_init=1, max_iter=100, random_state=seed).fit(data)
    centres = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
    return centres[centres.mean(1).argsort()]


def encode(images: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code of every patch: images ``(N, 784)`` -> tokens ``(N, 49)`` (long)."""
    tiles = patches(images.float())
    distances = torch.cdist(tiles, codebook.to(tiles.dtype)[None].expand(len(tiles), -1, -1))
    return distances.argmin(-1)


def code_usage(tokens: torch.Tensor, n_codes: int = N_CODES) -> int:
    """Number of distinct codes that occur in ``tokens``."""
    return int(torch.bincount(tokens.flatten(), minlength=n_codes).gt(0).sum())


def _check_one_hot(x: object, name: str = "one_hot") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor (one-hot or relaxed codes)")
    if x.dim() != 3 or x.shape[1:] != (SEQ_LEN, N_CODES):
        raise ValueError(f"{name} must have shape (B, {SEQ_LEN}, {N_CODES}), "
                         f"got {tuple(x.shape)}")
    return x


class VQDecoder(nn.Module):
    """Codes to pixels: ``one_hot @ E`` (a learned embedding, initialised at the code vectors),
    then a non-linear convolutional network that upsamples the 7 x 7 grid to 28 x 28.

    ``forward(one_hot)`` maps ``(B, 49, K)`` to intensities ``(B, 28, 28)`` in ``(0, 1)``.
    """

    def __init__(self, codebook: torch.Tensor, hidden: int = 48) -> None:
        super().__init__()
        hidden = check_int(hidden, "hidden", 1)
        if codebook.shape != (N_CODES, PATCH * PATCH):
            raise ValueError(f"codebook must have shape ({N_CODES}, {PATCH * PATCH})")
        self.embedding = nn.Parameter(codebook.clone().float())
        dim = PATCH * PATCH
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(hidden, 16, PATCH, stride=PATCH), nn.GELU(),
            nn.Conv2d(16, 1, 3, padding=1),
        )

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 28, 28)`` of one-hot (or relaxed) codes ``(B, 49, K)``."""
        z = one_hot @ self.embedding                                  # (B, 49, 16) patches
        lookup = unpatch(z)[:, None]                                  # (B, 1, 28, 28)
        grid = z.transpose(1, 2).reshape(-1, PATCH * PATCH, GRID, GRID)
        # the network corrects the look-up image (a residual in logit space)
        logit = torch.logit(lookup.clamp(0.02, 0.98)) + self.net(grid)
        return torch.sigmoid(logit)[:, 0]


class DigitCNN(nn.Module):
    """The reward network: a small CNN on 28 x 28 pixels, ``(B, 28, 28) -> (B, 10)`` logits."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        c = check_int(channels, "channels", 1)
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * c * GRID * GRID, N_CLASSES),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits of pixels ``(B, 28, 28)``."""
        return self.net(pixels[:, None])


class DigitMLP(nn.Module):
    """The judge: an MLP on 28 x 28 pixels, used only to evaluate guided samples."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        hidden = check_int(hidden, "hidden", 1)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_SIDE ** 2, hidden), nn.GELU(),
                                 nn.Linear(hidden, N_CLASSES))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class logits of pixels ``(B, 28, 28)``."""
        return self.net(pixels)


class RewardEnsemble(nn.Module):
    """Several reward networks read as one, ``(B, 28, 28) -> (B, 10)``: the mean of their
    log-probabilities, whose ``log_softmax`` is the normalised geometric mean of their
    probabilities (a direction must fool every member to move it)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("members must hold at least one network")
        self.members = nn.ModuleList(members)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean log-probabilities of pixels ``(B, 28, 28)``."""
        return torch.stack([F.log_softmax(m(pixels), -1) for m in self.members]).mean(0)


@dataclass
class ImageModels:
    """The trained parts of the stand-in and their training record.

    Attributes
    ----------
    codebook : torch.Tensor
        ``(K, 16)`` k-means code vectors (the tokeniser).
    decoder : VQDecoder
        Codes to pixels.
    prior : MaskedDenoiser
        Class-conditional masked token model over the codes (plays MaskGIT).
    reward, judge : nn.Module
        :class:`DigitCNN` (plays CLIP) and :class:`DigitMLP` (evaluation only).
    meta : dict
        Training configuration, losses, accuracies, code usage.
    """

    codebook: torch.Tensor
    decoder: VQDecoder
    prior: MaskedDenoiser
    reward: nn.Module
    judge: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ImageModels:
        """Move every part to ``device`` (in place) and return ``self``."""
        self.codebook = self.codebook.to(device)
        for model in (self.decoder, self.prior, self.reward, self.judge):
            model.to(device)
        return self

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pixels ``(N, 28, 28)`` of code tokens ``(N, 49)``."""
        param = self.codebook
        with torch.no_grad():
            return self.decoder(F.one_hot(tokens.to(param.device), N_CODES).float())


def save_image_models(models: ImageModels, folder: str | Path | None = None) -> list[Path]:
    """Store the prior (float16, :func:`save_denoiser`) and the rest (float16 weights) in
    :data:`PRIOR_FILE` and :data:`MODELS_FILE` under ``folder`` (default the package's data)."""
    folder = Path(folder) if folder is not None else data_path(MODELS_FILE).parent
    folder.mkdir(parents=True, exist_ok=True)
    prior_path = save_denoiser(models.prior, folder / PRIOR_FILE, half=True,
                               meta=models.meta.get("prior", {}))

    def half(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().half() for k, v in module.state_dict().items()}

    record = {"codebook": models.codebook.detach().cpu().half(),
              "decoder": half(models.decoder), "reward": half(models.reward),
              "judge": half(models.judge), "meta": models.meta}
    path = folder / MODELS_FILE
    torch.save(record, path)
    return [prior_path, path]


def load_image_models(folder: str | Path | None = None, *,
                      device: torch.device | str | None = None) -> ImageModels:
    """Load the stored models (float32, eval mode, frozen) from ``folder`` or the package data.

    Raises
    ------
    FileNotFoundError
        If they were never made (``python -m redge_mini.book.experiments.train_image_models``).
    """
    paths = [Path(folder) / name if folder is not None else data_path(name)
             for name in (MODELS_FILE, PRIOR_FILE)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no stored image model at {path}; make it with "
                                    "`python -m redge_mini.book.experiments.train_image_models`")
    record = torch.load(paths[0], map_location="cpu", weights_only=True)
    codebook = record["codebook"].float()
    decoder, reward, judge = VQDecoder(codebook), DigitCNN(), DigitMLP()
    for module, key in ((decoder, "decoder"), (reward, "reward"), (judge, "judge")):
        module.load_state_dict({k: v.float() for k, v in record[key].items()})
    prior, _ = load_denoiser(paths[1])
    models = ImageModels(codebook, decoder, prior, reward, judge, dict(record.get("meta", {})))
    for module in (decoder, prior, reward, judge):
        module.eval().requires_grad_(False)
    return models.to(device or "cpu")


@torch.no_grad()
def accuracy(classifier: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images ``(N, 28, 28)`` whose predicted class equals ``labels``."""
    dev = next(classifier.parameters()).device
    predicted = classifier(pixels.to(dev).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)).argmax(-1)
    return float((predicted.cpu() == labels.cpu()).float().mean())


def class_log_prob(models: ImageModels, one_hot: torch.Tensor,
                   target: torch.Tensor) -> torch.Tensor:
    """The reward ``log p_reward(target | decode(one_hot))``, ``(B,)``, differentiable in
    ``one_hot`` ``(B, 49, K)``; ``target`` is a long tensor ``(B,)`` of classes."""
    one_hot = _check_one_hot(one_hot)
    if not isinstance(target, torch.Tensor) or target.shape != one_hot.shape[:1]:
        raise ValueError(f"target must be a tensor of shape ({one_hot.shape[0]},)")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= N_CLASSES):
        raise ValueError(f"target must hold classes in 0..{N_CLASSES - 1}")
    return _log_prob(models, one_hot, target.long())


def _log_prob(models: ImageModels, one_hot: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    log_probs = F.log_softmax(models.reward(models.decoder(one_hot)), dim=-1)
    return log_probs.gather(-1, target[:, None]).squeeze(-1)


def image_grid(pixels: torch.Tensor, n_cols: int, *, pad: int = 2) -> np.ndarray:
    """Tile images ``(N, 28, 28)`` into one array for ``imshow`` (padding is NaN)."""
    n_cols = check_int(n_cols, "n_cols", 1)
    pad = check_int(pad, "pad", 0)
    images = pixels.detach().cpu().reshape(-1, IMAGE_SIDE, IMAGE_SIDE).numpy()
    n_rows = max(1, math.ceil(len(images) / n_cols))
    step = IMAGE_SIDE + pad
    grid = np.full((n_rows * step - pad, n_cols * step - pad), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, n_cols)
        grid[r * step:r * step + IMAGE_SIDE, c * step:c * step + IMAGE_SIDE] = image
    return grid


# ------------------------------------------------------------------------------------ sampler
def linear_schedule(n_steps: int) -> torch.Tensor:
    """Fraction of revealed cells ``alpha`` on the authors' grid: ``n_steps`` points from 1e-4
    (all masked) to 1 (all revealed), increasing; the sampler makes ``n_steps - 1`` moves."""
    n_steps = check_int(n_steps, "n_steps", 2)
    return torch.linspace(1e-4, 1.0, n_steps, dtype=torch.float64)


def remdm_bridge(x: torch.Tensor, draw: torch.Tensor, alpha_t: float, alpha_s: float,
                 sigma: float, mask_id: int, generator: torch.Generator | None) -> torch.Tensor:
    """One ReMDM move from the revealed fraction ``alpha_t`` to ``alpha_s >= alpha_t``.

    A revealed cell is remasked with probability ``sigma * (1 - alpha_s)``; a masked cell takes
    its ``draw`` with probability ``1 - (1 - sigma) (1 - alpha_s) / (1 - alpha_t) - sigma (1 -
    alpha_s)``. Either way a cell is revealed afterwards with probability ``alpha_s`` (the
    marginal of the forward process). ``sigma = 0`` is the plain masked-diffusion step (revealed
    cells stay); ``sigma = 1`` keeps a revealed cell only with probability ``alpha_s``, so early
    choices are revisited (the authors' setting).
    """
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return _bridge(x, draw, u, alpha_t, alpha_s, sigma, mask_id)


def cfg_log_probs(prior: MaskedDenoiser, x: torch.Tensor, cond: torch.Tensor,
                  weight: float) -> torch.Tensor:
    """Classifier-free guided log-probabilities ``log_softmax((1 + w) l_c - w l_u)`` (``(B, L,
    K)``); revealed cells keep their one-hot distribution. ``weight = 0``: the conditional
    model."""
    conditional = prior(x, cond)
    if weight == 0:
        return conditional
    unconditional = prior(x, torch.full_like(cond, prior.n_classes))
    return torch.log_softmax((1 + weight) * conditional - weight * unconditional, dim=-1)


def inner_step(models: ImageModels, estimator: Callable[..., torch.Tensor], phi: torch.Tensor,
               ell: torch.Tensor, optimiser: torch.optim.Optimizer, *, keep: torch.Tensor,
               revealed: torch.Tensor, target: torch.Tensor, lam: float, reward_scale: float,
               generator: torch.Generator | None) -> None:
    """One Adam step of the guided sampler's inner loop on the variational logits ``phi``.

    ``X`` = the estimator's hard sample of ``phi`` where ``keep`` (the masked cells), the
    revealed one-hots elsewhere; the loss is ``sum_images [lam * sum_masked KL(softmax phi ||
    softmax ell) - reward_scale * log p_reward(target | decode(X))]``. Shared by
    :func:`guided_remdm_sample` and the experiment's timing of one inner step.
    """
    sample = torch.where(keep, estimator(phi, hard=True, generator=generator), revealed)
    reward = _log_prob(models, sample, target)
    kl = (kl_to_prior(phi, ell) * keep[..., 0].float()).sum(-1)
    loss = (lam * kl - reward_scale * reward).sum()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def guided_remdm_sample(
    models: ImageModels,
    estimator: str,
    *,
    cond: torch.Tensor,
    target: torch.Tensor,
    n_steps: int = 20,
    n_inner: int = 20,
    lr: float = 0.5,
    lam: float = 1.0,
    reward_scale: float = 1.0,
    sigma: float = 1.0,
    cfg_weight: float = 3.0,
    knobs: dict[str, Any] | None = None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The authors' guided sampler on the stand-in (``n_inner = 0``: unguided ReMDM sampling).

    At each of the ``n_steps - 1`` moves of :func:`linear_schedule`: ``ell`` = the prior's
    classifier-free guided log-probabilities (:func:`cfg_log_probs`, no gradient); ``phi <-
    ell``; ``n_inner`` Adam steps (learning rate ``lr``) on ``sum_images [-reward_scale *
    log p_reward(target | decode(X)) + lam * sum_masked KL(softmax phi || softmax ell)]``, where
    ``X`` is the estimator's one-hot sample of ``phi`` (``hard=True``) with the revealed cells'
    one-hots kept; then codes are drawn from ``Cat(softmax phi)`` and :func:`remdm_bridge` moves
    the grid.

    Returns
    -------
    (tokens, info)
        ``tokens``: ``(B, 49)`` codes. ``info``: per image ``kl`` (the KL term of the inner
        objective at the end of each inner loop, averaged over the moves: nats per move, the
        price paid against one evaluation of the reward) and ``seconds`` (a 0-d tensor).
    """
    spec_estimator = make_estimator(estimator, **(knobs or {}))
    n_steps = check_int(n_steps, "n_steps", 2)
    n_inner = check_int(n_inner, "n_inner", 0)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    lam = check_real(lam, "lam", minimum=0.0)
    reward_scale = check_real(reward_scale, "reward_scale", minimum=0.0)
    sigma = check_real(sigma, "sigma", minimum=0.0)
    if sigma > 1:
        raise ValueError(f"sigma must lie in [0, 1], got {sigma}")
    cfg_weight = check_real(cfg_weight, "cfg_weight", minimum=0.0)
    prior = models.prior
    dev = next(prior.parameters()).device
    check_generator(generator, dev)
    if cond.shape != target.shape or cond.dim() != 1:
        raise ValueError("cond and target must be long tensors of the same shape (B,)")
    cond, target = cond.to(dev).long(), target.to(dev).long()
    batch = len(cond)
    alphas = linear_schedule(n_steps).tolist()
    x = torch.full((batch, SEQ_LEN), prior.mask_id, dtype=torch.long, device=dev)
    kl_total = torch.zeros(batch, device=dev)
    start = time.perf_counter()
    for j in range(n_steps - 1):
        masked = x == prior.mask_id
        with torch.no_grad():
            ell = cfg_log_probs(prior, x, cond, cfg_weight).float()
        phi = ell.clone()
        if n_inner > 0:
            revealed = F.one_hot(x.clamp(max=N_CODES - 1), N_CODES).float()
            keep = masked[..., None]
            phi.requires_grad_(True)
            optimiser = torch.optim.Adam([phi], lr=lr)
            for _ in range(n_inner):
                inner_step(models, spec_estimator, phi, ell, optimiser, keep=keep,
                           revealed=revealed, target=target, lam=lam,
                           reward_scale=reward_scale, generator=generator)
            phi = phi.detach()
        with torch.no_grad():
            kl_total += (kl_to_prior(phi, ell) * masked).sum(-1).clamp(min=0.0)
            probs = torch.softmax(phi, -1).reshape(-1, N_CODES)
            draw = torch.multinomial(probs, 1, generator=generator).reshape(batch, SEQ_LEN)
            x = remdm_bridge(x, draw, alphas[j], alphas[j + 1], sigma, prior.mask_id, generator)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return x, {"kl": kl_total / (n_steps - 1),
               "seconds": torch.tensor(time.perf_counter() - start)}


def steering_targets(source: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """The class the reward asks for: ``(source + shift) mod 10`` (a rule, not chosen pairs)."""
    shift = check_int(shift, "shift", 1)
    if shift % N_CLASSES == 0:
        raise ValueError(f"shift must not be a multiple of {N_CLASSES}, got {shift}")
    return (source + shift) % N_CLASSES


@dataclass
class GuidanceRun:
    """A batch of guided (or unguided) samples and its per-image metrics.

    ``per_image``: ``reward`` (``log p_reward(target | x)``), ``kl`` (see
    :func:`guided_remdm_sample`), ``reward_hit`` / ``judge_hit`` (the reward network / the judge
    reads the target class), ``judge_source`` (the judge still reads the source class).
    """

    tokens: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    per_image: dict[str, torch.Tensor]
    seconds: float


def guide_images(models: ImageModels, estimator: str, *, n_per_class: int, n_inner: int,
                 seed: int, shift: int = 1, **kwargs: Any) -> GuidanceRun:
    """``n_per_class`` images of every source class ``c``, steered towards ``c + shift``.

    ``kwargs`` go to :func:`guided_remdm_sample` (``n_steps``, ``lr``, ``lam``,
    ``reward_scale``, ``sigma``, ``cfg_weight``, ``knobs``). Images do not interact (Adam acts
    elementwise and the loss is a sum over images), so blocks of images are independent
    replicates.
    """
    n_per_class = check_int(n_per_class, "n_per_class", 1)
    seed = check_int(seed, "seed", 0)
    dev = next(models.prior.parameters()).device
    source = torch.arange(N_CLASSES, device=dev).repeat(n_per_class)
    target = steering_targets(source, shift)
    generator = torch.Generator(device=dev).manual_seed(seed)
    tokens, info = guided_remdm_sample(models, estimator, cond=source, target=target,
                                       n_inner=n_inner, generator=generator, **kwargs)
    with torch.no_grad():
        pixels = models.decoder(F.one_hot(tokens, N_CODES).float())
        reward = F.log_softmax(models.reward(pixels), -1).gather(-1, target[:, None])[:, 0]
        reward_top = models.reward(pixels).argmax(-1)
        judge_top = models.judge(pixels).argmax(-1)
    per_image = {"reward": reward.cpu(), "kl": info["kl"].cpu(),
                 "reward_hit": (reward_top == target).float().cpu(),
                 "judge_hit": (judge_top == target).float().cpu(),
                 "judge_source": (judge_top == source).float().cpu()}
    return GuidanceRun(tokens.cpu(), source.cpu(), target.cpu(), per_image,
                       float(info["seconds"]))


# ------------------------------------------------------------------ many configurations at once
@dataclass(frozen=True)
class SamplerConfig:
    """One configuration of :func:`guide_configs`: estimator, its knobs, Adam's learning rate
    and the number ``n_inner`` of Adam steps per move (0: the unguided sampler)."""

    estimator: str
    knobs: dict[str, Any]
    lr: float
    n_inner: int


def _noise_seed(seed: int, config: SamplerConfig) -> int:
    """A seed of the estimator's own noise that depends only on ``seed`` and the configuration
    (so a configuration's images do not change with the others run beside it)."""
    text = f"{seed}|{config.estimator}|{sorted(config.knobs.items())}|{config.lr!r}"
    return zlib.crc32(text.encode()) + 2**32 * (seed % 1024)


def guide_configs(models: ImageModels, configs: list[SamplerConfig], *, source: torch.Tensor,
                  seed: int, n_steps: int = 20, lam: float = 1.0, reward_scale: float = 1.0,
                  sigma: float = 1.0, cfg_weight: float = 3.0,
                  shift: int = 1) -> dict[str, torch.Tensor]:
    """The sampler of :func:`guided_remdm_sample` for several configurations side by side.

    Every configuration gets its own copy of the ``B`` requests (prior class ``source[b]``,
    reward class ``source[b] + shift``): one batch of ``C * B`` rows, configuration-major. Adam
    acts on every logit separately and the loss is a sum over rows, so rows do not interact; a
    row stops after its configuration's ``n_inner`` steps (only active rows are computed), so a
    batch costs the sum of its budgets. Adam is written out (:func:`_adam_update`) to take one
    learning rate per row.

    The randomness of a move (which cells are revealed or remasked, and the code drawn from
    ``Cat(softmax phi)`` by inverse transform) uses one uniform per request and cell, shared by
    every configuration: the ``C`` copies of a request see common random numbers, which makes
    paired differences between configurations less noisy. The estimator's own noise comes from
    one generator per configuration, seeded from ``seed`` and the configuration alone.

    Returns per row (``(C * B,)`` tensors): ``reward`` (``log p_reward(target | image)``),
    ``kl`` (as in :func:`guided_remdm_sample`), ``reward_hit``, ``judge_hit``, ``judge_source``,
    and ``tokens`` ``(C * B, 49)``; ``seconds`` (0-d).
    """
    if not configs or not all(isinstance(c, SamplerConfig) for c in configs):
        raise ValueError("configs must be a non-empty list of SamplerConfig")
    samplers = [make_estimator(c.estimator, **c.knobs) for c in configs]
    for i, c in enumerate(configs):
        check_int(c.n_inner, f"configs[{i}].n_inner", 0)
        check_real(c.lr, f"configs[{i}].lr", minimum=0.0, strict=True)
    n_steps = check_int(n_steps, "n_steps", 2)
    seed = check_int(seed, "seed", 0)
    sigma = check_real(sigma, "sigma", minimum=0.0)
    if sigma > 1:
        raise ValueError(f"sigma must lie in [0, 1], got {sigma}")
    prior = models.prior
    dev = next(prior.parameters()).device
    source = source.to(dev).long()
    n_req, n_conf = len(source), len(configs)
    # rows sorted by decreasing budget, so that the rows still optimising are a prefix
    order = sorted(range(n_conf), key=lambda c: -configs[c].n_inner)
    cond = source.repeat(n_conf)
    target = steering_targets(cond, shift)
    lr = torch.cat([torch.full((n_req,), float(configs[c].lr), device=dev) for c in order])
    budgets = [configs[c].n_inner for c in order]
    noise = [torch.Generator(device=dev).manual_seed(_noise_seed(seed, configs[c]))
             for c in order]
    shared = torch.Generator(device=dev).manual_seed(seed)
    alphas = linear_schedule(n_steps).tolist()
    rows = n_conf * n_req
    x = torch.full((rows, SEQ_LEN), prior.mask_id, dtype=torch.long, device=dev)
    kl_total = torch.zeros(rows, device=dev)
    start = time.perf_counter()
    for j in range(n_steps - 1):
        masked = x == prior.mask_id
        with torch.no_grad():
            ell = cfg_log_probs(prior, x, cond, cfg_weight).float()
        phi = ell.clone()
        if budgets[0] > 0:
            keep = masked[..., None]
            revealed = F.one_hot(x.clamp(max=N_CODES - 1), N_CODES).float()
            m, v = torch.zeros_like(phi), torch.zeros_like(phi)
            for step in range(1, budgets[0] + 1):
                n_active = sum(b >= step for b in budgets)
                a = n_active * n_req
                p = phi[:a].detach().requires_grad_(True)
                hard = torch.cat([samplers[order[i]](p[i * n_req:(i + 1) * n_req], hard=True,
                                                     generator=noise[i])
                                  for i in range(n_active)])
                sample = torch.where(keep[:a], hard, revealed[:a])
                reward = _log_prob(models, sample, target[:a])
                kl = (kl_to_prior(p, ell[:a]) * keep[:a, :, 0].float()).sum(-1)
                (grad,) = torch.autograd.grad((lam * kl - reward_scale * reward).sum(), p)
                with torch.no_grad():
                    _adam_update(phi[:a], grad, m[:a], v[:a], lr[:a], step)
        with torch.no_grad():
            kl_total += (kl_to_prior(phi, ell) * masked).sum(-1).clamp(min=0.0)
            u = torch.rand((2, n_req, SEQ_LEN), generator=shared, device=dev).repeat(1, n_conf, 1)
            cdf = torch.softmax(phi, -1).cumsum(-1)
            draw = torch.searchsorted(cdf, (u[0] * cdf[..., -1])[..., None]).squeeze(-1)
            x = _bridge(x, draw.clamp(max=N_CODES - 1), u[1], alphas[j], alphas[j + 1], sigma,
                        prior.mask_id)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        pixels = models.decoder(F.one_hot(x, N_CODES).float())
        log_probs = F.log_softmax(models.reward(pixels), -1)
        judge_top = models.judge(pixels).argmax(-1)
    out = {"reward": log_probs.gather(-1, target[:, None])[:, 0],
           "kl": kl_total / (n_steps - 1),
           "reward_hit": (log_probs.argmax(-1) == target).float(),
           "judge_hit": (judge_top == target).float(),
           "judge_source": (judge_top == cond).float(), "tokens": x}
    # back to the order of ``configs``
    back = torch.cat([torch.arange(order.index(c) * n_req, (order.index(c) + 1) * n_req,
                                   device=dev) for c in range(n_conf)])
    result = {k: t[back].cpu() for k, t in out.items()}
    result["seconds"] = torch.tensor(seconds)
    return result


def _adam_update(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                 lr: torch.Tensor, step: int, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
    """One step of :class:`torch.optim.Adam` (its defaults) in place, with one learning rate per
    row: ``lr`` has shape ``(rows,)``."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(eps)
    scale = (lr / (1 - b1 ** step)).reshape(-1, *([1] * (param.dim() - 1)))
    param.sub_(scale * m / denom)


def _bridge(x: torch.Tensor, draw: torch.Tensor, u: torch.Tensor, alpha_t: float,
            alpha_s: float, sigma: float, mask_id: int) -> torch.Tensor:
    """:func:`remdm_bridge` with its uniforms ``u`` given (shared between configurations)."""
    masked = x == mask_id
    stay_masked = (1 - sigma) * (1 - alpha_s) / max(1 - alpha_t, 1e-12) + sigma * (1 - alpha_s)
    remask = ~masked & (u < sigma * (1 - alpha_s))
    reveal = masked & (u >= stay_masked)
    return torch.where(reveal, draw, x).masked_fill(remask, mask_id)
