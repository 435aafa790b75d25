"""A tiny masked (absorbing-state) discrete diffusion model: network, loss, sampler, weights.

The model is general: sequences of ``seq_len`` tokens over a vocabulary of ``vocab_size`` symbols
``0 .. K-1`` plus one extra *mask* token whose id is ``K = vocab_size``. Sudoku uses ``K = 9``
(digit ``d`` is token ``d - 1``) and ``N = 81``; an image model uses its pixel or code
vocabulary and may add class conditioning.

Forward process (masking). At "time" ``t`` in ``(0, 1]`` every cell of a clean sequence ``x0`` is
independently replaced by the mask token with probability ``t`` (the linear schedule
``alpha_t = 1 - t`` of the probability to be still clean).

Reverse model ("SUBS" parameterisation, as in MDLM). The network returns, for every cell, a
distribution over the ``K`` real tokens only: it never puts mass on the mask, and at a revealed
(unmasked) cell it returns the one-hot distribution of the revealed token, because a revealed token
never changes in the reverse process. The network is not told ``t``: the number of masks carries it.

Loss. The continuous-time bound of the negative log-likelihood for this schedule is
``E_t [ (1/t) * sum_{masked cells} -log p_theta(x0_cell | x_t) ]``: a cross-entropy on the masked
cells weighted by ``1/t`` (:func:`masked_diffusion_loss`).

Sampler. From a fully masked sequence (or a partially revealed one, e.g. a Sudoku puzzle), on the
grid ``t_j = 1 - j / n_steps``, each still-masked cell is revealed with probability
``(t - s) / t`` at the step ``t -> s`` with a token drawn from the model's categorical
(:func:`sample_unmasking`). At the last step ``s = 0`` every remaining cell is revealed.

Weights. :func:`save_denoiser` stores the configuration and (optionally half-precision) weights in
one file; :func:`load_denoiser` reads it back from a path or, for a bare file name, from the
package's ``redge_mini/book/data/`` folder (through :mod:`importlib.resources`, so any working
directory works).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from redge_mini.estimators import gumbel_argmax
from redge_mini.validation import check_generator, check_int, check_real

__all__ = [
    "NEG_LOGIT",
    "MaskedDenoiser",
    "data_path",
    "load_denoiser",
    "mask_tokens",
    "masked_diffusion_loss",
    "sample_unmasking",
    "save_denoiser",
    "train_masked_denoiser",
]

#: Logit given to the impossible tokens of a revealed cell (finite, so that every downstream
#: check for finite logits passes; ``exp(NEG_LOGIT)`` is exactly 0 in float16/32/64).
NEG_LOGIT: float = -1.0e4


class MaskedDenoiser(nn.Module):
    """A small bidirectional transformer that predicts clean tokens from partially masked ones.

    Parameters
    ----------
    vocab_size : int
        Number ``K >= 2`` of real tokens. Token ids ``0 .. K-1`` are real; ``K`` is the mask.
    seq_len : int
        Sequence length ``N`` (learned position embeddings).
    width : int
        Embedding width (divisible by ``heads``).
    depth : int
        Number of transformer encoder layers (pre-norm, GELU, no dropout).
    heads : int
        Attention heads per layer.
    n_classes : int
        Number of classes for class conditioning; ``0`` (default) for an unconditional model. A
        conditional model has one extra learned "no class" embedding used when ``cond`` is
        ``None`` or equal to ``n_classes``, so it can be trained with label dropout and sampled
        unconditionally.
    position_groups : sequence of sequences of int, or None
        Optional structure of the positions: ``G`` lists of ``N`` group ids (e.g. the row, the
        column and the box of every Sudoku cell, or the row and column of every pixel). Each
        grouping gets its own embedding table and the position embedding of cell ``n`` becomes
        ``own[n] + sum_g table_g[group_g[n]]``, so cells that share a group start out similar
        and attention finds them quickly. ``None``: one free embedding per position.
    attend_within_groups : bool
        Restrict attention to pairs of cells that share at least one group of
        ``position_groups`` (for Sudoku: the 20 peers of a cell and itself, i.e. the constraint
        graph; for images with row and column groups: a cross). ``False``: full attention.

    Notes
    -----
    ``forward(tokens, cond=None)`` returns normalised log-probabilities of shape ``(B, N, K)``
    ("SUBS"): masked cells get the network's ``log_softmax``; revealed cells get ``0`` at the
    revealed token and :data:`NEG_LOGIT` elsewhere (a one-hot distribution). There is no mask
    column, so the model can never predict the mask.
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        *,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        n_classes: int = 0,
        position_groups: list[list[int]] | None = None,
        attend_within_groups: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int(vocab_size, "vocab_size", 2)
        self.seq_len = check_int(seq_len, "seq_len", 1)
        self.width = check_int(width, "width", 1)
        self.depth = check_int(depth, "depth", 1)
        self.heads = check_int(heads, "heads", 1)
        self.n_classes = check_int(n_classes, "n_classes", 0)
        if self.width % self.heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.mask_id = self.vocab_size
        self.token_embedding = nn.Embedding(self.vocab_size + 1, self.width)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(self.seq_len, self.width))
        groups = torch.zeros(0, self.seq_len, dtype=torch.long)
        if position_groups is not None:
            groups = torch.as_tensor(position_groups, dtype=torch.long)
            if groups.dim() != 2 or groups.shape[1] != self.seq_len or groups.numel() == 0:
                raise ValueError(f"position_groups must be G lists of seq_len={self.seq_len} "
                                 f"group ids, got shape {tuple(groups.shape)}")
            if int(groups.min()) < 0:
                raise ValueError("position_groups must hold non-negative group ids")
        self.register_buffer("position_groups", groups, persistent=False)
        self.attend_within_groups = bool(attend_within_groups)
        if self.attend_within_groups and groups.shape[0] == 0:
            raise ValueError("attend_within_groups=True needs position_groups")
        # additive attention mask: 0 where allowed, -inf where blocked (None: full attention)
        blocked = None
        if self.attend_within_groups:
            shared = (groups[:, :, None] == groups[:, None, :]).any(0)
            blocked = torch.zeros(self.seq_len, self.seq_len).masked_fill(~shared, float("-inf"))
        self.register_buffer("attention_mask", blocked, persistent=False)
        self.group_embeddings = nn.ModuleList(
            nn.Embedding(int(row.max()) + 1, self.width) for row in groups)
        for table in self.group_embeddings:
            nn.init.normal_(table.weight, std=0.5)
        self.class_embedding = (
            nn.Embedding(self.n_classes + 1, self.width) if self.n_classes > 0 else None
        )
        layer = nn.TransformerEncoderLayer(
            self.width,
            self.heads,
            dim_feedforward=4 * self.width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, self.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.width)
        self.head = nn.Linear(self.width, self.vocab_size)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as stored next to the weights by :func:`save_denoiser`."""
        return {
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "width": self.width,
            "depth": self.depth,
            "heads": self.heads,
            "n_classes": self.n_classes,
            "position_groups": self.position_groups.tolist() or None,
            "attend_within_groups": self.attend_within_groups,
        }

    def position_codes(self) -> torch.Tensor:
        """The ``(N, width)`` position embedding (own term plus the group terms)."""
        codes = self.position_embedding
        for table, ids in zip(self.group_embeddings, self.position_groups, strict=True):
            codes = codes + table(ids)
        return codes

    def check_tokens(self, tokens: object, name: str = "tokens") -> torch.Tensor:
        """Check a ``(B, N)`` integer tensor with ids in ``[0, K]`` (``K`` = mask)."""
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name} must be an integer tensor, got {tokens.dtype}")
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(
                f"{name} must have shape (batch, {self.seq_len}), got {tuple(tokens.shape)}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > self.mask_id):
            raise ValueError(
                f"{name} must hold ids in [0, {self.mask_id}] ({self.mask_id} = mask), got "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        return tokens.long()

    def _class_index(self, cond: object, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.class_embedding is None:
            if cond is not None:
                raise ValueError("cond must be None for an unconditional model (n_classes=0)")
            return None
        if cond is None:
            return torch.full((batch,), self.n_classes, dtype=torch.long, device=device)
        if isinstance(cond, numbers.Integral) and not isinstance(cond, bool):
            cond = torch.full((batch,), int(cond), dtype=torch.long, device=device)
        if not isinstance(cond, torch.Tensor) or cond.is_floating_point():
            raise TypeError("cond must be None, an int or an integer tensor of shape (batch,)")
        if cond.shape != (batch,):
            raise ValueError(f"cond must have shape ({batch},), got {tuple(cond.shape)}")
        if batch and (int(cond.min()) < 0 or int(cond.max()) > self.n_classes):
            raise ValueError(
                f"cond must hold classes in [0, {self.n_classes}] ({self.n_classes} = no class)"
            )
        return cond.to(device=device, dtype=torch.long)

    def network_logits(self, tokens: torch.Tensor, cond: object = None) -> torch.Tensor:
        """The raw network output ``(B, N, K)`` before the SUBS substitution (for inspection)."""
        tokens = self.check_tokens(tokens)
        h = self.token_embedding(tokens) + self.position_codes()
        index = self._class_index(cond, tokens.shape[0], tokens.device)
        if index is not None:
            h = h + self.class_embedding(index)[:, None, :]
        return self.head(self.norm(self.encoder(h, mask=self.attention_mask)))

    def forward(self, tokens: torch.Tensor, cond: object = None) -> torch.Tensor:
        """SUBS log-probabilities ``(B, N, K)`` of the clean tokens given ``tokens``.

        Parameters
        ----------
        tokens : torch.Tensor
            ``(B, N)`` integer ids in ``[0, K]``; ``K`` marks a masked cell.
        cond : None, int or torch.Tensor
            Class labels ``(B,)`` (or one int for the whole batch) of a conditional model;
            ``None`` for an unconditional model or the "no class" embedding.

        Returns
        -------
        torch.Tensor
            Log-probabilities over the ``K`` real tokens. Revealed cells: ``0`` at the revealed
            token, :data:`NEG_LOGIT` elsewhere.
        """
        tokens = self.check_tokens(tokens)
        log_probs = torch.log_softmax(self.network_logits(tokens, cond).float(), dim=-1)
        revealed = tokens != self.mask_id
        copy = torch.full_like(log_probs, NEG_LOGIT)
        copy.scatter_(-1, tokens.clamp(max=self.vocab_size - 1)[..., None], 0.0)
        return torch.where(revealed[..., None], copy, log_probs)


def mask_tokens(
    x0: torch.Tensor, t: torch.Tensor, mask_id: int, *, generator: torch.Generator | None
) -> torch.Tensor:
    """Mask each cell of ``x0`` (``(B, N)``) independently with probability ``t`` (``(B,)``)."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    return torch.where(u < t[:, None], torch.full_like(x0, mask_id), x0)


