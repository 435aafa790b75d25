"""E5, image reward guidance: steer a masked VQ-token prior of MNIST digits towards another class.

Usage::

    python -m redge_mini.book.experiments.image_guidance --scale full          # the protocol below
    python -m redge_mini.book.experiments.image_guidance --scale small
    python -m redge_mini.book.experiments.image_guidance --smoke --out /tmp/ig  # seconds
    python -m redge_mini.book.experiments.image_guidance --summarise           # the CSVs only
    python -m redge_mini.book.experiments.image_guidance --reward-variants     # small study

The stand-in for Halton-MaskGIT + CLIP (:mod:`redge_mini.book.tasks.image_guidance`): the stored
class-conditional masked prior over ``K = 256`` VQ codes on a 7 x 7 grid is asked for a digit of
class ``c``; guidance maximises ``J = reward_scale * log p_reward(c + 1 mod 10 | decode(X)) - KL``
with ``N`` Adam steps on the variational logits at each of the 19 moves of the authors' ReMDM
sampler (classifier-free guidance weight 3, remasking sigma = 1, codes drawn from ``Cat(phi)``).
The authors' setting (``shared/notes/experiments.md``, E5) is the source of the protocol: 19 moves
x 20 Adam steps on ``100 * CLIP - KL``, lr 0.5; their demos name ReDGE ``n_steps = 3, t_1 = 0.5``
and Gumbel-Softmax ``tau = 0.5``.

Protocol (:class:`Protocol`, :func:`protocol`), declared before the run:

* **Unit: one image** (one request: a source class and its own random stream). The evaluation
  images (``n_eval``, ``n_eval / 10`` per source class, stream ``seed``) and the tuning images
  (``n_tune``, stream ``seed + 1``) are disjoint. Within a run every configuration sees the same
  requests with common random numbers (:func:`~redge_mini.book.tasks.image_guidance.
  guide_configs`), so estimators are compared *paired on the image*.
* **Equal tuning.** Every estimator gets the same ``n_configs`` configurations of its search
  space (a Latin hypercube, :func:`.tuning.sample_configs`): the learning rate (log-uniform on
  :data:`LR_AXIS`) jointly with its knobs (:data:`.tuning.KNOB_SPACE`); Straight-Through spends
  its configurations on the learning rate alone. Each configuration runs on all tuning images at
  ``tune_budget`` Adam steps per move; the highest mean ``J`` wins. Tuning thus optimises the
  *reward* (the quantity the inner loop climbs), not the judge: the judge stays outside every
  choice the method makes, as CLIP's user has no second reader at guidance time.
* **Evaluation.** The chosen configuration of every estimator at every budget ``N``; the
  authors' two settings (:data:`AUTHORS_SETTINGS`) at the headline budget; the unguided sampler
  (``N = 0``), written as a series at every budget so that it is paired like any rival.
* **Verdicts** (:meth:`Protocol.metrics`, margins declared with their reasons): the headline
  is the *independent judge's* hit rate ``judge_hit`` at the headline budget (does the image
  look like the target to a classifier that never steered it); beside it the judge's source
  rate ``judge_source`` (lower is better) at the same budget and the reward objective ``J`` at
  every budget. ``verdicts.csv`` by :func:`.verdicts.write_results`, paired on
  ``(seed, image)``, Holm over all rows. The reward classifier's own hit rate ``reward_hit``
  and ``fooled`` (the reward reads the target, the judge does not: derived per image from the
  stored hits) are summarised without verdicts.

Files (``<scale>`` is ``small``, ``full`` or ``<scale>-smoke``): ``<scale>_tune_<estimator>.json``,
``<scale>_eval_<estimator>.json``, ``<scale>_authors.json``, ``<scale>_unguided.json``,
``<scale>_timing.json``; then ``units.csv``, ``summary.csv``, ``verdicts.csv`` and ``tuning.csv``
(:func:`write_summary_csv`). A rerun loads the stages that exist (and refuses one written with
another configuration), so an interrupted run resumes where it stopped.

A separate small study (:func:`run_reward_variants`, ``--reward-variants``, stored as
``variants_reward.json``) asks whether a change of the reward closes the gap between the reward
and the judge: the stored reward, an ensemble of reward CNNs, a reward CNN trained on noisy
digits and a stronger KL weight, each guiding one estimator at its tuned learning rate on the
same requests.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...registry import ESTIMATORS, check_knobs, make_estimator
from .. import runtime
from ..datasets import load_mnist_5k
from ..tasks.image_guidance import (
    N_CODES,
    SEQ_LEN,
    DigitCNN,
    ImageModels,
    RewardEnsemble,
    SamplerConfig,
    accuracy,
    cfg_log_probs,
    encode,
    guide_configs,
    inner_step,
    load_image_models,
    steering_targets,
)
from ..timing import median_ms, time_interleaved
from . import Stages, add_summarise_option, existing_result, parse_cli
from .summary import Row, knob_string, timing_rows
from .train_image_models import DEFAULTS as TRAIN_DEFAULTS
from .train_image_models import train_classifier
from .tuning import Axis, edge_of_space, sample_configs, search_space
from .verdicts import Metric, TuningRow, Unit, Verdict, units_from_values, verdicts_from_units
from .verdicts import write_results as _write_results

EXPERIMENT = "image_guidance"
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)
#: Per-image values stored per series (``objective`` is ``reward_scale * reward - kl``).
UNIT_METRICS: tuple[str, ...] = ("objective", "reward", "kl", "reward_hit", "judge_hit",
                                 "judge_source")
#: Per-image values derived from the stored ones in :func:`units_from_records`: ``fooled`` is 1
#: when the reward classifier reads the target and the judge does not (reward hacking).
DERIVED_METRICS: tuple[str, ...] = ("fooled",)
#: Search range of Adam's learning rate (every estimator), around the authors' 0.5.
LR_AXIS = Axis(0.05, 2.0, log=True)
#: The settings the authors specify (their demos), run at their lr 0.5 and the headline budget.
AUTHORS_SETTINGS: dict[str, dict[str, float | int]] = {
    "redge": {"n_steps": 3, "t_1": 0.5, "lr": 0.5},
    "gumbel": {"tau": 0.5, "lr": 0.5},
}
#: Equivalence margins, declared before the run, with their reasons.
MARGINS: dict[str, tuple[float, str]] = {
    "objective": (2.0, "10 x 0.2 nat of log p(target): a gain of 0.2 nat multiplies the target's "
                  "probability by 1.22, the smallest change a reader would care about; "
                  "equally, 2 nats of KL per move"),
    "judge_hit": (0.05, "5 images in 100 read as the target by the judge, as a solve rate "
                  "elsewhere in the book"),
    "judge_source": (0.05, "5 images in 100 still read as the source class by the judge, the "
                     "same resolution as the hit rate"),
}
#: The authors' setting, for the protocol table of the chapter.
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
    n_eval: int = 100
    n_tune: int = 30
    n_configs: int = 8
    tune_budget: int = 10
    budgets: tuple[int, ...] = (5, 10, 20)
    n_steps: int = 20
    lam: float = 1.0
    reward_scale: float = 10.0
    sigma: float = 1.0
    cfg_weight: float = 3.0
    shift: int = 1

    def __post_init__(self) -> None:
        if not self.budgets or any(int(b) < 1 for b in self.budgets) or (
                list(self.budgets) != sorted(set(self.budgets))):
            raise ValueError(f"budgets must be increasing positive integers, got {self.budgets}")
        for name in ("n_eval", "n_tune"):
            value = getattr(self, name)
            if value < 10 or value % 10:
                raise ValueError(f"{name} must be a positive multiple of 10 (one image per "
                                 f"source class and block), got {value}")
        if self.n_configs < 1 or self.tune_budget < 1:
            raise ValueError("n_configs and tune_budget must be >= 1")

    @property
    def headline_budget(self) -> int:
        """The budget of the headline verdicts (the largest: the authors' 20 at full scale)."""
        return max(self.budgets)

    def metrics(self) -> tuple[Metric, ...]:
        """The judged metrics: the judge's hit rate (the headline, at :attr:`headline_budget`),
        the judge's source rate (lower is better) and the reward objective ``J``."""
        return (Metric("judge_hit", True, MARGINS["judge_hit"][0], headline=True,
                       headline_budgets=(self.headline_budget,)),
                Metric("judge_source", False, MARGINS["judge_source"][0]),
                Metric("objective", True, MARGINS["objective"][0]))

    def judged_budgets(self) -> dict[str, list[int]]:
        """Budgets with verdicts per metric (only those the chapter discusses: Holm's
        correction runs over every row): the judge at the headline budget, ``J`` at every
        budget (the budget curve of the reward)."""
        return {"judge_hit": [self.headline_budget], "judge_source": [self.headline_budget],
                "objective": list(self.budgets)}

    def sampler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`guide_configs` shared by every run."""
        return {"n_steps": self.n_steps, "lam": self.lam, "reward_scale": self.reward_scale,
                "sigma": self.sigma, "cfg_weight": self.cfg_weight, "shift": self.shift}

    def config(self, kind: str, **extra: Any) -> dict[str, Any]:
        """The JSON-able configuration of one stage."""
        return json.loads(json.dumps({"scale": self.scale, "kind": kind,
                                      **self.sampler_kwargs(), **extra}))

    def search(self, estimator: str) -> list[dict[str, Any]]:
        """The ``n_configs`` tuning configurations of ``estimator`` (lr among the knobs)."""
        space = search_space(estimator, lr=LR_AXIS)
        return sample_configs(space, self.n_configs, seed=zlib.crc32(estimator.encode()))

    def image_steps(self) -> int:
        """Image x Adam steps of the whole protocol (its cost unit; network calls aside)."""
        per_move = (len(ESTIMATOR_NAMES) * (self.n_configs * self.n_tune * self.tune_budget
                                            + self.n_eval * sum(self.budgets))
                    + len(AUTHORS_SETTINGS) * self.n_eval * self.headline_budget)
        return per_move * (self.n_steps - 1)


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds.

    ``full``: 100 evaluation and 30 tuning images, 8 configurations per estimator tuned at
    N = 10 (half the authors' 20, to fit the budget of about 20 minutes on 2 CPU cores), budgets
    5, 10, 20, the authors' sampler. ``small``: the same code on 20 + 10 images, 2
    configurations, a 4-point schedule (3 moves) and budgets 2, 4 (the chapter runs it live).
    """
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    proto = Protocol(scale=scale) if scale == "full" else Protocol(
        scale="small", n_eval=20, n_tune=10, n_configs=2, tune_budget=2, budgets=(2, 4),
        n_steps=4)
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", n_eval=10, n_tune=10, n_configs=2,
                        tune_budget=1, budgets=(1, 2), n_steps=3)
    return proto


