"""Command-line entry points for the full-scale experiments, and the helpers they share.

Run ``python -m redge_mini.book.experiments.<name> --help``, or all five one after another with
``python -m redge_mini.book.experiments.run_all --scale full``. Each script is a thin layer over
the matching :mod:`redge_mini.book.tasks` module and writes small JSON result files through
:func:`redge_mini.book.runtime.save_results` into ``book/results/<name>/``.

Shared here: the command line (:func:`parse_cli`), the run loop of resumable, deadline-bound
stages (:class:`Stages`, built on :func:`load_or_run`), the one record type every stage stores
(:func:`make_record`) and reading stored records back (:func:`load_records`). Per-unit results
and the one verdict rule live in :mod:`.verdicts`, the equal-budget search in :mod:`.tuning`. By
convention a script also offers ``write_summary_csv(folder, scale)`` (regenerate ``summary.csv``
and the other tables from the stored files) and ``measure_throughput(proto, device=...)``
(projected seconds, key ``"total"``), which :mod:`.run_all` calls when present.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import runtime

__all__ = [
    "REDGE_FAMILY",
    "CommandLine",
    "Deadline",
    "Stages",
    "add_common_arguments",
    "add_summarise_option",
    "check_seed_split",
    "compact",
    "existing_result",
    "knob_text",
    "load_or_run",
    "load_records",
    "make_record",
    "mean_se",
    "parse_cli",
    "parse_estimators",
    "resolve_device",
]

#: The estimators built on the ReDGE sampler, compared as a group against the best other one.
REDGE_FAMILY: tuple[str, ...] = ("redge", "redge_cov", "reindge")

_KNOB_SYMBOLS = {"tau": "τ", "t_1": "t₁", "n_steps": "n"}


def knob_text(knobs: dict[str, Any], lr: float | None = None, *, lr_unit: str = "") -> str:
    """Short display of an estimator's knobs, e.g. ``"n=3, t₁=0.9, lr=0.1"``; ``"—"`` if none.

    ``lr`` (a step size) is appended when given, followed by ``lr_unit`` (e.g. ``"/N"``).
    """
    parts = [f"{_KNOB_SYMBOLS.get(k, k)}={v:g}" for k, v in knobs.items()]
    if lr is not None:
        parts.append(f"lr={lr:g}{lr_unit}")
    return ", ".join(parts) or "—"


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error ``std / sqrt(n)`` (``ddof = 1``) of ``values``; SE is NaN for n=1."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("values must not be empty")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
    return mean, math.sqrt(var / n)


def compact(value: Any, digits: int = 5) -> Any:
    """Round every float inside nested lists / dicts / tensors to ``digits`` significant digits.

    Keeps result files small; NaN and infinities are kept as they are.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: compact(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [compact(v, digits) for v in value]
    return value


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"`` (which must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda")
    raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every experiment script accepts."""
    parser.add_argument("--scale", choices=("small", "full"), default=None,
                        help="protocol size (default: REDGE_SCALE, else full on CUDA, "
                        "small on CPU)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the result files (default: book/results/<experiment>)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--estimators", default=None,
                        help="comma-separated estimator names (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new run after this many minutes; rerun to resume")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, same code path: checks the script end to end")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (torch.set_num_threads); run_all fixes it")


def parse_estimators(text: str | None, allowed: Sequence[str]) -> list[str]:
    """Split ``--estimators``; refuse unknown names with the list of valid ones."""
    if text is None:
        return list(allowed)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--estimators is empty")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(allowed)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--estimators lists a name twice: {names}")
    return names


class Deadline:
    """A wall-clock budget: ``expired()`` once ``minutes`` have passed (never when None)."""

    def __init__(self, minutes: float | None) -> None:
        if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
            raise ValueError(f"--max-minutes must be a positive number, got {minutes}")
        self.minutes = minutes
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def expired(self) -> bool:
        """Whether the budget is spent."""
        return self.minutes is not None and self.elapsed() > 60.0 * self.minutes


def existing_result(folder: Path, name: str, config: dict[str, Any]) -> bool:
    """Whether ``folder/name.json`` already holds a finished run of ``config``.

    Returns False when the file is absent. Raises ValueError when it exists but was made with
    another configuration, so a resumed run never mixes protocols silently.
    """
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        return False
    stored = json.loads(path.read_text(encoding="utf-8")).get("config")
    normalised = json.loads(json.dumps(config))
    if stored != normalised:
        raise ValueError(
            f"{path} was written with a different configuration; delete it or choose another "
            f"--out folder.\n stored: {stored}\n now:    {normalised}"
        )
    return True


@dataclass(frozen=True)
class CommandLine:
    """A validated command line of an experiment script (see :func:`parse_cli`)."""

    name: str
    parser: argparse.ArgumentParser
    args: argparse.Namespace
    proto: Any
    estimators: list[str]
    device: torch.device
    folder: Path
    start: float

    def fail(self, error: Exception) -> None:
        """Exit with status 2 and ``error`` (a problem found while running, e.g. a stale file)."""
        self.parser.exit(2, f"{self.parser.prog}: error: {error}\n")

    def finish(self, done: int, expected: int, what: str) -> int:
        """Print the closing line; exit status 0 if all ``expected`` items are done, else 3."""
        print(f"{self.name} ({self.proto.scale}, {self.device}): {done}/{expected} {what} in "
              f"{self.folder}, {time.perf_counter() - self.start:.1f} s")
        return 0 if done == expected else 3  # 3: unfinished, rerun to resume


def check_seed_split(tune_seeds: Sequence[int], eval_seeds: Sequence[int],
                     estimators: Sequence[str], known: Sequence[str]) -> None:
    """The checks every protocol with disjoint tuning and evaluation seeds makes: each holds at
    least two distinct seeds, they share none, and every estimator is one of ``known``
    (ValueError naming the field)."""
    for name, seeds in (("tune_seeds", tune_seeds), ("eval_seeds", eval_seeds)):
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(f"{name} must hold at least two distinct seeds, got {seeds}")
    if set(tune_seeds) & set(eval_seeds):
        raise ValueError("tune_seeds and eval_seeds must be disjoint")
    unknown = [e for e in estimators if e not in known]
    if unknown:
        raise ValueError(f"estimators names unknown estimator(s) {unknown}")


def add_summarise_option(parser: argparse.ArgumentParser) -> None:
    """``--summarise``: only rewrite the CSV tables from the stored result files (an ``extra``
    of :func:`parse_cli` for the experiments that support it)."""
    parser.add_argument("--summarise", action="store_true",
                        help="only rewrite the CSV tables from the stored result files")


def parse_cli(
    name: str,
    doc: str,
    argv: list[str] | None,
    protocol: Callable[..., Any],
    estimator_names: Sequence[str],
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> CommandLine:
    """Parse and check the common options of experiment ``name`` (its module ``doc`` gives the
    description); ``extra`` adds script-specific options.

    Builds ``protocol(scale, smoke=...)``, checks ``--estimators`` against ``estimator_names``,
    ``--device``, ``--seed`` and ``--max-minutes``; a bad value ends the program with argparse's
    usage error (status 2). The clock of :meth:`CommandLine.finish` starts on return.
    """
    parser = argparse.ArgumentParser(prog=f"python -m redge_mini.book.experiments.{name}",
                                     description=doc.split("\n\n")[0])
    add_common_arguments(parser)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        proto = protocol(args.scale or runtime.scale(), smoke=args.smoke)
        estimators = parse_estimators(args.estimators, estimator_names)
        device = resolve_device(args.device)
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        Deadline(args.max_minutes)
    except ValueError as error:
        parser.error(str(error))
    folder = args.out if args.out is not None else runtime.results_dir(name)
    return CommandLine(name=name, parser=parser, args=args, proto=proto, estimators=estimators,
                       device=device, folder=folder, start=time.perf_counter())


def make_record(experiment: str, name: str, config: dict[str, Any], seed: int,
                data: dict[str, Any], device: torch.device | str | None = None,
                ) -> dict[str, Any]:
    """The one record type every experiment stores (and :func:`load_or_run` returns).

    Keys ``experiment``, ``name``, ``config``, ``seed``, ``metadata`` (software, hardware and
    time of :func:`~redge_mini.book.runtime.run_metadata`, with ``device`` and ``device_name``
    of the device the computation actually ran on when ``device`` is given) and ``data``
    (rounded by :func:`compact`).
    """
    return {"experiment": experiment, "name": name, "config": config, "seed": seed,
            "metadata": runtime.run_metadata(device, run_scale=config.get("scale")),
            "data": compact(data)}


def load_records(folder: str | Path, scale: str) -> list[dict[str, Any]]:
    """Every stored record ``<folder>/<scale>_*.json`` (sorted by name); ``[]`` if none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(folder.glob(f"{scale}_*.json"))]


