"""Train and store the models of the image-guidance stand-in (chapter 11) from scratch.

    python -m redge_mini.book.experiments.train_image_models            # about 3-4 min, 1 thread
    python -m redge_mini.book.experiments.train_image_models --smoke --out /tmp/m   # seconds

From the 5,000 MNIST digits of :func:`redge_mini.book.datasets.load_mnist_5k` (grey levels, the
default 4,000 / 500 / 500 split):

1. the VQ codebook: k-means with ``K = 256`` codes on the 4 x 4 patches of the training digits;
2. the decoder (:class:`~redge_mini.book.tasks.image_guidance.VQDecoder`), trained to rebuild
   the original training digits from their codes (mean squared error);
3. the reward CNN, trained on decoded training digits; the judge MLP, trained on the original
   pixels (another architecture, other inputs, another seed);
4. the prior: a class-conditional masked token model over the codes (10 % label dropout, so that
   classifier-free guidance has an unconditional model).

Everything is seeded. The held-out numbers (reconstruction error, accuracies, the prior's masked
diffusion loss, code usage) are stored with the weights in ``meta``; the weights are stored in
float16 (``image_models.pt``, ``image_prior.pt`` in ``redge_mini/book/data``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from redge_mini.book.datasets import load_mnist_5k
from redge_mini.book.masked_diffusion import (
    MaskedDenoiser,
    masked_diffusion_loss,
    train_masked_denoiser,
)
from redge_mini.book.tasks.image_guidance import (
    GRID,
    N_CLASSES,
    N_CODES,
    SEQ_LEN,
    DigitCNN,
    DigitMLP,
    ImageModels,
    VQDecoder,
    accuracy,
    code_usage,
    encode,
    fit_codebook,
    save_image_models,
    unpatch,
)

#: The configuration of the stored models.
DEFAULTS: dict = {
    "seed": 0,
    "n_codes": N_CODES,
    "codebook_images": None,  # k-means on the patches of this many training digits (None: all)
    "decoder": {"hidden": 48, "steps": 800, "batch_size": 128, "lr": 3e-3},
    "reward": {"epochs": 8, "batch_size": 64, "lr": 2e-3},
    "judge": {"epochs": 10, "batch_size": 64, "lr": 2e-3},
    "prior": {"width": 64, "depth": 2, "heads": 4, "steps": 1500, "batch_size": 64, "lr": 3e-3,
              "label_dropout": 0.1},
}


def grid_groups() -> list[list[int]]:
    """Row and column of every token of the 7 x 7 grid (the prior's position groups)."""
    return [[i // GRID for i in range(SEQ_LEN)], [i % GRID for i in range(SEQ_LEN)]]


def train_decoder(codebook: torch.Tensor, tokens: torch.Tensor, images: torch.Tensor, *,
                  hidden: int, steps: int, batch_size: int, lr: float,
                  generator: torch.Generator) -> VQDecoder:
    """Fit :class:`VQDecoder` to rebuild ``images`` ``(N, 784)`` from ``tokens`` ``(N, 49)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        decoder = VQDecoder(codebook, hidden=hidden)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    target = images.reshape(-1, 28, 28)
    for _ in range(steps):
        idx = torch.randint(len(tokens), (batch_size,), generator=generator)
        loss = F.mse_loss(decoder(F.one_hot(tokens[idx], N_CODES).float()), target[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return decoder.eval()


def train_classifier(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, *,
                     epochs: int, batch_size: int, lr: float,
                     generator: torch.Generator, noise: float = 0.0) -> torch.nn.Module:
    """Cross-entropy training of a classifier on pixels ``(N, 28, 28)``; ``noise > 0`` adds
    Gaussian noise of that standard deviation to every batch (drawn from ``generator``; with
    ``noise = 0`` nothing is drawn, so the stored models are unchanged)."""
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            idx = order[start:start + batch_size]
            batch = pixels[idx]
            if noise > 0:
                batch = batch + noise * torch.randn(batch.shape, generator=generator)
            loss = F.cross_entropy(model(batch), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def heldout_prior_loss(prior: MaskedDenoiser, tokens: torch.Tensor, labels: torch.Tensor, *,
                       repeats: int = 10, seed: int = 1) -> float:
    """Masked-diffusion loss (nats per token, a bound on ``-log p / 49``) on held-out codes."""
    generator = torch.Generator().manual_seed(seed)
    return sum(masked_diffusion_loss(prior, tokens, generator=generator, cond=labels).item()
               for _ in range(repeats)) / repeats


def train_all(config: dict, *, progress: bool = False) -> ImageModels:
    """Make every model of the stand-in with ``config`` (see :data:`DEFAULTS`)."""
    seed = config["seed"]
    data = load_mnist_5k(binarize=False, seed=0)
    x = {p: torch.as_tensor(getattr(data, f"x_{p}")) for p in ("train", "valid", "test")}
    y = {p: torch.as_tensor(getattr(data, f"y_{p}")) for p in ("train", "valid", "test")}
    meta: dict = {"config": config, "data": "load_mnist_5k(binarize=False, seed=0)"}

    start = time.perf_counter()
    codebook = fit_codebook(x["train"][:config["codebook_images"]], config["n_codes"], seed=seed)
    tokens = {p: encode(v, codebook) for p, v in x.items()}
    lookup_mse = float(((unpatch(codebook[tokens["test"]]).reshape(-1, 784) - x["test"]) ** 2)
                       .mean())
    meta["codebook"] = {"seconds": time.perf_counter() - start,
                        "codes_used_train": code_usage(tokens["train"], config["n_codes"]),
                        "codes_used_test": code_usage(tokens["test"], config["n_codes"]),
                        "lookup_mse_test": lookup_mse,
                        "mean_image_mse_test": float(((x["test"] - x["train"].mean(0)) ** 2)
                                                     .mean())}
    print(f"codebook: {meta['codebook']}", flush=True)

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed + 1)
    decoder = train_decoder(codebook, tokens["train"], x["train"], generator=generator,
                            **config["decoder"])
    with torch.no_grad():
        decoded = {p: decoder(F.one_hot(t, N_CODES).float()) for p, t in tokens.items()}
    meta["decoder"] = {"seconds": time.perf_counter() - start,
                       "mse_test": float(((decoded["test"].reshape(-1, 784) - x["test"]) ** 2)
                                         .mean()),
                       "n_parameters": sum(p.numel() for p in decoder.parameters())}
    print(f"decoder: {meta['decoder']}", flush=True)

    classifiers = {}
    for offset, (name, cls, inputs) in enumerate((("reward", DigitCNN, decoded),
                                                  ("judge", DigitMLP, None))):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed + 2 + offset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2 + offset)
            model = cls()
        pixels = inputs["train"] if inputs is not None else x["train"].reshape(-1, 28, 28)
        classifiers[name] = train_classifier(model, pixels, y["train"], generator=generator,
                                             **config[name])
        meta[name] = {"seconds": time.perf_counter() - start,
                      "accuracy_decoded_test": accuracy(model, decoded["test"], y["test"]),
                      "accuracy_real_test": accuracy(model, x["test"], y["test"])}
        print(f"{name}: {meta[name]}", flush=True)

    start = time.perf_counter()
    cfg = dict(config["prior"])
    steps, batch_size, lr, dropout = (cfg.pop(k) for k in ("steps", "batch_size", "lr",
                                                            "label_dropout"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 4)
        prior = MaskedDenoiser(config["n_codes"], SEQ_LEN, n_classes=N_CLASSES,
                               position_groups=grid_groups(), **cfg)
    generator = torch.Generator().manual_seed(seed + 5)
    history = train_masked_denoiser(prior, tokens["train"], steps=steps, batch_size=batch_size,
                                    lr=lr, generator=generator, labels=y["train"],
                                    label_dropout=dropout, progress=progress)
    prior.eval()
    tail = history["loss"][-100:]
    meta["prior"] = {"seconds": time.perf_counter() - start,
                     "train_loss_last100": sum(tail) / len(tail),
                     "test_loss": heldout_prior_loss(prior, tokens["test"], y["test"]),
                     "n_parameters": sum(p.numel() for p in prior.parameters())}
    print(f"prior: {meta['prior']}", flush=True)
    models = ImageModels(codebook, decoder, prior, classifiers["reward"], classifiers["judge"],
                         meta)
    for module in (decoder, prior, *classifiers.values()):
        module.requires_grad_(False)
    return models


def main(argv: list[str] | None = None) -> list[Path]:
    """Command-line entry point; returns the written files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="destination folder (default: the package's redge_mini/book/data)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--progress", action="store_true", help="show the prior's progress bar")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, same code path (needs --out: never overwrites the "
                             "stored models)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    config = copy.deepcopy(DEFAULTS)
    config["seed"] = args.seed
    if args.smoke:
        if args.out is None:
            parser.error("--smoke needs --out (it must not replace the stored models)")
        config["codebook_images"] = 200
        config["decoder"]["steps"] = 3
        config["reward"]["epochs"] = config["judge"]["epochs"] = 1
        config["prior"]["steps"] = 3
    torch.set_num_threads(args.threads)
    models = train_all(config, progress=args.progress)
    paths = save_image_models(models, args.out)
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return paths


if __name__ == "__main__":
    main()
