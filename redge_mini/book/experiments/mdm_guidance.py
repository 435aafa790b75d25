"""E4, Sudoku guided by a masked diffusion prior, at the authors' protocol: tuning, budget curve.

Usage::

    python -m redge_mini.book.experiments.mdm_guidance --scale full
    python -m redge_mini.book.experiments.mdm_guidance --scale small --out /tmp/mdm
    python -m redge_mini.book.experiments.mdm_guidance --smoke --out /tmp/mdm   # seconds

Protocol (full scale; :data:`AUTHORS` and :func:`protocol_table` set it beside the authors'). The
stored tiny masked diffusion models (``redge_mini/book/data/sudoku_mdm_*.pt``, made by
:mod:`redge_mini.book.experiments.train_sudoku_mdm`, whose held-out loss and unguided validity
are stored with them) complete puzzles with ``n_blanks`` blanks. Guidance
(:func:`redge_mini.book.guidance.guide_batched`): ``T`` unmasking steps, at each ``N`` Adam steps
(learning rate ``lr``) on the Sudoku penalty of the estimator's hard sample plus ``lam`` times the
KL to the model, then the argmax is unmasked. Stages:

1. *tuning*: every estimator, every point of its knob grid (the grids of E3,
   :data:`redge_mini.book.experiments.sudoku.GRIDS`), with the ``tune_checkpoint`` model at
   ``N = tune_n_inner`` (a stated proxy of the main budget), on ``n_tune`` held-out puzzles;
   chosen: most puzzles solved, then fewest violations; a choice on an edge of the grid makes
   the grid grow past it (full scale);
2. *unguided* baselines per model: the ancestral sampler and greedy decoding (``N = 0``);
3. *evaluation*: every estimator at its chosen knob, both models, every ``N`` of the budget
   curve in one batched loop, on ``n_seeds`` seeds of ``n_eval`` puzzles (shared by all
   methods, so comparisons are paired by seed);
4. *timing*: milliseconds per inner step of each estimator, interleaved in one process.

Metrics of a completed grid (the authors'): ``final_violations``, ``final_solved``,
``exact_match`` (equal to the grid the puzzle was cut from) and, ours, ``kl_to_prior`` (the KL paid
at the revealed cells, nats per grid). Each seed's value is the mean over its puzzles; rows report
the mean over seeds and a 95 % t-interval. Files ``<scale>_<stage>[_<estimator>].json`` and
``summary.csv``; a rerun resumes (finished files are kept, mismatched ones refused).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import ESTIMATORS, label, make_estimator
from .. import runtime
from ..guidance import GuidanceConfig, guide_batched, kl_to_prior
from ..masked_diffusion import MaskedDenoiser, load_denoiser, sample_unmasking
from ..tasks.sudoku import grid_to_tokens, is_solved, make_puzzles, penalty, tokens_to_grid
from ..tasks.sudoku import violations as count_violations
from ..timing import median_ms, time_interleaved
from . import REDGE_FAMILY, Stages, knob_text, load_records, parse_cli
from .sudoku import GRIDS, choose
from .summary import Row, paired_verdict, summary_row, timing_rows, write_summary
from .tuning import GROW_ROUNDS, grow_search, on_edge

EXPERIMENT = "mdm_guidance"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
CHECKPOINT_FILES = {"weak": "sudoku_mdm_weak.pt", "strong": "sudoku_mdm_strong.pt"}
METRICS: tuple[str, ...] = ("final_violations", "final_solved", "exact_match", "kl_to_prior")
HIGHER_IS_BETTER = {"final_violations": False, "final_solved": True, "exact_match": True,
                    "kl_to_prior": False}

#: The authors' Sudoku guidance demo, as far as it is stated.
AUTHORS: dict[str, Any] = {
    "prior": "pretrained MDM, bidirectional transformer, 3 layers, width 384",
    "unmasking steps T": 20,
    "inner steps N": 1000,
    "lambda": 1.0,
    "lr": 0.1,
    "estimators": "ReDGE (demo)",
    "knobs": "ReDGE n_steps=3, t_1=0.9",
    "metrics": "violations, solve rate, exact match, runtime",
    "tuning": "not stated",
    "seeds": "not stated",
}
#: Why our protocol differs from :data:`AUTHORS`, item by item.
DEVIATIONS: dict[str, str] = {
    "prior": "no download: two tiny MDMs trained here on diverse generated grids, one stopped "
             "early (weak) and one trained longer (strong); their quality is measured below",
    "inner steps N": "the authors' N is the top of a budget curve (smaller N show the cost "
                     "trade-off); all N run in one batched loop",
    "estimators": "the book compares every estimator of the registry",
    "knobs": "each estimator's knob is tuned on held-out puzzles",
    "metrics": "the authors' metrics, and the KL to the prior paid by guidance",
    "tuning": "a fair comparison tunes every estimator on puzzles it is not judged on; the "
              "tuning runs a smaller N (a proxy) to fit the time budget",
    "seeds": "95 % t-intervals need several independent seeds",
}


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment (see the module docstring)."""

    scale: str
    checkpoints: tuple[str, ...]
    n_blanks: int
    n_unmask_steps: int
    n_inner: tuple[int, ...]
    tune_n_inner: int
    tune_checkpoint: str
    n_tune: int
    n_seeds: int
    n_eval: int
    grids: dict[str, list[dict[str, float | int]]] = field(repr=False)
    lam: float = 1.0
    lr: float = 0.1
    puzzle_seed: int = 4242

    def __post_init__(self) -> None:
        if self.n_seeds < 2 or min(self.n_tune, self.n_eval) < 1:
            raise ValueError("n_seeds must be >= 2, n_tune and n_eval >= 1")
        if not self.n_inner or sorted(self.n_inner) != list(self.n_inner) \
                or self.n_inner[0] < 1:
            raise ValueError(f"n_inner must be increasing positive budgets, got {self.n_inner}")
        unknown = set(self.checkpoints) - set(CHECKPOINT_FILES)
        if unknown or self.tune_checkpoint not in CHECKPOINT_FILES:
            raise ValueError(f"unknown checkpoint(s) {sorted(unknown)}")

    def as_config(self, stage: str, method: str, **extra: Any) -> dict[str, Any]:
        """The JSON-able configuration of one result file."""
        config = {k: v for k, v in asdict(self).items() if k != "grids"}
        config.update(stage=stage, method=method, **extra)
        if method in self.grids:
            config["knob_grid"] = self.grids[method]
        config["checkpoint_files"] = {c: CHECKPOINT_FILES[c] for c in self.checkpoints}
        return json.loads(json.dumps(config))

    def ours(self) -> dict[str, Any]:
        """Our values of the items of :data:`AUTHORS` (for the protocol table)."""
        return {
            "prior": "tiny MDMs trained here (weak, strong): width 32, 3 layers",
            "unmasking steps T": self.n_unmask_steps,
            "inner steps N": ", ".join(str(n) for n in self.n_inner),
            "lambda": self.lam,
            "lr": self.lr,
            "estimators": ", ".join(label(n) for n in self.grids),
            "knobs": f"{sum(len(g) for g in self.grids.values())} grid points in all",
            "metrics": "violations, solve rate, exact match, runtime; KL to the prior",
            "tuning": f"{self.n_tune} held-out puzzles, {self.tune_checkpoint} model, "
                      f"N = {self.tune_n_inner}",
            "seeds": f"{self.n_seeds} seeds x {self.n_eval} puzzles each",
        }


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol("full", ("weak", "strong"), n_blanks=45, n_unmask_steps=20,
                         n_inner=(10, 100, 1000), tune_n_inner=30,
                         tune_checkpoint="weak", n_tune=8, n_seeds=5, n_eval=4,
                         grids=GRIDS["full"])
    else:
        proto = Protocol("small", ("weak", "strong"), n_blanks=45, n_unmask_steps=5,
                         n_inner=(3, 10), tune_n_inner=3, tune_checkpoint="weak", n_tune=2,
                         n_seeds=5, n_eval=1, grids=GRIDS["small"])
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", n_unmask_steps=2, n_inner=(1, 2),
                        tune_n_inner=1, n_tune=1, n_seeds=2, n_eval=1)
    return proto


