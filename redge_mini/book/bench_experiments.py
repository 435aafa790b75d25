"""The bench's four learning experiments: the discrete VAE, Sudoku, masked-diffusion guidance and
image guidance, run for a registered estimator beside the book's (used by :mod:`.bench`).

Each experiment module's own public functions do the work (``protocol``, ``run``,
``run_tuning``, the record-to-unit functions), so the new estimator meets exactly the book's
protocol: the same number of tuning configurations, drawn by the same search
(:func:`~.experiments.tuning.sample_configs` over the experiment's learning-rate axis and the
knobs that have a finite range), the same tuning units and choice rule, the same evaluation
units, and the verdicts of :func:`~.experiments.verdicts.write_results` with the experiment's
metrics, margins and budgets. The modules know only the book's estimators (a tuple of names read
at import, and :data:`~.experiments.tuning.KNOB_SPACE`), so :func:`known_to_experiments` adds
the new one to both for the duration of its own runs and takes it out afterwards; the book's
reruns happen before, with nothing patched, and so are byte for byte the module's own small run.

The book's estimators come from ``book/results/<experiment>`` at the full scale (checked to be
of the current protocol, else a :class:`~.bench.BenchError` before any run), and from a rerun of
the module's small protocol into ``book_dir`` at the small scale (resumable: a second bench run
reads them back). The new estimator's records are written beside its tables, never into the
book's results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import registry
from ..validation import Knob

__all__ = ["ExperimentResult", "LEARNING", "axes_of", "cost_rows", "known_to_experiments",
           "preflight",
           "run_experiment", "stored_records", "stored_seconds"]

#: The learning experiments this module runs (polynomial programming is in :mod:`.bench`).
LEARNING: tuple[str, ...] = ("vae", "sudoku", "mdm_guidance", "image_guidance")


class _Mismatch(ValueError):
    """The stored full results were made under another protocol."""


def axes_of(knobs: Mapping[str, Knob | registry.Choice]) -> tuple[dict, dict]:
    """Search axes of the knobs with a finite range (log scale when the range spans a factor of
    10 or more above 0), and the knobs kept at their defaults (no finite range given)."""
    from .experiments.tuning import Axis

    axes, fixed = {}, {}
    for key, knob in knobs.items():
        if isinstance(knob, registry.Choice):
            axes[key] = Axis(choices=tuple(knob.choices))
        elif not (math.isfinite(knob.low) and math.isfinite(knob.high)) or knob.low == knob.high:
            fixed[key] = knob.default
        elif knob.integer:
            axes[key] = Axis(choices=tuple(range(int(math.ceil(knob.low)),
                                                 int(math.floor(knob.high)) + 1)))
        else:
            axes[key] = Axis(knob.low, knob.high,
                             log=knob.low > 0 and knob.high >= 10 * knob.low)
    return axes, fixed


@contextmanager
def known_to_experiments(name: str, modules: Sequence[Any]) -> Iterator[dict]:
    """Make registered estimator ``name`` known to the experiment ``modules`` for a while: its
    search axes in :data:`~.experiments.tuning.KNOB_SPACE` (inserted last, so the seeds the
    modules derive from an estimator's position give it a seed of its own and leave the book's
    unchanged) and its name at the end of each module's ``ESTIMATOR_NAMES``. Yields the knobs
    kept at their defaults; everything is restored on exit."""
    from .experiments import tuning

    if name in tuning.KNOB_SPACE:
        raise ValueError(f"{name!r} already has a search space; pick another name")
    axes, fixed = axes_of(registry.get_spec(name).knobs)
    saved = {m: m.ESTIMATOR_NAMES for m in modules}
    tuning.KNOB_SPACE[name] = axes
    try:
        for m in modules:
            m.ESTIMATOR_NAMES = (*(n for n in saved[m] if n != name), name)
        yield fixed
    finally:
        tuning.KNOB_SPACE.pop(name, None)
        for m, names in saved.items():
            m.ESTIMATOR_NAMES = names


class ExperimentResult:
    """What one experiment gave: its verdicts and tuning rows (all series), the scale, where
    the book's estimators came from, and the new estimator's stage seconds."""

    def __init__(self, experiment: str, verdicts: list, tuning: list, scale: str,
                 book_source: str, seconds: float, fixed: dict) -> None:
        self.experiment, self.verdicts, self.tuning = experiment, verdicts, tuning
        self.scale, self.book_source, self.seconds, self.fixed = scale, book_source, seconds, fixed


def _book_names(module: Any, name: str) -> list[str]:
    return [n for n in module.ESTIMATOR_NAMES if n != name]


def _check(records: list[dict], expected: Mapping[str, Any], experiment: str) -> None:
    """Raise :class:`_Mismatch` unless every record's config has the ``expected`` values."""
    if not records:
        raise _Mismatch(f"no stored full-scale records of {experiment} in book/results; run "
                        f"python -m redge_mini.book.experiments.{experiment} --scale full first")
    for r in records:
        config = json.loads(json.dumps(r["config"]))
        for key, value in json.loads(json.dumps(dict(expected))).items():
            if key in config and config[key] != value:
                raise _Mismatch(f"the stored {experiment} record {r.get('name')} has {key} = "
                                f"{config[key]!r}, the current full protocol {value!r}: rerun "
                                "the book's full protocol first")