# --------------------------------------------------------------------------------- the runs
def _split(knobs: dict[str, Any]) -> tuple[dict[str, Any], float]:
    rest = {k: v for k, v in knobs.items() if k != "lr"}
    return rest, float(knobs["lr"])


def _sample(models: ImageModels, proto: Protocol, series: list[tuple[str, dict[str, Any], int]],
            *, n_images: int, seed: int) -> dict[str, Any]:
    """Run ``series`` (estimator, knobs with lr, N) side by side on ``n_images`` requests;
    per series, per-image lists of :data:`UNIT_METRICS` and the first 10 images' tokens."""
    configs = [SamplerConfig(e, check_knobs(e, **_split(k)[0]), _split(k)[1], n)
               for e, k, n in series]
    source = torch.arange(n_images) % 10
    out = guide_configs(models, configs, source=source, seed=seed, **proto.sampler_kwargs())
    out["objective"] = proto.reward_scale * out["reward"] - out["kl"]
    per = []
    for i in range(len(series)):
        rows = slice(i * n_images, (i + 1) * n_images)
        per.append({**{m: out[m][rows].tolist() for m in UNIT_METRICS},
                    "tokens": out["tokens"][rows][:10].tolist()})
    return {"series": per, "seconds": float(out["seconds"])}


def run_tuning(models: ImageModels, proto: Protocol, estimator: str, *,
               seed: int) -> dict[str, Any]:
    """Every configuration of ``estimator``'s search on the tuning images, side by side."""
    configs = proto.search(estimator)
    run = _sample(models, proto, [(estimator, k, proto.tune_budget) for k in configs],
                  n_images=proto.n_tune, seed=seed + 1)
    means = [{m: sum(s[m]) / len(s[m]) for m in ("objective", "reward", "kl")}
             for s in run["series"]]
    best = max(range(len(configs)), key=lambda i: means[i]["objective"])
    return {"estimator": estimator, "configs": configs, "means": means, "best": best,
            "chosen": configs[best], "seconds": run["seconds"]}


