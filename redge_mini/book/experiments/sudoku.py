"""E3, Sudoku by mean-field optimisation: equal random-search tuning, paired verdicts per puzzle.

Usage::

    python -m redge_mini.book.experiments.sudoku --scale full            # the protocol below
    python -m redge_mini.book.experiments.sudoku --scale small --out /tmp/sudoku
    python -m redge_mini.book.experiments.sudoku --smoke --out /tmp/sudoku   # seconds, end to end

Protocol (full scale; :data:`AUTHORS` and :func:`protocol_table` set it beside the authors').
Every run is :func:`redge_mini.book.tasks.sudoku.solve_mean_field`: logits at 0, clues clamped,
Adam on the penalty of the hard sample, ``steps`` steps. Puzzles have ``n_blanks`` blanks and are
cut from diverse generated grids; the ``n_tune`` tuning puzzles and the ``n_eval`` evaluation
puzzles are drawn from different seeds and checked to be disjoint.

1. *Tuning* (one stage per estimator): ``n_configs`` configurations of the estimator's search
   space, the learning rate drawn jointly with its knobs (:func:`.tuning.sample_configs`, a Latin
   hypercube; Straight-Through spends its ``n_configs`` on the learning rate alone), each run
   once on every tuning puzzle for ``steps`` steps. The choice: most tuning puzzles solved by the
   final hard sample (the headline), then fewest final violations.
2. *Evaluation* (one stage per estimator): the tuned configuration on every evaluation puzzle,
   ``n_seeds`` independent runs each (seed ``s`` = replicate ``s``); ReDGE also runs the authors'
   fixed settings (:data:`AUTHOR_SERIES`) in the same batch. The unit is ``(seed, puzzle)``: every
   estimator meets the same puzzles, so comparisons are paired.
3. *Timing*: milliseconds per optimisation step of each estimator at its tuned knobs.

Metrics of a run at budget ``b``: ``final_solved`` / ``final_violations`` of the hard sample drawn
at step ``b`` (the authors' metrics; ``final_solved`` is the headline), and, secondary, at the last
budget only, ``best_solved`` / ``best_violations`` over all samples up to it. Verdicts
(:func:`.verdicts.verdicts_from_units`, Holm over all rows) are made at the last budget only, with
the margins of :data:`MARGINS`; the other budgets draw the curve.

4. *Ablations* (issue 20, :mod:`..ablations`; once every estimator is evaluated): ReinDGE with
   its trajectory detached at ReinDGE's tuned configuration (setting ``ablation eval``, with
   tuned ReinDGE and ReinMax), and ReDGE at its tuned lr and ``n_steps`` with ``t_1`` swept up
   to 1 (settings ``t1_sweep t_1=... eval``, with tuned Straight-Through), on every evaluation
   unit; their verdict rows are no headline.

One JSON record per stage (``<scale>_<stage>_<estimator>.json``, resumable) and, from them,
``units.csv``, ``summary.csv``, ``verdicts.csv`` and ``tuning.csv`` (:func:`write_summary_csv`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import ESTIMATORS, get_spec, label
from .. import runtime
from ..ablations import (
    DETACH,
    T1_SWEEP,
    ablation_setting,
    not_headline,
    registered,
    sweep_setting,
)
from ..ablations import write_results as write_with_ablations
from ..tasks.sudoku import make_puzzles, penalty, solve_mean_field
from ..timing import median_ms, time_interleaved
from . import Stages, load_records, parse_cli
from .summary import knob_string, timing_rows
from .tuning import Axis, edge_of_space, sample_configs, search_space
from .verdicts import Metric, TuningRow, Unit, Verdict, units_from_values, verdicts_from_units

EXPERIMENT = "sudoku"
#: Marks records of this protocol (older records in the folder are ignored).
PROTOCOL = "verdicts-1"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
SETTING = "eval"

#: Equivalence margins, declared before the run (the smallest difference a reader would care
#: about), each with its reason.
MARGINS: dict[str, tuple[float, str]] = {
    "final_solved": (0.05, "5 puzzles in 100: below that, a solve rate is not worth choosing on"),
    "final_violations": (1.0, "one surplus digit in a grid of 81 cells"),
}
METRICS: tuple[Metric, ...] = (
    Metric("final_solved", higher_is_better=True, margin=MARGINS["final_solved"][0],
           headline=True),
    Metric("final_violations", higher_is_better=False, margin=MARGINS["final_violations"][0]),
)
#: Secondary metrics (units and summary only, no verdicts): the best sample of a run.
SECONDARY: tuple[str, ...] = ("best_solved", "best_violations")

#: The authors' fixed settings, run beside the tuned ReDGE (the only estimator they specify):
#: their README demo, and the demo's knobs at their configuration's default learning rate.
AUTHOR_SERIES: dict[str, dict[str, Any]] = {
    "README demo": {"n_steps": 3, "t_1": 0.9, "lr": 0.05},
    "default lr": {"n_steps": 3, "t_1": 0.9, "lr": 0.1},
}

#: The authors' Sudoku protocol (arXiv 2601.00781 and its code; ``shared/notes/experiments.md``).
AUTHORS: dict[str, str] = {
    "optimiser": "Adam",
    "steps": "README demo 2000; configuration default 10,000; batch runs: a list of budgets",
    "lr": "README demo 0.05; configuration default 0.1; batch runs sweep lr",
    "metric": "final hard sample: violations, solved",
    "estimators": "ReDGE (demo); batch runs sweep sampler knobs",
    "knobs": "README demo: ReDGE n_steps=3, t_1=0.9",
    "tuning": "batch runs: sampler knobs x learning rates x seeds x budgets",
    "puzzles": "about 1000 validation puzzles (an archive that cannot be fetched here)",
}
#: Why our protocol differs, item by item (shown in the chapter's table).
DEVIATIONS: dict[str, str] = {
    "steps": "the full scale runs the demo's 2000 steps (10,000 steps for every series do not "
             "fit the time budget); the small scale is shorter so that the page runs in a minute",
    "lr": "tuned per estimator jointly with its knobs; the demo's and the default lr are "
          "series of their own",
    "metric": "the authors' metric is the headline; best-of-run is added as a secondary view",
    "estimators": "the book compares every estimator of the registry",
    "knobs": "every estimator's knobs are tuned; the demo's are a series of their own",
    "tuning": "equal random search for every estimator, on puzzles never used to judge",
    "puzzles": "generated offline from diverse valid grids (nothing is downloaded)",
}


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment (see the module docstring)."""

    scale: str
    n_blanks: int
    steps: int
    budgets: tuple[int, ...]
    n_configs: int
    lr_low: float
    lr_high: float
    n_tune: int
    n_eval: int
    n_seeds: int
    puzzle_seed: int = 2024

    def __post_init__(self) -> None:
        if min(self.n_tune, self.n_eval, self.n_configs) < 1 or self.n_seeds < 1:
            raise ValueError("n_tune, n_eval, n_configs and n_seeds must be >= 1")
        if not self.budgets or sorted(self.budgets) != list(self.budgets) \
                or self.budgets[-1] != self.steps:
            raise ValueError(f"budgets must increase and end at steps={self.steps}, got "
                             f"{self.budgets}")
        if not 0 <= self.n_blanks <= 81:
            raise ValueError(f"n_blanks must lie in [0, 81], got {self.n_blanks}")
        if not 0 < self.lr_low < self.lr_high:
            raise ValueError(f"need 0 < lr_low < lr_high, got {self.lr_low}, {self.lr_high}")

    def config(self, stage: str, **extra: Any) -> dict[str, Any]:
        """The JSON-able configuration of one stage's record."""
        return json.loads(json.dumps({**asdict(self), "protocol": PROTOCOL, "stage": stage,
                                      **extra}))

    def space(self, estimator: str) -> dict[str, Axis]:
        """The search space of ``estimator``: its knobs and the learning rate (log scale)."""
        return search_space(estimator, Axis(self.lr_low, self.lr_high, log=True))

    def ours(self) -> dict[str, str]:
        """Our values of the items of :data:`AUTHORS` (for the protocol table)."""
        demo = AUTHOR_SERIES["README demo"]
        return {
            "optimiser": "Adam",
            "steps": f"{self.steps} (curve at {', '.join(map(str, self.budgets))})",
            "lr": f"tuned in [{self.lr_low:g}, {self.lr_high:g}] (log); ReDGE also at "
                  f"{', '.join(format(s['lr'], 'g') for s in AUTHOR_SERIES.values())}",
            "metric": "final hard sample: violations, solved (headline); best-of-run secondary",
            "estimators": ", ".join(label(n) for n in ESTIMATOR_NAMES),
            "knobs": f"tuned; ReDGE also at the demo's n_steps={demo['n_steps']}, "
                     f"t_1={demo['t_1']}",
            "tuning": f"{self.n_configs} random configurations per estimator, lr included, "
                      f"on {self.n_tune} tuning puzzles",
            "puzzles": f"{self.n_eval} evaluation puzzles x {self.n_seeds} seeds, "
                       f"{self.n_blanks} blanks, generated",
        }


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol("full", n_blanks=45, steps=2000, budgets=(500, 1000, 2000),
                         n_configs=12, lr_low=0.01, lr_high=1.0, n_tune=32, n_eval=200,
                         n_seeds=3)
    else:
        proto = Protocol("small", n_blanks=40, steps=150, budgets=(50, 150), n_configs=3,
                         lr_low=0.05, lr_high=0.5, n_tune=4, n_eval=12, n_seeds=2)
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", steps=6, budgets=(3, 6), n_configs=2,
                        n_tune=2, n_eval=3, n_seeds=2)
    return proto


