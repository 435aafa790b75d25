"""E5, image reward guidance: steer a masked VQ-token prior of MNIST digits towards another class.

Usage::

    python -m redge_mini.book.experiments.image_guidance --scale full          # the protocol below
    python -m redge_mini.book.experiments.image_guidance --scale small
    python -m redge_mini.book.experiments.image_guidance --smoke --out /tmp/ig  # seconds

The stand-in for Halton-MaskGIT + CLIP (:mod:`redge_mini.book.tasks.image_guidance`): the stored
class-conditional masked prior over ``K = 256`` VQ codes on a 7 x 7 grid generates digits of a
source class ``c``; guidance maximises ``reward_scale * log p_reward(c + 1 mod 10 | decode(X)) -
lam * KL`` with ``N`` Adam steps on the variational logits at each of the 19 moves of the authors'
ReMDM sampler (classifier-free guidance weight 3, remasking sigma = 1, codes drawn from
``Cat(phi)``).

Protocol (:func:`protocol`). Per estimator, every setting of its knob grid is *tuned* at
``tune_budget`` (10 Adam steps per move, a proxy for the main budget 20 that halves the cost of
tuning) on tuning batches (their own seeds); the setting with the highest mean guidance
objective ``J = reward_scale * reward - KL`` is chosen and then *evaluated* at every budget ``N``
on ``n_seeds`` independent replicate batches; the unguided sampler (``N = 0``) runs on the same
replicates. A replicate is a block of ``10 * n_per_class`` images (one source class per image);
the blocks of one run are drawn in one batch (images do not interact: Adam acts elementwise and
the loss is a sum over images) from a generator seeded by the replicate index, so they are
independent, and every number is reported with a 95 % Student-t interval over replicates.

Files (``<scale>`` is ``small``, ``full`` or ``<scale>-smoke``): ``<scale>_unguided.json``,
``<scale>_tune_<estimator>.json``, ``<scale>_<estimator>.json`` and ``summary.csv``. A rerun
loads the files that exist (and refuses one written with another configuration), so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import ESTIMATORS, check_knobs, make_estimator
from .. import runtime
from ..tasks.image_guidance import (
    N_CODES,
    SEQ_LEN,
    ImageModels,
    cfg_log_probs,
    guide_images,
    inner_step,
    load_image_models,
    steering_targets,
)
from ..timing import median_ms, time_interleaved
from . import REDGE_FAMILY, Stages, parse_cli
from .summary import (
    Row,
    knob_string,
    paired_verdict,
    summary_row,
    t_interval,
    timing_rows,
    write_summary,
)
from .tuning import GROW_ROUNDS, extend_grid, grow_search

EXPERIMENT = "image_guidance"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
#: Order of the runs: if a time limit stops a run early, ReDGE and the plain baseline are done.
RUN_ORDER: tuple[str, ...] = ("redge", "st", "gumbel", "reinmax", "reindge", "redge_cov")
#: Per-image metrics kept per replicate (``objective`` is ``reward_scale * reward - kl``).
METRICS: tuple[str, ...] = ("objective", "reward", "kl", "reward_hit", "judge_hit",
                            "judge_source")

_T1 = (0.1, 0.3, 0.5, 0.7, 0.9)
_FAMILY_GRID = [{"n_steps": n, "t_1": t} for n in (3, 5, 9) for t in _T1]
#: Knob grids of the full protocol: the ReDGE family over t_1 x n_steps, the temperatures over
#: two decades (ReinMax's tau must be >= 1; its grid starts at that bound).
FULL_GRIDS: dict[str, list[dict[str, float | int]]] = {
    "st": [{}],
    "gumbel": [{"tau": t} for t in (0.1, 0.3, 1.0, 3.0, 10.0)],
    "reinmax": [{"tau": t} for t in (1.0, 1.5, 2.0, 3.0, 5.0)],
    "redge": _FAMILY_GRID,
    "redge_cov": _FAMILY_GRID,
    "reindge": _FAMILY_GRID,
}
#: The authors' setting, for the protocol table (ours comes from :class:`Protocol`).
AUTHORS: dict[str, Any] = {
    "model": "Halton-MaskGIT (ImageNet 384, about 0.5B parameters)",
    "tokens": "24 x 24 grid, LlamaGen VQ-16 codebook of 16,384 codes",
    "n_steps": 20, "moves": 19, "n_inner": 20, "lr": 0.5, "lam": 1.0,
    "reward": "100 * CLIP ViT-L/14 score", "reward_scale": 100.0, "sigma": 1.0,
    "cfg_weight": 3.0, "codes": "drawn from Cat(phi)",
    "knobs": "sampler configs of their demos (ReDGE n = 3, t₁ = 0.5; Gumbel τ = 0.5)",
}


@dataclass(frozen=True)
class Protocol:
    """One scale of the experiment (see the module docstring)."""

    scale: str
    n_seeds: int = 5
    n_per_class: int = 1
    budgets: tuple[int, ...] = (5, 10, 20)
    tune_budget: int = 10
    tune_seeds: int = 2
    tune_n_per_class: int = 1
    n_steps: int = 20
    lr: float = 0.5
    lam: float = 1.0
    reward_scale: float = 10.0
    sigma: float = 1.0
    cfg_weight: float = 3.0
    shift: int = 1
    grids: dict[str, list[dict[str, float | int]]] = field(default_factory=lambda: FULL_GRIDS)
    grow_rounds: int = GROW_ROUNDS

    def __post_init__(self) -> None:
        if isinstance(self.grow_rounds, bool) or not isinstance(self.grow_rounds, int) \
                or self.grow_rounds < 0:
            raise ValueError(f"grow_rounds must be an int >= 0, got {self.grow_rounds!r}")
        if not self.budgets or any(int(b) < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive integers, got {self.budgets}")
        if self.n_seeds < 2 or self.tune_seeds < 1:
            raise ValueError("n_seeds must be >= 2 (intervals) and tune_seeds >= 1")
        for name, grid in self.grids.items():
            if not grid:
                raise ValueError(f"the knob grid of {name!r} is empty")
            for knobs in grid:
                check_knobs(name, **knobs)  # unknown estimator or invalid knob -> ValueError

    def sampler_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`guide_images` shared by every run."""
        return {"n_steps": self.n_steps, "lr": self.lr, "lam": self.lam,
                "reward_scale": self.reward_scale, "sigma": self.sigma,
                "cfg_weight": self.cfg_weight, "shift": self.shift}

    def as_config(self, kind: str, estimator: str | None = None) -> dict[str, Any]:
        """The JSON-able configuration of one result file (``kind``: unguided, tune, eval)."""
        config: dict[str, Any] = {"scale": self.scale, "kind": kind, **self.sampler_kwargs()}
        if kind == "tune":
            config.update(estimator=estimator, budget=self.tune_budget,
                          n_seeds=self.tune_seeds, n_per_class=self.tune_n_per_class,
                          grid=self.grids[estimator], grow_rounds=self.grow_rounds)
        else:
            config.update(n_seeds=self.n_seeds, n_per_class=self.n_per_class)
            if kind == "eval":
                config.update(estimator=estimator, budgets=list(self.budgets))
        return json.loads(json.dumps(config))

    def n_inner_steps(self) -> int:
        """Sequential Adam steps of the whole protocol (its cost unit, batch aside)."""
        moves = self.n_steps - 1
        tune = sum(len(self.grids[e]) for e in self.grids if len(self.grids[e]) > 1)
        return moves * (tune * self.tune_budget + len(self.grids) * sum(self.budgets))


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds.

    ``full`` is the authors' sampler (19 moves x up to 20 Adam steps, lr 0.5, lambda 1,
    sigma 1, classifier-free guidance 3) with the knob grids of :data:`FULL_GRIDS`. ``small``
    keeps the sampler and the replicates but not the tuning: each estimator at its default
    knobs, budgets 5 and 20.
    """
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol(scale="full")
    else:
        proto = Protocol(scale="small", budgets=(5, 20), grow_rounds=0,
                         grids={name: [{}] for name in ESTIMATOR_NAMES})
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", n_seeds=2, budgets=(1,), tune_budget=1,
                        tune_seeds=1, n_steps=3, grow_rounds=min(proto.grow_rounds, 1),
                        grids={k: v[:2] for k, v in proto.grids.items()})
    return proto


# --------------------------------------------------------------------------------- the runs
def _guide(models: ImageModels, proto: Protocol, estimator: str, *, n_inner: int,
           knobs: dict[str, Any], n_seeds: int, n_per_class: int,
           seed: int) -> dict[str, Any]:
    """One batch of ``n_seeds`` replicate blocks; per replicate means of :data:`METRICS`."""
    run = guide_images(models, estimator, n_per_class=n_seeds * n_per_class, n_inner=n_inner,
                       seed=seed, knobs=knobs, **proto.sampler_kwargs())
    per_image = dict(run.per_image)
    per_image["objective"] = proto.reward_scale * per_image["reward"] - per_image["kl"]
    block = 10 * n_per_class
    out: dict[str, Any] = {key: per_image[key].reshape(n_seeds, block).mean(1).tolist()
                           for key in METRICS}
    out["seconds"] = run.seconds
    out["ms_per_inner_step"] = (1e3 * run.seconds / max(1, n_inner * (proto.n_steps - 1))
                                if n_inner else None)
    out["tokens"] = run.tokens[:20].tolist()  # the first two replicate blocks, for figures
    out["source"] = run.source[:20].tolist()
    return out


def run_unguided(models: ImageModels, proto: Protocol, *, seed: int) -> dict[str, Any]:
    """The sampler without guidance (``N = 0``) on the evaluation replicates."""
    return _guide(models, proto, "st", n_inner=0, knobs={}, n_seeds=proto.n_seeds,
                  n_per_class=proto.n_per_class, seed=seed)


def run_tuning(models: ImageModels, proto: Protocol, estimator: str, *,
               seed: int) -> dict[str, Any]:
    """Every knob setting of ``estimator`` at the tuning budget; the best mean objective wins.

    A choice on an edge of the grid makes it grow past that edge (:func:`.tuning.grow_search`,
    ``proto.grow_rounds`` times at most); ``extended`` lists the settings added.
    """
    def evaluate(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for knobs in points:
            knobs = check_knobs(estimator, **knobs)
            summary = _guide(models, proto, estimator, n_inner=proto.tune_budget, knobs=knobs,
                             n_seeds=proto.tune_seeds, n_per_class=proto.tune_n_per_class,
                             seed=seed + 1000)
            summary.pop("tokens"), summary.pop("source")
            results.append({"knobs": knobs, **summary})
        return results

    def best(results: list[dict[str, Any]]) -> int:
        return max(range(len(results)),
                   key=lambda i: sum(results[i]["objective"]) / len(results[i]["objective"]))

    results, chosen, added = grow_search(estimator, proto.grids[estimator], evaluate, best,
                                         max_rounds=proto.grow_rounds,
                                         axis=lambda r: r["knobs"])
    return {"estimator": estimator, "results": results, "best": chosen,
            "chosen": results[chosen]["knobs"], "extended": added}


def time_inner_steps(models: ImageModels, proto: Protocol, knobs: dict[str, dict[str, Any]], *,
                     rounds: int = 5, block_s: float = 0.2,
                     timer: Callable[[], float] | None = None) -> dict[str, float]:
    """Milliseconds per inner Adam step (:func:`~redge_mini.book.tasks.image_guidance.inner_step`:
    sample, decode, reward, KL, backward, Adam) of each estimator at its ``knobs``, on the
    evaluation batch at the first move of the sampler (every cell masked), timed interleaved
    in one process after warm-up (:func:`~redge_mini.book.timing.time_interleaved`; median of
    ``rounds`` blocks; ``timer`` as there, e.g. ``time.process_time`` on a shared CPU)."""
    prior = models.prior
    dev = next(prior.parameters()).device
    batch = 10 * proto.n_seeds * proto.n_per_class
    generator = torch.Generator(device=dev).manual_seed(0)
    cond = torch.arange(batch, device=dev) % 10
    target = steering_targets(cond, proto.shift)
    x = torch.full((batch, SEQ_LEN), prior.mask_id, dtype=torch.long, device=dev)
    with torch.no_grad():
        ell = cfg_log_probs(prior, x, cond, proto.cfg_weight).float()
    keep = (x == prior.mask_id)[..., None]
    revealed = torch.nn.functional.one_hot(x.clamp(max=N_CODES - 1), N_CODES).float()
    calls = {}
    for name, k in knobs.items():
        estimator = make_estimator(name, **k)
        phi = ell.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([phi], lr=proto.lr)

        def call(estimator: Any = estimator, phi: torch.Tensor = phi,
                 optimiser: torch.optim.Optimizer = optimiser) -> None:
            inner_step(models, estimator, phi, ell, optimiser, keep=keep, revealed=revealed,
                       target=target, lam=proto.lam, reward_scale=proto.reward_scale,
                       generator=generator)

        call()  # warm-up (Adam's state, allocator)
        calls[name] = call
    return median_ms(time_interleaved(calls, dev, rounds=rounds, block_s=block_s, timer=timer))


def run_evaluation(models: ImageModels, proto: Protocol, estimator: str,
                   knobs: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """The chosen ``knobs`` of ``estimator`` at every budget, on the evaluation replicates."""
    budgets = {str(n): _guide(models, proto, estimator, n_inner=n, knobs=knobs,
                              n_seeds=proto.n_seeds, n_per_class=proto.n_per_class, seed=seed)
               for n in proto.budgets}
    return {"estimator": estimator, "chosen": knobs, "budgets": budgets}


def run(proto: Protocol, estimators: list[str] | None = None, *,
        models: ImageModels | None = None, out: Path | None = None, seed: int = 0,
        device: torch.device | str | None = None, max_minutes: float | None = None,
        save: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the experiment; return the records run now or found on disk, and write
    ``summary.csv`` (when ``save``)."""
    estimators = list(proto.grids) if estimators is None else list(estimators)
    for name in estimators:
        if name not in proto.grids:
            raise ValueError(f"unknown estimator {name!r}; choose from {list(proto.grids)}")
    rank = {name: i for i, name in enumerate(RUN_ORDER)}
    estimators.sort(key=lambda name: rank.get(name, len(rank)))
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    models = load_image_models(device=device) if models is None else models
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=device)
    piece = stages.run

    records = []
    unguided = piece(f"{proto.scale}_unguided", proto.as_config("unguided"),
                     lambda: run_unguided(models, proto, seed=seed))
    if unguided is not None:
        records.append(unguided)
    for estimator in estimators:
        chosen = check_knobs(estimator, **proto.grids[estimator][0])
        if len(proto.grids[estimator]) > 1:
            tuned = piece(f"{proto.scale}_tune_{estimator}", proto.as_config("tune", estimator),
                          lambda e=estimator: run_tuning(models, proto, e, seed=seed))
            if tuned is None:
                continue
            records.append(tuned)
            chosen = tuned["data"]["chosen"]
        evaluated = piece(f"{proto.scale}_{estimator}", proto.as_config("eval", estimator),
                          lambda e=estimator, c=chosen: run_evaluation(models, proto, e, c,
                                                                       seed=seed))
        if evaluated is not None:
            records.append(evaluated)
    evals = {r["data"]["estimator"]: r["data"]["chosen"] for r in records
             if r["config"]["kind"] == "eval"}
    if set(estimators) == set(proto.grids) and set(evals) == set(estimators):
        # only a run of every estimator of the protocol times them (a later run of some
        # estimators must not meet a timing file made with other knobs)
        chosen = {name: evals[name] for name in estimators}
        block = 0.2 if proto.scale == "full" else 0.01
        timing = piece(f"{proto.scale}_timing", {**proto.as_config("timing"), "knobs": chosen},
                       lambda: {"timing_ms": time_inner_steps(models, proto, chosen,
                                                              block_s=block),
                                "batch": 10 * proto.n_seeds * proto.n_per_class})
        if timing is not None:
            records.append(timing)
    if save and records:
        write_summary_csv(folder, proto.scale)
    return records


