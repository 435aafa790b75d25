"""E4, Sudoku guided by a masked diffusion prior: unguided vs guided per estimator at equal N.

Usage::

    python -m redge_mini.book.experiments.mdm_guidance --scale full
    python -m redge_mini.book.experiments.mdm_guidance --scale small --out /tmp/mdm
    python -m redge_mini.book.experiments.mdm_guidance --smoke --out /tmp/mdm   # seconds

Protocol. The stored tiny masked diffusion models (``redge_mini/book/data/sudoku_mdm_*.pt``, made by
:mod:`redge_mini.book.experiments.train_sudoku_mdm`) complete ``n_puzzles`` puzzles with
``n_blanks``
blanks, each ``n_reps`` times. Baselines: the ancestral sampler
(:func:`~redge_mini.book.masked_diffusion.sample_unmasking`) and greedy decoding on the guidance
schedule (:func:`~redge_mini.book.guidance.guided_sample` with ``N = 0``). Guided: ``T`` unmasking
steps,
``N`` Adam steps (learning rate ``lr``) per unmasking step on the Sudoku penalty of the estimator's
sample plus ``lam`` times the KL to the model, for every estimator at the same ``N``. Metrics per
run: violations and solve rate of the completed grid, exact match with the grid the puzzle came
from, the KL to the prior paid at the revealed cells, and the wall time. Mean +- standard error
over puzzles (replicates averaged first).

One result file per checkpoint and method, ``<scale>_<checkpoint>_<method>.json``; a rerun skips
files that exist (and refuses one written with another configuration).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import ESTIMATORS, label
from .. import runtime
from ..guidance import guided_sample
from ..masked_diffusion import MaskedDenoiser, load_denoiser, sample_unmasking
from ..tasks.sudoku import grid_to_tokens, is_solved, make_puzzles, penalty, tokens_to_grid
from ..tasks.sudoku import violations as count_violations
from . import REDGE_FAMILY, Deadline, compact, load_or_run, mean_se, parse_cli, verdict

EXPERIMENT = "mdm_guidance"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
CHECKPOINT_FILES = {"weak": "sudoku_mdm_weak.pt", "strong": "sudoku_mdm_strong.pt"}

#: One knob setting per estimator (no tuning here: E3 tunes): the authors' Sudoku demo setting
#: for the ReDGE family, and mid-grid temperatures for Gumbel-Softmax and ReinMax.
KNOBS: dict[str, dict[str, float | int]] = {
    "st": {},
    "gumbel": {"tau": 0.5},
    "reinmax": {"tau": 1.0},
    "redge": {"n_steps": 3, "t_1": 0.9},
    "redge_cov": {"n_steps": 3, "t_1": 0.9},
    "reindge": {"n_steps": 3, "t_1": 0.9},
}


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment."""

    scale: str
    checkpoints: tuple[str, ...]
    n_puzzles: int
    n_reps: int
    n_blanks: int
    n_unmask_steps: int
    n_inner: dict[str, tuple[int, ...]]
    lam: float = 1.0
    lr: float = 0.1
    puzzle_seed: int = 4242

    def as_config(self, checkpoint: str, method: str) -> dict[str, Any]:
        """The JSON-able configuration of one result file."""
        config = asdict(self)
        config["n_inner"] = list(self.n_inner[checkpoint])
        config.update(checkpoint=checkpoint, method=method,
                      knobs=KNOBS.get(method, {}), checkpoint_file=CHECKPOINT_FILES[checkpoint])
        return json.loads(json.dumps(config))


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol("full", ("weak", "strong"), n_puzzles=48, n_reps=3, n_blanks=45,
                         n_unmask_steps=20, n_inner={"weak": (8, 32, 128), "strong": (32,)})
    else:
        proto = Protocol("small", ("weak", "strong"), n_puzzles=8, n_reps=2, n_blanks=45,
                         n_unmask_steps=10, n_inner={"weak": (10,), "strong": (10,)})
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", n_puzzles=2, n_reps=2, n_unmask_steps=3,
                        n_inner={k: (2,) for k in proto.checkpoints})
    return proto


