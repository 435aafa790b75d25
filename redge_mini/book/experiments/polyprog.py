"""E1, polynomial programming: every estimator, its knob tuned on a grid, several runs.

Usage::

    python -m redge_mini.book.experiments.polyprog --scale full            # the protocol below
    python -m redge_mini.book.experiments.polyprog --scale small --out /tmp/pp
    python -m redge_mini.book.experiments.polyprog --smoke --out /tmp/pp   # seconds, end to end

Protocol (full scale): ``L = 128`` binary variables, ``c = 0.45``, ``p in {1.5, 2, 3}``, logits
start at 0, Adam (lr 0.05), 256 Monte-Carlo samples per step, 1000 steps. For every estimator each
value of its knob grid is run with 8 replicate runs, all in one batch. The first 3 runs of every
setting *select* the knob value (lowest mean final optimality gap, separately for each ``p``); the
other 5 runs, which took no part in the choice, are the ones reported (mean +- standard error).

One result file per estimator, ``<scale>_<estimator>.json``; a rerun skips estimators whose file
exists (and refuses one written with another configuration), so an interrupted run resumes.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...registry import label
from .. import runtime
from ..tasks import StopCallback, TrainingInterrupted
from ..tasks.polyprog import ESTIMATOR_NAMES, PolyProgConfig, optimise
from . import REDGE_FAMILY, Deadline, compact, knob_text, load_or_run, mean_se, parse_cli, verdict

EXPERIMENT = "polyprog"

#: Knob grids. The authors' settings (ReDGE t_1 = 0.1 with 3 steps, ReDGE-cov t_1 = 0.2 and
#: ReinDGE t_1 = 0.8 with 5 steps, Gumbel tau = 0.02) are part of each grid.
GRIDS: dict[str, dict[str, list[dict[str, float | int]]]] = {
    "full": {
        "st": [{}],
        "gumbel": [{"tau": t} for t in (0.02, 0.1, 0.5, 1.0)],
        "reinmax": [{"tau": t} for t in (1.0, 1.5, 2.0, 3.0)],
        "redge": [{"n_steps": 3, "t_1": t} for t in (0.1, 0.3, 0.5, 0.8)],
        "redge_cov": [{"n_steps": 5, "t_1": t} for t in (0.1, 0.2, 0.5, 0.8)],
        "reindge": [{"n_steps": 5, "t_1": t} for t in (0.1, 0.3, 0.5, 0.8)],
        "reinforce": [{}],
    },
    "small": {
        "st": [{}],
        "gumbel": [{"tau": t} for t in (0.1, 0.5)],
        "reinmax": [{"tau": t} for t in (1.0, 2.0)],
        "redge": [{"n_steps": 3, "t_1": t} for t in (0.1, 0.5)],
        "redge_cov": [{"n_steps": 5, "t_1": t} for t in (0.2, 0.5)],
        "reindge": [{"n_steps": 5, "t_1": t} for t in (0.3, 0.8)],
        "reinforce": [{}],
    },
}


#: The authors' settings for this problem (ReDGE paper), used for illustrations.
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
    """A scale of the experiment: the optimisation problem, the grids and the run split."""

    scale: str
    config: PolyProgConfig
    n_select: int
    grids: dict[str, list[dict[str, float | int]]]

    def __post_init__(self) -> None:
        if not 1 <= self.n_select < self.config.n_runs:
            raise ValueError(
                f"n_select must leave at least one evaluation run: 1 <= n_select < n_runs, got "
                f"n_select={self.n_select}, n_runs={self.config.n_runs}"
            )

    def as_config(self, estimator: str, seed: int) -> dict[str, Any]:
        """The JSON-able configuration of one estimator's result file."""
        return {"scale": self.scale, **asdict(self.config), "n_select": self.n_select,
                "estimator": estimator, "knob_values": self.grids[estimator], "seed": seed}


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        config = PolyProgConfig(n_samples=256, n_iters=1000, n_runs=8, record_every=10)
        n_select = 3
    else:
        config = PolyProgConfig(n_samples=16, n_iters=150, n_runs=4, record_every=5)
        n_select = 2
    grids = GRIDS[scale]
    if smoke:
        config = replace(config, n_samples=4, n_iters=6, n_runs=3, record_every=2)
        n_select = 1
    return Protocol(scale=scale + ("-smoke" if smoke else ""), config=config,
                    n_select=n_select, grids=grids)