def _stage_of(record: dict) -> str:
    return record["config"].get("stage") or record["config"].get("kind") or ""


def _save(records: list[dict], folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        stem = r["name"] if r["name"].endswith(f"_{name}") else f"{r['name']}_{name}"
        (folder / f"{stem}.json").write_text(json.dumps(r, indent=1, default=str),
                                             encoding="utf-8")


def stored_records(experiment: str, proto: Any) -> list[dict]:
    """The book's stored full-scale records of ``experiment``, checked to be of ``proto`` (the
    current full protocol); :class:`_Mismatch` if they are missing or of another protocol."""
    from importlib import import_module

    from .experiments import load_records
    from .runtime import results_dir

    m = import_module(f".experiments.{experiment}", __package__)
    folder = results_dir(experiment)
    if experiment == "vae":
        records, expected = load_records(folder, "full"), proto.base_config()
    elif experiment == "sudoku":
        records, expected = m.current_records(folder, "full"), asdict(proto)
    elif experiment == "mdm_guidance":
        records = load_records(folder, "full")
        expected = {k: v for k, v in asdict(proto).items() if k != "scale"}
    else:
        records = m.run(proto, load_only=True)  # only the records of this protocol
        expected = {"scale": proto.scale}
    if not any("eval" in (_stage_of(r), r["data"].get("stage")) for r in records):
        raise _Mismatch(f"no stored full-scale {experiment} evaluation of the current protocol "
                        f"in {folder}; run python -m redge_mini.book.experiments.{experiment} "
                        "--scale full first")
    _check(records, expected, experiment)
    return records


def preflight(experiments: Sequence[str], scale: str, smoke: bool = False) -> None:
    """At the full scale, check the stored results of every experiment before any run."""
    from importlib import import_module

    from .bench import BenchError

    if scale != "full" or smoke:
        return
    if "polyprog" in experiments:
        from .runtime import results_dir

        if not (results_dir("polyprog") / "units.csv").is_file():
            raise BenchError(f"no stored full-scale polyprog results in {results_dir('polyprog')}"
                             "; run python -m redge_mini.book.experiments.polyprog --scale full "
                             "first")
    for experiment in experiments:
        if experiment in _RUNNERS:
            m = import_module(f".experiments.{experiment}", __package__)
            try:
                stored_records(experiment, m.protocol("full"))
            except _Mismatch as error:
                raise BenchError(str(error)) from None


def cost_rows(experiment: str, measure: Callable[[], Mapping[str, float]],
              knobs: Mapping[str, Mapping[str, Any]]) -> list:
    """``ms_per_step`` summary rows of the new estimator and Straight-Through: ``measure()``
    is the experiment's own interleaved timing of one step (milliseconds by estimator)."""
    from .experiments import summary

    ms = measure()
    saved = summary.ESTIMATOR_NAMES  # names read at import: the new one is not among them
    summary.ESTIMATOR_NAMES = (*saved, *(n for n in ms if n not in saved))
    try:
        return summary.timing_rows(experiment, "timing", ms,
                                   {k: v for k, v in knobs.items() if k in ms})
    finally:
        summary.ESTIMATOR_NAMES = saved


def _block(proto: Any) -> float:
    return 0.2 if proto.scale == "full" else 0.01  # as the modules time their own scales


def _without_lr(config: Mapping[str, Any]) -> dict:
    return {k: v for k, v in config.items() if k != "lr"}


def _book_side(m: Any, proto: Any, name: str, scale: str, smoke: bool, book_dir: Path,
               **run_kwargs: Any) -> tuple[list[dict], str]:
    """The book's records to judge against, and where they come from: the stored full results
    at ``--scale full``, else the book's estimators rerun at ``proto`` into ``book_dir``."""
    if scale == "full" and not smoke:
        return (stored_records(m.EXPERIMENT, proto),
                f"stored full results (book/results/{m.EXPERIMENT})")
    return (m.run(proto, _book_names(m, name), out=book_dir, **run_kwargs),
            f"the book's {proto.scale} protocol, rerun into {book_dir}")


# ----------------------------------------------------------------------------- experiments


def _vae(name: str, scale: str, book_dir: Path, smoke: bool, out: Path) -> tuple:
    import torch

    from .experiments import vae as m
    from .experiments.verdicts import write_results

    proto = m.protocol(scale, smoke=smoke)
    book_records, source = _book_side(m, proto, name, scale, smoke, book_dir, cost=False)
    book_records = [r for r in book_records if _stage_of(r) != "cost"]  # timed here, below
    series = sum(_stage_of(r).startswith("eval") for r in book_records)
    with known_to_experiments(name, [m]) as fixed:
        # seed offsets past the book's stage seeds: its own estimator noise, same units
        user = m.run(proto, [name], seed=series, save=False, cost=False)
        result = m.results(book_records + user)
        knobs = {"st": {}, name: _without_lr(next(r["data"]["chosen"] for r in user
                                                  if _stage_of(r) == "tune"))}

        def measure() -> dict[str, float]:
            from .datasets import load_mnist_5k

            tensors = load_mnist_5k(n_train=proto.n_train, n_valid=proto.n_valid,
                                    n_test=proto.n_test, seed=proto.data_seed,
                                    ).tensors(torch.device("cpu"))
            seconds = m.run_cost(proto, list(knobs), knobs, tensors, seed=1000)["seconds"]
            return {e: 1000.0 * s for e, s in seconds.items()}

        verdicts = write_results(m.EXPERIMENT, result["units"], m.METRICS, result["tuning"],
                                 budgets=result["budgets"], root=out,
                                 extra_rows=cost_rows(m.EXPERIMENT, measure, knobs))
    return verdicts, result["tuning"], source, user, fixed


def _sudoku(name: str, scale: str, book_dir: Path, smoke: bool, out: Path) -> tuple:
    import torch

    from .experiments import sudoku as m
    from .experiments.verdicts import write_results

    proto = m.protocol(scale, smoke=smoke)
    book_records, source = _book_side(m, proto, name, scale, smoke, book_dir)
    with known_to_experiments(name, [m]) as fixed:
        user = [r for r in m.run(proto, [name], save=False)
                if r["data"].get("stage") in ("tune", "eval")]
        records = [r for r in book_records if r["data"].get("stage") != "timing"] + user
        tune = next(r["data"] for r in user if r["data"].get("stage") == "tune")
        knobs = {"st": {}, name: _without_lr(tune["configs"][tune["chosen"]]["config"])}
        tuning = m.tuning_rows(records)
        steps = records[0]["config"]["steps"]
        verdicts = write_results(
            m.EXPERIMENT, m.units_of(records), m.METRICS, tuning,
            budgets={j.name: [steps] for j in m.METRICS}, root=out,
            extra_rows=cost_rows(m.EXPERIMENT, lambda: m.time_steps(
                proto, knobs, torch.device("cpu"), block_s=_block(proto)), knobs))
    return verdicts, tuning, source, user, fixed


def _merge_mdm(book: list[dict], user: list[dict], name: str) -> list[dict]:
    """The book's one tuning and one evaluation record with the new estimator's entries added
    (the module batches every estimator into one record per stage)."""
    def one(records: list[dict], stage: str) -> dict:
        found = [r for r in records if r["data"].get("stage") == stage]
        if len(found) != 1:
            raise ValueError(f"expected one {stage} record, got {len(found)}")
        return json.loads(json.dumps(found[0]))

    tune, evaluation = one(book, "tune"), one(book, "eval")
    tune["data"]["estimators"][name] = one(user, "tune")["data"]["estimators"][name]
    evaluation["data"]["series"] += [s for s in one(user, "eval")["data"]["series"]
                                     if s["estimator"] == name]
    evaluation["config"]["chosen"][name] = tune["data"]["estimators"][name]["configs"][
        tune["data"]["estimators"][name]["chosen"]]
    # the book's other stages (e.g. RLOO's own tuning and evaluation) as they are; no timing
    rest = [r for r in book if r["data"].get("stage") not in ("tune", "eval")
            and not str(r["data"].get("stage", "")).startswith("timing")]
    return [tune, evaluation, *rest]


def _mdm(name: str, scale: str, book_dir: Path, smoke: bool, out: Path) -> tuple:
    import torch

    from .experiments import mdm_guidance as m
    from .experiments.verdicts import write_results

    proto = m.protocol(scale, smoke=smoke)
    book_records, source = _book_side(m, proto, name, scale, smoke, book_dir)
    with known_to_experiments(name, [m]) as fixed:
        user = [r for r in m.run(proto, [name], save=False)
                if r["data"].get("stage") in ("tune", "eval")]
        records = _merge_mdm(book_records, user, name)
        tuning = m.tuning_rows(records)
        mine = records[0]["data"]["estimators"][name]  # records[0]: the merged tuning
        knobs = {"st": {"lr": 0.1}, name: mine["configs"][mine["chosen"]]}
        verdicts = write_results(
            m.EXPERIMENT, m.units_from_records(records), m.JUDGED, tuning,
            budgets={j.name: list(proto.n_inner) for j in m.JUDGED}, root=out,
            extra_rows=cost_rows(m.EXPERIMENT, lambda: m.time_inner_steps(
                proto, knobs, torch.device("cpu"), block_s=_block(proto)), knobs))
    return verdicts, tuning, source, user, fixed


def _image(name: str, scale: str, book_dir: Path, smoke: bool, out: Path) -> tuple:
    from .experiments import image_guidance as m
    from .experiments import make_record
    from .experiments.verdicts import write_results

    proto = m.protocol(scale, smoke=smoke)
    models = m.load_image_models()
    book_records, source = _book_side(m, proto, name, scale, smoke, book_dir, models=models)
    book_records = [r for r in book_records if _stage_of(r) != "timing"]  # timed below
    seed = book_records[0]["seed"]  # the unit key holds the seed: the book's, to pair
    with known_to_experiments(name, [m]) as fixed:
        tuned = m.run_tuning(models, proto, name, seed=seed)
        config = proto.config("tune", estimator=name, n_tune=proto.n_tune,
                              budget=proto.tune_budget, configs=proto.search(name))
        user = [make_record(m.EXPERIMENT, f"{proto.scale}_tune_{name}", config, seed, tuned)]
        chosen = user[0]["data"]["chosen"]
        evaluated = m.run_evaluation(models, proto, name, chosen, seed=seed)
        config = proto.config("eval", estimator=name, n_eval=proto.n_eval, knobs=chosen,
                              budgets=list(proto.budgets))
        user.append(make_record(m.EXPERIMENT, f"{proto.scale}_eval_{name}", config, seed,
                                evaluated))
        records = book_records + user
        tuning = m.tuning_rows(records)
        knobs = {"st": {"lr": 1.0}, name: chosen}
        verdicts = write_results(
            m.EXPERIMENT, m.units_from_records(records), proto.metrics(), tuning,
            budgets=proto.judged_budgets(), root=out,
            extra_rows=cost_rows(m.EXPERIMENT, lambda: m.time_inner_steps(
                models, proto, knobs, block_s=_block(proto)), knobs))
    return verdicts, tuning, source, user, fixed


_RUNNERS: dict[str, Callable[..., tuple]] = {
    "vae": _vae, "sudoku": _sudoku, "mdm_guidance": _mdm, "image_guidance": _image}


def run_experiment(experiment: str, name: str, *, scale: str, out: str | Path,
                   smoke: bool = False) -> ExperimentResult:
    """Run ``experiment`` (one of :data:`LEARNING`) for registered estimator ``name`` beside the
    book's estimators; write its four tables and the new estimator's records to
    ``out/<experiment>/`` (the book's small reruns go to ``out/<experiment>_book/``)."""
    import time

    from .bench import BenchError

    if experiment not in _RUNNERS:
        raise BenchError(f"experiment must be one of {LEARNING}, got {experiment!r}")
    out = Path(out)
    start = time.perf_counter()
    try:
        verdicts, tuning, source, user, fixed = _RUNNERS[experiment](
            name, scale, out / f"{experiment}_book", smoke, out / experiment)
    except _Mismatch as error:
        raise BenchError(str(error)) from None
    _save(user, out / experiment / "records", name)
    return ExperimentResult(experiment, verdicts, tuning, scale, source,
                            time.perf_counter() - start, fixed)


def stored_seconds(experiment: str) -> float | None:
    """Seconds of the stored full run of ``experiment``: the sum over its attempts in
    ``book/results/manifest.json`` (a resumed or extended run adds an attempt)."""
    from .runtime import results_dir

    path = results_dir(experiment).parent / "manifest.json"
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        return float(sum(a["seconds"] for a in runs[f"full/{experiment}"]["attempts"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
