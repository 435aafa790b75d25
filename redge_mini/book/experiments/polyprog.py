"""E1, polynomial programming: every estimator, its knob tuned on a grid, five fresh seeds.

Usage::

    python -m redge_mini.book.experiments.polyprog --scale full            # the protocol below
    python -m redge_mini.book.experiments.polyprog --scale small --out /tmp/pp
    python -m redge_mini.book.experiments.polyprog --smoke --out /tmp/pp   # seconds, end to end
    python -m redge_mini.book.experiments.polyprog --summarise             # summary.csv only

Protocol (full scale), the authors' problem and optimiser: ``L = 128`` binary variables,
``c = 0.45``, ``p in {1.5, 2, 3}``, logits start at 0, Adam (lr 0.05), 256 Monte-Carlo samples
per step, 1000 steps. Two stages per estimator:

1. *Tuning* (``<scale>_tune_<estimator>.json``): every value of the estimator's knob grid
   (:data:`GRIDS`; the ReDGE family over ``t_1`` x ``n_steps``) is run ``tune_runs`` times for
   ``tune_iters`` steps (a stated proxy of the main budget, to fit the CPU budget), all in one
   batch; for every ``p`` the value with the lowest mean final optimality gap is chosen.
2. *Main* (``<scale>_<estimator>.json``): each ``p`` at its chosen value, ``n_seeds`` fresh
   runs (other random streams than the tuning runs) of the full 1000 steps. These are reported:
   mean and 95 % t-interval of the final gap; ReDGE-family members against the best other
   estimator by Welch's t-test (the runs of two estimators are independent).

A rerun skips stages whose file exists (and refuses one written with another configuration),
so an interrupted run resumes. ``summary.csv`` is regenerated from the stored files at the end,
or alone with ``--summarise``. Records of the earlier one-stage protocol (``n_select`` selection
runs and the evaluation runs in one file) are still read and summarised, with their own budget
and number of runs.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...registry import label, make_loss
from .. import runtime
from ..tasks import StopCallback
from ..tasks.polyprog import ESTIMATOR_NAMES, PolyProgConfig, objective, optimise
from ..timing import median_ms, time_interleaved
from . import REDGE_FAMILY, Stages, knob_text, load_records, parse_cli, welch_verdict
from .summary import Row, summary_row, t_interval, timing_rows, write_summary
from .tuning import GROW_ROUNDS, extend_grid, grow_search

__all__ = ["AUTHOR_KNOBS", "GRIDS", "Protocol", "main", "measure_throughput", "protocol",
           "protocol_table", "run", "summarise", "summary_rows", "write_summary_csv"]

EXPERIMENT = "polyprog"

_T1 = (0.02, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9)


def _family(t_values: tuple[float, ...], steps: tuple[int, ...]) -> list[dict[str, float | int]]:
    return [{"n_steps": n, "t_1": t} for n in steps for t in t_values]


#: Knob grids. The authors' settings (ReDGE t_1 = 0.1 with 3 steps, ReDGE-cov t_1 = 0.2 and
#: ReinDGE t_1 = 0.8 with 5 steps, Gumbel tau = 0.02) lie inside each full grid, and every grid
#: extends past the values chosen with the earlier, smaller grids (ReDGE t_1 = 0.1 and Gumbel
#: tau = 0.02 sat at the lower edge, so those grids reach 0.02 and 0.005). ReinMax's
#: tau >= 1 is its whole domain, so tau = 1 is a natural edge.
GRIDS: dict[str, dict[str, list[dict[str, float | int]]]] = {
    "full": {
        "st": [{}],
        "gumbel": [{"tau": t} for t in (0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)],
        "reinmax": [{"tau": t} for t in (1.0, 1.25, 1.5, 2.0, 3.0)],
        "redge": _family(_T1, (3, 5, 9)),
        "redge_cov": _family((0.1, 0.2, 0.3, 0.5, 0.7, 0.9), (3, 5, 9)),
        "reindge": _family((0.1, 0.3, 0.5, 0.7, 0.8, 0.9), (3, 5, 9)),
        "reinforce": [{}],
    },
    "small": {
        "st": [{}],
        "gumbel": [{"tau": t} for t in (0.02, 0.1, 0.5)],
        "reinmax": [{"tau": t} for t in (1.0, 2.0)],
        "redge": _family((0.1, 0.9), (3,)),
        "redge_cov": _family((0.2, 0.9), (5,)),
        "reindge": _family((0.1, 0.9), (5,)),
        "reinforce": [{}],
    },
}

#: The authors' settings for this problem (ReDGE paper).
AUTHOR_KNOBS: dict[str, dict[str, float | int]] = {
    "st": {},
    "gumbel": {"tau": 0.02},
    "reinmax": {"tau": 1.0},
    "redge": {"n_steps": 3, "t_1": 0.1},
    "redge_cov": {"n_steps": 5, "t_1": 0.2},
    "reindge": {"n_steps": 5, "t_1": 0.8},
}


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment: the problem and main runs, the tuning stage, the grids.

    ``config.n_runs`` is the number of fresh seeds of every reported row.
    """

    scale: str
    config: PolyProgConfig
    tune_iters: int
    tune_runs: int
    grids: dict[str, list[dict[str, float | int]]]
    grow_rounds: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.grow_rounds, bool) or not isinstance(self.grow_rounds, int) \
                or self.grow_rounds < 0:
            raise ValueError(f"grow_rounds must be an int >= 0, got {self.grow_rounds!r}")
        for name in ("tune_iters", "tune_runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        unknown = [e for e in self.grids if e not in ESTIMATOR_NAMES]
        if unknown:
            raise ValueError(f"grids names unknown estimator(s) {unknown}")

    @property
    def tune_config(self) -> PolyProgConfig:
        """The problem as run by the tuning stage."""
        return replace(self.config, n_iters=self.tune_iters, n_runs=self.tune_runs)

    def as_config(self, estimator: str, seed: int, stage: str,
                  chosen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON-able configuration of one stage's result file."""
        base = {"scale": self.scale, "stage": stage, "estimator": estimator, "seed": seed,
                **asdict(self.config)}
        if stage == "tune":
            base.update(tune_iters=self.tune_iters, tune_runs=self.tune_runs,
                        knob_values=self.grids[estimator], grow_rounds=self.grow_rounds)
        else:
            base["chosen"] = chosen
        return base


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        config = PolyProgConfig(n_samples=256, n_iters=1000, n_runs=5, record_every=10)
        tune_iters, tune_runs = 250, 2
    else:
        config = PolyProgConfig(n_samples=16, n_iters=150, n_runs=5, record_every=5)
        tune_iters, tune_runs = 50, 1
    grids = GRIDS[scale]
    if smoke:
        config = replace(config, n_samples=4, n_iters=6, n_runs=2, record_every=2)
        tune_iters, tune_runs = 4, 1
        grids = {e: g[:2] for e, g in grids.items()}
    return Protocol(scale=scale + ("-smoke" if smoke else ""), config=config,
                    tune_iters=tune_iters, tune_runs=tune_runs, grids=grids,
                    grow_rounds=GROW_ROUNDS if scale == "full" else 0)


def protocol_table(proto: Protocol) -> str:
    """Markdown table: the authors' protocol beside ``proto``, with every deviation and why."""
    c, full = proto.config, "full" in proto.scale

    def grid(name: str, key: str) -> str:
        values = sorted({k[key] for k in proto.grids[name]})
        return ", ".join(f"{v:g}" for v in values)

    def mark(ours: object, theirs: object) -> str:
        return "same" if str(ours) == str(theirs) else "**differs**"

    rows = [
        ("variables L", "128", str(c.n_vars), ""),
        ("target c", "0.45", f"{c.c:g}", ""),
        ("exponents p", "1.5, 2, 3", ", ".join(f"{p:g}" for p in c.powers), ""),
        ("samples per step", "256", str(c.n_samples),
         "" if full else "small scale: a CPU page in seconds"),
        ("Adam steps (lr)", "1000 (0.05)", f"{c.n_iters} ({c.lr:g})",
         "" if full else "small scale: a CPU page in seconds"),
        ("runs per reported row", "1", f"{c.n_runs} fresh seeds",
         "95 % t-intervals need several seeds"),
        ("knob choice", "fixed by the authors",
         f"grid, {proto.tune_runs} run{'s' * (proto.tune_runs > 1)} x {proto.tune_iters} "
         "steps",
         "fair tuning of every estimator; fewer steps than the main runs to fit the budget"),
        ("ReDGE-family t_1", "0.1 / 0.2 / 0.8", grid("redge", "t_1"), "grid past the choice"),
        ("ReDGE-family n_steps", "3 / 5 / 5", grid("redge", "n_steps"), ""),
        ("Gumbel tau", "0.02", grid("gumbel", "tau"), "grid past the choice"),
        ("ReinMax tau", "1", grid("reinmax", "tau"), "tau >= 1 is ReinMax's domain"),
    ]
    lines = ["| setting | authors | ours | | why |", "|---|---|---|---|---|"]
    for name, theirs, ours, why in rows:
        lines.append(f"| {name} | {theirs} | {ours} | {mark(ours, theirs)} | {why} |")
    return "\n".join(lines)


def _seed(seed: int, estimator: str, offset: int) -> int:
    return seed + offset + 10 * ESTIMATOR_NAMES.index(estimator)


def choose(final_gap: list, n_powers: int) -> list[int]:
    """For every exponent, the grid index with the lowest mean final gap over the runs."""
    return [min(range(len(final_gap)), key=lambda g: float(np.mean(final_gap[g][i])))
            for i in range(n_powers)]


def run_tune(estimator: str, proto: Protocol, *, seed: int,
             device: torch.device | str | None = None, progress: bool = False,
             stop: StopCallback | None = None) -> dict[str, Any]:
    """Stage 1: every grid value, ``tune_runs`` runs of ``tune_iters`` steps; the choice.

    For every exponent whose choice lies on an edge of the grid, the grid grows past it
    (:func:`.tuning.grow_search`, ``proto.grow_rounds`` times at most); the new points run with
    their own random streams, all exponents at once. ``extended`` lists the points added.
    """
    tic = time.perf_counter()
    powers: list[float] = []
    rounds: list[list[dict[str, Any]]] = []

    def evaluate(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        round_ = len(rounds)
        rounds.append(points)
        result = optimise(estimator, points, proto.tune_config,
                          seed=_seed(seed, estimator, 500 + round_), device=device,
                          progress=progress, stop=stop)
        powers[:] = list(result.powers)
        final = result.gaps[..., -1]                                     # (G, P, R)
        return [{"knobs": knobs, "final_gap": final[g].tolist()}
                for g, knobs in enumerate(result.knob_values)]

    entries, chosen, added = grow_search(
        estimator, proto.grids[estimator], evaluate,
        lambda e: choose([x["final_gap"] for x in e], len(proto.config.powers)),
        max_rounds=proto.grow_rounds, axis=lambda e: e["knobs"])
    knob_values = [e["knobs"] for e in entries]
    return {"estimator": estimator, "knob_values": knob_values, "powers": powers,
            "final_gap": [e["final_gap"] for e in entries], "chosen_index": chosen,
            "chosen": [knob_values[g] for g in chosen], "extended": added,
            "wall_seconds": time.perf_counter() - tic}


def run_main(estimator: str, proto: Protocol, chosen: list[dict[str, Any]], *, seed: int,
             device: torch.device | str | None = None, progress: bool = False,
             stop: StopCallback | None = None) -> dict[str, Any]:
    """Stage 2: every exponent at its chosen knobs, ``config.n_runs`` fresh seeds.

    Exponents that chose the same knobs run in one batched call (one estimator call per step
    for all of them: on a GPU the cost of these small tensors is mostly kernel launches).
    """
    powers = proto.config.powers
    groups: dict[str, list[int]] = {}
    for i, knobs in enumerate(chosen):
        groups.setdefault(repr(sorted(knobs.items())), []).append(i)
    per_p: list[dict[str, Any] | None] = [None] * len(powers)
    total_steps, tic = 0, time.perf_counter()
    for g, members in enumerate(groups.values()):
        config = replace(proto.config, powers=tuple(powers[i] for i in members))
        result = optimise(estimator, [chosen[members[0]]], config,
                          seed=_seed(seed, estimator, g), device=device, progress=progress,
                          stop=stop)
        for j, i in enumerate(members):
            evaluation = result.gaps[0, j]                              # (R, T)
            n = evaluation.shape[0]
            se = (evaluation.std(dim=0) / math.sqrt(n) if n > 1
                  else torch.full_like(evaluation[0], math.nan))
            per_p[i] = {"p": powers[i], "knobs": result.knob_values[0],
                        "final_gap": evaluation[:, -1], "final_prob": result.final_probs[0, j],
                        "initial_gap": evaluation[0, 0], "curve_mean": evaluation.mean(dim=0),
                        "curve_se": se}
        total_steps += config.n_iters
    wall = time.perf_counter() - tic
    return {"estimator": estimator, "powers": list(powers), "steps": result.steps.tolist(),
            "per_p": per_p, "wall_seconds": wall, "ms_per_step": 1000.0 * wall / total_steps}


def time_steps(proto: Protocol, knobs: dict[str, dict[str, Any]],
               device: torch.device | str | None = None, *, rounds: int = 5,
               block_s: float = 0.2) -> dict[str, float]:
    """Milliseconds per Adam step (``n_samples`` draws of every problem, the objective, backward,
    Adam) of each estimator at its ``knobs``, on the main runs' logits of all exponents
    ``(P, runs, L, 2)``, timed interleaved in one process after warm-up (median of ``rounds``
    blocks of :func:`~redge_mini.book.timing.time_interleaved`)."""
    config = proto.config
    device = torch.device("cpu") if device is None else torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    powers = torch.tensor(config.powers, dtype=torch.float32, device=device).view(1, -1, 1)
    calls = {}
    for name, k in knobs.items():
        logits = torch.zeros(len(config.powers), config.n_runs, config.n_vars, 2, device=device,
                             requires_grad=True)
        loss = make_loss(name, **k)
        optimiser = torch.optim.Adam([logits], lr=config.lr)

        def call(loss: Any = loss, logits: torch.Tensor = logits,
                 optimiser: torch.optim.Optimizer = optimiser) -> None:
            optimiser.zero_grad(set_to_none=True)
            loss(lambda x: objective(x, config.c, powers), logits, config.n_samples,
                 generator=generator).sum().backward()
            optimiser.step()

        call()  # warm-up (Adam's state, allocator)
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
    progress: bool = False,
    save: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment; return the records of the stages run now or found.

    With ``save=True`` every finished stage is written at once to ``out`` (default
    ``book/results/polyprog``), and a stage whose file exists is loaded instead of rerun.
    """
    estimators = list(proto.grids) if estimators is None else estimators
    unknown = [e for e in estimators if e not in proto.grids]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(proto.grids)}")
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=device)
    for estimator in estimators:
        grid = proto.grids[estimator]
        chosen = [grid[0]] * len(proto.config.powers)
        if len(grid) > 1:
            tune = stages.run(
                f"{proto.scale}_tune_{estimator}", proto.as_config(estimator, seed, "tune"),
                lambda e=estimator: run_tune(e, proto, seed=seed, device=device,
                                             progress=progress, stop=stages.deadline.expired))
            if tune is None:
                break
            chosen = tune["data"]["chosen"]
        main_record = stages.run(
            f"{proto.scale}_{estimator}", proto.as_config(estimator, seed, "main", chosen),
            lambda e=estimator, k=chosen: run_main(e, proto, k, seed=seed, device=device,
                                                   progress=progress,
                                                   stop=stages.deadline.expired))
        if main_record is None:
            break
    mains = {r["data"]["estimator"]: r["data"] for r in stages.records
             if r["config"].get("stage") == "main"}
    if set(estimators) == set(proto.grids) and set(mains) == set(estimators):
        # only a run of every estimator of the protocol times them (a run of some estimators
        # later must not meet a timing file made with other knobs); the knobs are those of the
        # middle exponent (p = 2 at full scale)
        middle = len(proto.config.powers) // 2
        chosen = {e: mains[e]["per_p"][middle]["knobs"] for e in estimators}
        block = 0.2 if proto.scale == "full" else 0.01
        stages.run(f"{proto.scale}_timing",
                   {"scale": proto.scale, "stage": "timing", "seed": seed,
                    **asdict(proto.config), "knobs": chosen},
                   lambda: {"timing_ms": time_steps(proto, chosen, device, block_s=block),
                            "p": proto.config.powers[middle]})
    return stages.records


# --------------------------------------------------------------------------------- summaries


def _normalise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """estimator -> ``{"tune": ..., "main": ..., "budget", "tune_budget"}`` in one layout.

    Reads both the two-stage records written by :func:`run` and the earlier one-stage ones
    (selection and evaluation runs of every grid value in one file).
    """
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        config, data = record["config"], record["data"]
        if config.get("stage") == "timing":
            continue
        estimator = data["estimator"]
        entry = out.setdefault(estimator, {"tune": None, "main": None, "device": None})
        entry["device"] = record.get("metadata", {}).get("device_name")
        if config.get("stage") == "tune":
            entry["tune"] = {"knob_values": data["knob_values"], "powers": data["powers"],
                             "final_gap": data["final_gap"],
                             "chosen_index": data["chosen_index"],
                             "extended": data.get("extended", []),
                             "budget": config["tune_iters"]}
        elif config.get("stage") == "main":
            entry["main"] = {"powers": data["powers"], "steps": data["steps"],
                             "per_p": data["per_p"], "budget": config["n_iters"],
                             "ms_per_step": data.get("ms_per_step")}
        else:                                   # the earlier one-stage layout
            n_select, grid = config["n_select"], data["knob_values"]
            selection = [[runs[:n_select] for runs in per_grid] for per_grid in data["final_gap"]]
            chosen = choose(selection, len(data["powers"]))
            if len(grid) > 1:
                entry["tune"] = {"knob_values": grid, "powers": data["powers"],
                                 "final_gap": selection, "chosen_index": chosen,
                                 "budget": config["n_iters"]}
            per_p = []
            for i, p in enumerate(data["powers"]):
                g = chosen[i]
                per_p.append({"p": p, "knobs": grid[g],
                              "final_gap": data["final_gap"][g][i][n_select:],
                              "final_prob": data["final_prob"][g][i][n_select:],
                              "initial_gap": data["initial_gap"][i],
                              "curve_mean": data["curve_mean"][g][i],
                              "curve_se": data["curve_se"][g][i]})
            entry["main"] = {"powers": data["powers"], "steps": data["steps"], "per_p": per_p,
                             "budget": config["n_iters"], "ms_per_step": None}
    return out


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables, curves and verdicts from result records (stored or freshly computed) of one scale.

    Returns a dict with ``rows`` (one per ``(p, estimator)``: chosen knobs, mean final gap and
    its 95 % t-interval, ``gap_se``, mean probability ``prob_mean``, ``n_eval`` runs,
    ``budget``, ``at_edge``: whether the choice lies on an edge the grid could still grow
    past), ``curves`` (``(p, estimator) -> (steps, mean, se)``), ``verdicts`` (``(p,
    ReDGE-family member) -> dict``, Welch's test against the best other estimator), ``tuning``
    (estimator -> tune data), ``powers``, ``estimators``, ``scale`` and ``device``.
    """
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    table = _normalise(records)
    rows, curves, gaps = [], {}, {}
    powers: list[float] = []
    for estimator in [e for e in ESTIMATOR_NAMES if e in table]:
        main = table[estimator]["main"]
        if main is None:
            continue
        tune = table[estimator]["tune"]
        for entry in main["per_p"]:
            p = entry["p"]
            if p not in powers:
                powers.append(p)
            values = [float(v) for v in entry["final_gap"]]
            mean, low, high = t_interval(values)
            se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 \
                else math.nan
            rows.append({
                "p": p, "estimator": estimator, "label": label(estimator),
                "knobs": entry["knobs"], "knob_text": knob_text(entry["knobs"]),
                "gap_mean": mean, "gap_low": low, "gap_high": high, "gap_se": se,
                "prob_mean": float(np.mean(entry["final_prob"])),
                "initial_gap": float(entry["initial_gap"]), "n_eval": len(values),
                "budget": main["budget"], "at_edge": _at_edge(estimator, entry["knobs"], tune),
            })
            curves[(p, estimator)] = (main["steps"], entry["curve_mean"], entry["curve_se"])
            gaps[(p, estimator)] = values
    verdicts = {}
    for p in powers:
        others = [e for (q, e) in gaps if q == p and e not in REDGE_FAMILY]
        if not others:
            continue
        rival = min(others, key=lambda e: float(np.mean(gaps[(p, e)])))
        initial = next(r["initial_gap"] for r in rows if r["p"] == p)
        for member in REDGE_FAMILY:
            if (p, member) not in gaps:
                continue
            a, b = gaps[(p, member)], gaps[(p, rival)]
            verdicts[(p, member)] = {
                "verdict": welch_verdict(a, b, tolerance=1e-6 * initial),
                "rival": rival, "mean": float(np.mean(a)), "rival_mean": float(np.mean(b)),
            }
    device = next((t["device"] for t in table.values() if t["device"]), None)
    return {"rows": rows, "curves": curves, "verdicts": verdicts, "powers": powers,
            "estimators": [e for e in ESTIMATOR_NAMES if (powers[0], e) in gaps] if powers
            else [], "tuning": {e: t["tune"] for e, t in table.items() if t["tune"]},
            "scale": next(iter(scales)), "device": device}


def _at_edge(estimator: str, knobs: dict[str, Any], tune: dict[str, Any] | None) -> bool:
    """Whether ``knobs`` lie on an edge of the tuned grid that the grid could still grow past
    (an edge that is the boundary of the knob's range, e.g. ReinMax's ``tau = 1``, is not one)."""
    if tune is None or knobs not in tune["knob_values"]:
        return False
    points = tune["knob_values"]
    return bool(extend_grid(estimator, points, points.index(knobs)))


def summary_rows(records: list[dict[str, Any]]) -> list[Row]:
    """``summary.csv`` rows: ``final_gap`` and ``final_mean_q`` of the reported runs, and one
    ``tune_final_gap`` row per grid value and exponent (the tuning runs)."""
    rows: list[Row] = []
    table = _normalise(records)
    for estimator, entry in sorted(table.items(), key=lambda i: ESTIMATOR_NAMES.index(i[0])):
        main, tune = entry["main"], entry["tune"]
        if main is not None:
            for item in main["per_p"]:
                setting = f"p={item['p']:g}"
                for metric, key in (("final_gap", "final_gap"), ("final_mean_q", "final_prob")):
                    rows.append(summary_row(EXPERIMENT, setting, estimator, item["knobs"], metric,
                                            main["budget"], [float(v) for v in item[key]]))
        if tune is not None:
            for i, p in enumerate(tune["powers"]):
                for g, knobs in enumerate(tune["knob_values"]):
                    rows.append(summary_row(EXPERIMENT, f"p={p:g}", estimator, knobs,
                                            "tune_final_gap", tune["budget"],
                                            [float(v) for v in tune["final_gap"][g][i]]))
    for record in records:
        if record["config"].get("stage") == "timing":
            p = record["data"]["p"]
            rows += timing_rows(EXPERIMENT, f"p={p:g}", record["data"]["timing_ms"],
                                record["config"]["knobs"])
    return rows


def write_summary_csv(folder: str | Path | None = None, scale: str = "full") -> Path | None:
    """Regenerate ``<folder>/summary.csv`` from the stored ``<scale>_*.json``; None if none."""
    folder = Path(folder) if folder is not None else runtime.results_dir(EXPERIMENT)
    records = load_records(folder, scale)
    if not records:
        return None
    return write_summary(EXPERIMENT, summary_rows(records), root=folder)


def measure_throughput(proto: Protocol, *, n_iters: int = 10,
                       device: torch.device | str | None = None) -> dict[str, float]:
    """Projected seconds of each estimator's stages at ``proto``, from ``n_iters`` timed steps.

    Each stage is run for ``n_iters`` steps (after one warm-up step) with its real batch shape
    (the whole tuning grid; one knob value and one exponent per main run), and its time is
    scaled to the stage's number of steps. Returns estimator -> seconds and ``"total"``.
    """
    out: dict[str, float] = {}

    def timed(estimator: str, grid: list, config: PolyProgConfig) -> float:
        optimise(estimator, grid, replace(config, n_iters=1), device=device)
        tic = time.perf_counter()
        optimise(estimator, grid, replace(config, n_iters=n_iters, record_every=n_iters),
                 device=device)
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - tic) / n_iters

    for estimator, grid in proto.grids.items():
        seconds = 0.0
        if len(grid) > 1:
            seconds += timed(estimator, grid, proto.tune_config) * proto.tune_iters
        main = replace(proto.config, powers=proto.config.powers[:1])
        seconds += (timed(estimator, grid[:1], main) * proto.config.n_iters
                    * len(proto.config.powers))
        out[estimator] = seconds
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------------- plots


def plot_gap_curves(summary: dict[str, Any], axes: Any) -> None:
    """One panel per exponent: mean optimality gap (log scale) +- one standard error band."""
    from ..plotting import estimator_color, estimator_label, estimator_marker

    for ax, p in zip(axes, summary["powers"], strict=True):
        for estimator in summary["estimators"]:
            steps, mean, se = summary["curves"][(p, estimator)]
            mean, se = np.asarray(mean, dtype=float), np.asarray(se, dtype=float)
            se = np.nan_to_num(se)
            floor = 1e-300
            color = estimator_color(estimator)
            ax.plot(steps, np.maximum(mean, floor), color=color, lw=1.6,
                    marker=estimator_marker(estimator), markevery=max(1, len(steps) // 6),
                    markersize=4, label=estimator_label(estimator))
            ax.fill_between(steps, np.maximum(mean - se, floor), np.maximum(mean + se, floor),
                            color=color, alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_title(f"p = {p:g}")
        ax.set_xlabel("Adam step")
    axes[0].set_ylabel("optimality gap  F(θ) − c^p")


def _add_summarise(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summarise", action="store_true",
                        help="only regenerate summary.csv from the stored result files")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, tuple(GRIDS["full"]),
                    extra=_add_summarise)
    args = cli.args
    if args.summarise:
        path = write_summary_csv(cli.folder, cli.proto.scale)
        print(f"polyprog: {path or 'no stored ' + cli.proto.scale + ' results'}")
        return 0 if path else 3
    try:
        records = run(cli.proto, cli.estimators, out=cli.folder, seed=args.seed,
                      device=cli.device, max_minutes=args.max_minutes,
                      progress=not args.no_progress)
    except ValueError as error:
        cli.fail(error)
    mains = [r for r in records if r["config"].get("stage") == "main"]
    for row in summarise(mains)["rows"] if mains else []:
        print(f"p={row['p']:<4g} {row['label']:<18} {row['knob_text']:<16} "
              f"gap {row['gap_mean']:.3e} [{row['gap_low']:.1e}, {row['gap_high']:.1e}]")
    write_summary_csv(cli.folder, cli.proto.scale)
    return cli.finish(len(mains), len(cli.estimators), "estimators")


if __name__ == "__main__":
    raise SystemExit(main())