def masked_diffusion_loss(
    model: MaskedDenoiser,
    x0: torch.Tensor,
    *,
    generator: torch.Generator | None,
    cond: object = None,
    t: torch.Tensor | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
) -> torch.Tensor:
    """Masked-diffusion loss: cross-entropy on masked cells, weighted by ``1/t``, per token.

    ``loss = mean_b [ (1 / t_b) * sum_{n masked} -log p(x0_bn | x_t) ] / N``. Its expectation over
    ``t ~ U(0, 1)`` and the masks bounds ``-log p(x0) / N`` (the continuous-time ELBO of the linear
    schedule). For a model that predicts the uniform distribution it equals ``log K`` in
    expectation for every ``t``.

    Parameters
    ----------
    model : MaskedDenoiser
        The denoiser.
    x0 : torch.Tensor
        ``(B, N)`` clean token ids in ``[0, K)`` (no masks).
    generator : torch.Generator or None
        Source of ``t`` and of the masks (on ``x0``'s device).
    cond : None, int or torch.Tensor
        Class labels for a conditional model.
    t : torch.Tensor or None
        ``(B,)`` masking probabilities in ``(0, 1]``; ``None`` draws them (see ``antithetic``).
    antithetic : bool
        Draw ``t`` stratified over the batch (``t_b = (u + b / B) mod 1``, one uniform ``u``),
        which lowers the variance of the loss; otherwise ``t_b`` are i.i.d. uniform.
    t_min : float
        Lower clip of drawn ``t`` (avoids the ``1/t`` blow-up of a vanishing ``t``).

    Returns
    -------
    torch.Tensor
        The scalar loss (nats per token).
    """
    x0 = model.check_tokens(x0, "x0")
    if x0.numel() and int(x0.max()) >= model.mask_id:
        raise ValueError("x0 must be clean: ids in [0, K) without mask tokens")
    check_generator(generator, x0.device)
    batch = x0.shape[0]
    if t is None:
        if antithetic:
            u = torch.rand((), generator=generator, device=x0.device)
            t = torch.remainder(u + torch.arange(batch, device=x0.device) / batch, 1.0)
        else:
            t = torch.rand(batch, generator=generator, device=x0.device)
        t = t.clamp(min=t_min)
    elif not isinstance(t, torch.Tensor) or t.shape != (batch,):
        raise ValueError(f"t must be a tensor of shape ({batch},)")
    elif bool(((t <= 0) | (t > 1)).any()):
        raise ValueError("t must lie in (0, 1]")
    xt = mask_tokens(x0, t, model.mask_id, generator=generator)
    log_probs = model(xt, cond)
    nll = -log_probs.gather(-1, x0[..., None]).squeeze(-1)
    masked = (xt == model.mask_id).to(nll.dtype)
    per_sequence = (nll * masked).sum(-1) / t
    return per_sequence.mean() / model.seq_len


