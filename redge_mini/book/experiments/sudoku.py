"""E3, Sudoku by mean-field optimisation, at the authors' protocol: tuning, seeds, final sample.

Usage::

    python -m redge_mini.book.experiments.sudoku --scale full            # the protocol below
    python -m redge_mini.book.experiments.sudoku --scale small --out /tmp/sudoku
    python -m redge_mini.book.experiments.sudoku --smoke --out /tmp/sudoku   # seconds, end to end

Protocol (full scale; :data:`AUTHORS` and :func:`protocol_table` set it beside the authors').
Puzzles with ``n_blanks`` blanks are cut from diverse generated grids
(:func:`redge_mini.book.tasks.sudoku.make_puzzles`). Every run is
:func:`redge_mini.book.tasks.sudoku.solve_mean_field`: logits at 0, clues clamped, Adam on the
penalty of the hard sample for ``steps`` steps. Three stages, each on its own puzzles:

1. *knob tuning*: every estimator, every point of its knob grid (:data:`GRIDS`), at the authors'
   learning rate, on ``n_tune`` tuning puzzles;
2. *learning-rate tuning*: every estimator at its chosen knob, over ``lr_grid``, on the same
   tuning puzzles;
3. *evaluation*: every estimator at its chosen knob, at the authors' learning rate and at its
   tuned one, on ``n_seeds`` seeds; seed ``s`` has its own ``n_eval`` puzzles, shared by all
   estimators (so comparisons are paired by seed).

A grid point is chosen by the most tuning puzzles solved by the *final* hard sample (the authors'
metric), then the fewest final violations, then the fewest violations of any sample. Metrics of
a run at budget ``b`` (the step count): ``final_solved`` and ``final_violations`` of the hard
sample drawn at step ``b``, and, secondary, ``best_solved`` / ``best_violations`` over all samples
up to ``b`` (a solver that checks every sample). Each seed's value is the mean over its puzzles;
rows report the mean over seeds with a 95 % t-interval (:mod:`.summary`).

One result file per stage and estimator (``<scale>_<stage>_<estimator>.json``) and the tidy
``summary.csv``; a rerun skips finished files (and refuses one written with another
configuration), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import ESTIMATORS, get_spec, label
from .. import runtime
from ..tasks.sudoku import make_puzzles, penalty, solve_mean_field
from ..timing import median_ms, time_interleaved
from . import REDGE_FAMILY, Stages, knob_text, load_records, parse_cli
from .summary import Row, paired_verdict, summary_row, timing_rows, write_summary
from .tuning import GROW_ROUNDS, grow_search, on_edge

EXPERIMENT = "sudoku"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
METRICS: tuple[str, ...] = ("final_solved", "final_violations", "best_solved", "best_violations")
#: Whether a larger value of a metric is better.
HIGHER_IS_BETTER = {"final_solved": True, "final_violations": False, "best_solved": True,
                    "best_violations": False}

#: The ReDGE family grid of issue 11 (t_1 x n_steps).
REDGE_GRID: list[dict[str, float | int]] = [
    {"n_steps": n, "t_1": t} for n in (3, 5, 9) for t in (0.1, 0.3, 0.5, 0.7, 0.9)]
#: Knob grids per scale. ReinMax's temperature is >= 1 by construction (its lower edge is the
#: boundary of the knob's domain); Straight-Through has no knob.
GRIDS: dict[str, dict[str, list[dict[str, float | int]]]] = {
    "full": {
        "st": [{}],
        "gumbel": [{"tau": t} for t in (0.1, 0.3, 0.5, 1.0, 2.0)],
        "reinmax": [{"tau": t} for t in (1.0, 1.5, 2.0, 3.0, 5.0)],
        "redge": REDGE_GRID,
        "redge_cov": REDGE_GRID,
        "reindge": REDGE_GRID,
    },
    "small": {
        "st": [{}],
        "gumbel": [{"tau": t} for t in (0.5, 1.0)],
        "reinmax": [{"tau": t} for t in (1.0, 2.0)],
        "redge": [{"n_steps": 3, "t_1": t} for t in (0.5, 0.9)],
        "redge_cov": [{"n_steps": 3, "t_1": t} for t in (0.5, 0.9)],
        "reindge": [{"n_steps": 3, "t_1": t} for t in (0.5, 0.9)],
    },
}

#: The authors' Sudoku demo (arXiv 2601.00781 and its code), as far as it is stated.
AUTHORS: dict[str, Any] = {
    "optimiser": "Adam",
    "steps": 2000,
    "lr": 0.05,
    "metric": "final hard sample: violations, solved",
    "estimators": "ReDGE (demo)",
    "knobs": "ReDGE n_steps=3, t_1=0.9",
    "tuning": "not stated",
    "seeds": "not stated",
    "puzzles": "not stated",
}
#: Why our protocol differs from :data:`AUTHORS`, item by item (shown in the chapter's table).
DEVIATIONS: dict[str, str] = {
    "estimators": "the book compares every estimator of the registry",
    "knobs": "each estimator's knob is tuned on held-out puzzles (the demo's value is one "
             "point of the ReDGE grid)",
    "tuning": "a fair comparison tunes every estimator on puzzles it is not judged on",
    "seeds": "95 % t-intervals need several independent seeds",
    "puzzles": "generated offline from diverse valid grids (nothing is downloaded)",
}


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment (see the module docstring)."""

    scale: str
    n_blanks: int
    steps: int
    budgets: tuple[int, ...]
    lr: float
    lr_grid: tuple[float, ...]
    n_tune: int
    n_seeds: int
    n_eval: int
    grids: dict[str, list[dict[str, float | int]]] = field(repr=False)
    puzzle_seed: int = 2024

    def __post_init__(self) -> None:
        if min(self.n_tune, self.n_eval) < 1 or self.n_seeds < 2:
            raise ValueError("n_tune and n_eval must be >= 1 and n_seeds >= 2")
        if not self.budgets or sorted(self.budgets) != list(self.budgets) \
                or self.budgets[-1] != self.steps:
            raise ValueError(f"budgets must increase and end at steps={self.steps}, got "
                             f"{self.budgets}")
        if not 0 <= self.n_blanks <= 81:
            raise ValueError(f"n_blanks must lie in [0, 81], got {self.n_blanks}")
        if self.lr not in self.lr_grid:
            raise ValueError(f"lr_grid {self.lr_grid} must contain the authors' lr {self.lr}")

    def as_config(self, stage: str, estimator: str, **extra: Any) -> dict[str, Any]:
        """The JSON-able configuration of one result file."""
        config = {k: v for k, v in asdict(self).items() if k != "grids"}
        config.update(stage=stage, estimator=estimator, knob_grid=self.grids[estimator], **extra)
        return json.loads(json.dumps(config))

    def ours(self) -> dict[str, Any]:
        """Our values of the items of :data:`AUTHORS` (for the protocol table)."""
        n_configs = sum(len(g) for g in self.grids.values())
        return {
            "optimiser": "Adam",
            "steps": self.steps,
            "lr": f"{self.lr:g} (and a tuned lr from {', '.join(f'{v:g}' for v in self.lr_grid)})",
            "metric": "final hard sample: violations, solved; best-of-run secondary",
            "estimators": ", ".join(label(n) for n in self.grids),
            "knobs": f"{n_configs} grid points in all; ReDGE family t_1 x n_steps "
                     f"({len(self.grids['redge'])} points)",
            "tuning": f"{self.n_tune} held-out puzzles, at the full budget",
            "seeds": f"{self.n_seeds} seeds x {self.n_eval} puzzles each",
            "puzzles": f"{self.n_blanks} blanks, diverse generated grids",
        }


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol("full", n_blanks=45, steps=2000, budgets=(250, 500, 1000, 2000),
                         lr=0.05, lr_grid=(0.01, 0.03, 0.05, 0.1, 0.3, 1.0), n_tune=8,
                         n_seeds=5, n_eval=10, grids=GRIDS["full"])
    else:
        proto = Protocol("small", n_blanks=40, steps=120, budgets=(40, 120), lr=0.05,
                         lr_grid=(0.05, 0.2), n_tune=2, n_seeds=5, n_eval=2,
                         grids=GRIDS["small"])
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", steps=6, budgets=(3, 6), n_tune=2,
                        n_seeds=2, n_eval=1, lr_grid=(proto.lr, proto.lr_grid[-1]))
    return proto


