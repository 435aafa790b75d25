"""E5, image reward guidance: steer a masked digit-token prior towards another class.

Usage::

    python -m redge_mini.book.experiments.image_guidance --scale full          # the protocol below
    python -m redge_mini.book.experiments.image_guidance --scale small --out /tmp/ig
    python -m redge_mini.book.experiments.image_guidance --smoke --out /tmp/ig  # seconds, end to
    end

The stand-in for MaskGIT + CLIP (see :mod:`redge_mini.book.tasks.image_guidance`): the stored
class-conditional masked token model generates 8 x 8 digits of a source class ``c``; guidance
maximises ``reward_scale * log p_reward(c + 1 mod 10 | x) - lam * KL`` with ``N`` Adam steps on the
variational logits at each unmasking step, the gradient passing through one estimator.

Protocol (full scale): 12 unmasking steps; the Adam learning rate is ``step_size / N`` (see
:meth:`Protocol.settings`). Per estimator, its knob grid times two step sizes is *tuned* at the
budget ``N = 8`` on a tuning batch (300 images, seed ``seed + 1``): the setting with
the highest mean guidance objective ``reward_scale * reward - KL`` wins. The chosen setting is then
*evaluated* at every budget ``N in {4, 8, 16, 32}`` on a fresh batch (1,000 images, 100 per class,
seed ``seed``), and the unguided baseline (``N = 0``, greedy decoding of the prior on the same
schedule) is run on the same batch. Images are independent, so every mean comes with its standard
error over images. The whole protocol is about 7,400 Adam steps of a batch of variational logits;
on a GPU each costs a few milliseconds of kernel launches whatever the batch, hence the large
batches. The authors used 19 unmasking steps x 20 Adam steps on ``100 * CLIP - KL``.

Files (``<scale>`` is ``small``, ``full`` or ``<scale>-smoke``): ``<scale>_unguided.json``,
``<scale>_tune_<estimator>.json``, ``<scale>_<estimator>.json``. A rerun skips files that exist (and
refuses one written with another configuration), so an interrupted run resumes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import ESTIMATORS, check_knobs, label
from .. import runtime
from ..tasks.image_guidance import GuidanceRun, ImageModels, guide_images, load_image_models
from . import REDGE_FAMILY, Deadline, compact, load_or_run, mean_se, parse_cli, verdict
from . import (
    knob_text as shared_knob_text,
)

EXPERIMENT = "image_guidance"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
#: The order in which :func:`run` processes estimators: if a time limit stops a run early, the
#: paper's method and the plain baseline are already done.
RUN_ORDER: tuple[str, ...] = ("redge", "st", "gumbel", "reinmax", "reindge", "redge_cov")
#: Per-image metrics of :class:`~redge_mini.book.tasks.image_guidance.GuidanceRun` stored as mean,
#: SE.
METRICS = ("objective", "reward", "kl", "reward_hit", "judge_hit", "judge_source", "nll_prior")

#: Knob grids of the full protocol (each crossed with the learning rates).
FULL_GRIDS: dict[str, list[dict[str, float | int]]] = {
    "st": [{}],
    "gumbel": [{"tau": t} for t in (0.3, 1.0, 3.0)],
    "reinmax": [{"tau": t} for t in (1.0, 2.0, 4.0)],
    "redge": [{"n_steps": 5, "t_1": t} for t in (0.3, 0.5, 0.8)],
    "redge_cov": [{"n_steps": 5, "t_1": t} for t in (0.3, 0.5, 0.8)],
    "reindge": [{"n_steps": 5, "t_1": t} for t in (0.3, 0.5, 0.8)],
}
#: One setting per estimator (each estimator's default knobs) when there is no time to tune.
DEFAULT_GRIDS: dict[str, list[dict[str, float | int]]] = {name: [{}] for name in ESTIMATOR_NAMES}


@dataclass(frozen=True)
class Protocol:
    """One scale of the experiment (see the module docstring)."""

    scale: str
    n_per_class: int
    budgets: tuple[int, ...]
    n_unmask_steps: int = 12
    tune_budget: int = 8
    tune_n_per_class: int = 30
    step_sizes: tuple[float, ...] = (2.0, 4.0)
    grids: dict[str, list[dict[str, float | int]]] = field(default_factory=lambda: FULL_GRIDS)
    lam: float = 1.0
    reward_scale: float = 10.0
    shift: int = 1
    n_show: int = 2

    def __post_init__(self) -> None:
        if not self.budgets or any(int(b) < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive integers, got {self.budgets}")
        if not self.step_sizes or any(not (e > 0 and math.isfinite(e)) for e in self.step_sizes):
            raise ValueError(f"step_sizes must be positive finite numbers, got {self.step_sizes}")
        for name, grid in self.grids.items():
            if not grid:
                raise ValueError(f"the knob grid of {name!r} is empty")
            for knobs in grid:
                check_knobs(name, **knobs)  # unknown estimator or invalid knob -> ValueError

    def settings(self, estimator: str) -> list[dict[str, Any]]:
        """Every ``{"knobs", "step_size"}`` setting of ``estimator``'s tuning grid.

        ``step_size`` is the Adam learning rate times the budget: a run with ``N`` Adam steps
        per unmasking step uses ``lr = step_size / N``. Adam moves each logit by about ``lr`` per
        step, so the total movement, which sets the balance between reward and KL, stays
        comparable across budgets, and one tuned value serves every budget.
        """
        return [{"knobs": check_knobs(estimator, **knobs), "step_size": step_size}
                for knobs in self.grids[estimator] for step_size in self.step_sizes]

    def common(self) -> dict[str, Any]:
        """The part of the configuration shared by every file."""
        return {"scale": self.scale, "n_unmask_steps": self.n_unmask_steps, "lam": self.lam,
                "reward_scale": self.reward_scale, "shift": self.shift}

    def as_config(self, kind: str, estimator: str | None = None) -> dict[str, Any]:
        """The JSON-able configuration of one result file (``kind``: unguided, tune, eval)."""
        config = {**self.common(), "kind": kind}
        if kind == "unguided":
            config["n_per_class"] = self.n_per_class
        elif kind == "tune":
            config.update(estimator=estimator, budget=self.tune_budget,
                          n_per_class=self.tune_n_per_class, settings=self.settings(estimator))
        else:
            config.update(estimator=estimator, budgets=list(self.budgets),
                          n_per_class=self.n_per_class, settings=self.settings(estimator))
        return json.loads(json.dumps(config))


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol(scale="full", n_per_class=100, budgets=(4, 8, 16, 32))
    else:
        proto = Protocol(scale="small", n_per_class=5, budgets=(4, 16), n_unmask_steps=8,
                         step_sizes=(3.0,), grids=DEFAULT_GRIDS)
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", n_per_class=1, budgets=(2,),
                        n_unmask_steps=3, tune_budget=2, tune_n_per_class=1,
                        grids={k: v[:2] for k, v in proto.grids.items()})
    return proto


def run_summary(run: GuidanceRun, reward_scale: float, n_show: int) -> dict[str, Any]:
    """Means and standard errors of a run's per-image metrics, its time and a few samples.

    ``objective`` is the per-image guidance objective ``reward_scale * reward - kl``. The first
    ``n_show`` images of every source class are kept for sample grids, each as a string of 64
    digits (``tokens``; read back with :func:`tokens_from_text`).
    """
    per_image = dict(run.per_image)
    per_image["objective"] = reward_scale * per_image["reward"] - per_image["kl"]
    out: dict[str, Any] = {"n_images": len(run.source), "seconds": run.seconds}
    for key in METRICS:
        out[key], out[f"{key}_se"] = mean_se(per_image[key].tolist())
    show = torch.cat([torch.nonzero(run.source == c).flatten()[:n_show]
                      for c in run.source.unique()])
    out["tokens"] = ["".join(str(v) for v in row) for row in run.tokens[show].tolist()]
    out["source"] = run.source[show].tolist()
    out["target"] = run.target[show].tolist()
    return out


def _guide(models: ImageModels, proto: Protocol, estimator: str, *, n_inner: int,
           n_per_class: int, setting: dict[str, Any], seed: int) -> dict[str, Any]:
    lr = setting["step_size"] / max(n_inner, 1)
    run = guide_images(models, estimator, n_per_class=n_per_class, n_inner=n_inner,
                       lr=lr, knobs=setting["knobs"], lam=proto.lam,
                       reward_scale=proto.reward_scale, n_unmask_steps=proto.n_unmask_steps,
                       shift=proto.shift, seed=seed)
    return run_summary(run, proto.reward_scale, proto.n_show)


def tokens_from_text(rows: list[str]) -> torch.Tensor:
    """Token images stored by :func:`run_summary` (strings of 64 digits) as a ``(N, 64)`` tensor."""
    return torch.tensor([[int(c) for c in row] for row in rows], dtype=torch.long)


def run_unguided(models: ImageModels, proto: Protocol, *, seed: int) -> dict[str, Any]:
    """The baseline ``N = 0`` (greedy decoding of the prior) on the evaluation batch."""
    setting = {"knobs": {}, "step_size": proto.step_sizes[0]}
    return _guide(models, proto, "st", n_inner=0, n_per_class=proto.n_per_class,
                  setting=setting, seed=seed)


def run_tuning(models: ImageModels, proto: Protocol, estimator: str, *,
               seed: int) -> dict[str, Any]:
    """Every setting of ``estimator`` at the tuning budget; the best by mean objective."""
    results = []
    for setting in proto.settings(estimator):
        summary = _guide(models, proto, estimator, n_inner=proto.tune_budget,
                         n_per_class=proto.tune_n_per_class, setting=setting, seed=seed + 1)
        summary.pop("tokens"), summary.pop("source"), summary.pop("target")
        results.append({**setting, **summary})
    best = max(range(len(results)), key=lambda i: results[i]["objective"])
    return {"estimator": estimator, "results": results, "best": best,
            "chosen": {"knobs": results[best]["knobs"],
                       "step_size": results[best]["step_size"]}}


def run_evaluation(models: ImageModels, proto: Protocol, estimator: str,
                   setting: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """The chosen ``setting`` of ``estimator`` at every budget, on the evaluation batch."""
    budgets = {}
    for n_inner in proto.budgets:
        budgets[str(n_inner)] = _guide(models, proto, estimator, n_inner=n_inner,
                                       n_per_class=proto.n_per_class, setting=setting,
                                       seed=seed)
    return {"estimator": estimator, "chosen": setting, "budgets": budgets}


def _load_or_run(folder: Path, name: str, config: dict[str, Any], seed: int, save: bool,
                 deadline: Deadline, compute: Any) -> dict[str, Any] | None:
    def record() -> dict[str, Any]:
        return {"experiment": EXPERIMENT, "name": name, "config": config, "seed": seed,
                "metadata": runtime.run_metadata(), "data": compact(compute())}

    return load_or_run(EXPERIMENT, folder, name, config, record, seed=seed, save=save,
                       deadline=deadline)


def run(
    proto: Protocol,
    estimators: list[str] | None = None,
    *,
    models: ImageModels | None = None,
    out: Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    max_minutes: float | None = None,
    save: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the experiment; return the records run now or found on disk.

    Estimators are processed in :data:`RUN_ORDER`. With ``save=True`` every finished piece
    (unguided baseline, one estimator's tuning, one estimator's evaluation) is written at once
    to ``out`` (default ``book/results/image_guidance``) and a piece whose file exists is loaded
    instead of rerun.
    """
    estimators = list(ESTIMATOR_NAMES) if estimators is None else list(estimators)
    for name in estimators:
        if name not in proto.grids:
            raise ValueError(f"unknown estimator {name!r}; choose from {list(proto.grids)}")
    rank = {name: i for i, name in enumerate(RUN_ORDER)}
    estimators.sort(key=lambda name: rank.get(name, len(rank)))
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    if models is None:
        models = load_image_models(device=device)
    deadline = Deadline(max_minutes)
    records = []
    record = _load_or_run(folder, f"{proto.scale}_unguided", proto.as_config("unguided"), seed,
                          save, deadline, lambda: run_unguided(models, proto, seed=seed))
    if record is not None:
        records.append(record)
    for estimator in estimators:
        settings = proto.settings(estimator)
        chosen = settings[0]
        if len(settings) > 1:
            tuned = _load_or_run(
                folder, f"{proto.scale}_tune_{estimator}", proto.as_config("tune", estimator),
                seed, save, deadline,
                lambda e=estimator: run_tuning(models, proto, e, seed=seed))
            if tuned is None:
                continue
            records.append(tuned)
            chosen = tuned["data"]["chosen"]
        record = _load_or_run(
            folder, f"{proto.scale}_{estimator}", proto.as_config("eval", estimator), seed,
            save, deadline,
            lambda e=estimator, c=chosen: run_evaluation(models, proto, e, c, seed=seed))
        if record is not None:
            records.append(record)
    return records