def protocol_table(proto: Protocol) -> list[dict[str, str]]:
    """Rows ``item, authors, ours, reason`` (the reason is empty where we follow the authors)."""
    ours = proto.ours()
    return [{"item": item, "authors": theirs, "ours": ours[item],
             "reason": "" if ours[item] == theirs else DEVIATIONS[item]}
            for item, theirs in AUTHORS.items()]


def tuning_puzzles(proto: Protocol) -> torch.Tensor:
    """The ``n_tune`` tuning puzzles (never used for evaluation)."""
    return make_puzzles(proto.n_tune, proto.n_blanks,
                        generator=torch.Generator().manual_seed(proto.puzzle_seed))[0]


def eval_puzzles(proto: Protocol) -> torch.Tensor:
    """The ``n_eval`` evaluation puzzles; raises if one of them is also a tuning puzzle."""
    puzzles = make_puzzles(proto.n_eval, proto.n_blanks,
                           generator=torch.Generator().manual_seed(proto.puzzle_seed + 1))[0]
    tune = {tuple(p.tolist()) for p in tuning_puzzles(proto)}
    if any(tuple(p.tolist()) in tune for p in puzzles):
        raise ValueError("an evaluation puzzle is also a tuning puzzle; change puzzle_seed")
    return puzzles