def protocol_table(proto: Protocol) -> list[dict[str, str]]:
    """Rows ``item, authors, ours, reason`` (the reason is empty where we follow the authors)."""
    ours = proto.ours()
    rows = []
    for item, theirs in AUTHORS.items():
        mine = ours[item]
        same = str(mine) == str(theirs)
        reason = "" if same else DEVIATIONS.get(item, "")
        if not same and not reason:
            reason = {"lr": "the authors' lr is kept; the tuned row is added beside it",
                      "metric": "the authors' metric is the headline"}.get(item, "")
        rows.append({"item": item, "authors": str(theirs), "ours": str(mine), "reason": reason})
    return rows


def tuning_puzzles(proto: Protocol) -> torch.Tensor:
    """The ``n_tune`` tuning puzzles (never used for evaluation)."""
    return make_puzzles(proto.n_tune, proto.n_blanks,
                        generator=torch.Generator().manual_seed(proto.puzzle_seed))[0]


def eval_puzzles(proto: Protocol) -> torch.Tensor:
    """``(n_seeds * n_eval, 81)``: seed ``s`` owns rows ``s * n_eval .. (s + 1) * n_eval - 1``."""
    return torch.cat([make_puzzles(
        proto.n_eval, proto.n_blanks,
        generator=torch.Generator().manual_seed(proto.puzzle_seed + 1 + s))[0]
        for s in range(proto.n_seeds)])


