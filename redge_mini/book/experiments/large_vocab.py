"""Large vocabularies: the six pathwise estimators at K = 256, 4,096 and 16,384 categories, on
toy problems whose exact gradient is known.

Usage::

    python -m redge_mini.book.experiments.large_vocab --scale full            # the protocol
    python -m redge_mini.book.experiments.large_vocab --scale small --out /tmp/lv
    python -m redge_mini.book.experiments.large_vocab --smoke --out /tmp/lv   # seconds
    python -m redge_mini.book.experiments.large_vocab --summarise             # the CSVs only

The paper's image experiment runs the estimators on ``(B, 576, 16384)`` logits; the book's
stand-in (chapter 11) has 256 codes. This experiment asks what changes between the two sizes on
a task where the truth is known: the smooth toy objective of chapters 1-5
(:func:`redge_mini.book.toy.make_toy_problem`, ``f(x) = (s(x) - b)^2`` with the linear score
``s(x) = <A, x> / sqrt(L)``, ``A`` and the logits standard normal) at every
``K in`` :attr:`Protocol.vocabs`, in two tasks:

* ``single``: one categorical variable (``L = 1``); the exact expectation is a sum over the K
  categories, ``sum_k pi_k (A_k - b)^2``;
* ``seq``: a sequence of ``L`` such variables (:attr:`Protocol.seq_len`); ``K**L`` is far too
  large to enumerate, but ``E[(s - b)^2] = (E s - b)^2 + Var s`` with ``E s = sum_l pi_l . A_l /
  sqrt(L)`` and ``Var s = sum_l Var_{pi_l}(A_l) / L`` (the variables are independent), so the
  objective and its gradient have a closed form (:func:`exact_objective`).

Stages (full scale; :func:`protocol`), per ``K`` and estimator:

1. *Gradients* (``<scale>_grad_K<K>_<estimator>.json``): at the authors' settings of the image
   experiment (:data:`AUTHORS_IMAGE`), ``n_draws`` single-sample gradients per problem, against
   the exact gradient ``e``: the mean cosine to ``e``, the squared bias, the variance and the
   MSE, each relative to ``|e|^2`` (:func:`redge_mini.exact.gradient_diagnostics`).
2. *Tuning* (``<scale>_tune_K<K>_<estimator>.json``): ``n_configs`` configurations of the
   learning rate and the estimator's knobs (:mod:`.tuning`: a Latin hypercube, the authors'
   image setting first), each a short Adam run on the ``seq`` task of every tuning problem; the
   configuration with the lowest mean final objective ratio is chosen.
3. *Optimisation* (``<scale>_eval_K<K>_<estimator>.json``): the chosen configuration on the
   evaluation problems: ``adam_steps`` Adam steps from the problem's logits, one sample per step
   (the authors' image guidance takes 20 Adam steps per move); the metric is the exact
   objective at the end divided by the one at the start.

and per ``K`` a *cost* stage (``<scale>_cost_K<K>.json``, :func:`cost_stage`): time per call
(forward and backward of a hard sample, :mod:`torch.utils.benchmark` through
:func:`redge_mini.book.timing.time_interleaved`) at the shape ``(1, positions, K)``, 576
positions at full scale as in the paper, and the extra memory of one call
(:func:`peak_extra_bytes`) per byte of logits.

At the largest ``K`` four ablation stages follow (issue 20, :func:`ablation_stages`): the
gradients and the tuned optimisation of ReinDGE with its trajectory detached (setting
``ablation K=...``, with ReinDGE and ReinMax) and of ReDGE with ``t_1`` swept up to 1 (settings
``t1_sweep t_1=... K=...``, with Straight-Through); their verdict rows are no headline.

The unit is the problem (its seed): every estimator sees the same problems, tuning problems are
disjoint from evaluation problems. ``units.csv``, ``summary.csv``, ``verdicts.csv`` and
``tuning.csv`` are written from the stored records by :func:`write_tables`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...exact import gradient_diagnostics, per_sample_gradients
from ...registry import ESTIMATORS, make_estimator, make_loss
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
from ..timing import make_call, peak_extra_bytes, time_interleaved
from ..toy import ToyObjective, make_toy_problem
from . import Stages, add_summarise_option, check_seed_split, load_records, parse_cli
from .summary import Row, knob_string, summary_row
from .tuning import Axis, edge_of_space, sample_configs, search_space
from .verdicts import (
    Metric,
    TuningRow,
    Unit,
    units_from_values,
    verdicts_from_units,
)

__all__ = ["AUTHORS_IMAGE", "ESTIMATOR_NAMES", "EXPERIMENT", "HEADLINE", "LR_AXIS", "METRICS",
           "TASKS", "Problems", "Protocol", "claim_status", "exact_objective", "main",
           "measure_throughput", "memory_mib", "peak_extra_bytes", "protocol", "protocol_table",
           "run", "run_adam", "setting_of", "tables", "verdicts", "vocab_of", "write_tables"]

EXPERIMENT = "large_vocab"

#: The six pathwise estimators (REINFORCE needs no sample gradient and is not part of the claim).
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)

#: The authors' settings of the image experiment (their ``configs/sampler/*.yaml``, the defaults
#: their MaskGIT guidance runs with, and ``configs/demo/maskgit.yaml``: Adam lr 0.5).
AUTHORS_IMAGE: dict[str, dict[str, float | int]] = {
    "st": {"lr": 0.5},
    "gumbel": {"lr": 0.5, "tau": 0.5},
    "reinmax": {"lr": 0.5, "tau": 1.0},
    "redge": {"lr": 0.5, "n_steps": 3, "t_1": 0.5},
    "redge_cov": {"lr": 0.5, "n_steps": 5, "t_1": 0.5},
    "reindge": {"lr": 0.5, "n_steps": 5, "t_1": 0.5},
}

#: The tasks: one categorical variable, or a sequence of ``seq_len`` of them.
TASKS: tuple[str, ...] = ("single", "seq")

#: The learning rate's search range (log scale), around the authors' 0.5.
LR_AXIS = Axis(0.05, 5.0, log=True)
#: Configurations per estimator and vocabulary (the same for every estimator).
N_CONFIGS = 6

#: The headline: the exact objective after the short Adam run over the one at its start (lower
#: is better). Margin 0.02: 2 % of the starting objective.
HEADLINE = Metric("final_ratio", higher_is_better=False, margin=0.02, headline=True)
#: The gradient metrics of each task. Margins: 0.02 of cosine; 0.1 in log10 of a relative MSE or
#: variance (a factor 1.26); 0.05 of the squared bias relative to ``|e|^2``.
_GRADIENT_SPECS: tuple[tuple[str, bool, float], ...] = (
    ("cosine", True, 0.02),
    ("log10_rel_mse", False, 0.1),
    ("log10_rel_variance", False, 0.1),
    ("rel_bias2", False, 0.05),
)
METRICS: tuple[Metric, ...] = (HEADLINE, *(
    Metric(f"{task}_{name}", higher, margin) for task in TASKS
    for name, higher, margin in _GRADIENT_SPECS))


def setting_of(vocab: int) -> str:
    """The setting name of vocabulary ``vocab``: ``"K=<vocab>"``."""
    return f"K={vocab}"


def vocab_of(setting: str) -> int:
    """The vocabulary of setting ``"K=<value>"``."""
    found = re.fullmatch(r"K=(\d+)", setting)
    if found is None:
        raise ValueError(f"setting must read 'K=<integer>', got {setting!r}")
    return int(found.group(1))


def space(estimator: str) -> dict[str, Axis]:
    """The search space of ``estimator``: lr (:data:`LR_AXIS`) and its knobs."""
    return search_space(estimator, LR_AXIS)


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment."""

    scale: str
    vocabs: tuple[int, ...]
    seq_len: int            # L of the "seq" task
    n_draws: int            # single-sample gradients per problem and estimator
    adam_steps: int         # steps of each optimisation run
    n_samples: int          # samples per Adam step
    n_configs: int          # tuning configurations per estimator and vocabulary
    tune_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    positions: int          # the cost stage's logits are (1, positions, K)
    cost_rounds: int
    cost_block_s: float
    estimators: tuple[str, ...] = ESTIMATOR_NAMES

    def __post_init__(self) -> None:
        for name in ("seq_len", "n_draws", "adam_steps", "n_samples", "n_configs", "positions",
                     "cost_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_draws < 2:
            raise ValueError(f"n_draws must be >= 2, got {self.n_draws}")
        if not self.vocabs or any(isinstance(k, bool) or not isinstance(k, int) or k < 2
                                  for k in self.vocabs):
            raise ValueError(f"vocabs must be ints >= 2, got {self.vocabs}")
        check_seed_split(self.tune_seeds, self.eval_seeds, self.estimators, ESTIMATOR_NAMES)

    def task_len(self, task: str) -> int:
        """``L`` of ``task``."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        return 1 if task == "single" else self.seq_len

    def configs(self, estimator: str) -> list[dict[str, Any]]:
        """The tuning configurations of ``estimator`` (the authors' image setting first)."""
        return sample_configs(space(estimator), self.n_configs,
                              seed=11 + ESTIMATOR_NAMES.index(estimator),
                              anchors=[AUTHORS_IMAGE[estimator]])

    def stage_config(self, stage: str, vocab: int, estimator: str | None = None,
                     **extra: Any) -> dict[str, Any]:
        """The JSON-able configuration of one stage's result file."""
        proto = {k: v for k, v in asdict(self).items() if k not in ("estimators", "vocabs")}
        return {"scale": self.scale, "stage": stage, "K": vocab, "estimator": estimator,
                "protocol": proto, **extra}


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol("full", (256, 4096, 16384), seq_len=4, n_draws=128, adam_steps=20,
                         n_samples=1, n_configs=N_CONFIGS, tune_seeds=tuple(range(1000, 1006)),
                         eval_seeds=tuple(range(24)), positions=576, cost_rounds=5,
                         cost_block_s=0.3)
    else:
        proto = Protocol("small", (16, 64, 256), seq_len=3, n_draws=32, adam_steps=20,
                         n_samples=1, n_configs=2, tune_seeds=(1000, 1001),
                         eval_seeds=tuple(range(8)), positions=8, cost_rounds=2,
                         cost_block_s=0.005)
    if smoke:
        proto = replace(proto, scale=proto.scale + "-smoke", vocabs=(8, 32), seq_len=2,
                        n_draws=8, adam_steps=3, n_configs=2, tune_seeds=(1000, 1001),
                        eval_seeds=(0, 1, 2), positions=4, cost_rounds=1, cost_block_s=0.001)
    return proto


def protocol_table(proto: Protocol) -> str:
    """Markdown table: the paper's image experiment beside ``proto``, with the differences."""
    vocabs = ", ".join(f"{k:,}" for k in proto.vocabs)
    rows = [
        ("categories K", "16,384", vocabs, "three sizes: the trend, not one point"),
        ("positions", "576 (24 × 24 tokens)",
         f"1 (single), {proto.seq_len} (seq); {proto.positions} in the cost stage",
         "the exact gradient of a sequence needs a closed form; cost at the paper's shape"),
        ("objective", "100 · CLIP − KL", "(s(x) − b)², s linear in the one-hot x",
         "exact expectation and gradient known"),
        ("Adam steps", "20 per move", str(proto.adam_steps), ""),
        ("samples per step", "1 per image", str(proto.n_samples), ""),
        ("learning rate", "0.5", f"tuned in [{LR_AXIS.low:g}, {LR_AXIS.high:g}]",
         "equal tuning budget for every estimator"),
        ("knobs", "ReDGE n=3, t₁=0.5; ReDGE-cov, ReinDGE n=5, t₁=0.5; GS τ=0.5; ReinMax τ=1",
         "these for the gradients; tuned for the optimisation",
         f"{proto.n_configs} configurations per estimator and K"),
        ("problems", "prompts (not known)",
         f"{len(proto.eval_seeds)} evaluation + {len(proto.tune_seeds)} tuning, disjoint",
         "paired intervals need several units"),
    ]
    lines = ["| setting | authors | here | why |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the problems


def exact_objective(weights: torch.Tensor, target: torch.Tensor | float,
                    logits: torch.Tensor) -> torch.Tensor:
    """``E_{X ~ softmax(logits)}[(<A, X> / sqrt(L) - b)^2]`` in closed form, differentiable.

    ``weights`` ``A`` and ``logits`` have shape ``(..., L, K)``, ``target`` ``b`` shape ``(...)``
    (or is a float); the result has shape ``(...)``. With ``pi_l = softmax(logits_l)``, the
    score's mean is ``sum_l pi_l . A_l / sqrt(L)`` and, the variables being independent, its
    variance ``sum_l Var_{pi_l}(A_l) / L``; the expectation of the square is the squared mean
    gap plus the variance.
    """
    if weights.shape != logits.shape or logits.dim() < 2:
        raise ValueError(f"weights and logits must share a shape (..., L, K), got "
                         f"{tuple(weights.shape)} and {tuple(logits.shape)}")
    L = logits.shape[-2]
    probs = torch.softmax(logits, dim=-1)
    mean_l = (probs * weights).sum(-1)
    var_l = (probs * weights.square()).sum(-1) - mean_l.square()
    return (mean_l.sum(-1) / math.sqrt(L) - target).square() + var_l.sum(-1) / L


@dataclass(frozen=True)
class Problems:
    """A batch of ``U`` independent toy problems of one size: ``weights`` and ``logits``
    ``(U, L, K)``, ``target`` ``(U,)``, all float64, the problem of seed ``seeds[u]`` in row
    ``u`` (:func:`redge_mini.book.toy.make_toy_problem`, kind ``"smooth"``)."""

    weights: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    seeds: tuple[int, ...]

    @classmethod
    def make(cls, L: int, K: int, seeds: tuple[int, ...]) -> Problems:
        """The problems of ``seeds`` with ``L`` variables of ``K`` categories."""
        toys = [make_toy_problem(L, K, kind="smooth", seed=s) for s in seeds]
        return cls(torch.stack([t.f.weights for t in toys]),
                   torch.tensor([t.f.target for t in toys], dtype=torch.float64),
                   torch.stack([t.logits for t in toys]), tuple(seeds))

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """``f`` of every problem: samples ``(..., U, L, K)`` to values ``(..., U)``."""
        weights = self.weights.to(x.dtype)
        score = (x * weights).sum((-2, -1)) / math.sqrt(x.shape[-2])
        return (score - self.target.to(x.dtype)).square()

    def objective(self, logits: torch.Tensor) -> torch.Tensor:
        """The exact objective of every problem at ``logits`` ``(U, L, K)``: ``(U,)`` float64."""
        return exact_objective(self.weights, self.target, logits.double())


def run_adam(estimator: str, knobs: dict[str, Any], problems: Problems, steps: int,
             n_samples: int, seed: int) -> np.ndarray:
    """A short Adam run on every problem at once (Adam acts elementwise, so the rows are
    independent runs), driven by ``estimator`` with ``knobs`` (``lr`` included).

    Starts at the problems' logits (float32), takes ``steps`` steps with ``n_samples`` samples
    per step and problem, noise from a generator seeded with ``seed``. Returns ``(U, steps + 1)``:
    the exact objective after each step over the one at the start.
    """
    knobs = dict(knobs)
    lr = knobs.pop("lr")
    loss = make_loss(estimator, **knobs)
    logits = problems.logits.float().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start = problems.objective(problems.logits)
    curve = [torch.ones_like(start)]
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        loss(problems.f, logits, n_samples, generator=generator).sum().backward()
        optimiser.step()
        with torch.no_grad():
            curve.append(problems.objective(logits) / start)
    return torch.stack(curve, dim=1).numpy()


def _exact_gradient(toy: Any) -> torch.Tensor:
    """The exact gradient of one toy problem, from the closed form :func:`exact_objective` (for
    ``L = 1`` it is the sum over the K categories ``sum_k pi_k (A_k - b)^2``; the tests check
    both tasks against enumeration at small sizes)."""
    theta = toy.logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact_objective(toy.f.weights, toy.f.target, theta), theta)
    return grad


def gradient_stage(estimator: str, vocab: int, proto: Protocol,
                   knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage 1 for one estimator and vocabulary: diagnostics of ``n_draws`` single-sample
    gradients on every evaluation problem of both tasks, at :data:`AUTHORS_IMAGE` (or at
    ``knobs``, for the ablations)."""
    tic = time.perf_counter()
    if knobs is None:
        knobs = {k: v for k, v in AUTHORS_IMAGE[estimator].items() if k != "lr"}
    sampler = make_estimator(estimator, **knobs)
    out: dict[str, Any] = {"estimator": estimator, "knobs": knobs}
    chunk = max(1, min(proto.n_draws, 2**22 // (proto.seq_len * vocab)))
    for task in TASKS:
        L = proto.task_len(task)
        per_unit = []
        for seed in proto.eval_seeds:
            toy = make_toy_problem(L, vocab, kind="smooth", seed=seed)
            exact = _exact_gradient(toy)
            f32 = ToyObjective(toy.f.weights.float(), toy.f.target, "smooth")
            generator = torch.Generator().manual_seed(100_003 * L + seed)
            grads = per_sample_gradients(sampler, f32, toy.logits.float(), proto.n_draws,
                                         generator=generator, chunk_size=chunk)
            d = gradient_diagnostics(grads, exact)
            scale = d["exact_norm"] ** 2
            per_unit.append({"cosine": d["mean_cosine"],
                             "log10_rel_mse": math.log10(d["mse"] / scale),
                             "log10_rel_variance": math.log10(d["variance"] / scale),
                             "rel_bias2": d["bias2_unbiased"] / scale,
                             "exact_norm": d["exact_norm"]})
        out[task] = per_unit
    out["seconds"] = time.perf_counter() - tic
    return out


def tune_stage(estimator: str, vocab: int, proto: Protocol) -> dict[str, Any]:
    """Stage 2: every configuration on the tuning problems of the ``seq`` task; the choice."""
    tic = time.perf_counter()
    problems = Problems.make(proto.seq_len, vocab, proto.tune_seeds)
    configs = proto.configs(estimator)
    final = [run_adam(estimator, knobs, problems, proto.adam_steps, proto.n_samples,
                      seed=7 + vocab)[:, -1] for knobs in configs]
    chosen = int(np.argmin([np.mean(r) for r in final]))
    return {"estimator": estimator, "configs": configs,
            "final_ratio": [r.tolist() for r in final],
            "chosen": configs[chosen], "seconds": time.perf_counter() - tic}


def eval_stage(estimator: str, vocab: int, proto: Protocol,
               chosen: dict[str, Any]) -> dict[str, Any]:
    """Stage 3: the chosen configuration on the evaluation problems of the ``seq`` task."""
    tic = time.perf_counter()
    problems = Problems.make(proto.seq_len, vocab, proto.eval_seeds)
    curve = run_adam(estimator, chosen, problems, proto.adam_steps, proto.n_samples,
                     seed=vocab)
    return {"estimator": estimator, "knobs": chosen, "curve": curve.tolist(),
            "final_ratio": curve[:, -1].tolist(), "seconds": time.perf_counter() - tic}


# ---------------------------------------------------------------------------- the ablations


def ablation_vocab(proto: Protocol) -> int:
    """The vocabulary of the ablations: the largest of the protocol (16,384 at full scale, the
    paper's; the stages there cost about 6 CPU minutes)."""
    return max(proto.vocabs)


def ablation_stages(proto: Protocol, vocab: int, tuned: dict[str, dict[str, Any]],
                    ) -> list[tuple[str, dict[str, Any], Any]]:
    """The four ablation stages at ``vocab`` as ``(name, config, compute)``: the gradients and
    the optimisation of ReinDGE with its trajectory detached (:data:`.ablations.DETACH`; at
    ReinDGE's authors' knobs, and at ReinDGE's tuned configuration ``tuned["reindge"]``), and
    ReDGE's gradients (authors' ``n_steps``) and optimisation (tuned lr and ``n_steps``) at
    every ``t_1`` of :data:`.ablations.T1_SWEEP`."""
    scale = proto.scale
    image = {k: v for k, v in AUTHORS_IMAGE["reindge"].items() if k != "lr"}
    redge = {k: v for k, v in AUTHORS_IMAGE["redge"].items() if k != "lr"}
    sweep_knobs = [{**redge, "t_1": t} for t in T1_SWEEP]
    sweep_tuned = [{**tuned["redge"], "t_1": t} for t in T1_SWEEP]

    def detached_gradients() -> dict[str, Any]:
        with registered():
            return gradient_stage(DETACH, vocab, proto, image)

    def detached_adam() -> dict[str, Any]:
        with registered():
            return eval_stage(DETACH, vocab, proto, tuned["reindge"])

    def sweep_gradients() -> dict[str, Any]:
        return {"estimator": "redge",
                "runs": [gradient_stage("redge", vocab, proto, k) for k in sweep_knobs]}

    def sweep_adam() -> dict[str, Any]:
        return {"estimator": "redge",
                "runs": [eval_stage("redge", vocab, proto, k) for k in sweep_tuned]}

    return [
        (f"{scale}_ablation_grad_K{vocab}",
         proto.stage_config("ablation_grad", vocab, DETACH, knobs=image), detached_gradients),
        (f"{scale}_ablation_eval_K{vocab}",
         proto.stage_config("ablation_eval", vocab, DETACH, chosen=tuned["reindge"]),
         detached_adam),
        (f"{scale}_t1_sweep_grad_K{vocab}",
         proto.stage_config("t1_sweep_grad", vocab, "redge", knobs=sweep_knobs),
         sweep_gradients),
        (f"{scale}_t1_sweep_eval_K{vocab}",
         proto.stage_config("t1_sweep_eval", vocab, "redge", chosen=sweep_tuned), sweep_adam),
    ]


def _gradient_units(setting: str, estimator: str, data: dict[str, Any],
                    seeds: list[int]) -> list[Unit]:
    """The gradient metrics of both tasks of one gradient record's ``data`` in ``setting``."""
    units: list[Unit] = []
    knobs = knob_string(data["knobs"])
    for task in TASKS:
        for name, *_ in _GRADIENT_SPECS:
            units += units_from_values(
                EXPERIMENT, setting, estimator, knobs, f"{task}_{name}", 1,
                {(s, "problem"): u[name] for s, u in zip(seeds, data[task], strict=True)})
    return units


def _ablation_units(records: list[dict[str, Any]], found: dict[tuple[str, int, str], Any],
                    ) -> list[Unit]:
    """Units of the ablation records, each setting with its rivals' series (detached ReinDGE
    with ReinDGE and ReinMax; ReDGE at each ``t_1`` with Straight-Through): ``found`` maps
    ``(stage, K, estimator)`` to the main stages' records."""
    units: list[Unit] = []
    for record in records:
        config, data = record["config"], record["data"]
        vocab, proto = config["K"], config["protocol"]
        seeds, budget = proto["eval_seeds"], proto["adam_steps"]
        base = setting_of(vocab)
        stage = config["stage"]
        kind = "grad" if stage.endswith("_grad") else "eval"
        if stage.startswith("ablation"):
            parts = [(ablation_setting(base), data, ("reindge", "reinmax"))]
        else:
            parts = [(sweep_setting(run_["knobs"]["t_1"], base), run_, ("st",))
                     for run_ in data["runs"]]
        for setting, own, rivals in parts:
            series = [(data["estimator"], own)] + [
                (r, found[(kind, vocab, r)]) for r in rivals if (kind, vocab, r) in found]
            for estimator, values in series:
                if kind == "grad":
                    units += _gradient_units(setting, estimator, values, seeds)
                else:
                    units += units_from_values(
                        EXPERIMENT, setting, estimator, values["knobs"], HEADLINE.name, budget,
                        {(s, "problem"): v
                         for s, v in zip(seeds, values["final_ratio"], strict=True)})
    return units


# --------------------------------------------------------------------------------- the cost


def memory_mib(proto: Protocol) -> int:
    """Size of the logits (MiB) at which the cost stage measures memory: 64 at full scale,
    4 otherwise. The resident-set counters of Linux are exact only to some pages (they are
    batched per thread), so memory is measured on a batch ``(B, positions, K)`` of about this
    size and reported per byte of logits."""
    return 64 if proto.scale.startswith("full") else 4


def cost_stage(vocab: int, proto: Protocol, device: torch.device | str | None = None,
               ) -> dict[str, Any]:
    """Time and extra memory of one forward + backward call of every estimator at
    :data:`AUTHORS_IMAGE`.

    Time: ms per call at logits ``(1, positions, K)``, one value per interleaved round (each
    the median of a :meth:`torch.utils.benchmark.Timer.blocked_autorange`). Memory: the peak
    extra bytes of one call (:func:`peak_extra_bytes`) at ``(B, positions, K)`` with ``B``
    chosen so that the logits hold about :func:`memory_mib` MiB.
    """
    device = torch.device("cpu" if device is None else device)
    generator = torch.Generator().manual_seed(vocab)
    knobs = {e: {k: v for k, v in AUTHORS_IMAGE[e].items() if k != "lr"}
             for e in proto.estimators}
    samplers = {e: make_estimator(e, **knobs[e]) for e in proto.estimators}

    def problem(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (batch, proto.positions, vocab)
        return (torch.randn(shape, generator=generator).to(device),
                torch.randn(shape, generator=generator).to(device))

    logits, weights = problem(1)
    calls = {e: make_call(samplers[e], logits, weights) for e in proto.estimators}
    for call in calls.values():
        call()  # warm-up
    seconds = time_interleaved(calls, device, rounds=proto.cost_rounds,
                               block_s=proto.cost_block_s)
    batch = max(1, round(memory_mib(proto) * 2**20 / (4 * proto.positions * vocab)))
    big, big_weights = problem(batch)
    memory = {e: peak_extra_bytes(make_call(samplers[e], big, big_weights), device)
              for e in proto.estimators}
    return {"shape": list(logits.shape), "knobs": knobs,
            "ms_per_call": {e: [1e3 * s for s in seconds[e]] for e in proto.estimators},
            "memory_shape": list(big.shape), "extra_bytes": memory,
            "memory_logits_bytes": big.numel() * big.element_size(),
            "logits_bytes": logits.numel() * logits.element_size()}


# ---------------------------------------------------------------------------------- the run


def run(proto: Protocol, estimators: list[str] | None = None, *, out: Path | None = None,
        seed: int = 0, device: torch.device | str | None = None,
        max_minutes: float | None = None, save: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the experiment; return the records of the stages run now or found.

    With ``save=True`` every finished stage is written at once to ``out`` (default
    ``book/results/large_vocab``), a stage whose file exists is loaded instead of rerun, and the
    CSV tables are rewritten from the stored records at the end. The optimisation and gradient
    stages run on the CPU (their problems are small per call; ``device`` is where the cost
    stage measures). ``seed`` is stored in the records' metadata; the random streams are named
    by the problems' seeds.
    """
    estimators = list(proto.estimators) if estimators is None else estimators
    unknown = [e for e in estimators if e not in proto.estimators]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(proto.estimators)}")
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device="cpu")
    cost_device = torch.device("cpu" if device is None else device)
    for vocab in proto.vocabs:
        for estimator in estimators:
            done = stages.run(f"{proto.scale}_grad_K{vocab}_{estimator}",
                              proto.stage_config("grad", vocab, estimator,
                                                 knobs=AUTHORS_IMAGE[estimator]),
                              lambda e=estimator, k=vocab: gradient_stage(e, k, proto))
            if done is None:
                break
            tune = stages.run(f"{proto.scale}_tune_K{vocab}_{estimator}",
                              proto.stage_config("tune", vocab, estimator,
                                                 configs=proto.configs(estimator)),
                              lambda e=estimator, k=vocab: tune_stage(e, k, proto))
            if tune is None:
                break
            chosen = tune["data"]["chosen"]
            evaluation = stages.run(f"{proto.scale}_eval_K{vocab}_{estimator}",
                                    proto.stage_config("eval", vocab, estimator, chosen=chosen),
                                    lambda e=estimator, k=vocab, c=chosen: eval_stage(e, k,
                                                                                      proto, c))
            if evaluation is None:
                break
        if estimators == list(proto.estimators):
            tuned = {r["config"]["estimator"]: r["data"]["chosen"] for r in stages.records
                     if r["config"]["stage"] == "tune" and r["config"]["K"] == vocab}
            if vocab == ablation_vocab(proto) and set(tuned) == set(proto.estimators):
                for name, config, compute in ablation_stages(proto, vocab, tuned):
                    if stages.run(name, config, compute) is None:
                        break
            stages.device = cost_device
            stages.run(f"{proto.scale}_cost_K{vocab}",
                       proto.stage_config("cost", vocab, device=cost_device.type,
                                          memory_mib=memory_mib(proto)),
                       lambda k=vocab: cost_stage(k, proto, cost_device))
            stages.device = "cpu"
    if save:
        write_tables(folder, proto.scale)
    return stages.records


# ----------------------------------------------------------------------- units and tables


def tables(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Units, tuning rows, cost rows and optimisation curves of one scale's records.

    Returns ``units`` (the gradient metrics of both tasks and ``final_ratio`` per evaluation
    problem, ``tune_final_ratio`` per tuning configuration and problem), ``tuning``
    (:class:`~.verdicts.TuningRow`, one per estimator and K), ``cost`` (summary rows, one value
    each: ``ms_per_call``, the fastest round, the least disturbed by other work on a shared
    machine; ``extra_memory_ratio``, the peak extra memory of a call per byte of logits; and
    ``extra_mib``, that ratio at the timing shape ``(1, positions, K)``), ``curves`` (``(K,
    estimator) -> mean ratio per step``), ``budget`` (Adam steps), ``scale``.
    """
    if not records:
        raise ValueError("records is empty: nothing to tabulate")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; tabulate one scale at a time")
    units: list[Unit] = []
    tuning: list[TuningRow] = []
    cost: list[Row] = []
    curves: dict[tuple[int, str], np.ndarray] = {}
    budget = 0
    ablations, found = [], {}
    for record in records:
        config, data = record["config"], record["data"]
        vocab, proto = config["K"], config["protocol"]
        setting = setting_of(vocab)
        stage, estimator = config["stage"], config["estimator"]
        if stage.startswith(("ablation", "t1_sweep")):
            ablations.append(record)
            continue
        if stage in ("grad", "eval"):
            found[(stage, vocab, estimator)] = data
        if stage == "cost":
            for name, rounds in data["ms_per_call"].items():
                knobs = data["knobs"][name]
                cost.append(summary_row(EXPERIMENT, setting, name, knobs, "ms_per_call", 1,
                                        [min(rounds)]))
                memory = data["extra_bytes"][name]
                if memory is not None and math.isfinite(memory):
                    ratio = memory / data["memory_logits_bytes"]
                    cost.append(summary_row(EXPERIMENT, setting, name, knobs,
                                            "extra_memory_ratio", 1, [ratio]))
                    cost.append(summary_row(EXPERIMENT, setting, name, knobs, "extra_mib", 1,
                                            [ratio * data["logits_bytes"] / 2**20]))
            continue
        budget = proto["adam_steps"]
        if stage == "grad":
            units += _gradient_units(setting, estimator, data, proto["eval_seeds"])
        elif stage == "tune":
            for g, knobs in enumerate(data["configs"]):
                units += units_from_values(
                    EXPERIMENT, setting, estimator, knobs, "tune_final_ratio", budget,
                    {(s, "problem"): v
                     for s, v in zip(proto["tune_seeds"], data["final_ratio"][g], strict=True)})
            sp = space(estimator)
            tuning.append(TuningRow(
                EXPERIMENT, estimator, ";".join(sorted(sp)), len(data["configs"]),
                len(proto["tune_seeds"]),
                f"{setting}: problems {proto['tune_seeds'][0]}-{proto['tune_seeds'][-1]} "
                f"(disjoint from the evaluation problems), seq task, {budget} Adam steps, "
                "mean final objective ratio", knob_string(data["chosen"]),
                edge_of_space(data["chosen"], sp)))
        elif stage == "eval":
            units += units_from_values(
                EXPERIMENT, setting, estimator, data["knobs"], HEADLINE.name, budget,
                {(s, "problem"): v
                 for s, v in zip(proto["eval_seeds"], data["final_ratio"], strict=True)})
            curves[(vocab, estimator)] = np.mean(np.asarray(data["curve"], dtype=float), axis=0)
    units += _ablation_units(ablations, found)
    return {"units": units, "tuning": tuning, "cost": cost, "curves": curves,
            "budget": budget, "scale": next(iter(scales))}


def verdicts(table: dict[str, Any]) -> list:
    """The verdicts of ``tables(...)``, computed in memory (the ablation settings' rows are no
    headline, :func:`.ablations.not_headline`)."""
    return not_headline(verdicts_from_units(EXPERIMENT, table["units"], METRICS))


def write_tables(folder: str | Path | None = None, scale: str = "full") -> Path | None:
    """Write units/summary/verdicts/tuning CSVs of ``folder`` from its stored ``<scale>_*``
    records (:func:`.verdicts.write_results`); the folder, or None when there are none."""
    folder = Path(folder) if folder is not None else runtime.results_dir(EXPERIMENT)
    records = load_records(folder, scale)
    if not records:
        return None
    table = tables(records)
    write_with_ablations(EXPERIMENT, table["units"], METRICS, table["tuning"],
                         extra_rows=table["cost"], root=folder)
    return folder


#: run_all's name for :func:`write_tables`.
write_summary_csv = write_tables


def claim_status(rows: list, member: str, rivals: tuple[str, ...] = ("st", "gumbel", "reinmax"),
                 ) -> str:
    """The paper's claim for ``member`` read from headline verdict ``rows`` of one setting:
    ``"supports"`` when no row against ``rivals`` says *worse* and at least one says *better*
    or all say *equivalent*; ``"contradicts"`` when one says *worse*; ``"undecided"``
    otherwise (or when a row is missing)."""
    words = []
    for rival in rivals:
        found = [v for v in rows if v.base_estimator == member and v.base_rival == rival]
        if len(found) != 1:
            return "undecided"
        words.append(found[0].verdict)
    if "worse" in words:
        return "contradicts"
    if "better" in words or all(w == "equivalent" for w in words):
        return "supports"
    return "undecided"


def measure_throughput(proto: Protocol, *, device: torch.device | str | None = None,
                       ) -> dict[str, float]:
    """Projected seconds of the protocol (CPU seconds of this process): per vocabulary and
    estimator, one problem's gradient draws and one Adam run are timed and scaled by the
    protocol's counts; the cost stage is not included. Returns estimator -> seconds and
    ``"total"``."""
    del device  # the gradient and optimisation stages run on the CPU
    out: dict[str, float] = {}
    for estimator in proto.estimators:
        one = replace(proto, eval_seeds=proto.eval_seeds[:2], n_configs=1)
        seconds = 0.0
        for vocab in proto.vocabs:
            tic = time.process_time()
            gradient_stage(estimator, vocab, one)
            seconds += (time.process_time() - tic) * len(proto.eval_seeds) / 2
            problems = Problems.make(proto.seq_len, vocab, proto.eval_seeds[:2])
            tic = time.process_time()
            run_adam(estimator, AUTHORS_IMAGE[estimator], problems, proto.adam_steps,
                     proto.n_samples, seed=0)
            runs = proto.n_configs * len(proto.tune_seeds) + len(proto.eval_seeds)
            seconds += (time.process_time() - tic) * runs / 2
        out[estimator] = seconds
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES,
                    extra=add_summarise_option)
    if cli.args.summarise:
        path = write_tables(cli.folder, cli.proto.scale)
        print(f"large_vocab: {path or 'no stored ' + cli.proto.scale + ' results'}")
        return 0 if path else 3
    try:
        records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                      device=cli.device, max_minutes=cli.args.max_minutes)
    except ValueError as error:
        cli.fail(error)
    done = sum(r["config"]["stage"] == "eval" for r in records)
    return cli.finish(done, len(cli.estimators) * len(cli.proto.vocabs),
                      "estimator × K optimisations")


if __name__ == "__main__":
    raise SystemExit(main())
