"""Train and store the three models of the image-guidance experiment (chapter 10).

    python -m redge_mini.book.experiments.train_image_models [--out DIR] [--prior-steps N] [--seed
    S]
    python -m redge_mini.book.experiments.train_image_models --smoke --out /tmp/models   # seconds

Makes, from scikit-learn's 8 x 8 digits quantised to 4 grey levels (training split of
:func:`redge_mini.book.tasks.image_guidance.load_digit_tokens`):

* the class-conditional masked token model (the prior), stored in float16 as ``image_prior.pt``;
* the reward classifier (a small CNN) and the judge (an MLP), stored in
  ``image_guidance_models.pt`` together with the training configuration, losses and held-out
  accuracies.

Default destination: the package's ``redge_mini/book/data`` folder, from which
:func:`~redge_mini.book.tasks.image_guidance.load_image_models` reads them. Runs on the CPU in about
five minutes on one core (almost all of it the prior; the classifiers take seconds); everything is
seeded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from redge_mini.book.masked_diffusion import masked_diffusion_loss
from redge_mini.book.tasks.image_guidance import (
    ImageModels,
    accuracy,
    load_digit_tokens,
    save_image_models,
    train_classifier,
    train_prior,
)

#: The configuration of the stored models.
DEFAULTS: dict = {
    "seed": 0,
    "prior": {"width": 64, "depth": 2, "heads": 4, "steps": 1500, "batch_size": 64, "lr": 3e-3,
              "label_dropout": 0.1},
    "reward": {"arch": "cnn", "epochs": 30, "batch_size": 64, "lr": 3e-3, "token_noise": 0.05},
    "judge": {"arch": "mlp", "epochs": 40, "batch_size": 64, "lr": 3e-3, "token_noise": 0.05},
}


@torch.no_grad()
def heldout_prior_loss(prior: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor,
                       *, repeats: int = 20, seed: int = 1) -> float:
    """Masked-diffusion loss (nats per token, an upper bound on ``-log p / 64``) on held-out images,
    averaged over ``repeats`` draws of the masks."""
    generator = torch.Generator().manual_seed(seed)
    losses = [masked_diffusion_loss(prior, tokens, generator=generator, cond=labels).item()
              for _ in range(repeats)]
    return sum(losses) / len(losses)


def train_all(config: dict, *, progress: bool = True) -> ImageModels:
    """Train the prior, the reward classifier and the judge with ``config`` (see DEFAULTS)."""
    torch.manual_seed(config["seed"])
    tokens, labels = load_digit_tokens("train")
    test_tokens, test_labels = load_digit_tokens("test")
    meta: dict = {"config": config}
    models = {}
    for offset, name in enumerate(("reward", "judge")):
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(config["seed"] + 1 + offset)
        models[name] = train_classifier(tokens, labels, generator=generator, **config[name])
        meta[name] = {
            "test_accuracy": accuracy(models[name], test_tokens, test_labels),
            "train_accuracy": accuracy(models[name], tokens, labels),
            "seconds": time.perf_counter() - start,
        }
        print(f"{name}: test accuracy {meta[name]['test_accuracy']:.3f} "
              f"({meta[name]['seconds']:.1f} s)", flush=True)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config["seed"])
    prior, history = train_prior(tokens, labels, generator=generator, progress=progress,
                                 **config["prior"])
    tail = history["loss"][-50:]
    meta["prior"] = {
        "train_loss_last50": sum(tail) / len(tail),
        "test_loss": heldout_prior_loss(prior, test_tokens, test_labels),
        "seconds": time.perf_counter() - start,
        "n_parameters": sum(p.numel() for p in prior.parameters()),
    }
    print(f"prior: held-out loss {meta['prior']['test_loss']:.3f} nats/token "
          f"({meta['prior']['seconds']:.1f} s)", flush=True)
    return ImageModels(prior, models["reward"], models["judge"], meta)


def main(argv: list[str] | None = None) -> list[Path]:
    """Command-line entry point; returns the written files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="destination folder (default: the package's redge_mini/book/data)")
    parser.add_argument("--prior-steps", type=int, default=DEFAULTS["prior"]["steps"],
                        help="Adam steps of the prior (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: these models are too small to gain "
                             "from more, and lose badly on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (2 prior steps, 1 epoch), same code path: checks the "
                             "script end to end; use with --out")
    args = parser.parse_args(argv)
    if args.prior_steps < 1:
        parser.error(f"--prior-steps must be >= 1, got {args.prior_steps}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    config = {**DEFAULTS, "seed": args.seed, "prior": {**DEFAULTS["prior"],
                                                      "steps": args.prior_steps}}
    if args.smoke:
        if args.out is None:
            parser.error("--smoke needs --out (it must not replace the stored models)")
        config["prior"]["steps"] = 2
        config["reward"] = {**config["reward"], "epochs": 1}
        config["judge"] = {**config["judge"], "epochs": 1}
    models = train_all(config, progress=not args.no_progress)
    paths = save_image_models(models, args.out)
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return paths


if __name__ == "__main__":
    main()
