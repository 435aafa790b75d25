"""E3, Sudoku by mean-field optimisation: every estimator, knob and learning rate tuned, budgets.

Usage::

    python -m redge_mini.book.experiments.sudoku --scale full            # the protocol below
    python -m redge_mini.book.experiments.sudoku --scale small --out /tmp/sudoku
    python -m redge_mini.book.experiments.sudoku --smoke --out /tmp/sudoku   # seconds, end to end

Protocol (full scale). Puzzles with ``n_blanks`` blank cells are generated offline
(:func:`redge_mini.book.tasks.sudoku.make_puzzles`). For every estimator, every point of its grid
(knob values x learning rates) runs :func:`redge_mini.book.tasks.sudoku.solve_mean_field` on one
batch
holding ``n_select`` *selection* puzzles and ``n_eval`` *evaluation* puzzles, each evaluation
puzzle ``n_reps`` times (independent replicate runs with their own random draws). At every step
budget the grid point that solved most selection puzzles is chosen (ties: fewest violations);
the evaluation puzzles, which took no part in the choice, give the reported numbers, mean +-
standard error over puzzles (replicates averaged first):

* ``solved``: some hard sample up to the budget had no violation (a solver that checks every
  sample and stops at the first valid one);
* ``best_violations``: the fewest violations of any hard sample up to the budget;
* ``violations`` and ``final_solved``: the same for the single hard sample drawn at the budget
  step (the sample noise of the last step included).

One result file per estimator, ``<scale>_<estimator>.json``; a rerun skips estimators whose file
exists (and refuses one written with another configuration), so an interrupted run resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import ESTIMATORS, label
from .. import runtime
from ..tasks.sudoku import make_puzzles, solve_mean_field
from ..tasks.sudoku import violations as count_violations
from . import REDGE_FAMILY, Deadline, compact, knob_text, load_or_run, mean_se, parse_cli, verdict

EXPERIMENT = "sudoku"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)

_REDGE_GRID = [{"n_steps": 3, "t_1": t} for t in (0.5, 0.7, 0.9)]
#: Knob grids per scale (the authors' Sudoku demo: ReDGE n_steps 3, t_1 0.9, lr 0.05).
GRIDS: dict[str, dict[str, list[dict[str, float | int]]]] = {
    "full": {
        "st": [{}],
        "gumbel": [{"tau": t} for t in (0.3, 0.5, 1.0)],
        "reinmax": [{"tau": t} for t in (1.0, 1.5, 2.0)],
        "redge": _REDGE_GRID,
        "redge_cov": _REDGE_GRID,
        "reindge": _REDGE_GRID,
    },
    "small": {
        "st": [{}],
        "gumbel": [{"tau": 0.5}],
        "reinmax": [{"tau": 1.0}],
        "redge": [{"n_steps": 3, "t_1": 0.9}],
        "redge_cov": [{"n_steps": 3, "t_1": 0.9}],
        "reindge": [{"n_steps": 3, "t_1": 0.9}],
    },
}


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment: puzzles, budgets, grids and the selection/evaluation split."""

    scale: str
    n_blanks: int
    n_select: int
    n_eval: int
    n_reps: int
    budgets: tuple[int, ...]
    lrs: tuple[float, ...]
    grids: dict[str, list[dict[str, float | int]]] = field(repr=False)
    puzzle_seed: int = 2024

    def __post_init__(self) -> None:
        if min(self.n_select, self.n_eval, self.n_reps) < 1:
            raise ValueError("n_select, n_eval and n_reps must be >= 1")
        if not self.budgets or sorted(self.budgets) != list(self.budgets):
            raise ValueError(f"budgets must be increasing, got {self.budgets}")
        if not 0 <= self.n_blanks <= 81:
            raise ValueError(f"n_blanks must lie in [0, 81], got {self.n_blanks}")

    @property
    def steps(self) -> int:
        """Adam steps of every run (the largest budget)."""
        return self.budgets[-1]

    def as_config(self, estimator: str) -> dict[str, Any]:
        """The JSON-able configuration of one estimator's result file."""
        config = {k: v for k, v in asdict(self).items() if k != "grids"}
        return json.loads(json.dumps({**config, "estimator": estimator,
                                      "knob_values": self.grids[estimator]}))


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol("full", n_blanks=45, n_select=16, n_eval=64, n_reps=3,
                         budgets=(100, 300, 600), lrs=(0.05, 0.1, 0.3), grids=GRIDS["full"])
    else:
        proto = Protocol("small", n_blanks=40, n_select=4, n_eval=6, n_reps=2,
                         budgets=(50, 200), lrs=(0.1, 0.3), grids=GRIDS["small"])
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", n_select=2, n_eval=2, n_reps=2,
                        budgets=(3, 6), lrs=proto.lrs[:2])
    return proto