def knob_text(setting: dict[str, Any]) -> str:
    """Short text of a ``{"knobs", "step_size"}`` setting, e.g. ``"n=5, t₁=0.5, lr=2/N"``."""
    return shared_knob_text(setting["knobs"], setting["step_size"], lr_unit="/N")


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables and verdicts from result records (stored or freshly computed) of one scale.

    Returns a dict with ``scale``, ``budgets``, ``estimators`` (evaluated ones, in registry
    order), ``unguided`` (the baseline's metrics), ``rows`` (one per estimator and budget: every
    metric's mean and SE, ``setting``, ``setting_text``), ``best`` (budget -> the estimator with
    the highest mean objective and its margin over the runner-up), ``verdicts`` ((budget, ReDGE
    family member) -> wins / ties / loses against the best estimator outside the family, on the
    objective, with ``n_se = 2``, plus the difference and its standard error), ``tuning``
    (estimator -> its tuning record: tried settings with their objective, the chosen one) and
    ``config`` (the common configuration).
    """
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    unguided, rows, tuning = None, [], {}
    for record in records:
        config, data = record["config"], record["data"]
        if config["kind"] == "unguided":
            unguided = data
        elif config["kind"] == "tune":
            tuning[data["estimator"]] = data
        else:
            for budget, metrics in data["budgets"].items():
                rows.append({"estimator": data["estimator"], "label": label(data["estimator"]),
                             "budget": int(budget), "setting": data["chosen"],
                             "setting_text": knob_text(data["chosen"]), **metrics})
    order = {name: i for i, name in enumerate(ESTIMATOR_NAMES)}
    rows.sort(key=lambda r: (r["budget"], order[r["estimator"]]))
    budgets = sorted({r["budget"] for r in rows})
    best, verdicts = {}, {}
    for budget in budgets:
        at = sorted((r for r in rows if r["budget"] == budget), key=lambda r: -r["objective"])
        top = at[0]
        best[budget] = {"estimator": top["estimator"], "objective": top["objective"],
                        "runner_up": at[1]["estimator"] if len(at) > 1 else None,
                        "margin": top["objective"] - at[1]["objective"] if len(at) > 1 else 0.0,
                        "margin_se": math.hypot(top["objective_se"], at[1]["objective_se"])
                        if len(at) > 1 else 0.0}
        rivals = [r for r in at if r["estimator"] not in REDGE_FAMILY]
        if not rivals:
            continue
        rival = rivals[0]
        for row in at:
            if row["estimator"] in REDGE_FAMILY:
                verdicts[(budget, row["estimator"])] = {
                    "verdict": verdict(row["objective"], row["objective_se"], rival["objective"],
                                       rival["objective_se"], lower_is_better=False),
                    "rival": rival["estimator"],
                    "difference": row["objective"] - rival["objective"],
                    "difference_se": math.hypot(row["objective_se"], rival["objective_se"]),
                }
    estimators = sorted({r["estimator"] for r in rows}, key=order.__getitem__)
    return {"scale": scales.pop(), "budgets": budgets, "estimators": estimators,
            "unguided": unguided, "rows": rows, "best": best, "verdicts": verdicts,
            "tuning": tuning, "config": {k: records[0]["config"][k] for k in
                                         ("n_unmask_steps", "lam", "reward_scale", "shift")}}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    if cli.device.type == "cpu":
        # the tensors are tiny: a second thread costs more in synchronisation than it saves
        # (the small protocol took 41 s with two threads, 8 s with one, on a 2-core machine)
        torch.set_num_threads(1)
    models = load_image_models(device=cli.device)
    records = run(cli.proto, cli.estimators, models=models, out=cli.folder, seed=cli.args.seed,
                  device=cli.device, max_minutes=cli.args.max_minutes)
    n_eval = sum(r["config"]["kind"] == "eval" for r in records)
    if n_eval:
        summary = summarise(records)
        base = summary["unguided"]
        if base is not None:
            print(f"unguided            reward {base['reward']:7.3f}  KL {base['kl']:6.2f}  "
                  f"judge hit {base['judge_hit']:.2f}")
        for row in summary["rows"]:
            print(f"N={row['budget']:<3d} {row['label']:<15} objective {row['objective']:8.2f} "
                  f"± {row['objective_se']:.2f}  reward {row['reward']:7.3f}  KL {row['kl']:6.2f}"
                  f"  judge hit {row['judge_hit']:.2f}  ({row['setting_text']})")
    return cli.finish(n_eval, len(cli.estimators), "estimators")


__all__ = ["EXPERIMENT", "RUN_ORDER", "Protocol", "knob_text", "main", "protocol", "run",
           "run_summary", "summarise", "tokens_from_text"]

if __name__ == "__main__":
    raise SystemExit(main())
