"""E4, Sudoku guided by a masked diffusion prior: equal tuning, paired verdicts per puzzle.

Usage::

    python -m redge_mini.book.experiments.mdm_guidance --scale full
    python -m redge_mini.book.experiments.mdm_guidance --scale small --out /tmp/mdm
    python -m redge_mini.book.experiments.mdm_guidance --smoke --out /tmp/mdm   # seconds

Protocol (:func:`protocol`; :data:`AUTHORS` and :func:`protocol_table` set it beside the
authors'). The stored weak masked diffusion model (``redge_mini/book/data/sudoku_mdm_weak.pt``,
made by :mod:`redge_mini.book.experiments.train_sudoku_mdm`) completes puzzles with ``n_blanks``
blanks. Guidance (:func:`redge_mini.book.guidance.guide_with_rates`): ``T`` unmasking steps, at
each ``N`` Adam steps on the Sudoku penalty of the estimator's hard sample plus ``lam`` times the
KL to the model, then the argmax is unmasked. The unit is the *puzzle*: every series completes the
same evaluation puzzles, so comparisons are paired on the puzzle. Stages (one record each):

1. ``tune``: every estimator gets the same number ``n_configs`` of configurations, a Latin
   hypercube of its knobs *and* the learning rate (:func:`.tuning.sample_configs`;
   Straight-Through spends its budget on the learning rate alone), all run in one batch at
   ``N = tune_n_inner`` on ``n_tune`` tuning puzzles (disjoint from the evaluation puzzles);
   chosen: most puzzles solved (the headline), then fewest violations;
2. ``eval``: on ``n_eval`` evaluation puzzles, in one batch, every estimator at its chosen
   configuration and the authors' README demo (:data:`DEMO`, ReinDGE) at every ``N`` of
   ``n_inner``, greedy decoding (``N = 0``) and the model's ancestral sampler;
3. ``timing``: milliseconds per inner step of each estimator, interleaved in one process.

Metrics of a completed grid: ``final_violations``, ``final_solved`` and ``exact_match`` (the
authors') and ``kl_to_prior`` (ours: the KL paid at the revealed cells, nats per grid), one value
per puzzle in ``units.csv``. Verdicts (:func:`.verdicts.verdicts_from_units`) judge
:data:`JUDGED` at every ``N`` of ``n_inner``; greedy decoding is a rival at each ``N`` (its
``N = 0`` values, repeated). Files: ``<scale>_<stage>.json`` records, and ``units.csv``,
``summary.csv``, ``verdicts.csv``, ``tuning.csv``.

REINFORCE with the leave-one-out baseline (RLOO, ``"reinforce"``) has stages of its own
(``tune_reinforce``, ``eval_reinforce``, ``timing_reinforce``), so that it joins the stored
pathwise records without rerunning them, and is judged with them by the same rule. Its budget is
an equal number of *evaluations of the penalty* per unmasking step (the count of chapter 6): a
pathwise estimator spends one evaluation (and one backward pass through the penalty, not
counted) per inner step, so at budget ``N`` RLOO draws ``S`` samples per inner step and takes
``N // S`` inner steps (:func:`rloo_steps`, :func:`guide_rloo`). ``S`` is tuned with the
learning rate, with the same number of configurations, over the divisors of the budgets
(:func:`rloo_sample_choices`). A fourth stage, ``eval_reinforce_steps``, is a sensitivity that
is not judged: RLOO with the pathwise estimators' ``N`` inner steps, ``S`` times their
evaluations. ``--estimators reinforce`` runs RLOO's stages alone; the tables are then rewritten
from every stored record of the scale.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ...registry import label, make_estimator
from ...score_function import reinforce_loss
from .. import runtime
from ..guidance import GuidanceConfig, guide_with_rates, kl_to_prior
from ..masked_diffusion import MaskedDenoiser, load_denoiser, sample_unmasking
from ..tasks.sudoku import grid_to_tokens, is_solved, make_puzzles, penalty, tokens_to_grid
from ..tasks.sudoku import violations as count_violations
from ..timing import median_ms, time_interleaved
from . import Stages, load_records, parse_cli
from .summary import knob_string, timing_rows
from .tuning import Axis, edge_of_space, sample_configs, search_space
from .verdicts import (
    Metric,
    TuningRow,
    Unit,
    Verdict,
    read_tuning,
    read_units,
    read_verdicts,
    units_from_values,
    verdicts_from_units,
    write_results,
)

EXPERIMENT = "mdm_guidance"
#: The pathwise estimators of the experiment, pinned (not read from the registry, so that an
#: estimator registered elsewhere, e.g. an ablation, does not silently change the protocol).
PATHWISE: tuple[str, ...] = ("st", "gumbel", "reinmax", "redge", "redge_cov", "reindge")
#: The score-function estimator: REINFORCE with the leave-one-out baseline (RLOO).
RLOO = "reinforce"
#: Every estimator of the experiment (what ``--estimators`` accepts).
ESTIMATOR_NAMES: tuple[str, ...] = (*PATHWISE, RLOO)
CHECKPOINT_FILES = {"weak": "sudoku_mdm_weak.pt", "strong": "sudoku_mdm_strong.pt"}
METRICS: tuple[str, ...] = ("final_violations", "final_solved", "exact_match", "kl_to_prior")

#: The judged metrics and their equivalence margins, declared before the run.
JUDGED: tuple[Metric, ...] = (
    Metric("final_solved", higher_is_better=True, margin=0.05, headline=True),
    Metric("final_violations", higher_is_better=False, margin=1.0),
)
#: Why each margin is what it is.
MARGIN_REASONS: dict[str, str] = {
    "final_solved": "5 puzzles in 100: a smaller gap in solve rate would not change which "
                    "estimator a reader picks",
    "final_violations": "one clash in a grid of 81 cells: the smallest change a reader can see "
                        "on a completed grid",
}
#: The learning rate's search range (log-uniform), for every estimator; the authors use 0.1.
LR_AXIS = Axis(0.01, 1.0, log=True)
#: The authors' README demo of Sudoku guidance (ReinDGE; they run it at N = 5000).
DEMO: dict[str, Any] = {"estimator": "reindge", "knobs": {"lr": 0.1, "n_steps": 3, "t_1": 0.5}}

#: The authors' Sudoku guidance, as far as it is stated (config yaml and README demo).
AUTHORS: dict[str, Any] = {
    "prior": "pretrained MDM, bidirectional transformer, 3 layers, width 384",
    "unmasking steps T": 20,
    "inner steps N": "1000 (config); 5000 (README demo)",
    "lambda": 1.0,
    "lr": "0.1",
    "estimators": "ReinDGE (README demo)",
    "knobs": "ReinDGE n_steps=3, t_1=0.5 (README demo)",
    "puzzles": "1000, batch 64 (README demo)",
    "metrics": "violations, solve rate, exact match, runtime",
    "tuning": "not stated",
    "seeds": "not stated",
}
#: Why our protocol differs from :data:`AUTHORS`, item by item.
DEVIATIONS: dict[str, str] = {
    "prior": "no download: a tiny MDM trained here on generated grids and stopped early "
             "(weak), so that unguided sampling still breaks rules; its quality is measured",
    "inner steps N": "the time budget (20 minutes on 2 CPU cores): N = 1000 for 100 puzzles "
                     "and 7 series alone would take longer; two budgets 10x apart, both "
                     "judged; the demo's 5000 is not run",
    "lr": "tuned jointly with the knobs for every estimator (the authors' 0.1 is the demo "
          "series)",
    "estimators": "the six pathwise estimators and REINFORCE (RLOO, at an equal number of "
                  "evaluations of the penalty), each tuned, plus the demo setting as a series "
                  "of its own",
    "knobs": "each estimator's knobs tuned on held-out puzzles with the same budget",
    "puzzles": "the time budget (200 puzzles; the book asks at least 100 for a headline verdict)",
    "metrics": "the authors' metrics, and the KL to the prior paid by guidance",
    "tuning": "a fair comparison: same number of configurations per estimator, on puzzles "
              "never used for evaluation, at the smaller N (a proxy, to fit the time budget)",
    "seeds": "one sampling seed; the unit is the puzzle (paired across estimators)",
}


@dataclass(frozen=True)
class Protocol:
    """A scale of the experiment (see the module docstring)."""

    scale: str
    n_blanks: int
    n_unmask_steps: int
    n_inner: tuple[int, ...]
    tune_n_inner: int
    n_tune: int
    n_eval: int
    n_configs: int
    checkpoint: str = "weak"
    lam: float = 1.0
    puzzle_seed: int = 4242

    def __post_init__(self) -> None:
        if min(self.n_tune, self.n_eval) < 2 or self.n_configs < 1:
            raise ValueError("n_tune and n_eval must be >= 2, n_configs >= 1")
        if not self.n_inner or sorted(set(self.n_inner)) != list(self.n_inner) \
                or self.n_inner[0] < 1 or self.tune_n_inner < 1:
            raise ValueError(f"n_inner must be increasing positive budgets, got {self.n_inner}")
        if self.checkpoint not in CHECKPOINT_FILES:
            raise ValueError(f"checkpoint must be one of {sorted(CHECKPOINT_FILES)}")

    def as_config(self, stage: str, **extra: Any) -> dict[str, Any]:
        """The JSON-able configuration of one result file."""
        config = {**asdict(self), "stage": stage, "checkpoint_file":
                  CHECKPOINT_FILES[self.checkpoint], "lr_axis": asdict(LR_AXIS), **extra}
        return json.loads(json.dumps(config))

    def ours(self) -> dict[str, Any]:
        """Our values of the items of :data:`AUTHORS` (for the protocol table)."""
        return {
            "prior": f"tiny MDM trained here ({self.checkpoint}): width 32, 3 layers",
            "unmasking steps T": self.n_unmask_steps,
            "inner steps N": ", ".join(str(n) for n in self.n_inner),
            "lambda": self.lam,
            "lr": f"tuned in [{LR_AXIS.low:g}, {LR_AXIS.high:g}] (log)",
            "estimators": ", ".join(label(n) for n in ESTIMATOR_NAMES) + " + demo",
            "knobs": f"{self.n_configs} random-search configurations per estimator",
            "puzzles": f"{self.n_eval} evaluation, {self.n_tune} tuning (disjoint)",
            "metrics": "violations, solve rate, exact match, runtime; KL to the prior",
            "tuning": f"{self.n_configs} configurations x {self.n_tune} puzzles per estimator, "
                      f"N = {self.tune_n_inner}",
            "seeds": "1 sampling seed, unit = puzzle",
        }


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if scale == "full":
        proto = Protocol("full", n_blanks=45, n_unmask_steps=20, n_inner=(30, 300),
                         tune_n_inner=30, n_tune=30, n_eval=200, n_configs=10)
    else:
        proto = Protocol("small", n_blanks=45, n_unmask_steps=10, n_inner=(10, 30),
                         tune_n_inner=10, n_tune=6, n_eval=30, n_configs=3)
    if smoke:
        proto = replace(proto, scale=scale + "-smoke", n_unmask_steps=2, n_inner=(1, 2),
                        tune_n_inner=1, n_tune=2, n_eval=4, n_configs=2)
    return proto


def protocol_table(proto: Protocol) -> list[dict[str, str]]:
    """Rows ``item, authors, ours, reason`` (the reason is empty where we follow the authors)."""
    ours = proto.ours()
    rows = []
    for item, theirs in AUTHORS.items():
        same = str(ours[item]) == str(theirs)
        rows.append({"item": item, "authors": str(theirs), "ours": str(ours[item]),
                     "reason": "" if same else DEVIATIONS.get(item, "the time budget")})
    return rows


def puzzles(proto: Protocol, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(puzzles, solutions)`` of the ``"tune"`` or ``"eval"`` set; the two share no puzzle."""
    if which not in ("tune", "eval"):
        raise ValueError(f"which must be 'tune' or 'eval', got {which!r}")
    n, offset = (proto.n_tune, 0) if which == "tune" else (proto.n_eval, 1)
    puzzle, solution = make_puzzles(
        n, proto.n_blanks, generator=torch.Generator().manual_seed(proto.puzzle_seed + offset))
    if which == "eval":
        tune = puzzles(proto, "tune")[0]
        if (puzzle[:, None, :] == tune[None, :, :]).all(-1).any():
            raise RuntimeError("an evaluation puzzle is also a tuning puzzle")
    return puzzle, solution