def puzzles_for(proto: Protocol) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch of one run: selection puzzles, then each evaluation puzzle ``n_reps`` times.

    Returns ``(batch, solutions, eval_index)``; ``eval_index[i]`` is the evaluation puzzle of
    row ``n_select + i`` (the same puzzles for every estimator: a fixed CPU generator).
    """
    generator = torch.Generator().manual_seed(proto.puzzle_seed)
    puzzles, solutions = make_puzzles(proto.n_select + proto.n_eval, proto.n_blanks,
                                      generator=generator)
    eval_index = torch.arange(proto.n_eval).repeat_interleave(proto.n_reps)
    batch = torch.cat([puzzles[:proto.n_select], puzzles[proto.n_select:][eval_index]])
    return batch, solutions, eval_index


def _per_puzzle(values: torch.Tensor, eval_index: torch.Tensor, n_eval: int) -> list[float]:
    """Average the replicate rows of each evaluation puzzle: ``(rows,) -> n_eval`` values."""
    sums = torch.zeros(n_eval).index_add_(0, eval_index, values.float())
    counts = torch.bincount(eval_index, minlength=n_eval).float()
    return (sums / counts).tolist()


def run_estimator(
    estimator: str,
    proto: Protocol,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Run one estimator over its grid; return the record stored in its result file."""
    if estimator not in ESTIMATOR_NAMES:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {list(ESTIMATOR_NAMES)}")
    dev = torch.device(device) if device is not None else runtime.device()
    batch, _, eval_index = puzzles_for(proto)
    generator = torch.Generator(device=dev).manual_seed(seed + ESTIMATOR_NAMES.index(estimator))
    start = time.perf_counter()
    result = solve_mean_field(batch.to(dev), estimator, steps=proto.steps, lr=list(proto.lrs),
                              knobs=proto.grids[estimator], generator=generator,
                              budgets=proto.budgets)
    wall = time.perf_counter() - start
    sel = slice(0, proto.n_select)
    ev = slice(proto.n_select, None)
    per_config = []
    for c, config in enumerate(result.configs):
        entry: dict[str, Any] = {"knobs": config["knobs"], "lr": config["lr"], "budgets": {}}
        for b, budget in enumerate(proto.budgets):
            metrics = {
                "solved": result.solved_within(budget)[c].float(),
                "best_violations": result.best_violations[c, b].float(),
                "violations": result.violations[c, b].float(),
                "final_solved": (result.violations[c, b] == 0).float(),
            }
            numbers: dict[str, float] = {
                "select_solved": metrics["solved"][sel].mean().item(),
                "select_best_violations": metrics["best_violations"][sel].mean().item(),
            }
            for key, values in metrics.items():
                numbers[key], numbers[f"{key}_se"] = mean_se(
                    _per_puzzle(values[ev], eval_index, proto.n_eval))
            entry["budgets"][str(budget)] = numbers
        per_config.append(entry)
    every = max(1, proto.steps // 200)
    trace_steps = list(range(every, proto.steps + 1, every))
    # examples from the grid point chosen at the largest budget
    best = choose(per_config, proto.steps)
    ok = result.solved_within(proto.steps)[best, ev]
    rows = batch[ev]
    examples = {}
    for kind, mask in (("solved", ok), ("failed", ~ok)):
        hits = mask.nonzero().flatten()
        if len(hits):
            i = int(hits[0])
            grid = result.first_solution[best, proto.n_select + i]
            examples[kind] = {"puzzle": rows[i].tolist(), "grid": grid.tolist(),
                              "violations": int(count_violations(grid[None])[0])}
    data = {
        "estimator": estimator,
        "configs": per_config,
        "trace_steps": trace_steps,
        "trace_eval_violations": result.mean_violations[:, every - 1::every],
        "examples": examples,
        "examples_config": best,
        "clue_mismatches": result.extra["clue_mismatches"],
        "wall_seconds": wall,
        "seconds_per_step_per_config": wall / proto.steps / len(result.configs),
        "device": str(dev),
    }
    return {"experiment": EXPERIMENT, "name": f"{proto.scale}_{estimator}",
            "config": proto.as_config(estimator), "seed": seed,
            "metadata": runtime.run_metadata(), "data": compact(data)}


def choose(per_config: list[dict[str, Any]], budget: int) -> int:
    """Index of the grid point chosen at ``budget``: most selection puzzles solved, then fewest
    violations (the evaluation puzzles play no part)."""
    key = str(budget)
    return min(range(len(per_config)), key=lambda c: (
        -per_config[c]["budgets"][key]["select_solved"],
        per_config[c]["budgets"][key]["select_best_violations"]))


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
    """Run (or resume) the experiment; return the records of the estimators run now or found."""
    estimators = list(ESTIMATOR_NAMES) if estimators is None else estimators
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    deadline = Deadline(max_minutes)
    records = []
    for estimator in estimators:
        record = load_or_run(
            EXPERIMENT, folder, f"{proto.scale}_{estimator}", proto.as_config(estimator),
            lambda e=estimator: run_estimator(e, proto, seed=seed, device=device),
            seed=seed, save=save, deadline=deadline, what=estimator)
        if record is not None:
            records.append(record)
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables and verdicts from result records (stored or freshly computed).

    Returns a dict with ``rows`` (one per ``(budget, estimator)``: the chosen grid point and its
    evaluation numbers), ``best`` (per budget: the estimator with the highest solve rate, ties
    broken by fewer violations), ``verdicts`` (per budget and ReDGE-family member: against the
    best estimator outside the family, on the solve rate and on the best violations),
    ``budgets``, ``estimators`` and ``scale``.
    """
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    budgets = records[0]["config"]["budgets"]
    rows = []
    for record in records:
        data = record["data"]
        for budget in budgets:
            c = choose(data["configs"], budget)
            chosen = data["configs"][c]
            rows.append({
                "budget": budget, "estimator": data["estimator"],
                "label": label(data["estimator"]), "config_index": c,
                "knobs": chosen["knobs"], "lr": chosen["lr"],
                "setting": knob_text(chosen["knobs"], chosen["lr"]),
                **{k: v for k, v in chosen["budgets"][str(budget)].items()
                   if not k.startswith("select_")},
                "seconds_per_step": data["seconds_per_step_per_config"],
            })
    best, verdicts = {}, {}
    for budget in budgets:
        at = [r for r in rows if r["budget"] == budget]
        best[budget] = max(at, key=lambda r: (r["solved"], -r["best_violations"]))
        others = [r for r in at if r["estimator"] not in REDGE_FAMILY]
        if not others:
            continue
        rival = max(others, key=lambda r: (r["solved"], -r["best_violations"]))
        for r in at:
            if r["estimator"] in REDGE_FAMILY:
                verdicts[(budget, r["estimator"])] = {
                    "solved": verdict(r["solved"], r["solved_se"], rival["solved"],
                                      rival["solved_se"], lower_is_better=False),
                    "violations": verdict(r["best_violations"], r["best_violations_se"],
                                          rival["best_violations"],
                                          rival["best_violations_se"]),
                    "rival": rival["estimator"], "solved_mean": r["solved"],
                    "rival_solved": rival["solved"], "violations_mean": r["best_violations"],
                    "rival_violations": rival["best_violations"],
                }
    return {"rows": rows, "best": best, "verdicts": verdicts, "budgets": budgets,
            "estimators": [r["data"]["estimator"] for r in records],
            "scale": records[0]["config"]["scale"]}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                  device=cli.device, max_minutes=cli.args.max_minutes)
    for row in summarise(records)["rows"] if records else []:
        print(f"budget {row['budget']:<5} {row['label']:<15} {row['setting']:<24} "
              f"solved {row['solved']:.2f} ± {row['solved_se']:.2f}  best violations "
              f"{row['best_violations']:6.2f} ± {row['best_violations_se']:.2f}  at budget "
              f"{row['violations']:6.2f}")
    return cli.finish(len(records), len(cli.estimators), "estimators")


if __name__ == "__main__":
    raise SystemExit(main())