def stored_records(folder: Path) -> list[dict[str, Any]]:
    """Every result record of this experiment stored in ``folder`` (all scales), by file name."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("experiment") == EXPERIMENT and "config" in record:
            records.append(record)
    return records


# ---------------------------------------------------------------------------- the summaries
def summary_rows(records: list[dict[str, Any]]) -> list[Row]:
    """One :class:`~redge_mini.book.experiments.summary.Row` per reported number.

    ``setting`` is ``"<scale>"`` for the evaluation (estimators at their chosen knobs, every
    budget; ``unguided`` at budget 0) and ``"tuning_<scale>"`` for every tried knob setting.
    """
    rows = []
    for record in records:
        config, data = record["config"], record["data"]
        scale = config["scale"]
        if config["kind"] == "unguided":
            rows += [summary_row(EXPERIMENT, scale, "unguided", {}, m, 0, data[m])
                     for m in METRICS]
        elif config["kind"] == "timing":
            rows += timing_rows(EXPERIMENT, scale, data["timing_ms"], config["knobs"])
        elif config["kind"] == "tune":
            for result in data["results"]:
                rows += [summary_row(EXPERIMENT, f"tuning_{scale}", data["estimator"],
                                     result["knobs"], m, config["budget"], result[m])
                         for m in ("objective", "reward", "kl")]
        else:
            for budget, values in data["budgets"].items():
                rows += [summary_row(EXPERIMENT, scale, data["estimator"], data["chosen"], m,
                                     int(budget), values[m]) for m in METRICS]
    return rows


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables and generated verdicts from the records of one scale.

    Returns ``scale``; ``budgets``; ``estimators`` (evaluated, registry order); ``table`` (one
    dict per estimator and budget, with ``unguided`` at budget 0: mean and 95 % t-interval of
    every metric, ``knobs``, ``ms_per_inner_step``); ``verdicts`` (``(budget, member)`` of the
    ReDGE family -> ``{"metric": verdict}`` against ``rival``, the best other estimator by mean
    objective at that budget, from a paired t-test over replicates); ``best`` (budget -> the
    estimator with the highest mean objective); ``tuning`` (estimator -> tried settings with
    their mean objective, the chosen one and whether it lies on the grid's edge); ``config``.
    """
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    order = {name: i for i, name in enumerate(ESTIMATOR_NAMES)}
    table, raw, tuning, timing = [], {}, {}, {}
    for record in records:
        config, data = record["config"], record["data"]
        if config["kind"] == "timing":
            timing = data["timing_ms"]
        elif config["kind"] == "unguided":
            raw[("unguided", 0)] = data
            table.append(_table_row("unguided", 0, {}, data))
        elif config["kind"] == "tune":
            tuning[data["estimator"]] = _tuning_summary(data)
        else:
            for budget, values in data["budgets"].items():
                raw[(data["estimator"], int(budget))] = values
                table.append(_table_row(data["estimator"], int(budget), data["chosen"], values))
    for row in table:  # the interleaved timing with warm-up, when stored, replaces wall time
        if row["estimator"] in timing:
            row["ms_per_inner_step"] = timing[row["estimator"]]
        row["ms_source"] = "interleaved" if timing else "wall"
    table.sort(key=lambda r: (r["budget"], order.get(r["estimator"], -1)))
    budgets = sorted({r["budget"] for r in table if r["budget"] > 0})
    estimators = sorted({r["estimator"] for r in table if r["estimator"] != "unguided"},
                        key=order.__getitem__)
    best, verdicts = {}, {}
    for budget in budgets:
        at = sorted((r for r in table if r["budget"] == budget), key=lambda r: -r["objective"])
        best[budget] = at[0]["estimator"]
        rivals = [r["estimator"] for r in at if r["estimator"] not in REDGE_FAMILY]
        if not rivals:
            continue
        rival = rivals[0]
        for name in estimators:
            if name in REDGE_FAMILY and (name, budget) in raw:
                mine, theirs = raw[(name, budget)], raw[(rival, budget)]
                verdicts[(budget, name)] = {
                    "rival": rival,
                    **{m: paired_verdict(mine[m], theirs[m], lower_is_better=(m == "kl"))
                       for m in ("objective", "reward", "kl")}}
    config = {k: v for k, v in records[0]["config"].items()
              if k not in ("kind", "estimator", "grid", "budget", "budgets", "knobs")}
    return {"scale": scales.pop(), "budgets": budgets, "estimators": estimators,
            "table": table, "verdicts": verdicts, "best": best, "tuning": tuning,
            "timing_ms": timing, "config": config}