def _generator(seed: int, stage: str, estimator: str, device: torch.device) -> torch.Generator:
    # the ablation's estimator (not in ESTIMATOR_NAMES) takes the next index
    index = (ESTIMATOR_NAMES + (DETACH,)).index(estimator)
    value = seed + 1000 * ("tune", "eval").index(stage) + index
    return torch.Generator(device=device).manual_seed(value)


def _split(config: dict[str, Any]) -> tuple[dict[str, Any], float]:
    knobs = {k: v for k, v in config.items() if k != "lr"}
    return knobs, float(config["lr"])


def tuning_configs(proto: Protocol, estimator: str, seed: int = 0) -> list[dict[str, Any]]:
    """The ``n_configs`` configurations (knobs and ``lr``) tried for ``estimator``."""
    return sample_configs(proto.space(estimator), proto.n_configs,
                          seed=seed + 17 * ESTIMATOR_NAMES.index(estimator))


def run_tuning(proto: Protocol, estimator: str, *, seed: int,
               device: torch.device) -> dict[str, Any]:
    """Tuning stage of one estimator: every configuration on every tuning puzzle, at once."""
    configs = tuning_configs(proto, estimator, seed)
    pairs = [_split(c) for c in configs]
    result = solve_mean_field(tuning_puzzles(proto).to(device), estimator, steps=proto.steps,
                              lr=[lr for _, lr in pairs], knobs=[k for k, _ in pairs],
                              paired=True, generator=_generator(seed, "tune", estimator, device))
    final = result.violations[:, -1]  # (configs, puzzles)
    entries = [{"config": c, "final_solved": (final[i] == 0).float().mean().item(),
                "final_violations": final[i].float().mean().item()}
               for i, c in enumerate(configs)]
    chosen = min(range(len(entries)), key=lambda i: (-entries[i]["final_solved"],
                                                     entries[i]["final_violations"]))
    return {"estimator": estimator, "stage": "tune", "configs": entries, "chosen": chosen,
            "wall_seconds": result.seconds, "device": str(device),
            "clue_mismatches": result.extra["clue_mismatches"]}