def protocol_table(proto: Protocol) -> list[dict[str, str]]:
    """Rows ``item, authors, ours, reason`` (the reason is empty where we follow the authors)."""
    ours = proto.ours()
    rows = []
    for item, theirs in AUTHORS.items():
        same = str(ours[item]) == str(theirs)
        reason = "" if same else DEVIATIONS.get(
            item, "smaller budget to fit the time limit" if item == "unmasking steps T" else "")
        rows.append({"item": item, "authors": str(theirs), "ours": str(ours[item]),
                     "reason": reason})
    return rows


def tuning_puzzles(proto: Protocol) -> tuple[torch.Tensor, torch.Tensor]:
    """``(puzzles, solutions)`` of the tuning stage (never used for evaluation)."""
    return make_puzzles(proto.n_tune, proto.n_blanks,
                        generator=torch.Generator().manual_seed(proto.puzzle_seed))


def eval_puzzles(proto: Protocol) -> tuple[torch.Tensor, torch.Tensor]:
    """``(puzzles, solutions)``, ``(n_seeds * n_eval, 81)``; seed ``s`` owns ``n_eval`` rows."""
    pairs = [make_puzzles(proto.n_eval, proto.n_blanks,
                          generator=torch.Generator().manual_seed(proto.puzzle_seed + 1 + s))
             for s in range(proto.n_seeds)]
    return torch.cat([p for p, _ in pairs]), torch.cat([s for _, s in pairs])