def _metrics(result: Any, c: int, b: int, budget: int) -> dict[str, torch.Tensor]:
    """Per-row metrics of config ``c`` at budget index ``b``."""
    return {
        "final_solved": (result.violations[c, b] == 0).float(),
        "final_violations": result.violations[c, b].float(),
        "best_solved": result.solved_within(budget)[c].float(),
        "best_violations": result.best_violations[c, b].float(),
    }


def _generator(seed: int, stage: str, estimator: str, device: torch.device) -> torch.Generator:
    offset = {"tune_knob": 0, "tune_lr": 1, "main": 2}[stage]
    value = seed + 1000 * offset + ESTIMATOR_NAMES.index(estimator)
    return torch.Generator(device=device).manual_seed(value)


def run_tuning(stage: str, estimator: str, proto: Protocol, knobs: list[dict[str, Any]],
               lrs: list[float], *, seed: int, device: torch.device,
               max_rounds: int = 2) -> dict[str, Any]:
    """A tuning stage for one estimator: per grid point, per-puzzle metrics at ``steps``.

    When the chosen point lies on an edge of the grid, the grid grows past it
    (:func:`.tuning.grow_search`) and the new points run on the same puzzles, up to ``max_rounds``
    times; ``data["extended"]`` lists the points added.
    """
    puzzles = tuning_puzzles(proto).to(device)
    generator = _generator(seed, stage, estimator, device)
    wall, mismatches = 0.0, 0

    def evaluate(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal wall, mismatches
        todo_knobs, todo_lrs = ((knobs, [p["lr"] for p in points]) if stage == "tune_lr"
                                else (points, lrs))
        start = time.perf_counter()
        result = solve_mean_field(puzzles, estimator, steps=proto.steps, lr=todo_lrs,
                                  knobs=todo_knobs, generator=generator)
        wall += time.perf_counter() - start
        mismatches += result.extra["clue_mismatches"]
        return [{"knobs": config["knobs"], "lr": config["lr"],
                 **{k: v.tolist() for k, v in _metrics(result, c, 0, proto.steps).items()}}
                for c, config in enumerate(result.configs)]

    grid = [{"lr": lr} for lr in lrs] if stage == "tune_lr" else knobs
    configs, chosen, added = grow_search(
        estimator, grid, evaluate, choose, max_rounds=max_rounds,
        axis=(lambda c: {"lr": c["lr"]}) if stage == "tune_lr" else (lambda c: c["knobs"]))
    return {"estimator": estimator, "stage": stage, "configs": configs, "chosen": chosen,
            "extended": added, "wall_seconds": wall, "device": str(device),
            "clue_mismatches": mismatches}


def choose(configs: list[dict[str, Any]]) -> int:
    """Index of the chosen grid point: most tuning puzzles solved by the final sample, then
    fewest final violations, then fewest violations of any sample."""
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    return min(range(len(configs)), key=lambda c: (
        -mean(configs[c]["final_solved"]), mean(configs[c]["final_violations"]),
        mean(configs[c]["best_violations"])))


def run_main(estimator: str, proto: Protocol, knobs: dict[str, Any], lrs: list[float], *,
             seed: int, device: torch.device) -> dict[str, Any]:
    """The evaluation stage for one estimator: per seed, per lr, per budget, the metrics."""
    puzzles = eval_puzzles(proto).to(device)
    start = time.perf_counter()
    result = solve_mean_field(puzzles, estimator, steps=proto.steps, lr=lrs, knobs=knobs,
                              generator=_generator(seed, "main", estimator, device),
                              budgets=proto.budgets)
    wall = time.perf_counter() - start
    runs = []
    for c, config in enumerate(result.configs):
        per_budget = {}
        for b, budget in enumerate(proto.budgets):
            values = _metrics(result, c, b, budget)
            per_budget[str(budget)] = {
                key: v.reshape(proto.n_seeds, proto.n_eval).mean(-1).tolist()
                for key, v in values.items()}
        every = max(1, proto.steps // 200)
        runs.append({"knobs": config["knobs"], "lr": config["lr"], "per_seed": per_budget,
                     "trace_steps": list(range(every, proto.steps + 1, every)),
                     "trace_violations": result.mean_violations[c, every - 1::every].tolist()})
    solved = (result.violations[0, -1] == 0).nonzero().flatten()
    failed = (result.violations[0, -1] > 0).nonzero().flatten()
    examples = {kind: {"puzzle": puzzles[int(rows[0])].tolist(),
                       "grid": result.final_grids[0, int(rows[0])].tolist(),
                       "violations": int(result.violations[0, -1, int(rows[0])])}
                for kind, rows in (("solved", solved), ("failed", failed)) if len(rows)}
    return {"estimator": estimator, "stage": "main", "runs": runs, "examples": examples,
            "wall_seconds": wall, "device": str(device),
            "clue_mismatches": result.extra["clue_mismatches"]}


def time_steps(proto: Protocol, knobs: dict[str, dict[str, Any]], device: torch.device, *,
               rounds: int = 5, block_s: float = 0.2) -> dict[str, float]:
    """Milliseconds per optimisation step (sample + penalty + backward) of each estimator at its
    chosen knob, on the evaluation batch shape, timed interleaved in one process (median over
    ``rounds`` blocks, each after warm-up)."""
    rows = proto.n_seeds * proto.n_eval
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, 81, 9, generator=generator, device=device)
    calls = {}
    for name, k in knobs.items():
        spec = get_spec(name)

        def call(spec: Any = spec, k: dict[str, Any] = k) -> None:
            leaf = logits.detach().requires_grad_(True)
            penalty(spec.fn(leaf, generator=generator, hard=True, **k)).sum().backward()

        calls[name] = call
    return median_ms(time_interleaved(calls, device, rounds=rounds, block_s=block_s))


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
    """Run (or resume) the three stages; return every record found or made (None-free).

    Also writes ``summary.csv`` (when ``save``) once every estimator's evaluation is done.
    """
    estimators = list(ESTIMATOR_NAMES) if estimators is None else estimators
    dev = torch.device(device) if device is not None else runtime.device()
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=dev)
    records = stages.records

    def stage(name: str, config: dict[str, Any], compute: Any) -> dict[str, Any] | None:
        return stages.run(f"{proto.scale}_{name}", config, compute)

    # the small scale (two points per knob) does not grow: it only illustrates the procedure
    rounds = GROW_ROUNDS if proto.scale == "full" else 0
    for estimator in estimators:
        grid = proto.grids[estimator]
        knob_rec = stage(f"tune_knob_{estimator}", proto.as_config("tune_knob", estimator),
                         lambda e=estimator, g=grid: run_tuning(
                             "tune_knob", e, proto, g, [proto.lr], seed=seed, device=dev,
                             max_rounds=rounds))
        if knob_rec is None:
            continue
        knobs = knob_rec["data"]["configs"][knob_rec["data"]["chosen"]]["knobs"]
        lr_rec = stage(f"tune_lr_{estimator}",
                       proto.as_config("tune_lr", estimator, knobs=knobs),
                       lambda e=estimator, k=knobs: run_tuning(
                           "tune_lr", e, proto, [k], list(proto.lr_grid), seed=seed,
                           device=dev, max_rounds=rounds))
        if lr_rec is None:
            continue
        tuned_lr = lr_rec["data"]["configs"][lr_rec["data"]["chosen"]]["lr"]
        lrs = sorted({proto.lr, tuned_lr})
        stage(f"main_{estimator}",
              proto.as_config("main", estimator, knobs=knobs, lrs=lrs),
              lambda e=estimator, k=knobs, r=lrs: run_main(e, proto, k, r, seed=seed,
                                                          device=dev))
    mains = {r["data"]["estimator"]: r for r in records if r["data"]["stage"] == "main"}
    if len(mains) == len(estimators):
        chosen = {e: mains[e]["data"]["runs"][0]["knobs"] for e in estimators}
        config = {k: v for k, v in asdict(proto).items() if k != "grids"}
        config = json.loads(json.dumps({**config, "stage": "timing", "knobs": chosen}))
        block = 0.2 if proto.scale == "full" else 0.01
        stage("timing", config, lambda: {"stage": "timing", "device": str(dev),
                                         "timing_ms": time_steps(proto, chosen, dev,
                                                                 block_s=block),
                                         "rows": proto.n_seeds * proto.n_eval})
    if save and len(mains) == len(estimators):
        write_summary(EXPERIMENT, summary_rows(records), root=folder)
    return records