def train_masked_denoiser(
    model: MaskedDenoiser,
    data: torch.Tensor | None,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator | None,
    labels: torch.Tensor | None = None,
    label_dropout: float = 0.0,
    sampler: Callable[[int, torch.Generator | None], torch.Tensor] | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Train ``model`` with Adam on :func:`masked_diffusion_loss` (cosine-decayed learning rate).

    Parameters
    ----------
    model : MaskedDenoiser
        The denoiser (trained in place, on its current device).
    data : torch.Tensor or None
        ``(M, N)`` clean training sequences, sampled with replacement; ``None`` when
        ``sampler`` provides the batches.
    steps, batch_size : int
        Number of Adam steps and sequences per step.
    lr : float
        Peak learning rate (linear warm-up over 5% of the steps, then cosine decay to 10%).
    generator : torch.Generator or None
        Source of every random draw (batches, ``t``, masks), on the model's device.
    labels : torch.Tensor or None
        ``(M,)`` class labels of ``data`` for a conditional model.
    label_dropout : float
        Probability of replacing a label by the "no class" label (classifier-free training).
    sampler : callable or None
        ``sampler(batch_size, generator) -> (batch_size, N)`` fresh clean sequences per step
        (e.g. newly generated Sudoku grids) instead of rows of ``data``.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``{"step": [...], "loss": [...]}``, one entry per step.
    """
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    if not 0.0 <= float(label_dropout) < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout}")
    dev = next(model.parameters()).device
    check_generator(generator, dev)
    if sampler is None:
        if data is None:
            raise ValueError("give data (M, N) or a sampler")
        data = model.check_tokens(data, "data").to(dev)
        if data.shape[0] == 0:
            raise ValueError("data must hold at least one sequence")
    if labels is not None:
        if model.n_classes == 0:
            raise ValueError("labels were given but the model is unconditional (n_classes=0)")
        if sampler is not None or labels.shape != (data.shape[0],):
            raise ValueError("labels must have shape (M,) matching data (and no sampler)")
        labels = labels.to(dev).long()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_fraction = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress_fraction))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    history: dict[str, list[float]] = {"step": [], "loss": []}
    model.train()
    bar = tqdm(range(steps), disable=not progress, desc="training MDM", leave=False)
    for step in bar:
        if sampler is None:
            index = torch.randint(data.shape[0], (batch_size,), generator=generator, device=dev)
            x0 = data[index]
            cond = None
            if labels is not None:
                cond = labels[index]
                drop = torch.rand(batch_size, generator=generator, device=dev) < label_dropout
                cond = torch.where(drop, torch.full_like(cond, model.n_classes), cond)
        else:
            x0 = sampler(batch_size, generator).to(dev)
            cond = None
        loss = masked_diffusion_loss(model, x0, generator=generator, cond=cond)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        lr_schedule.step()
        history["step"].append(step)
        history["loss"].append(loss.item())
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return history


@torch.no_grad()
def sample_unmasking(
    model: MaskedDenoiser,
    n: int,
    *,
    n_steps: int,
    generator: torch.Generator | None,
    cond: object = None,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ancestral unmasking sampler: ``n`` sequences with no mask token left.

    On the grid ``t_j = 1 - j / n_steps`` (``j = 0 .. n_steps``), at the step ``t -> s`` every
    still-masked cell is revealed with probability ``(t - s) / t`` (``1 / (steps left)``) with a
    token drawn from the model's categorical at that cell; revealed cells are kept.

    Parameters
    ----------
    model : MaskedDenoiser
        The denoiser (put in eval mode).
    n : int
        Number of sequences (must equal ``init.shape[0]`` when ``init`` is given).
    n_steps : int
        Number of unmasking steps (network calls).
    generator : torch.Generator or None
        Source of every draw, on the model's device.
    cond : None, int or torch.Tensor
        Class labels for a conditional model.
    init : torch.Tensor or None
        ``(n, N)`` starting tokens, mask id ``K`` where unknown (e.g. a puzzle); default all
        masked.

    Returns
    -------
    torch.Tensor
        ``(n, N)`` long tensor of ids in ``[0, K)``.
    """
    n = check_int(n, "n", 1)
    n_steps = check_int(n_steps, "n_steps", 1)
    dev = next(model.parameters()).device
    check_generator(generator, dev)
    if init is None:
        x = torch.full((n, model.seq_len), model.mask_id, dtype=torch.long, device=dev)
    else:
        x = model.check_tokens(init, "init").to(dev).clone()
        if x.shape[0] != n:
            raise ValueError(f"init has {x.shape[0]} rows but n={n}")
    model.eval()
    for j in range(n_steps):
        masked = x == model.mask_id
        if not bool(masked.any()):
            break
        draw = gumbel_argmax(model(x, cond), generator)
        reveal_prob = 1.0 / (n_steps - j)
        u = torch.rand(x.shape, generator=generator, device=dev)
        x = torch.where(masked & (u < reveal_prob), draw, x)
    return x


def data_path(name: str) -> Path:
    """Path of a file shipped in ``redge_mini/book/data/`` (independent of the working
    directory)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(f"name must be a bare file name, got {name!r}")
    return Path(str(resources.files("redge_mini.book") / "data" / name))


def save_denoiser(
    model: MaskedDenoiser,
    path: str | Path,
    *,
    half: bool = True,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Store ``model``'s configuration and weights (float16 when ``half``) in one file.

    ``meta`` (JSON-like: numbers, strings, lists, dicts) is stored alongside, e.g. the training
    configuration and final loss.
    """
    state = {
        key: (value.detach().cpu().half() if half and value.is_floating_point() else value.cpu())
        for key, value in model.state_dict().items()
    }
    plain_meta = json.loads(json.dumps(meta or {}, default=str))  # only plain types in the file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config(), "state_dict": state, "meta": plain_meta}, path)
    return path


def load_denoiser(
    name_or_path: str | Path, *, device: torch.device | str | None = None
) -> tuple[MaskedDenoiser, dict[str, Any]]:
    """Load a model stored by :func:`save_denoiser`.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A bare file name (looked up in the package's ``redge_mini/book/data/``) or a path.
    device : torch.device, str or None
        Where to put the model (default CPU). Weights are cast to float32.

    Returns
    -------
    (MaskedDenoiser, dict)
        The model in eval mode and the stored ``meta`` dictionary.
    """
    if isinstance(name_or_path, Path) or "/" in str(name_or_path) or "\\" in str(name_or_path):
        path = Path(name_or_path)
    else:
        path = data_path(str(name_or_path))
    if not path.is_file():
        raise FileNotFoundError(f"no stored denoiser at {path}")
    record = torch.load(path, map_location="cpu", weights_only=True)
    model = MaskedDenoiser(**record["config"])
    state = record["state_dict"]
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.to(device or "cpu").eval()
    return model, dict(record.get("meta", {}))