def _table_row(estimator: str, budget: int, knobs: dict[str, Any],
               values: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"estimator": estimator, "budget": budget, "knobs": knobs,
                           "knob_text": knob_string(knobs).replace(";", ", ") or "—",
                           "ms_per_inner_step": values.get("ms_per_inner_step"),
                           "n_seeds": len(values["objective"])}
    for metric in METRICS:
        row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = t_interval(values[metric])
    return row


def _tuning_summary(data: dict[str, Any]) -> dict[str, Any]:
    tried = [{"knobs": r["knobs"], "objective": sum(r["objective"]) / len(r["objective"]),
              "reward": sum(r["reward"]) / len(r["reward"]),
              "kl": sum(r["kl"]) / len(r["kl"])} for r in data["results"]]
    points = [r["knobs"] for r in data["results"]]
    chosen = data["chosen"]
    # knobs whose chosen value lies on an edge that the grid could still grow past
    grow = extend_grid(data["estimator"], points, points.index(chosen))
    at_edge = sorted({k for point in grow for k in point if point[k] != chosen[k]})
    return {"tried": tried, "chosen": chosen, "at_edge": at_edge,
            "extended": data.get("extended", [])}


def write_summary_csv(folder: str | Path | None = None, scale: str = "full") -> Path | None:
    """Regenerate ``<folder>/summary.csv`` from the stored records of ``scale`` (as the other
    experiments: one scale per summary, so that the synthesis never mixes the small scale's
    default knobs with the tuned full scale); None when nothing of that scale is stored."""
    folder = Path(folder) if folder is not None else runtime.results_dir(EXPERIMENT)
    records = stored_records(folder) if folder.is_dir() else []
    records = [r for r in records if r["config"].get("scale") == scale]
    if not records:
        return None
    return write_summary(EXPERIMENT, summary_rows(records), root=folder)