def run_estimator(
    estimator: str,
    proto: Protocol,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    stop: StopCallback | None = None,
) -> dict[str, Any]:
    """Run one estimator over its grid; return the record stored in its result file."""
    if estimator not in ESTIMATOR_NAMES:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {list(ESTIMATOR_NAMES)}")
    start = time.perf_counter()
    result = optimise(estimator, proto.grids[estimator], proto.config,
                      seed=seed + ESTIMATOR_NAMES.index(estimator), device=device,
                      progress=progress, stop=stop)
    wall = time.perf_counter() - start
    evaluation = result.gaps[:, :, proto.n_select:, :]
    n_eval = evaluation.shape[2]
    curve_se = (evaluation.std(dim=2) / math.sqrt(n_eval) if n_eval > 1
                else torch.full_like(evaluation[:, :, 0], math.nan))
    data = {
        "estimator": estimator,
        "knob_values": list(result.knob_values),
        "powers": list(result.powers),
        "steps": result.steps.tolist(),
        "final_gap": result.gaps[..., -1],
        "initial_gap": result.gaps[0, :, 0, 0],
        "final_prob": result.final_probs,
        "curve_mean": evaluation.mean(dim=2),
        "curve_se": curve_se,
        "wall_seconds": wall,
    }
    return {
        "experiment": EXPERIMENT,
        "name": f"{proto.scale}_{estimator}",
        "config": proto.as_config(estimator, seed),
        "seed": seed,
        "metadata": runtime.run_metadata(),
        "data": compact(data),
    }


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
    """Run (or resume) the experiment; return the records of the estimators run now or found.

    With ``save=True`` every finished estimator is written at once to ``out`` (default
    ``book/results/polyprog``), and an estimator whose file exists is loaded instead of rerun.
    """
    estimators = list(ESTIMATOR_NAMES) if estimators is None else estimators
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    deadline = Deadline(max_minutes)
    records = []
    for estimator in estimators:
        try:
            record = load_or_run(
                EXPERIMENT, folder, f"{proto.scale}_{estimator}",
                proto.as_config(estimator, seed),
                lambda e=estimator: run_estimator(e, proto, seed=seed, device=device,
                                                  progress=progress, stop=deadline.expired),
                seed=seed, save=save, deadline=deadline, what=estimator)
        except TrainingInterrupted:
            print(f"polyprog: --max-minutes reached during {estimator}, which was discarded "
                  "(rerun to resume)", file=sys.stderr)
            break
        if record is not None:
            records.append(record)
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables, curves and verdicts from result records (stored or freshly computed).

    For each exponent ``p`` and estimator: the knob value with the lowest mean final gap on the
    selection runs, and the mean +- SE of the final gap on the evaluation runs at that value.

    Returns a dict with ``rows`` (one per ``(p, estimator)``), ``curves`` (``(p, estimator) ->
    (steps, mean, se)``), ``verdicts`` (``(p, redge-family member) -> dict``), ``powers``,
    ``estimators`` and ``scale``.
    """
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    rows, curves = [], {}
    best: dict[tuple[float, str], tuple[float, float]] = {}
    powers = records[0]["data"]["powers"]
    for record in records:
        data, n_select = record["data"], record["config"]["n_select"]
        estimator = data["estimator"]
        for i_p, p in enumerate(data["powers"]):
            selection = [mean_se(data["final_gap"][g][i_p][:n_select])[0]
                         for g in range(len(data["knob_values"]))]
            g = min(range(len(selection)), key=selection.__getitem__)
            mean, se = mean_se(data["final_gap"][g][i_p][n_select:])
            prob, _ = mean_se(data["final_prob"][g][i_p][n_select:])
            rows.append({
                "p": p, "estimator": estimator, "label": label(estimator),
                "knobs": data["knob_values"][g], "knob_text": knob_text(data["knob_values"][g]),
                "gap_mean": mean, "gap_se": se, "prob_mean": prob,
                "initial_gap": data["initial_gap"][i_p],
                "n_eval": len(data["final_gap"][g][i_p]) - n_select,
                "selection": selection,
            })
            curves[(p, estimator)] = (data["steps"], data["curve_mean"][g][i_p],
                                      data["curve_se"][g][i_p])
            best[(p, estimator)] = (mean, se)
    verdicts = {}
    for p in powers:
        others = [(best[(p, e)][0], e) for e in {r["estimator"] for r in rows}
                  if e not in REDGE_FAMILY and (p, e) in best]
        if not others:
            continue
        _, rival = min(others)
        for member in REDGE_FAMILY:
            if (p, member) not in best:
                continue
            (m, s), (rm, rs) = best[(p, member)], best[(p, rival)]
            initial = next(r["initial_gap"] for r in rows if r["p"] == p)
            verdicts[(p, member)] = {
                "verdict": verdict(m, s, rm, rs, tolerance=1e-6 * initial),
                "rival": rival, "mean": m, "se": s, "rival_mean": rm, "rival_se": rs,
            }
    return {"rows": rows, "curves": curves, "verdicts": verdicts, "powers": powers,
            "estimators": [r["data"]["estimator"] for r in records],
            "scale": records[0]["config"]["scale"]}


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


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    args = cli.args
    try:
        records = run(cli.proto, cli.estimators, out=cli.folder, seed=args.seed,
                      device=cli.device, max_minutes=args.max_minutes,
                      progress=not args.no_progress)
    except ValueError as error:
        cli.fail(error)
    for row in summarise(records)["rows"] if records else []:
        print(f"p={row['p']:<4g} {row['label']:<18} {row['knob_text']:<16} "
              f"gap {row['gap_mean']:.3e} ± {row['gap_se']:.1e}")
    return cli.finish(len(records), len(cli.estimators), "estimators")


if __name__ == "__main__":
    raise SystemExit(main())