def load_models(proto: Protocol, device: torch.device) -> dict[str, tuple[MaskedDenoiser, dict]]:
    """The stored models of the protocol and their stored metadata."""
    names = dict.fromkeys((*proto.checkpoints, proto.tune_checkpoint))
    return {name: load_denoiser(CHECKPOINT_FILES[name], device=device) for name in names}


def grid_metrics(tokens: torch.Tensor, puzzles: torch.Tensor,
                 solutions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row violations, solved and exact match of completed token rows."""
    grids = tokens_to_grid(tokens).cpu()
    return {"final_violations": count_violations(grids).float(),
            "final_solved": is_solved(grids, puzzles).float(),
            "exact_match": (grids == solutions).all(-1).float()}


def _per_seed(values: torch.Tensor, proto: Protocol) -> list[float]:
    return values.reshape(proto.n_seeds, proto.n_eval).mean(-1).tolist()


def _generator(seed: int, stage: str, method: str, device: torch.device) -> torch.Generator:
    offset = {"tune": 0, "unguided": 1, "main": 2}[stage]
    index = 0 if method == "unguided" else 1 + ESTIMATOR_NAMES.index(method)
    return torch.Generator(device=device).manual_seed(seed + 1000 * offset + index)


def run_tuning(estimator: str, proto: Protocol, *, seed: int, device: torch.device,
               max_rounds: int | None = None) -> dict[str, Any]:
    """Every grid point of ``estimator`` at ``N = tune_n_inner`` on the tuning puzzles; a
    choice on an edge of the grid makes it grow (:func:`.tuning.grow_search`), up to
    ``max_rounds`` times (default: :data:`.tuning.GROW_ROUNDS` at full scale, else 0)."""
    if max_rounds is None:
        max_rounds = GROW_ROUNDS if proto.scale == "full" else 0
    models = load_models(proto, device)
    model = models[proto.tune_checkpoint][0]
    puzzles, solutions = tuning_puzzles(proto)
    generator = _generator(seed, "tune", estimator, device)
    wall = 0.0

    def evaluate(todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal wall
        configs = [GuidanceConfig(estimator, proto.tune_n_inner, k) for k in todo]
        start = time.perf_counter()
        tokens, _ = guide_batched(model, penalty, configs, n_unmask_steps=proto.n_unmask_steps,
                                  lam=proto.lam, lr=proto.lr, generator=generator,
                                  init=grid_to_tokens(puzzles).to(device))
        wall += time.perf_counter() - start
        metrics = grid_metrics(tokens, puzzles.repeat(len(todo), 1),
                               solutions.repeat(len(todo), 1))
        rows = [slice(c * proto.n_tune, (c + 1) * proto.n_tune) for c in range(len(todo))]
        return [{"knobs": knobs, **{k: v[r].tolist() for k, v in metrics.items()},
                 "best_violations": metrics["final_violations"][r].tolist()}
                for knobs, r in zip(todo, rows, strict=True)]

    entries, chosen, added = grow_search(estimator, proto.grids[estimator], evaluate, choose,
                                         max_rounds=max_rounds, axis=lambda e: e["knobs"])
    return {"stage": "tune", "method": estimator, "configs": entries, "chosen": chosen,
            "extended": added, "wall_seconds": wall, "device": str(device)}


def run_unguided(proto: Protocol, *, seed: int, device: torch.device) -> dict[str, Any]:
    """Ancestral sampling and greedy decoding of every model on the evaluation puzzles."""
    models = load_models(proto, device)
    puzzles, solutions = eval_puzzles(proto)
    init = grid_to_tokens(puzzles).to(device)
    generator = _generator(seed, "unguided", "unguided", device)
    runs: dict[str, Any] = {}
    for checkpoint in proto.checkpoints:
        model, meta = models[checkpoint]
        start = time.perf_counter()
        ancestral = sample_unmasking(model, init.shape[0], n_steps=proto.n_unmask_steps,
                                     generator=generator, init=init)
        ancestral_s = time.perf_counter() - start
        start = time.perf_counter()
        greedy, info = guide_batched(model, penalty, [GuidanceConfig("st", 0)],
                                     n_unmask_steps=proto.n_unmask_steps, lam=proto.lam,
                                     lr=proto.lr, generator=generator, init=init)
        greedy_s = time.perf_counter() - start
        for sampler, tokens, seconds, kl in (
                ("ancestral", ancestral, ancestral_s, torch.zeros(init.shape[0])),
                ("greedy", greedy, greedy_s, info["kl_revealed"])):
            metrics = {**grid_metrics(tokens, puzzles, solutions), "kl_to_prior": kl}
            runs[f"{checkpoint}/{sampler}"] = {
                "checkpoint": checkpoint, "sampler": sampler, "seconds": seconds,
                "per_seed": {k: _per_seed(v, proto) for k, v in metrics.items()},
                "example": tokens_to_grid(tokens[0]).tolist()}
        runs[f"{checkpoint}/model"] = {"evaluation": meta.get("evaluation", {}),
                                       "training": meta.get("training", {}),
                                       "final_loss_mean_last_50":
                                           meta.get("final_loss_mean_last_50")}
    return {"stage": "unguided", "method": "unguided", "runs": runs,
            "example_puzzle": puzzles[0].tolist(), "example_solution": solutions[0].tolist(),
            "device": str(device)}


def run_main(estimator: str, knobs: dict[str, Any], proto: Protocol, *, seed: int,
             device: torch.device) -> dict[str, Any]:
    """Both models and every ``N`` of the budget curve, one batched loop."""
    models = load_models(proto, device)
    puzzles, solutions = eval_puzzles(proto)
    rows = puzzles.shape[0]
    configs = [GuidanceConfig(estimator, n, dict(knobs), model=m)
               for m in range(len(proto.checkpoints)) for n in proto.n_inner]
    start = time.perf_counter()
    tokens, info = guide_batched([models[c][0] for c in proto.checkpoints], penalty, configs,
                                 n_unmask_steps=proto.n_unmask_steps, lam=proto.lam,
                                 lr=proto.lr, generator=_generator(seed, "main", estimator, device),
                                 init=grid_to_tokens(puzzles).to(device))
    wall = time.perf_counter() - start
    runs = []
    for c, config in enumerate(configs):
        part = slice(c * rows, (c + 1) * rows)
        metrics = {**grid_metrics(tokens[part], puzzles, solutions),
                   "kl_to_prior": info["kl_revealed"][part]}
        runs.append({"checkpoint": proto.checkpoints[config.model], "n_inner": config.n_inner,
                     "per_seed": {k: _per_seed(v, proto) for k, v in metrics.items()},
                     "example": tokens_to_grid(tokens[c * rows]).tolist()})
    return {"stage": "main", "method": estimator, "knobs": knobs, "runs": runs,
            "wall_seconds": wall, "device": str(device)}


def time_inner_steps(proto: Protocol, knobs: dict[str, dict[str, Any]], device: torch.device, *,
                     rounds: int = 5, block_s: float = 0.2) -> dict[str, float]:
    """Milliseconds per inner step (sample, penalty, KL, backward) of each estimator at its
    chosen knob on the evaluation batch shape, interleaved in one process (median of blocks)."""
    rows = proto.n_seeds * proto.n_eval
    generator = torch.Generator(device=device).manual_seed(0)
    prior = torch.log_softmax(torch.randn(rows, 81, 9, generator=generator, device=device), -1)
    calls = {}
    for name, k in knobs.items():
        sampler = make_estimator(name, **k)

        def call(sampler: Any = sampler) -> None:
            phi = prior.detach().clone().requires_grad_(True)
            hard = sampler(phi, generator=generator, hard=True)
            (penalty(hard) + kl_to_prior(phi, prior).sum(-1)).sum().backward()

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
    """Run (or resume) every stage; return the records found or made; write ``summary.csv``
    (when ``save``) once all are done."""
    estimators = list(ESTIMATOR_NAMES) if estimators is None else estimators
    dev = torch.device(device) if device is not None else runtime.device()
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=dev)
    records = stages.records

    def stage(name: str, config: dict[str, Any], compute: Any) -> dict[str, Any] | None:
        return stages.run(f"{proto.scale}_{name}", config, compute)

    stage("unguided", proto.as_config("unguided", "unguided"),
          lambda: run_unguided(proto, seed=seed, device=dev))
    chosen: dict[str, dict[str, Any]] = {}
    for estimator in estimators:
        tuned = stage(f"tune_{estimator}", proto.as_config("tune", estimator),
                      lambda e=estimator: run_tuning(e, proto, seed=seed, device=dev))
        if tuned is None:
            continue
        knobs = tuned["data"]["configs"][tuned["data"]["chosen"]]["knobs"]
        done = stage(f"main_{estimator}", proto.as_config("main", estimator, knobs=knobs),
                     lambda e=estimator, k=knobs: run_main(e, k, proto, seed=seed, device=dev))
        if done is not None:
            chosen[estimator] = knobs
    if len(chosen) == len(estimators):
        block = 0.2 if proto.scale == "full" else 0.01
        stage("timing", proto.as_config("timing", "all", knobs=chosen),
              lambda: {"stage": "timing", "method": "all", "device": str(dev),
                       "timing_ms": time_inner_steps(proto, chosen, dev, block_s=block)})
        if save:
            write_summary(EXPERIMENT, summary_rows(records), root=folder)
    return records


def summary_rows(records: list[dict[str, Any]]) -> list[Row]:
    """Tidy rows: unguided baselines (budget 0), evaluation per model and ``N``, tuning rows
    (``setting`` ``tune_<model>``, units = tuning puzzles)."""
    rows: list[Row] = []
    for record in records:
        data, config = record["data"], record["config"]
        if data["stage"] == "unguided":
            for run in data["runs"].values():
                if "sampler" not in run:
                    continue
                for metric in METRICS:
                    rows.append(summary_row(EXPERIMENT, run["checkpoint"], "unguided",
                                            {"sampler": run["sampler"]}, metric, 0,
                                            run["per_seed"][metric]))
        elif data["stage"] == "main":
            for run in data["runs"]:
                for metric in METRICS:
                    rows.append(summary_row(EXPERIMENT, run["checkpoint"], data["method"],
                                            data["knobs"], metric, run["n_inner"],
                                            run["per_seed"][metric]))
        elif data["stage"] == "tune":
            for entry in data["configs"]:
                for metric in ("final_violations", "final_solved"):
                    rows.append(summary_row(EXPERIMENT, f"tune_{config['tune_checkpoint']}",
                                            data["method"], entry["knobs"], metric,
                                            config["tune_n_inner"], entry[metric]))
        elif data["stage"] == "timing":
            rows += timing_rows(EXPERIMENT, "timing", data["timing_ms"], config["knobs"])
    return rows


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the chapter shows: ``rows`` (tidy, without tuning), ``per_seed`` values,
    ``chosen`` knobs (with an edge flag), ``verdicts`` (per model, ``N`` and ReDGE-family
    member: paired verdicts on ``final_solved`` and ``final_violations`` against the best
    estimator outside the family), ``models`` (stored quality of each prior), ``timing_ms``,
    ``scale``, ``config`` and ``device``."""
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    mains = sorted((r for r in records if r["data"]["stage"] == "main"),
                   key=lambda r: ESTIMATOR_NAMES.index(r["data"]["method"]))
    unguided = next((r for r in records if r["data"]["stage"] == "unguided"), None)
    if not mains or unguided is None:
        raise ValueError("records need the unguided stage and at least one evaluation")
    per_seed: dict[tuple[str, str, int, str], list[float]] = {}
    for main in mains:
        for run in main["data"]["runs"]:
            for metric, values in run["per_seed"].items():
                per_seed[(run["checkpoint"], main["data"]["method"], run["n_inner"],
                          metric)] = values
    for run in unguided["data"]["runs"].values():
        if "sampler" in run:
            for metric, values in run["per_seed"].items():
                per_seed[(run["checkpoint"], run["sampler"], 0, metric)] = values
    chosen = {}
    for record in records:
        if record["data"]["stage"] == "tune":
            data = record["data"]
            chosen[data["method"]] = {
                "knobs": data["configs"][data["chosen"]]["knobs"],
                "on_edge": on_edge([c["knobs"] for c in data["configs"]], data["chosen"]),
                "grew": data.get("extended", [])}
    names = [m["data"]["method"] for m in mains]
    checkpoints = list(mains[0]["config"]["checkpoints"])
    budgets = list(mains[0]["config"]["n_inner"])
    verdicts = {}
    for checkpoint in checkpoints:
        for n in budgets:
            def score(name: str, c: str = checkpoint, b: int = n) -> tuple[float, float]:
                solved = per_seed[(c, name, b, "final_solved")]
                viol = per_seed[(c, name, b, "final_violations")]
                return (-sum(solved) / len(solved), sum(viol) / len(viol))

            others = [m for m in names if m not in REDGE_FAMILY]
            if not others:
                continue
            rival = min(others, key=score)
            for name in names:
                if name in REDGE_FAMILY:
                    verdicts[(checkpoint, n, name)] = {"rival": rival, **{
                        metric: paired_verdict(per_seed[(checkpoint, name, n, metric)],
                                               per_seed[(checkpoint, rival, n, metric)],
                                               lower_is_better=not HIGHER_IS_BETTER[metric])
                        for metric in ("final_solved", "final_violations")}}
    models = {c: unguided["data"]["runs"][f"{c}/model"] for c in checkpoints}
    timing = next((r["data"]["timing_ms"] for r in records if r["data"]["stage"] == "timing"),
                  {})
    rows = [r for r in summary_rows(records) if not r.setting.startswith("tune_")]
    return {"scale": mains[0]["config"]["scale"], "config": mains[0]["config"], "rows": rows,
            "per_seed": per_seed, "chosen": chosen, "verdicts": verdicts, "models": models,
            "timing_ms": timing, "estimators": names, "checkpoints": checkpoints,
            "budgets": budgets, "device": mains[0]["data"]["device"],
            "unguided": unguided["data"]}


def write_summary_csv(folder: str | Path, scale: str) -> Path | None:
    """Regenerate ``summary.csv`` from the stored ``<scale>_*`` records of this protocol; None
    when the evaluation is not complete."""
    records = [r for r in load_records(folder, scale) if "stage" in r["config"]]
    mains = {r["data"]["method"] for r in records if r["data"].get("stage") == "main"}
    if mains != set(ESTIMATOR_NAMES) or not any(
            r["data"]["stage"] == "unguided" for r in records):
        return None
    return write_summary(EXPERIMENT, summary_rows(records), root=folder)


def measure_throughput(proto: Protocol, *, device: torch.device | str | None = None,
                       ) -> dict[str, float]:
    """Projected seconds of the full run of ``proto`` on ``device``: every stage is run with one
    unmasking step (each unmasking step costs the same: the inner loop has a fixed shape) at
    its real batch shape, nothing saved, and scaled by ``T``. Keys: one per stage, ``total``."""
    dev = torch.device(device) if device is not None else runtime.device()
    short = replace(proto, n_unmask_steps=1)
    out: dict[str, float] = {}
    tic = time.perf_counter()
    records = run(short, out=Path("/nonexistent"), device=dev, save=False)
    for record in records:
        stage = record["data"]["stage"]
        seconds = record["data"].get("wall_seconds", 0.0) * proto.n_unmask_steps
        out[stage] = out.get(stage, 0.0) + seconds
    rest = time.perf_counter() - tic - sum(r["data"].get("wall_seconds", 0.0) for r in records)
    out["total"] = sum(out.values()) + max(rest, 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                  device=cli.device, max_minutes=cli.args.max_minutes)
    done = [r for r in records if r["data"]["stage"] == "main"]
    if done and any(r["data"]["stage"] == "unguided" for r in records):
        summary = summarise(records)
        top = summary["budgets"][-1]
        for row in summary["rows"]:
            if row.metric == "final_violations" and row.budget in (0, top):
                print(f"{row.setting:<7} {row.estimator:<10} {row.knobs:<24} N={row.budget:<5} "
                      f"violations {row.mean:6.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]")
        for name, entry in summary["chosen"].items():
            print(f"chosen {name}: {knob_text(entry['knobs'])}")
    return cli.finish(len(done), len(cli.estimators), "estimators")


if __name__ == "__main__":
    raise SystemExit(main())