def puzzles_for(proto: Protocol) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, solutions of the rows, puzzle index of each row)``; same for every method."""
    generator = torch.Generator().manual_seed(proto.puzzle_seed)
    puzzles, solutions = make_puzzles(proto.n_puzzles, proto.n_blanks, generator=generator)
    index = torch.arange(proto.n_puzzles).repeat_interleave(proto.n_reps)
    return puzzles[index], solutions[index], index


def _per_puzzle_mean_se(values: torch.Tensor, index: torch.Tensor, n: int) -> tuple[float, float]:
    sums = torch.zeros(n).index_add_(0, index, values.detach().cpu().float())
    return mean_se((sums / torch.bincount(index, minlength=n).float()).tolist())


def evaluate(grids: torch.Tensor, puzzles: torch.Tensor, solutions: torch.Tensor,
             index: torch.Tensor, n_puzzles: int) -> dict[str, float]:
    """Violations, solve rate and exact match of completed grids (mean and SE over puzzles)."""
    grids = grids.cpu()
    out = {}
    for key, values in (("violations", count_violations(grids)),
                        ("solve", is_solved(grids, puzzles)),
                        ("exact", (grids == solutions).all(-1))):
        mean, se = _per_puzzle_mean_se(values, index, n_puzzles)
        out[key], out[f"{key}_se"] = mean, se
    return out


def _load(checkpoint: str, device: torch.device) -> MaskedDenoiser:
    model, _ = load_denoiser(CHECKPOINT_FILES[checkpoint], device=device)
    return model


def run_method(
    checkpoint: str,
    method: str,
    proto: Protocol,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Run one method (``"unguided"`` or an estimator name) with one checkpoint; the record."""
    if checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"unknown checkpoint {checkpoint!r}; choose from {list(CHECKPOINT_FILES)}")
    if method != "unguided" and method not in ESTIMATOR_NAMES:
        raise ValueError(f"unknown method {method!r}; 'unguided' or one of {ESTIMATOR_NAMES}")
    dev = torch.device(device) if device is not None else runtime.device()
    model = _load(checkpoint, dev)
    puzzles, solutions, index = puzzles_for(proto)
    init = grid_to_tokens(puzzles).to(dev)
    offset = 0 if method == "unguided" else 1 + ESTIMATOR_NAMES.index(method)
    generator = torch.Generator(device=dev).manual_seed(seed + 100 * offset)
    runs: dict[str, Any] = {}
    example = {"puzzle": puzzles[0].tolist(), "solution": solutions[0].tolist()}
    if method == "unguided":
        start = time.perf_counter()
        tokens = sample_unmasking(model, init.shape[0], n_steps=proto.n_unmask_steps,
                                  generator=generator, init=init)
        seconds = time.perf_counter() - start
        grids = tokens_to_grid(tokens).cpu()
        runs["ancestral"] = {**evaluate(grids, puzzles, solutions, index, proto.n_puzzles),
                             "seconds": seconds}
        example["ancestral"] = grids[0].tolist()
        settings = [("greedy", 0)]
    else:
        settings = [(f"N={n}", n) for n in proto.n_inner[checkpoint]]
    for key, n_inner in settings:
        tokens, info = guided_sample(
            model, penalty, "st" if method == "unguided" else method,
            n_unmask_steps=proto.n_unmask_steps, n_inner=n_inner, lam=proto.lam, lr=proto.lr,
            knobs=KNOBS.get(method, {}), generator=generator, init=init)
        grids = tokens_to_grid(tokens).cpu()
        kl_mean, kl_se = _per_puzzle_mean_se(info["kl_revealed"], index, proto.n_puzzles)
        nll_mean, _ = _per_puzzle_mean_se(info["nll_prior"], index, proto.n_puzzles)
        runs[key] = {**evaluate(grids, puzzles, solutions, index, proto.n_puzzles),
                     "n_inner": n_inner, "kl": kl_mean, "kl_se": kl_se, "nll_prior": nll_mean,
                     "seconds": info["seconds_total"], "step_objective": info["objective"],
                     "step_kl": info["kl"]}
        example[key] = grids[0].tolist()
    data = {"checkpoint": checkpoint, "method": method, "runs": runs, "example": example,
            "device": str(dev)}
    return {"experiment": EXPERIMENT, "name": f"{proto.scale}_{checkpoint}_{method}",
            "config": proto.as_config(checkpoint, method), "seed": seed,
            "metadata": runtime.run_metadata(), "data": compact(data)}