class Stages:
    """The run loop shared by the experiment scripts: resumable, deadline-bound stages.

    ``stages.run(name, config, compute)`` returns the stored record ``<folder>/<name>.json``
    when it holds a finished run of ``config``; otherwise, unless the deadline has passed,
    calls ``compute()`` for the record's ``data``, wraps it with :func:`make_record`, saves it
    at once (``save=True``) and returns it. A stage interrupted by the deadline
    (:class:`~redge_mini.book.tasks.TrainingInterrupted`) is discarded with a note and gives
    None, so a rerun resumes with it. Every record returned is also kept in ``stages.records``.
    """

    def __init__(self, experiment: str, folder: str | Path, *, seed: int, save: bool = True,
                 max_minutes: float | None = None, device: torch.device | str | None = None,
                 verbose: bool = False) -> None:
        self.experiment, self.folder = experiment, Path(folder)
        self.seed, self.save, self.device, self.verbose = seed, save, device, verbose
        self.deadline = Deadline(max_minutes)
        self.records: list[dict[str, Any]] = []

    def run(self, name: str, config: dict[str, Any],
            compute: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """One stage (see the class docstring)."""
        from ..tasks import TrainingInterrupted

        def make() -> dict[str, Any]:
            tic = time.perf_counter()
            record = make_record(self.experiment, name, config, self.seed, compute(),
                                 self.device)
            if self.verbose:
                print(f"{self.experiment}: {name} done in {time.perf_counter() - tic:.1f} s "
                      f"({self.deadline.elapsed():.0f} s since start)", file=sys.stderr)
            return record

        try:
            record = load_or_run(self.experiment, self.folder, name, config, make,
                                 seed=self.seed, save=self.save, deadline=self.deadline)
        except TrainingInterrupted:
            print(f"{self.experiment}: --max-minutes reached during {name}, which was discarded "
                  "(rerun to resume)", file=sys.stderr)
            return None
        if record is not None:
            self.records.append(record)
        return record


def load_or_run(
    experiment: str,
    folder: Path,
    name: str,
    config: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
    *,
    seed: int,
    save: bool,
    deadline: Deadline,
    what: str | None = None,
) -> dict[str, Any] | None:
    """One resumable piece of an experiment: its stored record, a fresh one, or None.

    With ``save=True`` and ``folder/name.json`` holding a finished run of ``config`` (see
    :func:`existing_result`), that record is loaded. Otherwise, once ``deadline`` has expired,
    nothing is run: a note naming ``what`` (default ``name``) goes to stderr and None is
    returned. Otherwise ``compute()`` makes the record (with ``"data"`` and ``"config"``), which
    is saved at once when ``save`` is set, and returned.
    """
    if save and existing_result(folder, name, config):
        return json.loads((Path(folder) / f"{name}.json").read_text(encoding="utf-8"))
    if deadline.expired():
        print(f"{experiment}: --max-minutes reached, {what or name} not run (rerun to resume)",
              file=sys.stderr)
        return None
    record = compute()
    if save:
        runtime.save_results(experiment, name, record["data"], config=record["config"],
                             seed=seed, root=folder, metadata=record.get("metadata"))
    return record