def _settings(main: dict[str, Any], authors_lr: float) -> list[tuple[str, dict[str, Any]]]:
    """``("authors_lr" | "tuned_lr", run)`` pairs of one evaluation record (the same run twice
    when the tuned learning rate is the authors')."""
    runs = main["data"]["runs"]
    by_lr = {run["lr"]: run for run in runs}
    tuned = main["config"]["lrs"]
    tuned_lr = next((lr for lr in tuned if lr != authors_lr), authors_lr)
    return [("authors_lr", by_lr[authors_lr]), ("tuned_lr", by_lr[tuned_lr])]


def summary_rows(records: list[dict[str, Any]]) -> list[Row]:
    """Tidy rows: evaluation (both lr settings, every budget and metric) and tuning rows.

    Tuning rows use the tuning puzzles as the independent units (``n_seeds`` = puzzles).
    """
    rows: list[Row] = []
    for record in records:
        data, config = record["data"], record["config"]
        stage = data.get("stage")
        if stage == "main":
            for setting, run in _settings(record, config["lr"]):
                knobs = {**run["knobs"], "lr": run["lr"]}
                for budget, metrics in run["per_seed"].items():
                    for metric in METRICS:
                        rows.append(summary_row(EXPERIMENT, setting, data["estimator"], knobs,
                                                metric, int(budget), metrics[metric]))
        elif stage in ("tune_knob", "tune_lr"):
            for entry in data["configs"]:
                knobs = {**entry["knobs"], "lr": entry["lr"]}
                for metric in ("final_solved", "final_violations"):
                    rows.append(summary_row(EXPERIMENT, stage, data["estimator"], knobs, metric,
                                            config["steps"], entry[metric]))
        elif stage == "timing":
            rows += timing_rows(EXPERIMENT, config["scale"], data["timing_ms"], config["knobs"])
    return rows


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the chapter shows, from the records (stored or fresh).

    Returns ``scale``, ``config`` (of the evaluation stage), ``rows`` (tidy rows of the
    evaluation), ``chosen`` (per estimator: knobs, tuned lr, whether either lies on its grid's
    edge), ``verdicts`` (per setting, budget and ReDGE-family member: paired verdicts on
    ``final_solved`` and ``final_violations`` against the best estimator outside the family at
    that setting and budget), ``timing_ms`` and ``per_seed`` (the raw per-seed values).
    """
    mains = sorted((r for r in records if r["data"].get("stage") == "main"),
                   key=lambda r: ESTIMATOR_NAMES.index(r["data"]["estimator"]))
    if not mains:
        raise ValueError("records hold no evaluation stage: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    tune = {(r["data"]["stage"], r["data"]["estimator"]): r for r in records
            if r["data"].get("stage") in ("tune_knob", "tune_lr")}
    chosen = {}
    for main in mains:
        name = main["data"]["estimator"]
        knob_rec, lr_rec = tune.get(("tune_knob", name)), tune.get(("tune_lr", name))
        entry: dict[str, Any] = {"knobs": main["data"]["runs"][0]["knobs"],
                                 "tuned_lr": _settings(main, main["config"]["lr"])[1][1]["lr"]}
        if knob_rec is not None:
            entry["knob_on_edge"] = on_edge([c["knobs"] for c in knob_rec["data"]["configs"]],
                                            knob_rec["data"]["chosen"])
            entry["knob_grid_grew"] = knob_rec["data"].get("extended", [])
        if lr_rec is not None:
            entry["lr_on_edge"] = on_edge([c["lr"] for c in lr_rec["data"]["configs"]],
                                          lr_rec["data"]["chosen"])
            entry["lr_grid_grew"] = lr_rec["data"].get("extended", [])
        chosen[name] = entry
    per_seed: dict[tuple[str, str, int, str], list[float]] = {}
    for main in mains:
        for setting, run in _settings(main, main["config"]["lr"]):
            for budget, metrics in run["per_seed"].items():
                for metric, values in metrics.items():
                    per_seed[(setting, main["data"]["estimator"], int(budget), metric)] = values
    rows = summary_rows(mains)
    budgets = sorted({int(b) for b in mains[0]["data"]["runs"][0]["per_seed"]})
    verdicts = {}
    names = [m["data"]["estimator"] for m in mains]
    for setting in ("authors_lr", "tuned_lr"):
        for budget in budgets:
            def score(name: str, s: str = setting, b: int = budget) -> tuple[float, float]:
                solved = per_seed[(s, name, b, "final_solved")]
                viol = per_seed[(s, name, b, "final_violations")]
                return (-sum(solved) / len(solved), sum(viol) / len(viol))

            others = [n for n in names if n not in REDGE_FAMILY]
            if not others:
                continue
            rival = min(others, key=score)
            for name in names:
                if name not in REDGE_FAMILY:
                    continue
                verdicts[(setting, budget, name)] = {"rival": rival, **{
                    metric: paired_verdict(per_seed[(setting, name, budget, metric)],
                                           per_seed[(setting, rival, budget, metric)],
                                           lower_is_better=not HIGHER_IS_BETTER[metric])
                    for metric in ("final_solved", "final_violations")}}
    timing = next((r["data"]["timing_ms"] for r in records
                   if r["data"].get("stage") == "timing"), {})
    return {"scale": mains[0]["config"]["scale"], "config": mains[0]["config"], "rows": rows,
            "chosen": chosen, "verdicts": verdicts, "timing_ms": timing, "budgets": budgets,
            "per_seed": per_seed, "estimators": names,
            "device": mains[0]["data"]["device"],
            "wall_seconds": sum(r["data"].get("wall_seconds", 0.0) for r in records)}


def write_summary_csv(folder: str | Path, scale: str) -> Path | None:
    """Regenerate ``summary.csv`` from the stored ``<scale>_*`` records of this protocol; None
    when the evaluation is not complete."""
    records = [r for r in load_records(folder, scale) if "stage" in r["config"]]
    mains = {r["data"]["estimator"] for r in records if r["data"].get("stage") == "main"}
    if mains != set(ESTIMATOR_NAMES):
        return None
    return write_summary(EXPERIMENT, summary_rows(records), root=folder)


def measure_throughput(proto: Protocol, *, device: torch.device | str | None = None,
                       steps: int = 20) -> dict[str, float]:
    """Projected seconds of the full run of ``proto`` on ``device``: every stage is run for
    ``steps`` optimisation steps at its real batch shape (nothing saved) and scaled up; the
    timing stage is counted once. Keys: one per stage and ``"total"``."""
    dev = torch.device(device) if device is not None else runtime.device()
    short = replace(proto, steps=steps, budgets=(steps,))
    records = run(short, out=Path("/nonexistent"), device=dev, save=False)
    out: dict[str, float] = {}
    for record in records:
        stage = record["data"]["stage"]
        seconds = record["data"].get("wall_seconds", 0.0) * proto.steps / steps
        out[stage] = out.get(stage, 0.0) + seconds
    out["total"] = sum(out.values()) + 10.0  # + the timing stage (about 10 s)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                  device=cli.device, max_minutes=cli.args.max_minutes)
    done = {r["data"]["estimator"] for r in records if r["data"].get("stage") == "main"}
    if done:
        summary = summarise(records)
        for row in summary["rows"]:
            if row.budget == summary["budgets"][-1] and row.metric == "final_solved":
                print(f"{row.setting:<11} {label(row.estimator):<15} {row.knobs:<28} final "
                      f"solved {row.mean:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]")
        for name, entry in summary["chosen"].items():
            print(f"chosen {name}: {knob_text(entry['knobs'], entry['tuned_lr'])}")
    return cli.finish(len(done), len(cli.estimators), "estimators")


if __name__ == "__main__":
    raise SystemExit(main())
