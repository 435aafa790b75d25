"""Train the tiny Sudoku masked diffusion models shipped in ``redge_mini/book/data/``.

Usage::

    python -m redge_mini.book.experiments.train_sudoku_mdm [--which weak|strong|both] [--out DIR]

Both checkpoints share one architecture (:data:`ARCHITECTURE`) and are trained on freshly generated
valid grids (:func:`redge_mini.book.tasks.sudoku.generate_grids`, a new batch every step) with
:func:`redge_mini.book.masked_diffusion.train_masked_denoiser`; they differ only in the number of
steps.
The *weak* checkpoint is deliberately short-trained, so that unguided sampling still breaks Sudoku
constraints and guidance has something to fix; the *strong* one is trained longer. Weights are
stored in float16 (under 0.1 MB each) with the training configuration, the final loss, the wall
and CPU time and the software versions. On two CPU cores the pair trains in a few minutes.
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
    save_denoiser,
    train_masked_denoiser,
)
from redge_mini.book.runtime import run_metadata, set_seed
from redge_mini.book.tasks.sudoku import cell_groups, generate_grids, grid_to_tokens

#: The network of both checkpoints: 9 digit tokens + mask, 81 cells, position embeddings
#: factorised by row, column and box, attention restricted to the cells of a shared unit.
ARCHITECTURE: dict[str, Any] = {"vocab_size": 9, "seq_len": 81, "width": 32, "depth": 3,
                                "heads": 4, "n_classes": 0, "position_groups": cell_groups(),
                                "attend_within_groups": True}
#: Training settings per checkpoint (file name, steps, batch size, peak learning rate, seed).
CHECKPOINTS: dict[str, dict[str, object]] = {
    "weak": {"file": "sudoku_mdm_weak.pt", "steps": 120, "batch_size": 64, "lr": 3e-3, "seed": 1},
    "strong": {"file": "sudoku_mdm_strong.pt", "steps": 1500, "batch_size": 64, "lr": 3e-3,
               "seed": 2},
}


def grid_sampler(batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh valid grids as MDM tokens ``(batch_size, 81)`` in ``0..8``."""
    return grid_to_tokens(generate_grids(batch_size, generator=generator))


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
    meta = {
        "which": which,
        "architecture": {k: v for k, v in ARCHITECTURE.items() if k != "position_groups"},
        "training": {k: v for k, v in settings.items() if k != "file"},
        "final_loss_mean_last_50": sum(tail) / len(tail),
        "loss_every_10": history["loss"][::10],
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


if __name__ == "__main__":
    main()