def measure_throughput(proto: Protocol, *, device: torch.device | str | None = None,
                       models: ImageModels | None = None) -> dict[str, float]:
    """Projected seconds of the full run of ``proto`` on ``device``, from short runs.

    Every stage (one tuning setting, each evaluation budget, the unguided sampler) is run at
    its real batch shape for two moves of the sampler instead of ``n_steps - 1`` (every move
    has the same shapes), nothing saved, and scaled up (tuning: by the size of the grid).
    Returns estimator -> seconds, ``"unguided"`` and ``"total"``.
    """
    dev = torch.device(device) if device is not None else runtime.device()
    models = load_image_models(device=dev) if models is None else models
    short = replace(proto, n_steps=3)
    scale_up = (proto.n_steps - 1) / (short.n_steps - 1)

    def timed(estimator: str, n_inner: int, knobs: dict[str, Any], n_seeds: int,
              n_per_class: int) -> float:
        return _guide(models, short, estimator, n_inner=n_inner, knobs=knobs,
                      n_seeds=n_seeds, n_per_class=n_per_class, seed=0)["seconds"] * scale_up

    timed("st", 1, {}, 1, 1)  # warm-up
    out: dict[str, float] = {"unguided": timed("st", 0, {}, proto.n_seeds, proto.n_per_class)}
    for name, grid in proto.grids.items():
        knobs = check_knobs(name, **grid[len(grid) // 2])
        seconds = sum(timed(name, n, knobs, proto.n_seeds, proto.n_per_class)
                      for n in proto.budgets)
        if len(grid) > 1:
            seconds += len(grid) * timed(name, proto.tune_budget, knobs, proto.tune_seeds,
                                         proto.tune_n_per_class)
        out[name] = seconds
    out["total"] = sum(out.values())
    return out


def projected_seconds(proto: Protocol, ms_per_inner_step: dict[str, float],
                      overhead_ms_per_move: float = 0.0) -> float:
    """Projected wall time of ``proto`` from measured milliseconds per inner step per
    estimator (at this protocol's batch sizes) and per sampler move (network calls)."""
    moves = proto.n_steps - 1
    total = 0.0
    for name, grid in proto.grids.items():
        per = ms_per_inner_step[name]
        if len(grid) > 1:
            total += len(grid) * moves * (proto.tune_budget * per * proto.tune_seeds
                                          * proto.tune_n_per_class / (proto.n_seeds
                                                                      * proto.n_per_class)
                                          + overhead_ms_per_move)
        total += moves * (sum(proto.budgets) * per + len(proto.budgets) * overhead_ms_per_move)
    total += moves * overhead_ms_per_move
    return total / 1e3


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    if cli.device.type == "cpu":
        # the tensors are small: a second thread costs more in synchronisation than it saves
        torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                      device=cli.device, max_minutes=cli.args.max_minutes)
    except ValueError as error:
        cli.fail(error)
    n_eval = sum(r["config"]["kind"] == "eval" for r in records)
    if n_eval:
        summary = summarise(records)
        for row in summary["table"]:
            print(f"N={row['budget']:<3d} {row['estimator']:<10} J {row['objective']:8.2f} "
                  f"[{row['objective_low']:.2f}, {row['objective_high']:.2f}]  reward "
                  f"{row['reward']:7.3f}  KL {row['kl']:7.2f}  judge hit "
                  f"{row['judge_hit']:.2f}  ({row['knob_text']})")
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return cli.finish(n_eval, len(cli.estimators), "estimators")


__all__ = ["AUTHORS", "EXPERIMENT", "FULL_GRIDS", "METRICS", "RUN_ORDER", "Protocol", "main",
           "measure_throughput", "projected_seconds", "protocol", "run", "stored_records",
           "summarise", "summary_rows", "write_summary_csv"]

if __name__ == "__main__":
    raise SystemExit(main())