def run_evaluation(models: ImageModels, proto: Protocol, estimator: str,
                   knobs: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """The chosen ``knobs`` (lr included) of ``estimator`` at every budget, on the evaluation
    images, side by side."""
    run = _sample(models, proto, [(estimator, knobs, n) for n in proto.budgets],
                  n_images=proto.n_eval, seed=seed)
    return {"estimator": estimator, "knobs": knobs, "seconds": run["seconds"],
            "budgets": {str(n): s for n, s in zip(proto.budgets, run["series"], strict=True)}}


def run_fixed(models: ImageModels, proto: Protocol, *, seed: int) -> dict[str, Any]:
    """The unguided sampler (``N = 0``) and the authors' settings at the headline budget."""
    series = [("st", {"lr": 1.0}, 0)] + [(e, k, proto.headline_budget)
                                          for e, k in AUTHORS_SETTINGS.items()]
    run = _sample(models, proto, series, n_images=proto.n_eval, seed=seed)
    return {"unguided": run["series"][0], "seconds": run["seconds"],
            "authors": {e: s for e, s in zip(AUTHORS_SETTINGS, run["series"][1:], strict=True)}}


def time_inner_steps(models: ImageModels, proto: Protocol, knobs: dict[str, dict[str, Any]], *,
                     rounds: int = 5, block_s: float = 0.2,
                     timer: Callable[[], float] | None = None) -> dict[str, float]:
    """Milliseconds per inner Adam step (sample, decode, reward, KL, backward, Adam) of each
    estimator at its ``knobs`` (lr included), on a batch of ``n_eval`` images at the first move,
    timed interleaved in one process after warm-up (:func:`~redge_mini.book.timing.
    time_interleaved`; median of ``rounds`` blocks; ``timer`` e.g. ``time.process_time``)."""
    prior = models.prior
    dev = next(prior.parameters()).device
    generator = torch.Generator(device=dev).manual_seed(0)
    cond = torch.arange(proto.n_eval, device=dev) % 10
    target = steering_targets(cond, proto.shift)
    x = torch.full((proto.n_eval, SEQ_LEN), prior.mask_id, dtype=torch.long, device=dev)
    with torch.no_grad():
        ell = cfg_log_probs(prior, x, cond, proto.cfg_weight).float()
    keep = (x == prior.mask_id)[..., None]
    revealed = torch.nn.functional.one_hot(x.clamp(max=N_CODES - 1), N_CODES).float()
    calls = {}
    for name, k in knobs.items():
        rest, lr = _split(k)
        estimator = make_estimator(name, **rest)
        phi = ell.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([phi], lr=lr)

        def call(estimator: Any = estimator, phi: torch.Tensor = phi,
                 optimiser: torch.optim.Optimizer = optimiser) -> None:
            inner_step(models, estimator, phi, ell, optimiser, keep=keep, revealed=revealed,
                       target=target, lam=proto.lam, reward_scale=proto.reward_scale,
                       generator=generator)

        call()  # warm-up (Adam's state, allocator)
        calls[name] = call
    return median_ms(time_interleaved(calls, dev, rounds=rounds, block_s=block_s, timer=timer))


def run(proto: Protocol, estimators: list[str] | None = None, *,
        models: ImageModels | None = None, out: Path | None = None, seed: int = 0,
        device: torch.device | str | None = None, max_minutes: float | None = None,
        save: bool = True, load_only: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) the experiment; return the records run now or found on disk, and write
    the four tables (when ``save`` and every stage is done). ``load_only``: return only the
    stored records of ``proto`` (a stage stored with another configuration counts as absent)."""
    estimators = list(ESTIMATOR_NAMES) if estimators is None else list(estimators)
    for name in estimators:
        if name not in ESTIMATOR_NAMES:
            raise ValueError(f"unknown estimator {name!r}; choose from {list(ESTIMATOR_NAMES)}")
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    if load_only:
        models = None
    elif models is None:
        models = load_image_models(device=device)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=device)

    def piece(name: str, config: dict[str, Any], compute: Callable[[], dict[str, Any]]
              ) -> dict[str, Any] | None:
        if not load_only:
            return stages.run(name, config, compute)
        try:
            if existing_result(folder, name, config):
                return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        except ValueError:
            pass
        return None

    records = []
    for estimator in estimators:
        tuned = piece(f"{proto.scale}_tune_{estimator}",
                      proto.config("tune", estimator=estimator, n_tune=proto.n_tune,
                                   budget=proto.tune_budget, configs=proto.search(estimator)),
                      lambda e=estimator: run_tuning(models, proto, e, seed=seed))
        if tuned is None:
            continue
        records.append(tuned)
        chosen = tuned["data"]["chosen"]
        evaluated = piece(f"{proto.scale}_eval_{estimator}",
                          proto.config("eval", estimator=estimator, n_eval=proto.n_eval,
                                       knobs=chosen, budgets=list(proto.budgets)),
                          lambda e=estimator, c=chosen: run_evaluation(models, proto, e, c,
                                                                       seed=seed))
        if evaluated is not None:
            records.append(evaluated)
    fixed = piece(f"{proto.scale}_fixed",
                  proto.config("fixed", n_eval=proto.n_eval, authors=AUTHORS_SETTINGS,
                               budget=proto.headline_budget),
                  lambda: run_fixed(models, proto, seed=seed))
    if fixed is not None:
        records.append(fixed)
    evals = {r["data"]["estimator"]: r["data"]["knobs"] for r in records
             if r["config"]["kind"] == "eval"}
    if set(evals) == set(ESTIMATOR_NAMES):
        # only a run of every estimator times them (interleaved, at their chosen knobs)
        block = 0.2 if proto.scale == "full" else 0.01
        timing = piece(f"{proto.scale}_timing", proto.config("timing", knobs=evals,
                                                            n_eval=proto.n_eval),
                       lambda: {"timing_ms": time_inner_steps(models, proto, evals,
                                                              block_s=block),
                                "batch": proto.n_eval})
        if timing is not None:
            records.append(timing)
    if save and not load_only and records:
        write_summary_csv(folder, proto.scale)
    return records


# ---------------------------------------------------------------------------- the tables
def units_from_records(records: list[dict[str, Any]]) -> list[Unit]:
    """One :class:`~.verdicts.Unit` per image, series, metric and budget; ``unit`` is
    ``img<i>`` (the evaluation image), ``seed`` the run's seed. The unguided sampler is written
    at every budget of the protocol (the same values: it makes no Adam step) so that it is
    paired with every guided series."""
    units: list[Unit] = []

    def add(setting: str, estimator: str, knobs: dict[str, Any] | str, budget: int,
            values: dict[str, list[float]], seed: int) -> None:
        values = {**values, "fooled": [r * (1.0 - j) for r, j in
                                       zip(values["reward_hit"], values["judge_hit"],
                                           strict=True)]}
        for metric in UNIT_METRICS + DERIVED_METRICS:
            units.extend(units_from_values(
                EXPERIMENT, setting, estimator, knobs, metric, budget,
                {(seed, f"img{i:03d}"): v for i, v in enumerate(values[metric])}))

    for record in records:
        config, data, seed = record["config"], record["data"], record["seed"]
        scale = config["scale"]
        if config["kind"] == "eval":
            for budget, values in data["budgets"].items():
                add(scale, data["estimator"], data["knobs"], int(budget), values, seed)
        elif config["kind"] == "fixed":
            tuned = {(r["data"]["estimator"], knob_string(r["data"]["knobs"])) for r in records
                     if r["config"]["kind"] == "eval"}
            for name, values in data["authors"].items():
                if (name, knob_string(config["authors"][name])) in tuned:
                    continue  # the tuning chose the authors' setting: one series, not two
                add(scale, name, config["authors"][name], config["budget"], values, seed)
            budgets = sorted({int(b) for r in records if r["config"]["kind"] == "eval"
                              for b in r["config"]["budgets"]} | {config["budget"]})
            for budget in budgets:
                add(scale, "unguided", "", budget, data["unguided"], seed)
    return units


def tuning_rows(records: list[dict[str, Any]]) -> list[TuningRow]:
    """One :class:`~.verdicts.TuningRow` per tuned estimator."""
    rows = []
    for record in records:
        config, data = record["config"], record["data"]
        if config["kind"] != "tune":
            continue
        space = search_space(data["estimator"], lr=LR_AXIS)
        rows.append(TuningRow(
            EXPERIMENT, data["estimator"], ";".join(sorted(space)), len(data["configs"]),
            config["n_tune"],
            f"{config['n_tune']} tuning images (stream seed+1), disjoint from the evaluation "
            f"images; mean reward objective J (not the judge) at N = {config['budget']}",
            knob_string(data["chosen"]), edge_of_space(data["chosen"], space)))
    return rows


def verdicts(records: list[dict[str, Any]], proto: Protocol) -> list[Verdict]:
    """The verdicts of ``records`` (computed in memory, as :func:`write_summary_csv` does)."""
    return verdicts_from_units(EXPERIMENT, units_from_records(records), proto.metrics(),
                               budgets=proto.judged_budgets())


def _timing_rows(records: list[dict[str, Any]]) -> list[Row]:
    return [row for r in records if r["config"]["kind"] == "timing"
            for row in timing_rows(EXPERIMENT, r["config"]["scale"], r["data"]["timing_ms"],
                                   r["config"]["knobs"])]


def write_summary_csv(folder: str | Path | None = None, scale: str = "full") -> Path | None:
    """Write ``units.csv``, ``summary.csv``, ``verdicts.csv`` and ``tuning.csv`` of ``folder``
    from the stored records of ``scale`` (:func:`.verdicts.write_results`); the path of
    ``summary.csv``, or None when nothing of that scale is stored."""
    folder = Path(folder) if folder is not None else runtime.results_dir(EXPERIMENT)
    paths = sorted(folder.glob(f"{scale}_*.json")) if folder.is_dir() else []
    records = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    records = [r for r in records if r.get("experiment") == EXPERIMENT
               and r.get("config", {}).get("scale") == scale]
    units = units_from_records(records)
    if not units:
        return None
    proto = protocol(scale.removesuffix("-smoke"), smoke=scale.endswith("-smoke"))
    _write_results(EXPERIMENT, units, proto.metrics(), tuning_rows(records),
                   extra_rows=_timing_rows(records), budgets=proto.judged_budgets(), root=folder)
    return folder / "summary.csv"


# ------------------------------------------------------------------ closing the gap (small)
#: The reward variants of :func:`run_reward_variants`: the stored reward (as in the protocol),
#: an ensemble of ``members`` reward CNNs (the stored one and others of other seeds), one CNN
#: trained on digits with Gaussian noise of std ``noise``, and the stored reward with the KL
#: weight ``lam`` (instead of the protocol's 1).
REWARD_VARIANTS: dict[str, dict[str, float]] = {
    "single": {}, "ensemble": {"members": 4}, "noisy": {"noise": 0.4}, "strong_kl": {"lam": 4.0},
}
#: Per-image values of the study (``reward_hit``: the variant's own reward; ``base_reward_hit``:
#: the stored reward; ``fooled``: own reward reads the target and the judge does not).
VARIANT_METRICS: tuple[str, ...] = ("reward_hit", "base_reward_hit", "judge_hit",
                                    "judge_source", "fooled", "kl")


def train_rewards(models: ImageModels, n: int, *, noise: float = 0.0,
                  seed: int = 100) -> list[nn.Module]:
    """``n`` reward CNNs trained as the stored one (its configuration) on the decoded training
    digits, with seeds ``seed, seed + 1, ...`` and training noise of std ``noise``; frozen."""
    data = load_mnist_5k(binarize=False, seed=0)
    codebook = models.codebook
    pixels = models.decode_tokens(encode(torch.as_tensor(data.x_train).to(codebook.device),
                                         codebook)).cpu()
    labels = torch.as_tensor(data.y_train).long()
    config = models.meta.get("config", {}).get("reward", TRAIN_DEFAULTS["reward"])
    nets = []
    for i in range(n):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            net = DigitCNN()
        generator = torch.Generator().manual_seed(seed + i)
        net = train_classifier(net, pixels, labels, generator=generator, noise=noise, **config)
        nets.append(net.requires_grad_(False).to(codebook.device))
    return nets


def run_reward_variants(models: ImageModels, proto: Protocol, *, lr: float,
                        estimator: str = "st", budget: int = 10, n_images: int = 100,
                        seed: int = 0, variants: dict[str, dict[str, float]] | None = None,
                        ) -> dict[str, Any]:
    """Guide the same ``n_images`` requests (stream ``seed``) with ``estimator`` at learning
    rate ``lr`` and ``budget`` Adam steps per move, once per reward variant
    (:data:`REWARD_VARIANTS`), and read every image with the stored reward and the judge.

    Returns per variant the per-image lists of :data:`VARIANT_METRICS`, the variant reward's
    accuracy on the decoded held-out digits, and its seconds (training included)."""
    variants = REWARD_VARIANTS if variants is None else variants
    data = load_mnist_5k(binarize=False, seed=0)
    dev = models.codebook.device
    decoded_test = models.decode_tokens(encode(torch.as_tensor(data.x_test).to(dev),
                                               models.codebook))
    y_test = torch.as_tensor(data.y_test)
    source = torch.arange(n_images) % 10
    target = steering_targets(source, proto.shift)
    out: dict[str, Any] = {}
    for name, spec in variants.items():
        unknown = set(spec) - {"members", "noise", "lam"}
        if unknown:
            raise ValueError(f"variants[{name!r}] has unknown keys {sorted(unknown)}")
        tic = time.perf_counter()
        if "members" in spec:
            reward: nn.Module = RewardEnsemble(
                [models.reward, *train_rewards(models, int(spec["members"]) - 1)])
        elif "noise" in spec:
            (reward,) = train_rewards(models, 1, noise=float(spec["noise"]))
        else:
            reward = models.reward
        variant = replace(models, reward=reward)
        kwargs = {**proto.sampler_kwargs(), "lam": float(spec.get("lam", proto.lam))}
        res = guide_configs(variant, [SamplerConfig(estimator, {}, lr, budget)], source=source,
                            seed=seed, **kwargs)
        with torch.no_grad():
            pixels = models.decoder(torch.nn.functional.one_hot(res["tokens"].to(dev),
                                                                N_CODES).float())
            base = (models.reward(pixels).argmax(-1).cpu() == target).float()
        fooled = res["reward_hit"] * (1 - res["judge_hit"])
        out[name] = {"reward_hit": res["reward_hit"].tolist(), "base_reward_hit": base.tolist(),
                     "judge_hit": res["judge_hit"].tolist(),
                     "judge_source": res["judge_source"].tolist(), "fooled": fooled.tolist(),
                     "kl": res["kl"].tolist(),
                     "accuracy": accuracy(reward, decoded_test, y_test),
                     "seconds": time.perf_counter() - tic}
    return {"estimator": estimator, "lr": lr, "budget": budget, "n_images": n_images,
            "variants": out}


def variant_units(record: dict[str, Any]) -> list[Unit]:
    """One :class:`~.verdicts.Unit` per image, variant and metric of a stored study; the
    variant is the ``estimator`` field, setting ``reward_variants``."""
    data = record["data"]
    units: list[Unit] = []
    for name, values in data["variants"].items():
        for metric in VARIANT_METRICS:
            units.extend(units_from_values(
                EXPERIMENT, "reward_variants", name, "", metric, data["budget"],
                {(record["seed"], f"img{i:03d}"): v for i, v in enumerate(values[metric])}))
    return units


def variant_verdicts(record: dict[str, Any]) -> list[Verdict]:
    """Paired verdicts of the study: the judge's hit rate (headline, margin as the protocol's)
    and the fooled rate (lower is better, the same margin); Holm over these rows."""
    margin = MARGINS["judge_hit"][0]
    return verdicts_from_units(EXPERIMENT, variant_units(record),
                               [Metric("judge_hit", True, margin, headline=True),
                                Metric("fooled", False, margin)])


def _variants_stage(proto: Protocol, folder: Path, *, lr: float, seed: int,
                    device: torch.device | str | None) -> dict[str, Any] | None:
    models = load_image_models(device=device)
    config = {"scale": "small", "kind": "reward_variants", **proto.sampler_kwargs(),
              "estimator": "st", "lr": lr, "budget": 10, "n_images": 100,
              "variants": REWARD_VARIANTS}
    stages = Stages(EXPERIMENT, folder, seed=seed, device=device)
    return stages.run("variants_reward", json.loads(json.dumps(config)),
                      lambda: run_reward_variants(models, proto, lr=lr, seed=seed))


def _extra_options(parser: argparse.ArgumentParser) -> None:
    add_summarise_option(parser)
    parser.add_argument("--reward-variants", action="store_true",
                        help="run the small study of reward variants (variants_reward.json)")


# ------------------------------------------------------------------------------ the cost
def measure_throughput(proto: Protocol, *, device: torch.device | str | None = None,
                       models: ImageModels | None = None, rows: int = 240) -> dict[str, float]:
    """Projected seconds of the full run of ``proto`` on ``device``, from short runs.

    Per estimator, one move of the sampler on ``rows`` rows (default: the tuning stage's
    8 x 30) with no Adam step and with one: their difference is the cost of one image x Adam
    step, the first the cost of a move's network calls per image (every move has the same
    shapes). The protocol's counts of both (:meth:`Protocol.image_steps`) give the projection;
    a busy machine inflates it. Returns ``tuning``, ``evaluation``, ``fixed`` (unguided and
    the authors' settings), ``timing`` and ``total`` (seconds).
    """
    dev = torch.device(device) if device is not None else runtime.device()
    models = load_image_models(device=dev) if models is None else models
    short = replace(proto, n_steps=2)
    moves = proto.n_steps - 1
    source = torch.arange(rows) % 10
    step_s, call_s = {}, {}
    guide_configs(models, [SamplerConfig("st", {}, 0.5, 1)], source=source[:10], seed=0,
                  **short.sampler_kwargs())  # warm-up
    for name in ESTIMATOR_NAMES:
        config = proto.search(name)[0]
        knobs, lr = _split(config)
        seconds = []
        for n in (0, 1):
            tic = time.perf_counter()
            guide_configs(models, [SamplerConfig(name, knobs, lr, n)], source=source, seed=0,
                          **short.sampler_kwargs())
            seconds.append(time.perf_counter() - tic)
        call_s[name] = seconds[0] / rows
        step_s[name] = max(seconds[1] - seconds[0], 0.0) / rows
    n_est = len(ESTIMATOR_NAMES)
    tuning = moves * sum(proto.n_configs * proto.n_tune * (call_s[e] + proto.tune_budget
                                                           * step_s[e]) for e in step_s)
    evaluation = moves * sum(proto.n_eval * (len(proto.budgets) * call_s[e]
                                             + sum(proto.budgets) * step_s[e]) for e in step_s)
    fixed = moves * proto.n_eval * (call_s["st"] + sum(  # unguided: network calls only
        call_s[e] + proto.headline_budget * step_s[e] for e in AUTHORS_SETTINGS))
    timing = n_est * (5 * (0.2 if proto.scale == "full" else 0.01) + 0.1)
    out = {"tuning": tuning, "evaluation": evaluation, "fixed": fixed, "timing": timing}
    out["total"] = sum(out.values())
    out["ms_per_image_step"] = 1e3 * sum(step_s.values()) / n_est
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES,
                    extra=_extra_options)
    if cli.args.reward_variants:
        # Straight-Through at the learning rate tuned by the full protocol (else 1.0)
        stored = Path(cli.folder) / "full_eval_st.json"
        lr = (json.loads(stored.read_text(encoding="utf-8"))["data"]["knobs"]["lr"]
              if stored.is_file() else 1.0)
        record = _variants_stage(protocol("full"), Path(cli.folder), lr=lr,
                                 seed=cli.args.seed, device=cli.device)
        for v in variant_verdicts(record) if record else []:
            if v.rival == "single" or v.estimator == "single":
                print(v.sentence())
        return 0 if record else 3
    if cli.args.summarise:
        path = write_summary_csv(cli.folder, cli.proto.scale)
        print(f"{EXPERIMENT}: {path or 'no stored ' + cli.proto.scale + ' results'}")
        return 0 if path else 3
    start = time.perf_counter()
    try:
        records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                      device=cli.device, max_minutes=cli.args.max_minutes)
    except ValueError as error:
        cli.fail(error)
    n_eval = sum(r["config"]["kind"] == "eval" for r in records)
    if n_eval == len(ESTIMATOR_NAMES):
        for v in verdicts(records, cli.proto):
            if v.headline:
                print(v.sentence())
    print(f"wall time {time.perf_counter() - start:.1f} s")
    return cli.finish(n_eval, len(cli.estimators), "estimators")


__all__ = ["AUTHORS", "AUTHORS_SETTINGS", "DERIVED_METRICS", "EXPERIMENT", "LR_AXIS", "MARGINS",
           "REWARD_VARIANTS", "UNIT_METRICS", "VARIANT_METRICS", "Protocol", "main",
           "measure_throughput", "protocol", "run", "run_reward_variants", "time_inner_steps",
           "train_rewards", "tuning_rows", "units_from_records", "variant_units",
           "variant_verdicts", "verdicts", "write_summary_csv"]

if __name__ == "__main__":
    raise SystemExit(main())