def unit_names(n: int) -> list[str]:
    """The unit names of ``n`` puzzles of a set (``p000``, ``p001``, ...)."""
    return [f"p{i:03d}" for i in range(n)]


def load_model(proto: Protocol, device: torch.device) -> tuple[MaskedDenoiser, dict[str, Any]]:
    """The stored model of the protocol and its stored metadata."""
    return load_denoiser(CHECKPOINT_FILES[proto.checkpoint], device=device)


@contextlib.contextmanager
def _plain_attention() -> Iterator[None]:
    """Turn off torch's fused "fast path" of the transformer layers while inside: on CPU, with
    the Sudoku attention mask, the plain path (``scaled_dot_product_attention``) computes the
    same logits (to ~1e-6) twice as fast."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def grid_metrics(tokens: torch.Tensor, puzzle: torch.Tensor,
                 solution: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row violations, solved and exact match of completed token rows."""
    grids = tokens_to_grid(tokens).cpu()
    return {"final_violations": count_violations(grids).float(),
            "final_solved": is_solved(grids, puzzle).float(),
            "exact_match": (grids == solution).all(-1).float()}


def rloo_sample_choices(proto: Protocol) -> tuple[int, ...]:
    """RLOO's numbers of samples ``S`` to search: the divisors ``S >= 2`` of every budget (so
    that ``S * (N // S) = N`` evaluations exactly) that leave at least two inner steps at the
    tuning budget; ``(2,)`` when there is none (the smoke protocol)."""
    budgets = (proto.tune_n_inner, *proto.n_inner)
    found = tuple(d for d in range(2, proto.tune_n_inner // 2 + 1)
                  if all(n % d == 0 for n in budgets))
    return found or (2,)


def rloo_steps(n_inner: int, n_samples: int) -> int:
    """Inner steps of RLOO with ``n_samples`` samples at a budget of ``n_inner`` evaluations of
    the penalty per unmasking step: ``n_inner // n_samples`` (0: the prior's argmax, greedy)."""
    if n_samples < 2 or n_inner < 0:
        raise ValueError(f"n_samples must be >= 2 and n_inner >= 0, got {n_samples}, {n_inner}")
    return n_inner // n_samples


def space_of(proto: Protocol, estimator: str) -> dict[str, Axis]:
    """The search space of ``estimator`` (RLOO: its number of samples and the learning rate)."""
    if estimator == RLOO:
        return {"lr": LR_AXIS, "n_samples": Axis(choices=rloo_sample_choices(proto))}
    return search_space(estimator, LR_AXIS)


def tuning_configs(proto: Protocol, estimator: str) -> list[dict[str, Any]]:
    """The ``n_configs`` configurations (knobs and ``lr``) of ``estimator``'s random search."""
    return sample_configs(space_of(proto, estimator), proto.n_configs,
                          seed=1000 + ESTIMATOR_NAMES.index(estimator))


def _split(config: dict[str, Any]) -> tuple[dict[str, Any], float]:
    knobs = {k: v for k, v in config.items() if k != "lr"}
    return knobs, float(config["lr"])


def _choose(solved: list[list[float]], violations: list[list[float]]) -> int:
    """Most puzzles solved, then fewest violations, then the first."""
    def score(c: int) -> tuple[float, float]:
        return (-sum(solved[c]), sum(violations[c]))

    return min(range(len(solved)), key=score)


def run_tuning(proto: Protocol, estimators: list[str], *, seed: int,
               device: torch.device) -> dict[str, Any]:
    """Every estimator's configurations in one batch on the tuning puzzles."""
    model, _ = load_model(proto, device)
    puzzle, solution = puzzles(proto, "tune")
    plan = [(name, config) for name in estimators for config in tuning_configs(proto, name)]
    configs = [GuidanceConfig(name, proto.tune_n_inner, _split(c)[0]) for name, c in plan]
    start = time.perf_counter()
    with _plain_attention():
        tokens, _ = guide_with_rates(model, penalty, configs, [_split(c)[1] for _, c in plan],
                                     n_unmask_steps=proto.n_unmask_steps, lam=proto.lam,
                                     generator=torch.Generator(device=device).manual_seed(seed),
                                     init=grid_to_tokens(puzzle).to(device))
    wall = time.perf_counter() - start
    per = proto.n_tune
    metrics = grid_metrics(tokens, puzzle.repeat(len(plan), 1), solution.repeat(len(plan), 1))
    out: dict[str, Any] = {}
    for i, (name, config) in enumerate(plan):
        entry = out.setdefault(name, {"configs": [], "final_solved": [], "final_violations": []})
        entry["configs"].append(config)
        for metric in ("final_solved", "final_violations"):
            entry[metric].append(metrics[metric][i * per:(i + 1) * per].tolist())
    for entry in out.values():
        entry["chosen"] = _choose(entry["final_solved"], entry["final_violations"])
    return {"stage": "tune", "estimators": out, "wall_seconds": wall, "device": str(device)}


def eval_series(proto: Protocol, chosen: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The guided series of the evaluation: ``{"estimator", "knobs" (with lr), "budget"}``; the
    demo is skipped if an estimator's choice equals it."""
    series = []
    for name, config in chosen.items():
        series += [{"estimator": name, "knobs": config, "budget": n} for n in proto.n_inner]
    if DEMO["knobs"] != chosen.get(DEMO["estimator"]):
        series += [{"estimator": DEMO["estimator"], "knobs": DEMO["knobs"], "budget": n}
                   for n in proto.n_inner]
    return series


def run_eval(proto: Protocol, chosen: dict[str, dict[str, Any]], *, seed: int,
             device: torch.device) -> dict[str, Any]:
    """Every guided series and greedy decoding in one batch, then the ancestral sampler, on the
    evaluation puzzles; per-puzzle values of every metric."""
    model, meta = load_model(proto, device)
    puzzle, solution = puzzles(proto, "eval")
    init = grid_to_tokens(puzzle).to(device)
    series = [*eval_series(proto, chosen), {"estimator": "unguided",
                                            "knobs": {"sampler": "greedy"}, "budget": 0}]
    configs = [GuidanceConfig("st", 0) if s["estimator"] == "unguided" else
               GuidanceConfig(s["estimator"], s["budget"], _split(s["knobs"])[0])
               for s in series]
    rates = [s["knobs"].get("lr", 1.0) for s in series]
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    start = time.perf_counter()
    with _plain_attention():
        tokens, info = guide_with_rates(model, penalty, configs, rates,
                                        n_unmask_steps=proto.n_unmask_steps, lam=proto.lam,
                                        generator=generator, init=init)
        wall = time.perf_counter() - start
        ancestral = sample_unmasking(model, init.shape[0], n_steps=proto.n_unmask_steps,
                                     generator=generator, init=init)
    series.append({"estimator": "unguided", "knobs": {"sampler": "ancestral"}, "budget": 0})
    tokens = torch.cat([tokens, ancestral])
    kl = torch.cat([info["kl_revealed"], torch.zeros(init.shape[0])])
    per = proto.n_eval
    metrics = grid_metrics(tokens, puzzle.repeat(len(series), 1),
                           solution.repeat(len(series), 1))
    metrics["kl_to_prior"] = kl
    for i, s in enumerate(series):
        s["values"] = {m: v[i * per:(i + 1) * per].tolist() for m, v in metrics.items()}
        s["example"] = tokens_to_grid(tokens[i * per]).tolist()
    return {"stage": "eval", "series": series, "wall_seconds": wall, "device": str(device),
            "example_puzzle": puzzle[0].tolist(), "example_solution": solution[0].tolist(),
            "model": {"evaluation": meta.get("evaluation", {}),
                      "training": meta.get("training", {})}}


def guide_rloo(model: MaskedDenoiser, objective: Any, configs: list[tuple[int, int, float]], *,
               n_unmask_steps: int, lam: float, generator: torch.Generator,
               init: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Guidance (the procedure of :func:`~redge_mini.book.guidance.guide_with_rates`) with the
    penalty's gradient estimated by RLOO (:func:`redge_mini.score_function.reinforce_loss`).

    Each configuration ``(n_samples, n_steps, lr)`` optimises its own copy of the rows of
    ``init``: at every unmasking step, ``n_steps`` Adam steps (:class:`torch.optim.Adam`, one
    parameter group per configuration, restarted at each unmasking step as in the pathwise
    loop) on ``RLOO(objective) + lam * KL`` to the model at the masked cells, each drawing
    ``n_samples`` completions of the masked cells (``n_samples`` evaluations of ``objective``,
    no gradient through it); then the argmax is revealed at each masked cell with probability
    ``1 / (t + 1)``. ``n_steps = 0`` is greedy decoding.

    Returns ``tokens`` ``(C * B, L)`` (configuration-major) and ``info`` with per-row
    ``kl_revealed`` and ``evaluations`` (penalty evaluations per row and unmasking step).
    """
    if not configs:
        raise ValueError("configs must hold at least one (n_samples, n_steps, lr)")
    for c, (n_samples, n_steps, lr) in enumerate(configs):
        if n_samples < 2 or n_steps < 0 or not lr > 0:
            raise ValueError(f"configs[{c}] = {(n_samples, n_steps, lr)}: need n_samples >= 2, "
                             "n_steps >= 0, lr > 0")
    dev = next(model.parameters()).device
    x0 = model.check_tokens(init, "init").to(dev)
    per, k = x0.shape[0], model.vocab_size
    x = x0.repeat(len(configs), 1)
    kl_revealed = torch.zeros(x.shape[0], device=dev)
    model.eval()
    for t in range(n_unmask_steps - 1, -1, -1):
        masked = x == model.mask_id
        with torch.no_grad():
            prior = model(x, None).float()
        revealed = torch.nn.functional.one_hot(x.clamp(max=k - 1), k).float()
        blocks = [slice(c * per, (c + 1) * per) for c in range(len(configs))]
        leaves = [prior[b].clone().requires_grad_(True) for b in blocks]
        optimiser = torch.optim.Adam([{"params": [leaf], "lr": lr}
                                      for leaf, (_, _, lr) in zip(leaves, configs, strict=True)])
        for inner in range(1, max(n for _, n, _ in configs) + 1):
            optimiser.zero_grad(set_to_none=True)
            total = torch.zeros((), device=dev)
            for leaf, b, (n_samples, n_steps, _) in zip(leaves, blocks, configs, strict=True):
                if inner > n_steps:
                    continue   # its budget is spent: no gradient, Adam leaves it alone

                def penalty_of(draws: torch.Tensor, keep: torch.Tensor = masked[b, :, None],
                               given: torch.Tensor = revealed[b]) -> torch.Tensor:
                    rows = torch.where(keep, draws, given)
                    return objective(rows.flatten(0, 1)).view(draws.shape[:2])

                surrogate = reinforce_loss(penalty_of, leaf, n_samples, generator=generator)
                kl = (kl_to_prior(leaf, prior[b]) * masked[b]).sum(-1)
                total = total + (surrogate + lam * kl).sum()
            total.backward()
            optimiser.step()
        with torch.no_grad():
            phi = torch.cat([leaf.detach() for leaf in leaves])
            u = torch.rand(x.shape, generator=generator, device=dev)
            reveal = masked & (u < 1.0 / (t + 1))
            kl_revealed += (kl_to_prior(phi, prior) * reveal).sum(-1)
            x = torch.where(reveal, phi.argmax(-1), x)
    evaluations = torch.tensor([n * s for n, s, _ in configs]).repeat_interleave(per)
    return x, {"kl_revealed": kl_revealed.cpu(), "evaluations": evaluations}


def _rloo_config(config: dict[str, Any], n_inner: int) -> tuple[int, int, float]:
    n_samples = int(config["n_samples"])
    return n_samples, rloo_steps(n_inner, n_samples), float(config["lr"])


def run_rloo_tuning(proto: Protocol, *, seed: int, device: torch.device) -> dict[str, Any]:
    """RLOO's ``n_configs`` configurations in one batch on the tuning puzzles, at the tuning
    budget of evaluations; chosen as the pathwise estimators' (solved, then violations)."""
    model, _ = load_model(proto, device)
    puzzle, solution = puzzles(proto, "tune")
    configs = tuning_configs(proto, RLOO)
    start = time.perf_counter()
    with _plain_attention():
        tokens, _ = guide_rloo(model, penalty, [_rloo_config(c, proto.tune_n_inner)
                                                for c in configs],
                               n_unmask_steps=proto.n_unmask_steps, lam=proto.lam,
                               generator=torch.Generator(device=device).manual_seed(seed),
                               init=grid_to_tokens(puzzle).to(device))
    wall = time.perf_counter() - start
    per = proto.n_tune
    metrics = grid_metrics(tokens, puzzle.repeat(len(configs), 1),
                           solution.repeat(len(configs), 1))
    entry: dict[str, Any] = {"configs": configs, **{
        m: [metrics[m][i * per:(i + 1) * per].tolist() for i in range(len(configs))]
        for m in ("final_solved", "final_violations")}}
    entry["chosen"] = _choose(entry["final_solved"], entry["final_violations"])
    return {"stage": "tune_reinforce", "estimators": {RLOO: entry}, "wall_seconds": wall,
            "device": str(device)}


def run_rloo_eval(proto: Protocol, chosen: dict[str, Any], *, seed: int,
                  device: torch.device, equal_steps: bool = False) -> dict[str, Any]:
    """RLOO at its chosen configuration on the evaluation puzzles, at every budget ``N`` of
    evaluations per unmasking step; per-puzzle values of every metric. With ``equal_steps``
    (the sensitivity stage ``eval_reinforce_steps``, not judged): ``N`` inner steps of ``S``
    samples each, ``S`` times the pathwise estimators' evaluations."""
    model, _ = load_model(proto, device)
    puzzle, solution = puzzles(proto, "eval")
    configs = [_rloo_config(chosen, n * (int(chosen["n_samples"]) if equal_steps else 1))
               for n in proto.n_inner]
    start = time.perf_counter()
    with _plain_attention():
        tokens, info = guide_rloo(model, penalty, configs, n_unmask_steps=proto.n_unmask_steps,
                                  lam=proto.lam, init=grid_to_tokens(puzzle).to(device),
                                  generator=torch.Generator(device=device).manual_seed(seed + 1))
    wall = time.perf_counter() - start
    per = proto.n_eval
    metrics = grid_metrics(tokens, puzzle.repeat(len(configs), 1),
                           solution.repeat(len(configs), 1))
    metrics["kl_to_prior"] = info["kl_revealed"]
    series = []
    for i, (n, (n_samples, n_steps, _)) in enumerate(zip(proto.n_inner, configs, strict=True)):
        series.append({"estimator": RLOO, "knobs": chosen, "budget": n,
                       "n_samples": n_samples, "n_steps": n_steps,
                       "evaluations": n_samples * n_steps,
                       "values": {m: v[i * per:(i + 1) * per].tolist()
                                  for m, v in metrics.items()},
                       "example": tokens_to_grid(tokens[i * per]).tolist()})
    return {"stage": "eval_reinforce_steps" if equal_steps else "eval_reinforce",
            "series": series, "wall_seconds": wall, "device": str(device)}


def time_rloo_steps(proto: Protocol, chosen: dict[str, Any], device: torch.device, *,
                    rounds: int = 5, block_s: float = 0.2) -> dict[str, float]:
    """Milliseconds per inner step of RLOO at its chosen ``S`` (``S`` evaluations of the
    penalty, KL, backward) and of Straight-Through (one evaluation, re-timed here as the
    reference, key ``st_reference``), interleaved on the evaluation batch shape."""
    generator = torch.Generator(device=device).manual_seed(0)
    prior = torch.log_softmax(torch.randn(proto.n_eval, 81, 9, generator=generator,
                                          device=device), -1)
    n_samples = int(chosen["n_samples"])
    sampler = make_estimator("st")

    def rloo() -> None:
        phi = prior.detach().clone().requires_grad_(True)
        loss = reinforce_loss(lambda d: penalty(d.flatten(0, 1)).view(d.shape[:2]), phi,
                              n_samples, generator=generator)
        (loss + kl_to_prior(phi, prior).sum(-1)).sum().backward()

    def st() -> None:
        phi = prior.detach().clone().requires_grad_(True)
        hard = sampler(phi, generator=generator, hard=True)
        (penalty(hard) + kl_to_prior(phi, prior).sum(-1)).sum().backward()

    return median_ms(time_interleaved({RLOO: rloo, "st_reference": st}, device, rounds=rounds,
                                      block_s=block_s))


def time_inner_steps(proto: Protocol, knobs: dict[str, dict[str, Any]], device: torch.device, *,
                     rounds: int = 5, block_s: float = 0.2) -> dict[str, float]:
    """Milliseconds per inner step (sample, penalty, KL, backward) of each estimator at its
    chosen knobs on the evaluation batch shape, interleaved in one process (median of blocks)."""
    generator = torch.Generator(device=device).manual_seed(0)
    prior = torch.log_softmax(torch.randn(proto.n_eval, 81, 9, generator=generator,
                                          device=device), -1)
    calls = {}
    for name, k in knobs.items():
        sampler = make_estimator(name, **_split(k)[0])

        def call(sampler: Any = sampler) -> None:
            phi = prior.detach().clone().requires_grad_(True)
            hard = sampler(phi, generator=generator, hard=True)
            (penalty(hard) + kl_to_prior(phi, prior).sum(-1)).sum().backward()

        calls[name] = call
    return median_ms(time_interleaved(calls, device, rounds=rounds, block_s=block_s))


def run(proto: Protocol, estimators: list[str] | None = None, *, out: Path | None = None,
        seed: int = 0, device: torch.device | str | None = None,
        max_minutes: float | None = None, save: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) every stage; return the records found or made; when ``save`` and all
    are done, write ``units.csv``, ``summary.csv``, ``verdicts.csv`` and ``tuning.csv``.

    The pathwise estimators of ``estimators`` (default: all of :data:`ESTIMATOR_NAMES`) share
    the stages ``tune``, ``eval`` (with the demo and the unguided baselines) and ``timing``;
    RLOO, when listed, has its own ``tune_reinforce``, ``eval_reinforce`` and
    ``timing_reinforce``, so stored pathwise records are reused as they are."""
    estimators = list(ESTIMATOR_NAMES) if estimators is None else list(estimators)
    unknown = [e for e in estimators if e not in ESTIMATOR_NAMES]
    if unknown or not estimators:
        raise ValueError(f"estimators must be a non-empty list of {list(ESTIMATOR_NAMES)}, "
                         f"got {estimators}")
    pathwise = [e for e in estimators if e != RLOO]
    dev = torch.device(device) if device is not None else runtime.device()
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=dev)
    block = 0.2 if proto.scale == "full" else 0.01
    finished = []
    if pathwise:
        tuned = stages.run(f"{proto.scale}_tune", proto.as_config("tune", estimators=pathwise),
                           lambda: run_tuning(proto, pathwise, seed=seed, device=dev))
        if tuned is None:
            return stages.records
        chosen = {name: e["configs"][e["chosen"]]
                  for name, e in tuned["data"]["estimators"].items()}
        finished.append(stages.run(f"{proto.scale}_eval", proto.as_config("eval", chosen=chosen),
                                   lambda: run_eval(proto, chosen, seed=seed, device=dev)))
        finished.append(stages.run(
            f"{proto.scale}_timing", proto.as_config("timing", chosen=chosen),
            lambda: {"stage": "timing", "device": str(dev),
                     "timing_ms": time_inner_steps(proto, chosen, dev, block_s=block)}))
    if RLOO in estimators:
        budget = {"budget": "evaluations of the penalty per unmasking step: S samples x (N // S) "
                            "inner steps", "n_samples_choices": list(rloo_sample_choices(proto))}
        tuned = stages.run(f"{proto.scale}_tune_reinforce",
                           proto.as_config("tune_reinforce", estimators=[RLOO], **budget),
                           lambda: run_rloo_tuning(proto, seed=seed, device=dev))
        if tuned is None:
            return stages.records
        entry = tuned["data"]["estimators"][RLOO]
        best = entry["configs"][entry["chosen"]]
        finished.append(stages.run(
            f"{proto.scale}_eval_reinforce",
            proto.as_config("eval_reinforce", chosen={RLOO: best}, **budget),
            lambda: run_rloo_eval(proto, best, seed=seed, device=dev)))
        finished.append(stages.run(
            f"{proto.scale}_timing_reinforce",
            proto.as_config("timing_reinforce", chosen={RLOO: best}),
            lambda: {"stage": "timing_reinforce", "device": str(dev),
                     "timing_ms": time_rloo_steps(proto, best, dev, block_s=block)}))
        finished.append(stages.run(
            f"{proto.scale}_eval_reinforce_steps",
            proto.as_config("eval_reinforce_steps", chosen={RLOO: best},
                            budget="sensitivity, not judged: N inner steps of S samples each "
                                   "(S x N evaluations per unmasking step)"),
            lambda: run_rloo_eval(proto, best, seed=seed, device=dev, equal_steps=True)))
    if save and all(r is not None for r in finished):
        # the tables cover every stored stage of this scale (e.g. the pathwise records when only
        # RLOO was run now); they need the pathwise evaluation (the baselines)
        every = {r["name"]: r for r in load_records(folder, proto.scale)}
        every.update({r["name"]: r for r in stages.records})
        if _stage(list(every.values()), "eval", optional=True) is not None:
            write(list(every.values()), proto, folder)
    return stages.records


def _stage(records: list[dict[str, Any]], stage: str, *,
           optional: bool = False) -> dict[str, Any] | None:
    found = [r for r in records if r["data"].get("stage") == stage]
    if optional and not found:
        return None
    if len(found) != 1:
        raise ValueError(f"records must hold exactly one {stage!r} stage, got {len(found)}")
    return found[0]


def _evaluations(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation records present: the pathwise one (with the baselines) and RLOO's."""
    found = [_stage(records, s, optional=True) for s in ("eval", "eval_reinforce")]
    if not any(found):
        raise ValueError("records hold no 'eval' or 'eval_reinforce' stage")
    return [r for r in found if r is not None]


def units_from_records(records: list[dict[str, Any]]) -> list[Unit]:
    """One unit per (series, metric, budget, puzzle) of the evaluation; greedy decoding appears
    at ``N = 0`` and again at every judged ``N`` (the same values), so that it is paired there."""
    units: list[Unit] = []
    for evaluation in _evaluations(records):
        units += _units_of(evaluation)
    return units


def _units_of(evaluation: dict[str, Any]) -> list[Unit]:
    budgets = evaluation["config"]["n_inner"]
    setting = evaluation["config"]["checkpoint"]
    names = unit_names(evaluation["config"]["n_eval"])
    units: list[Unit] = []
    for s in evaluation["data"]["series"]:
        copies = [s["budget"]]
        if s["knobs"] == {"sampler": "greedy"}:
            copies += budgets
        for budget in copies:
            for metric, values in s["values"].items():
                units += units_from_values(EXPERIMENT, setting, s["estimator"], s["knobs"],
                                           metric, budget,
                                           {(0, u): v for u, v in zip(names, values,
                                                                      strict=True)})
    return units


def tuning_rows(records: list[dict[str, Any]]) -> list[TuningRow]:
    """One ``tuning.csv`` row per estimator (RLOO's from its own stage, when present)."""
    rows = []
    for stage in ("tune", "tune_reinforce"):
        tuned = _stage(records, stage, optional=True)
        if tuned is None:
            continue
        config = tuned["config"]
        proto = Protocol(**{k: (tuple(v) if k == "n_inner" else v) for k, v in config.items()
                            if k in Protocol.__dataclass_fields__})
        budget = (f"N = {config['tune_n_inner']} evaluations per unmasking step (S samples x "
                  f"N // S inner steps)" if stage == "tune_reinforce"
                  else f"N = {config['tune_n_inner']}")
        for name, entry in tuned["data"]["estimators"].items():
            space = space_of(proto, name)
            chosen = entry["configs"][entry["chosen"]]
            rows.append(TuningRow(
                EXPERIMENT, name, ";".join(sorted(space)), len(entry["configs"]),
                config["n_tune"],
                f"{config['n_tune']} tuning puzzles (disjoint from the {config['n_eval']} "
                f"evaluation puzzles), {config['checkpoint']} model, {budget}, "
                f"T = {config['n_unmask_steps']}; criterion: solved, then violations",
                knob_string(chosen), edge_of_space(chosen, space)))
    if not rows:
        raise ValueError("records hold no 'tune' or 'tune_reinforce' stage")
    return rows


def _timing(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """Milliseconds per inner step of every timed estimator, and their knobs."""
    timing: dict[str, float] = {}
    knobs: dict[str, Any] = {}
    for stage in ("timing", "timing_reinforce"):
        timed = _stage(records, stage, optional=True)
        if timed is not None:
            timing.update(timed["data"]["timing_ms"])
            knobs.update(timed["config"]["chosen"])
    return timing, knobs


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the chapter shows, from records of one scale: ``units``, ``verdicts`` (computed in
    memory by the one rule), ``tuning`` rows, ``chosen`` configurations, ``timing_ms``,
    ``config``, ``scale``, ``device``, ``model`` (the prior's stored quality) and the example;
    ``rloo``: RLOO's evaluation data (its series with ``n_samples``, ``n_steps`` and
    ``evaluations``) and ``rloo_config``, or None; ``rloo_steps``: the data of the sensitivity
    stage (RLOO with ``N`` inner steps, ``S`` times the evaluations), or None."""
    evaluation = _stage(records, "eval")
    rloo = _stage(records, "eval_reinforce", optional=True)
    steps = _stage(records, "eval_reinforce_steps", optional=True)
    units = units_from_records(records)
    config = evaluation["config"]
    timing, _ = _timing(records)
    chosen = {**config["chosen"], **(rloo["config"]["chosen"] if rloo else {})}
    return {"units": units, "tuning": tuning_rows(records), "timing_ms": timing,
            "verdicts": verdicts_from_units(EXPERIMENT, units, JUDGED,
                                            budgets={m.name: config["n_inner"] for m in JUDGED}),
            "chosen": chosen, "config": config, "scale": config["scale"],
            "device": evaluation["data"]["device"], "model": evaluation["data"]["model"],
            "eval": evaluation["data"], "rloo": rloo["data"] if rloo else None,
            "rloo_config": rloo["config"] if rloo else None,
            "rloo_steps": steps["data"] if steps else None}


def write(records: list[dict[str, Any]], proto: Protocol, folder: Path) -> list[Verdict]:
    """Write the four tables of the experiment from its records; return the verdicts."""
    timing, knobs = _timing(records)
    extra = timing_rows(EXPERIMENT, "timing", {k: v for k, v in timing.items()
                                               if k in ESTIMATOR_NAMES}, knobs)
    return write_results(EXPERIMENT, units_from_records(records), JUDGED, tuning_rows(records),
                         extra_rows=extra, budgets={m.name: list(proto.n_inner) for m in JUDGED},
                         root=folder)


def shown_summary(scale: str, *, device: torch.device | str | None = None) -> dict[str, Any]:
    """What a chapter shows: the stored full-scale results when they were made under the current
    protocol (records, and ``units.csv`` / ``verdicts.csv`` / ``tuning.csv`` read back), else the
    protocol of ``scale`` run now in memory (verdicts by the same rule). Key ``stored`` says which;
    ``old_files`` counts stored records of another protocol (not shown)."""
    folder = runtime.results_dir(EXPERIMENT)
    full = protocol("full")
    records = load_records(folder, "full")
    by_stage = {r["config"].get("stage"): r for r in records}
    stages = ("tune", "eval", "timing", "tune_reinforce", "eval_reinforce", "timing_reinforce",
              "eval_reinforce_steps")
    current = (all(s in by_stage for s in stages)
               and by_stage["tune"]["config"] == full.as_config(
                   "tune", estimators=list(PATHWISE))
               and by_stage["tune_reinforce"]["config"]["estimators"] == [RLOO]
               and all((folder / f).is_file() for f in ("units.csv", "verdicts.csv",
                                                         "tuning.csv")))
    if current:
        summary = summarise(records)
        summary.update(units=read_units(EXPERIMENT, folder),
                       verdicts=read_verdicts(EXPERIMENT, folder),
                       tuning=read_tuning(EXPERIMENT, folder), stored=True, old_files=0)
        return summary
    summary = summarise(run(protocol(scale), save=False, device=device))
    summary.update(stored=False, old_files=len(records))
    return summary


def measure_throughput(proto: Protocol, *, device: torch.device | str | None = None,
                       shrink: int = 10) -> dict[str, float]:
    """Projected seconds of the full run of ``proto`` on ``device`` (keys ``tune``, ``eval``,
    ``total``). Every unmasking step has the same shapes, so each guided stage is timed with one
    unmasking step, once with no inner step (the denoiser, the metrics) and once with every
    budget divided by ``shrink`` (which adds the inner steps), and projected as
    ``T * (t_0 + shrink * (t_1 - t_0))``. Nothing is saved."""
    dev = torch.device(device) if device is not None else runtime.device()
    out: dict[str, float] = {}
    estimators = list(PATHWISE)
    chosen = {name: tuning_configs(proto, name)[0] for name in estimators}

    def timed(p: Protocol, stage: str) -> float:
        tic = time.perf_counter()
        if stage == "tune":
            run_tuning(p, estimators, seed=0, device=dev)
        else:
            run_eval(p, chosen, seed=0, device=dev)
        return time.perf_counter() - tic

    for stage in ("tune", "eval"):
        base = replace(proto, n_unmask_steps=1)
        small = replace(base, n_inner=tuple(sorted({max(1, n // shrink) for n in proto.n_inner})),
                        tune_n_inner=max(1, proto.tune_n_inner // shrink))
        # greedy only: as in the full stage but with the inner steps removed
        t_0 = timed(replace(small, n_inner=tuple(range(1, len(small.n_inner) + 1)),
                            tune_n_inner=1), stage)
        t_1 = timed(small, stage)
        out[stage] = proto.n_unmask_steps * (t_0 + shrink * max(t_1 - t_0, 0.0))
    out["timing"] = 6.0 * len(estimators) * 0.2
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES)
    try:
        records = run(cli.proto, cli.estimators, out=cli.folder, seed=cli.args.seed,
                      device=cli.device, max_minutes=cli.args.max_minutes)
    except ValueError as error:
        cli.fail(error)
    done = [r for r in records if r["data"].get("stage") in ("eval", "eval_reinforce")]
    expected = int(any(e != RLOO for e in cli.estimators)) + int(RLOO in cli.estimators)
    if any(r["data"]["stage"] == "eval" for r in done):
        summary = summarise(records)
        for v in summary["verdicts"]:
            if v.headline and v.budget == max(summary["config"]["n_inner"]):
                print(v.sentence())
    return cli.finish(len(done), expected, "evaluation stages")


if __name__ == "__main__":
    raise SystemExit(main())