def run(
    proto: Protocol,
    estimators: list[str] | None = None,
    *,
    out: Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_minutes: float | None = None,
    save: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment: every checkpoint, the unguided baselines and estimators."""
    estimators = list(ESTIMATOR_NAMES) if estimators is None else estimators
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    deadline = Deadline(max_minutes)
    records = []
    for checkpoint in proto.checkpoints:
        for method in ["unguided", *estimators]:
            record = load_or_run(
                EXPERIMENT, folder, f"{proto.scale}_{checkpoint}_{method}",
                proto.as_config(checkpoint, method),
                lambda c=checkpoint, m=method: run_method(c, m, proto, seed=seed, device=device),
                seed=seed, save=save, deadline=deadline)
            if record is not None:
                records.append(record)
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per (checkpoint, method, setting) and verdicts of the ReDGE family.

    Returns ``rows`` (``checkpoint``, ``method``, ``label``, ``setting`` -- ``"ancestral"``,
    ``"greedy"`` or ``"N=..."`` -- and the metrics), ``best`` (per checkpoint and ``N``: the
    estimator with the fewest violations), ``verdicts`` (per checkpoint, ``N`` and ReDGE-family
    member: against the best estimator outside the family, on violations) and ``scale``.
    """
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    rows = []
    for record in records:
        data = record["data"]
        for setting, numbers in data["runs"].items():
            method = data["method"]
            rows.append({"checkpoint": data["checkpoint"], "method": method,
                         "label": "unguided" if method == "unguided" else label(method),
                         "setting": setting, **{k: v for k, v in numbers.items()
                                                if not k.startswith("step_")}})
    best, verdicts = {}, {}
    guided = [r for r in rows if r["method"] != "unguided"]
    for key in sorted({(r["checkpoint"], r["setting"]) for r in guided}):
        at = [r for r in guided if (r["checkpoint"], r["setting"]) == key]
        best[key] = min(at, key=lambda r: r["violations"])
        others = [r for r in at if r["method"] not in REDGE_FAMILY]
        if not others:
            continue
        rival = min(others, key=lambda r: r["violations"])
        for r in at:
            if r["method"] in REDGE_FAMILY:
                verdicts[(*key, r["method"])] = {
                    "verdict": verdict(r["violations"], r["violations_se"], rival["violations"],
                                       rival["violations_se"]),
                    "rival": rival["method"], "mean": r["violations"],
                    "rival_mean": rival["violations"]}
    return {"rows": rows, "best": best, "verdicts": verdicts,
            "scale": records[0]["config"]["scale"]}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                  device=cli.device, max_minutes=cli.args.max_minutes)
    for row in summarise(records)["rows"] if records else []:
        print(f"{row['checkpoint']:<7} {row['label']:<15} {row['setting']:<10} "
              f"violations {row['violations']:6.2f} ± {row['violations_se']:.2f}  "
              f"solved {row['solve']:.2f}  {row['seconds']:.1f} s")
    expected = len(cli.proto.checkpoints) * (1 + len(cli.estimators))
    return cli.finish(len(records), expected, "files")


if __name__ == "__main__":
    raise SystemExit(main())
