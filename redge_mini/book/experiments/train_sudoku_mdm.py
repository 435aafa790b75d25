"""Train the tiny Sudoku masked diffusion models shipped in ``redge_mini/book/data/``.

Usage::

    python -m redge_mini.book.experiments.train_sudoku_mdm [--which weak|strong|both] [--out DIR]

Both checkpoints share one architecture (:data:`ARCHITECTURE`) and are trained on freshly generated
diverse valid grids (:func:`redge_mini.book.tasks.sudoku.generate_grids`, randomised
backtracking, a new batch every step) with
:func:`redge_mini.book.masked_diffusion.train_masked_denoiser`; they differ only in the number of
steps. The *weak* checkpoint is deliberately short-trained, so that unguided sampling still breaks
Sudoku constraints and guidance has something to fix; the *strong* one is trained longer.

After training, :func:`evaluate_checkpoint` measures what "weak" and "strong" mean: the
per-token loss (the masked-diffusion bound, nats per token) on held-out grids at fixed masking
levels, and the validity of unguided samples (ancestral sampler) completing held-out puzzles.
Weights are stored in float16 (under 0.1 MB each) with the training configuration, these
measurements, the wall and CPU time and the software versions. One CPU thread trains the pair in
a few minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from redge_mini.book.masked_diffusion import (
    MaskedDenoiser,
    data_path,
    load_denoiser,
    masked_diffusion_loss,
    sample_unmasking,
    save_denoiser,
    train_masked_denoiser,
)
from redge_mini.book.runtime import run_metadata, set_seed
from redge_mini.book.tasks.sudoku import (
    cell_groups,
    generate_grids,
    grid_to_tokens,
    is_solved,
    make_puzzles,
    tokens_to_grid,
    violations,
)

#: The network of both checkpoints: 9 digit tokens + mask, 81 cells, position embeddings
#: factorised by row, column and box, attention restricted to the cells of a shared unit.
ARCHITECTURE: dict[str, Any] = {"vocab_size": 9, "seq_len": 81, "width": 32, "depth": 3,
                                "heads": 4, "n_classes": 0, "position_groups": cell_groups(),
                                "attend_within_groups": True}
#: Training settings per checkpoint (file name, steps, batch size, peak learning rate, seed).
CHECKPOINTS: dict[str, dict[str, object]] = {
    "weak": {"file": "sudoku_mdm_weak.pt", "steps": 150, "batch_size": 64, "lr": 3e-3, "seed": 1},
    "strong": {"file": "sudoku_mdm_strong.pt", "steps": 2000, "batch_size": 64, "lr": 3e-3,
               "seed": 2},
}
#: Held-out evaluation: grids and puzzles from seeds the training never uses, fixed masking
#: levels for the loss, and the guidance experiment's puzzle size and number of unmasking steps.
EVALUATION: dict[str, Any] = {"seed": 777, "n_grids": 512, "t_levels": [0.1, 0.3, 0.5, 0.7, 0.9],
                              "n_puzzles": 256, "n_blanks": 45, "n_unmask_steps": 20}


def grid_sampler(batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh valid grids as MDM tokens ``(batch_size, 81)`` in ``0..8``."""
    return grid_to_tokens(generate_grids(batch_size, generator=generator))


@torch.no_grad()
def evaluate_checkpoint(model: MaskedDenoiser) -> dict[str, Any]:
    """Held-out measurements of a model (see :data:`EVALUATION`).

    ``loss_per_token``: the mean over the masking levels ``t`` of the masked-diffusion loss
    (:func:`~redge_mini.book.masked_diffusion.masked_diffusion_loss`, nats per token; uniform
    predictions score ``log 9 = 2.197``), and ``loss_by_t``. ``unguided_solved`` and
    ``unguided_violations``: solve rate and mean violations of the ancestral sampler completing
    held-out puzzles; ``unguided_free_valid``: fraction of valid grids sampled from scratch.
    """
    settings = EVALUATION
    model.eval()
    dev = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings["seed"])
    grids = grid_to_tokens(generate_grids(settings["n_grids"], generator=generator)).to(dev)
    by_t = {}
    for t in settings["t_levels"]:
        loss = masked_diffusion_loss(model, grids, t=torch.full((grids.shape[0],), t, device=dev),
                                     generator=generator)
        by_t[str(t)] = loss.item()
    puzzles, _ = make_puzzles(settings["n_puzzles"], settings["n_blanks"], generator=generator)
    sample_gen = torch.Generator(device=dev).manual_seed(settings["seed"])
    tokens = sample_unmasking(model, puzzles.shape[0], n_steps=settings["n_unmask_steps"],
                              generator=sample_gen, init=grid_to_tokens(puzzles).to(dev))
    completed = tokens_to_grid(tokens).cpu()
    free = tokens_to_grid(sample_unmasking(model, settings["n_puzzles"],
                                           n_steps=settings["n_unmask_steps"],
                                           generator=sample_gen)).cpu()
    return {"loss_per_token": sum(by_t.values()) / len(by_t), "loss_by_t": by_t,
            "unguided_solved": is_solved(completed, puzzles).float().mean().item(),
            "unguided_violations": violations(completed).float().mean().item(),
            "unguided_free_valid": (violations(free) == 0).float().mean().item(),
            "settings": settings}


def train_checkpoint(which: str, out: Path | None = None, *, progress: bool = True) -> Path:
    """Train checkpoint ``which`` (``"weak"`` or ``"strong"``) and store it; returns its path."""
    if which not in CHECKPOINTS:
        raise ValueError(f"which must be one of {sorted(CHECKPOINTS)}, got {which!r}")
    settings = CHECKPOINTS[which]
    generator = set_seed(int(settings["seed"]))
    model = MaskedDenoiser(**ARCHITECTURE)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = train_masked_denoiser(
        model, None, steps=int(settings["steps"]),
        batch_size=int(settings["batch_size"]), lr=float(settings["lr"]), generator=generator,
        sampler=grid_sampler, progress=progress)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    tail = history["loss"][-50:]
    evaluation = evaluate_checkpoint(model)
    meta = {
        "which": which,
        "architecture": {k: v for k, v in ARCHITECTURE.items() if k != "position_groups"},
        "training": {k: v for k, v in settings.items() if k != "file"},
        "final_loss_mean_last_50": sum(tail) / len(tail),
        "loss_every_10": history["loss"][::10],
        "evaluation": evaluation,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "metadata": run_metadata(),
    }
    path = (out / str(settings["file"])) if out is not None else data_path(str(settings["file"]))
    return save_denoiser(model, path, half=True, meta=meta)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["weak", "strong", "both"], default="both")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the weights (default: redge_mini/book/data/)")
    args = parser.parse_args(argv)
    names = ["weak", "strong"] if args.which == "both" else [args.which]
    for name in names:
        path = train_checkpoint(name, args.out)
        print(f"{name}: wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
        _, meta = load_denoiser(path)
        ev = meta["evaluation"]
        print(f"  held-out loss {ev['loss_per_token']:.3f} nats/token, unguided solved "
              f"{ev['unguided_solved']:.2f}, violations {ev['unguided_violations']:.2f}, free "
              f"valid {ev['unguided_free_valid']:.2f}, {meta['train_cpu_seconds']:.0f} CPU s")


if __name__ == "__main__":
    main()