def run_eval(proto: Protocol, estimator: str, series: list[dict[str, Any]], *, seed: int,
             device: torch.device) -> dict[str, Any]:
    """Evaluation stage of one estimator: each configuration of ``series`` on every evaluation
    puzzle, ``n_seeds`` runs each, in one batch. Per series: violations of the final sample at
    every budget and of the best sample at the last one, as ``[seed][puzzle]`` lists."""
    puzzles = eval_puzzles(proto).to(device)
    pairs = [_split(c) for c in series]
    result = solve_mean_field(puzzles.repeat(proto.n_seeds, 1), estimator, steps=proto.steps,
                              lr=[lr for _, lr in pairs], knobs=[k for k, _ in pairs],
                              paired=True, budgets=proto.budgets,
                              generator=_generator(seed, "eval", estimator, device))

    def by_seed(values: torch.Tensor) -> list[list[int]]:
        return values.reshape(proto.n_seeds, proto.n_eval).tolist()

    runs = [{"config": c,
             "final_violations": {str(b): by_seed(result.violations[i, j])
                                  for j, b in enumerate(proto.budgets)},
             "best_violations": by_seed(result.best_violations[i, -1]),
             "trace": result.mean_violations[i, max(1, proto.steps // 100) - 1::max(
                 1, proto.steps // 100)].tolist()}
            for i, c in enumerate(series)]
    final = result.violations[0, -1]
    examples = {kind: {"puzzle": puzzles[int(rows[0]) % proto.n_eval].tolist(),
                       "grid": result.final_grids[0, int(rows[0])].tolist(),
                       "violations": int(final[int(rows[0])])}
                for kind, rows in (("solved", (final == 0).nonzero().flatten()),
                                   ("failed", (final > 0).nonzero().flatten())) if len(rows)}
    return {"estimator": estimator, "stage": "eval", "runs": runs, "examples": examples,
            "wall_seconds": result.seconds, "device": str(device),
            "clue_mismatches": result.extra["clue_mismatches"]}


def time_steps(proto: Protocol, knobs: dict[str, dict[str, Any]], device: torch.device, *,
               rounds: int = 5, block_s: float = 0.2) -> dict[str, float]:
    """Milliseconds per optimisation step (sample + penalty + backward) of each estimator at its
    tuned knobs on the evaluation batch of one seed, timed interleaved in one process (median
    over ``rounds`` blocks, each after warm-up)."""
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(proto.n_eval, 81, 9, generator=generator, device=device)
    calls = {}
    for name, k in knobs.items():
        spec = get_spec(name)

        def call(spec: Any = spec, k: dict[str, Any] = k) -> None:
            leaf = logits.detach().requires_grad_(True)
            penalty(spec.fn(leaf, generator=generator, hard=True, **k)).sum().backward()

        calls[name] = call
    return median_ms(time_interleaved(calls, device, rounds=rounds, block_s=block_s))


def run_ablation(proto: Protocol, reindge: dict[str, Any], *, seed: int,
                 device: torch.device) -> dict[str, Any]:
    """Ablation stage: ReinDGE with its trajectory detached (:data:`.ablations.DETACH`) at
    ReinDGE's tuned configuration ``reindge`` (lr included), on every evaluation puzzle and seed
    (the form of :func:`run_eval`'s record, stage ``"ablation"``)."""
    with registered():
        data = run_eval(proto, DETACH, [dict(reindge)], seed=seed, device=device)
    return {**data, "stage": "ablation"}


def run_sweep(proto: Protocol, redge: dict[str, Any], *, seed: int,
              device: torch.device) -> dict[str, Any]:
    """The ``t_1`` sweep: ReDGE at its tuned lr and ``n_steps`` (``redge``) with ``t_1`` set to
    each value of :data:`.ablations.T1_SWEEP`, on every evaluation puzzle and seed, in one
    batch (stage ``"t1_sweep"``)."""
    series = [{**redge, "t_1": t} for t in T1_SWEEP]
    return {**run_eval(proto, "redge", series, seed=seed, device=device), "stage": "t1_sweep"}


def eval_series(estimator: str, chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """The configurations evaluated for ``estimator``: its tuned one, and for ReDGE the
    authors' settings of :data:`AUTHOR_SERIES` (a duplicate of the tuned one is run once)."""
    series = [dict(chosen)]
    if estimator == "redge":
        series += [dict(c) for c in AUTHOR_SERIES.values() if c != chosen]
    return series


def run(proto: Protocol, estimators: list[str] | None = None, *, out: Path | None = None,
        seed: int = 0, device: torch.device | str | None = None,
        max_minutes: float | None = None, save: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) tuning, evaluation and timing; return every record found or made.

    Writes the four CSV tables (when ``save``) once every estimator's evaluation is done.
    """
    estimators = list(ESTIMATOR_NAMES) if estimators is None else estimators
    dev = torch.device(device) if device is not None else runtime.device()
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=dev)
    chosen: dict[str, dict[str, Any]] = {}
    tuned: dict[str, dict[str, Any]] = {}
    for name in estimators:
        tune = stages.run(f"{proto.scale}_tune_{name}", proto.config("tune", estimator=name),
                          lambda e=name: run_tuning(proto, e, seed=seed, device=dev))
        if tune is None:
            continue
        best = tune["data"]["configs"][tune["data"]["chosen"]]["config"]
        series = eval_series(name, best)
        done = stages.run(f"{proto.scale}_eval_{name}",
                          proto.config("eval", estimator=name, series=series),
                          lambda e=name, s=series: run_eval(proto, e, s, seed=seed, device=dev))
        if done is not None:
            chosen[name], tuned[name] = _split(best)[0], best
    if len(chosen) == len(estimators):
        block = 0.2 if proto.scale == "full" else 0.01
        stages.run(f"{proto.scale}_timing", proto.config("timing", knobs=chosen),
                   lambda: {"stage": "timing", "device": str(dev), "rows": proto.n_eval,
                            "timing_ms": time_steps(proto, chosen, dev, block_s=block)})
        if {"reindge", "redge", "st", "reinmax"} <= set(tuned):  # the ablations (issue 20)
            stages.run(f"{proto.scale}_ablation",
                       proto.config("ablation", estimator=DETACH, series=[tuned["reindge"]]),
                       lambda: run_ablation(proto, tuned["reindge"], seed=seed, device=dev))
            stages.run(f"{proto.scale}_t1_sweep",
                       proto.config("t1_sweep", estimator="redge", series=[
                           {**tuned["redge"], "t_1": t} for t in T1_SWEEP]),
                       lambda: run_sweep(proto, tuned["redge"], seed=seed, device=dev))
        if save:
            write_results(stages.records, folder)
    return stages.records


def units_of(records: list[dict[str, Any]]) -> list[Unit]:
    """The per-unit values of the evaluation records: unit = puzzle, seed = run."""
    units: list[Unit] = []
    tuned: dict[str, dict[str, Any]] = {}
    for record in records:
        data = record["data"]
        if data.get("stage") != "eval":
            continue
        tuned[data["estimator"]] = data["runs"][0]  # the tuned series comes first
        for run_ in data["runs"]:
            units += _run_units(SETTING, data["estimator"], run_)
    # the ablations: each setting holds the ablation's series and its rivals' tuned ones
    for record in records:
        data = record["data"]
        if data.get("stage") == "ablation":
            setting = ablation_setting(SETTING)
            units += _run_units(setting, data["estimator"], data["runs"][0])
            for rival in ("reindge", "reinmax"):
                if rival in tuned:
                    units += _run_units(setting, rival, tuned[rival], secondary=False)
        elif data.get("stage") == "t1_sweep":
            for run_ in data["runs"]:
                setting = sweep_setting(run_["config"]["t_1"], SETTING)
                units += _run_units(setting, data["estimator"], run_)
                if "st" in tuned:
                    units += _run_units(setting, "st", tuned["st"], secondary=False)
    return units


def _run_units(setting: str, estimator: str, run_: dict[str, Any], *,
               secondary: bool = True) -> list[Unit]:
    """The units of one evaluated series in ``setting``: the final sample at every budget and
    (``secondary``) the best sample at the last one."""
    units: list[Unit] = []
    knobs = knob_string(run_["config"])

    def add(metric: str, budget: int, grid: list[list[float]]) -> None:
        values = {(s, f"p{p:03d}"): v for s, row in enumerate(grid) for p, v in enumerate(row)}
        units.extend(units_from_values(EXPERIMENT, setting, estimator, knobs, metric, budget,
                                       values))

    for budget, grid in run_["final_violations"].items():
        add("final_violations", int(budget), grid)
        add("final_solved", int(budget), [[float(v == 0) for v in row] for row in grid])
    if secondary:
        last = max(int(b) for b in run_["final_violations"])
        add("best_violations", last, run_["best_violations"])
        add("best_solved", last, [[float(v == 0) for v in row]
                                  for row in run_["best_violations"]])
    return units


def tuning_rows(records: list[dict[str, Any]]) -> list[TuningRow]:
    """One ``tuning.csv`` row per tuned estimator."""
    rows = []
    for record in records:
        data, config = record["data"], record["config"]
        if data.get("stage") != "tune":
            continue
        proto = Protocol(**{k: (tuple(v) if k == "budgets" else v) for k, v in config.items()
                            if k in Protocol.__dataclass_fields__})
        space = proto.space(data["estimator"])
        best = data["configs"][data["chosen"]]["config"]
        rows.append(TuningRow(
            EXPERIMENT, data["estimator"], ";".join(sorted(space)), len(data["configs"]),
            proto.n_tune, f"{proto.n_tune} tuning puzzles disjoint from the {proto.n_eval} "
            f"evaluation puzzles; final_solved at {proto.steps} steps, then final_violations",
            knob_string(best), edge_of_space(best, space)))
    return rows


def _timing(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in records if r["data"].get("stage") == "timing"), None)


def write_results(records: list[dict[str, Any]], folder: str | Path) -> list[Verdict]:
    """Write ``units.csv``, ``summary.csv``, ``verdicts.csv`` and ``tuning.csv`` from records."""
    timing = _timing(records)
    extra = (timing_rows(EXPERIMENT, timing["config"]["scale"], timing["data"]["timing_ms"],
                         timing["config"]["knobs"]) if timing else [])
    steps = records[0]["config"]["steps"]
    return write_with_ablations(EXPERIMENT, units_of(records), METRICS, tuning_rows(records),
                                extra_rows=extra, budgets={m.name: [steps] for m in METRICS},
                                root=folder)


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the chapter shows, computed in memory from the records (stored or fresh): ``units``,
    ``verdicts`` (the same function as ``verdicts.csv``), ``tuning`` rows, ``timing_ms``,
    ``traces`` (per series), ``examples`` (per estimator), ``config``, ``scale``. ``units`` and
    ``verdicts`` hold the comparison's setting; the ablation settings' units and verdicts (Holm
    over all rows, as in the file) are ``ablation_units`` and ``ablation_verdicts``."""
    evals = [r for r in records if r["data"].get("stage") == "eval"]
    if not evals:
        raise ValueError("records hold no evaluation stage: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    config = evals[0]["config"]
    units = units_of(records)
    timing = _timing(records)
    verdicts = not_headline(verdicts_from_units(
        EXPERIMENT, units, METRICS, budgets={m.name: [config["steps"]] for m in METRICS}))
    return {
        "scale": config["scale"], "config": config,
        "units": [u for u in units if u.setting == SETTING],
        "verdicts": [v for v in verdicts if v.setting == SETTING],
        "ablation_units": [u for u in units if u.setting != SETTING],
        "ablation_verdicts": [v for v in verdicts if v.setting != SETTING],
        "tuning": tuning_rows(records),
        "tune_records": {r["data"]["estimator"]: r["data"] for r in records
                         if r["data"].get("stage") == "tune"},
        "timing_ms": timing["data"]["timing_ms"] if timing else {},
        "traces": {(r["data"]["estimator"], knob_string(run_["config"])): run_["trace"]
                   for r in evals for run_ in r["data"]["runs"]},
        "examples": {r["data"]["estimator"]: r["data"]["examples"] for r in evals},
        "device": evals[0]["data"]["device"],
        "wall_seconds": sum(r["data"].get("wall_seconds", 0.0) for r in records),
    }


def current_records(folder: str | Path, scale: str) -> list[dict[str, Any]]:
    """The stored ``<scale>_*`` records of this protocol (older protocols are ignored)."""
    return [r for r in load_records(folder, scale) if r["config"].get("protocol") == PROTOCOL]


def write_summary_csv(folder: str | Path, scale: str) -> Path | None:
    """Regenerate the four tables from the stored records; None when evaluation is incomplete."""
    records = current_records(folder, scale)
    done = {r["data"]["estimator"] for r in records if r["data"].get("stage") == "eval"}
    if done != set(ESTIMATOR_NAMES):
        return None
    write_results(records, folder)
    return Path(folder) / "summary.csv"


def measure_throughput(proto: Protocol, *, device: torch.device | str | None = None,
                       steps: int = 20) -> dict[str, float]:
    """Projected seconds of the full run of ``proto`` on ``device``: every tuning and evaluation
    stage runs ``steps`` steps at its real batch shape (nothing saved), scaled to
    ``proto.steps``; the timing stage adds about 10 s. Keys: ``tune``, ``eval``, ``total``."""
    dev = torch.device(device) if device is not None else runtime.device()
    short = replace(proto, steps=steps, budgets=(steps,))
    out = {"tune": 0.0, "eval": 0.0}
    for name in ESTIMATOR_NAMES:
        tune = run_tuning(short, name, seed=0, device=dev)
        out["tune"] += tune["wall_seconds"] * proto.steps / steps
        series = eval_series(name, tune["configs"][tune["chosen"]]["config"])
        out["eval"] += run_eval(short, name, series, seed=0, device=dev)[
            "wall_seconds"] * proto.steps / steps
    out["total"] = out["tune"] + out["eval"] + 10.0
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                  device=cli.device, max_minutes=cli.args.max_minutes)
    done = {r["data"]["estimator"] for r in records if r["data"].get("stage") == "eval"}
    if done:
        for v in summarise(records)["verdicts"]:
            if v.headline:
                print(v.sentence())
    return cli.finish(len(done), len(cli.estimators), "estimators")


if __name__ == "__main__":
    raise SystemExit(main())
