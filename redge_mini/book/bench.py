"""Bring your own estimator: benchmark it against the book's estimators with the book's rule.

``python -m redge_mini.book.bench MODULE:FUNCTION [--scale small|full] [--out DIR]``

``MODULE`` is a path to a ``.py`` file or an importable module name, ``FUNCTION`` a pathwise
estimator with torch's conventions, ``fn(logits, *knobs, hard=False, dim=-1, *,
generator=None)``. Its knobs are the parameters between ``logits`` and ``hard``, with their
defaults taken from the signature; an optional attribute ``fn.knobs`` maps a knob to its valid
range, a :class:`~redge_mini.Knob` or a ``(low, high)`` pair.

Before anything long runs, :func:`load_estimator` checks that the module imports, that the
function exists and has that signature, that ``hard=True`` gives one-hot samples of the logits'
shape that follow the generator, and that the gradients of a quick probe (moderate and extreme
logits) are finite; each failure stops with a :class:`BenchError` saying what is wrong. The
estimator is then registered (:func:`redge_mini.register`) for the run.

First runs the toy suite of chapter 6 ("Many problems"): the same random problems
(:func:`~redge_mini.book.toy.random_toy_problems`, seed 100) under the ``smooth``, ``logcosh``
and ``nonsmooth`` losses, with exact gradients by enumeration; for every estimator setting the
relative squared bias, the log relative variance and the log relative MSE at budgets of
``B = 1`` and ``B = 64`` evaluations of ``f`` (the score-function estimator exactly, as in the
chapter). The new estimator runs at its default knobs, as the book's estimators run at knobs
fixed in advance: the toy suite tunes nobody. The units are the problems, shared by all the
estimators (paired), and the verdicts come from
:func:`~redge_mini.book.experiments.verdicts.write_results`, the book's one rule, with the
margins of chapter 6.

Then the five experiments of part III (``--experiments`` picks among them): polynomial
programming (chapter 7, :func:`polyprog_units`), the discrete VAE, Sudoku, masked-diffusion and
image guidance (chapters 8-11, :mod:`.bench_experiments`). In each the new estimator is tuned with
the book's budget, search and seeds and judged against the book's estimators by the experiment's
own metrics, margins and budgets: at ``--scale small`` against the book's estimators rerun at the
module's small protocol on the same units (into ``DIR/<experiment>_book/``, resumable, so a
second bench run reads them back), at ``--scale full`` against the stored full results of
``book/results/<experiment>`` (checked to be of the current protocol before anything runs).

Written to ``DIR``: ``units.csv``, ``summary.csv``, ``verdicts.csv``, ``tuning.csv`` of the toy
suite (the knobs used, nothing tuned), the same four in ``DIR/<experiment>/`` per experiment
(the verdicts issue's format, Holm over every row of the experiment) with the new estimator's
records, and ``report.html`` (:mod:`.bench_report`: the synthesis chapter's tables and figures
for the new estimator; embedded, no network assets).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import inspect
import io
import math
import numbers
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import registry
from ..exact import gradient_diagnostics
from ..validation import Knob
from .bench_experiments import LEARNING, axes_of, preflight, run_experiment, stored_seconds
from .experiments.summary import knob_string
from .experiments.verdicts import Metric, TuningRow, Unit, Verdict, units_from_values, write_results
from .toy import random_toy_problems, reinforce_gradient_moments, stacked_gradients

__all__ = [
    "BOOK_SETTINGS",
    "BenchError",
    "EXPERIMENT",
    "EXPERIMENTS",
    "LOSSES",
    "METRICS",
    "SCALES",
    "BenchResult",
    "against",
    "full_seconds",
    "load_estimator",
    "main",
    "polyprog_units",
    "run_bench",
    "toy_units",
]

EXPERIMENT = "bench_toy"
#: What the bench can run: the toy suite and the five experiments of part III.
EXPERIMENTS = ("toy", "polyprog", *LEARNING)
#: How the report and the messages name each experiment.
LONG_NAMES = {"polyprog": "polynomial programming", "vae": "the discrete VAE",
              "sudoku": "Sudoku", "mdm_guidance": "masked-diffusion guidance",
              "image_guidance": "image guidance"}
LOSSES = ("smooth", "logcosh", "nonsmooth")
BUDGETS = (1, 64)
SUITE_SEED = 100  # chapter 6's suite
#: (problems, draws per problem) of each scale: chapter 6's numbers.
SCALES = {"small": (24, 1000), "full": (100, 4000)}
#: The book's settings of chapter 6's comparison at equal budgets (knobs fixed in advance).
BOOK_SETTINGS: tuple[tuple[str, dict], ...] = (
    ("st", {}), ("reinmax", {"tau": 1.0}), ("gumbel", {"tau": 0.5}),
    ("redge", {"t_1": 0.8, "n_steps": 5}), ("redge", {"t_1": 0.5, "n_steps": 5}),
    ("redge", {"t_1": 0.3, "n_steps": 5}), ("reindge", {"t_1": 0.5, "n_steps": 5}))
#: Declared before any run, as in chapter 6: MSE and variance on the log scale (margin: a
#: factor 1.25), the squared bias relative to ||grad F||^2 (margin 0.1).
METRICS = (Metric("log_mse", higher_is_better=False, margin=math.log(1.25), headline=True),
           Metric("log_variance", higher_is_better=False, margin=math.log(1.25)),
           Metric("bias2", higher_is_better=False, margin=0.1))
_FLOOR = 1e-12  # relative variance / MSE below this are recorded at it (a log needs > 0)
_SIGNATURE = "fn(logits, *knobs, hard=False, dim=-1, *, generator=None)"


class BenchError(ValueError):
    """Bad input to the bench, found before the long run; the message says what is wrong."""


# ------------------------------------------------------------------------ loading and checks


def _import(module: str):
    path = Path(module)
    try:
        if module.endswith(".py") or path.is_file():
            if not path.is_file():
                raise BenchError(f"module file {module!r} does not exist")
            spec = importlib.util.spec_from_file_location(f"_bench_user_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod  # as an import would (dataclasses, pickling need it)
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                del sys.modules[spec.name]
                raise
            return mod
        return importlib.import_module(module)
    except BenchError:
        raise
    except BaseException as error:  # noqa: BLE001 -- any failure of the user's import
        if isinstance(error, KeyboardInterrupt):
            raise
        raise BenchError(f"module {module!r} does not import: "
                         f"{type(error).__name__}: {error}") from error


def _knob_specs(fn: Callable, name: str) -> dict[str, Knob | registry.Choice]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise BenchError(f"{name} has no inspectable signature; it must be {_SIGNATURE}") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in positional]
    keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    if (not names or names[0] != "logits" or names[-2:] != ["hard", "dim"]
            or "generator" not in keyword_only):
        raise BenchError(f"{name} has the signature {inspect.signature(fn)}; it must be "
                         f"{_SIGNATURE} (logits first, then the knobs, then hard and dim, "
                         "and a keyword-only generator)")
    ranges = getattr(fn, "knobs", None) or {}
    if not isinstance(ranges, Mapping):
        raise BenchError(f"{name}.knobs must map each knob to a Knob or a (low, high) pair, got "
                         f"{type(ranges).__name__}")
    knob_params = positional[1:-2]
    unknown = sorted(set(ranges) - {p.name for p in knob_params})
    if unknown:
        raise BenchError(f"{name}.knobs names {unknown}, which are not knobs of its signature "
                         f"(knobs: {[p.name for p in knob_params]})")
    out: dict[str, Knob | registry.Choice] = {}
    for p in knob_params:
        if p.default is inspect.Parameter.empty:
            raise BenchError(f"knob {p.name!r} of {name} has no default; every knob needs one "
                             "(the bench runs the estimator at its defaults)")
        given = ranges.get(p.name)
        if isinstance(given, (Knob, registry.Choice)):
            out[p.name] = given
            continue
        default = p.default
        if isinstance(default, bool) or not isinstance(default, numbers.Real):
            raise BenchError(f"knob {p.name!r} of {name} has the default {default!r}; give a "
                             "number, or a registry.Choice in fn.knobs")
        low, high = -math.inf, math.inf
        if given is not None:
            try:
                low, high = (float(v) for v in given)
            except (TypeError, ValueError):
                raise BenchError(f"{name}.knobs[{p.name!r}] must be a Knob or a (low, high) "
                                 f"pair, got {given!r}") from None
        integer = isinstance(default, numbers.Integral)
        out[p.name] = Knob(int(default) if integer else float(default), low, high,
                           integer=integer)
        try:
            out[p.name].check(p.name, out[p.name].default)
        except (TypeError, ValueError) as error:
            raise BenchError(f"the default of knob {p.name!r} of {name} lies outside its range "
                             f"{out[p.name].range_string()}: {error}") from None
    return out


def _probe(fn: Callable, name: str) -> None:
    """Quick checks on (3, 5) logits: one-hot samples, the generator followed, finite grads."""
    for scale in (1.0, 30.0):  # moderate and extreme logits (valid extremes must not give NaN)
        logits = (scale * torch.randn(3, 5, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64)).requires_grad_(True)
        where = f"with logits of scale {scale:g}"
        try:
            out = fn(logits, hard=True, generator=torch.Generator().manual_seed(1))
            again = fn(logits, hard=True, generator=torch.Generator().manual_seed(1))
            soft = fn(logits, hard=False, generator=torch.Generator().manual_seed(1))
        except Exception as error:  # noqa: BLE001 -- report any failure of the user's code
            raise BenchError(f"{name}(logits, hard=...) raised {type(error).__name__}: "
                             f"{error} ({where})") from error
        for text, value in (("hard=True", out), ("hard=False", soft)):
            if not isinstance(value, torch.Tensor) or value.shape != logits.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise BenchError(f"{name}(logits, {text}) must return a tensor of the logits' "
                                 f"shape {tuple(logits.shape)}, got {shape}")
        detached = out.detach()
        if not (((detached == 0) | (detached == 1)).all()
                and (detached.sum(-1) == 1).all()):
            raise BenchError(f"{name}(logits, hard=True) is not one-hot along dim=-1 ({where}): "
                             f"its first row is {detached[0].tolist()}")
        if not torch.equal(detached, again.detach()):
            raise BenchError(f"{name} ignores its generator: two calls with generators of the "
                             "same seed gave different samples")
        if not out.requires_grad:
            raise BenchError(f"{name}(logits, hard=True) carries no gradient to the logits")
        weights = torch.randn(3, 5, generator=torch.Generator().manual_seed(2),
                              dtype=torch.float64)
        (grad,) = torch.autograd.grad((out * weights).sum(), logits, allow_unused=True)
        if grad is None:
            raise BenchError(f"{name}(logits, hard=True) carries no gradient to the logits")
        if not torch.isfinite(grad).all():
            raise BenchError(f"{name} gives NaN or infinite gradients on a quick probe "
                             f"({where}): {grad.tolist()}")


def load_estimator(target: str, name: str | None = None) -> tuple[str, Callable, dict]:
    """Import ``MODULE:FUNCTION`` and check it; return ``(name, fn, knobs)`` (not registered).

    Every failure is a :class:`BenchError` saying what is wrong. ``name`` defaults to the
    function's name; a name the registry already holds is refused.
    """
    if not isinstance(target, str) or ":" not in target:
        raise BenchError(f"the estimator must be given as MODULE:FUNCTION, got {target!r}")
    module, _, attr = target.rpartition(":")
    if not module or not attr:
        raise BenchError(f"the estimator must be given as MODULE:FUNCTION, got {target!r}")
    mod = _import(module)
    fn = getattr(mod, attr, None)
    if fn is None:
        found = sorted(k for k, v in vars(mod).items()
                       if callable(v) and not k.startswith("_") and not isinstance(v, type))
        raise BenchError(f"module {module!r} has no function {attr!r}; its functions: {found}")
    if not callable(fn):
        raise BenchError(f"{target} is a {type(fn).__name__}, not a function")
    name = attr if name is None else name
    if not isinstance(name, str) or not name.isidentifier():
        raise BenchError(f"the estimator's name must be a Python identifier, got {name!r}")
    if name in registry.ALL_ESTIMATORS or name == "exact":
        raise BenchError(f"the name {name!r} is taken by a registered estimator; pass another "
                         "with --name")
    knobs = _knob_specs(fn, attr)
    _probe(fn, attr)
    return name, fn, knobs


# ------------------------------------------------------------------------ the toy suite


def _relative_floor(x: float, norm2: float) -> float:
    return max(x / norm2, _FLOOR)


def toy_units(settings: Sequence[tuple[str, dict]], n_problems: int, draws: int, *,
              progress: bool = True) -> list[Unit]:
    """Units of chapter 6's toy suite for ``settings`` (registered names with knobs), plus
    the score-function estimator (exact). Setting ``i`` draws with the seeds ``1000 i + K``,
    as in chapter 6, so the book's settings reproduce the chapter's numbers at its scale."""
    from tqdm.auto import tqdm

    suites = {kind: random_toy_problems(n_problems, kind=kind, seed=SUITE_SEED)
              for kind in LOSSES}
    classes = sorted({p.K for p in suites["smooth"]})
    values: dict[tuple, dict] = defaultdict(dict)
    bar = tqdm(total=len(settings) * len(classes) + 1, desc="toy suite", disable=not progress)
    for i, (name, knobs) in enumerate(settings):
        sampler = registry.make_estimator(name, **knobs)
        text = knob_string(knobs)
        for K in classes:
            group = [(kind, p) for kind in LOSSES
                     for p, problem in enumerate(suites[kind]) if problem.K == K]
            blocks = stacked_gradients(sampler, [suites[k][p] for k, p in group], draws,
                                       generator=torch.Generator().manual_seed(1000 * i + K))
            for (kind, p), block in zip(group, blocks, strict=True):
                if not torch.isfinite(block).all():
                    raise BenchError(f"{name} gave NaN or infinite gradients on toy problem "
                                     f"{p} ({kind}, K = {K})")
                d = gradient_diagnostics(block, suites[kind][p].exact_gradient())
                norm2 = d["exact_norm"] ** 2
                bias2 = d["bias2_unbiased"]
                values[kind, name, text, "bias2", 1][0, str(p)] = bias2 / norm2
                values[kind, name, text, "log_variance", 1][0, str(p)] = math.log(
                    _relative_floor(d["variance"], norm2))
                for B in BUDGETS:
                    mse = max(bias2, 0.0) + d["variance"] / B
                    values[kind, name, text, "log_mse", B][0, str(p)] = math.log(
                        _relative_floor(mse, norm2))
            bar.update()
    for kind in LOSSES:  # REINFORCE at S = 1, RLOO at S = B: unbiased, variance exact
        for p, problem in enumerate(suites[kind]):
            for B in BUDGETS:
                moments = reinforce_gradient_moments(problem.f, problem.logits, B,
                                                     baseline="loo" if B > 1 else None)
                norm2 = float(moments.mean.square().sum())
                rel = _relative_floor(moments.variance, norm2)
                values[kind, "reinforce", "S=B", "log_mse", B][0, str(p)] = math.log(rel)
                if B == 1:
                    values[kind, "reinforce", "S=B", "log_variance", 1][0, str(p)] = math.log(rel)
                    values[kind, "reinforce", "S=B", "bias2", 1][0, str(p)] = 0.0
    bar.update()
    bar.close()
    return [u for (kind, name, text, metric, B), v in values.items()
            for u in units_from_values(EXPERIMENT, kind, name, text, metric, B, v)]


@dataclass
class BenchResult:
    """What :func:`run_bench` wrote: the new estimator's name, its verdicts and the files."""

    name: str
    knobs: dict
    verdicts: list[Verdict]
    out: Path
    seconds: float
    n_problems: int
    draws: int
    polyprog: list[Verdict] | None = None  # None when the experiment was not run
    scale: str = "small"
    #: experiment -> :class:`~.bench_experiments.ExperimentResult` of the four learning ones
    experiments: dict = field(default_factory=dict)
    polyprog_source: str = ""
    provenance: str = ""

    def table(self) -> list[dict]:
        """The new estimator's rows, oriented (new - rival), see :func:`against`."""
        return against(self.verdicts, self.name)

    def rows(self, experiment: str) -> list[dict]:
        """The new estimator's verdict rows in ``experiment``, oriented (new - rival)."""
        if experiment == "toy":
            return self.table()
        if experiment == "polyprog":
            return against(self.polyprog or [], self.name)
        return against(self.experiments[experiment].verdicts, self.name)

    @property
    def ran(self) -> list[str]:
        """The parts that ran, in book order (``"toy"`` first)."""
        done = {"toy", *self.experiments} | ({"polyprog"} if self.polyprog is not None else set())
        return [e for e in EXPERIMENTS if e in done]

    @property
    def knob_text(self) -> str:
        return knob_string(self.knobs)

    def ran_text(self) -> str:
        """What ran and what did not, in words."""
        ran = [LONG_NAMES[e] for e in self.ran if e != "toy"]
        missing = [LONG_NAMES[e] for e in EXPERIMENTS if e != "toy" and e not in self.ran]
        text = "the toy suite" + (", " + ", ".join(ran) if ran else "")
        if len(missing) == len(EXPERIMENTS) - 1:
            return text + "; not run: the five experiments of part III"
        return text + ("; not run: " + ", ".join(missing) if missing else
                       "; all five experiments of part III")

    def toy_text(self) -> str:
        return (f"{self.n_problems} random problems per loss, {self.draws} gradient draws per "
                "problem and estimator, exact gradients by enumeration; the book's settings at "
                "knobs fixed in advance, the new estimator at its defaults (nobody is tuned "
                "here, as in chapter 6); margins log 1.25 for log MSE and log variance, 0.1 "
                "for the relative squared bias; lower is better.")

    def experiment_info(self, experiment: str) -> str:
        """Where the book's series of ``experiment`` came from, and the time it took."""
        if experiment == "polyprog":
            return f"Scale {self.scale}; the book's estimators: {self.polyprog_source}."
        r = self.experiments[experiment]
        fixed = (f" Knobs without a finite range, kept at their defaults: "
                 f"{knob_string(r.fixed)}." if r.fixed else "")
        return (f"Scale {r.scale}; the book's estimators: {r.book_source}; {r.seconds:.0f} s "
                f"(the book's reruns included).{fixed}")

    @property
    def full_estimate(self) -> float:
        """Seconds the full protocols of the experiments that ran would take for the new
        estimator alone, from the stored full runs (their time / the number of series)."""
        parts = [e for e in self.ran if e != "toy"]
        return sum(full_seconds(e) for e in parts) if parts else math.nan

    def full_text(self) -> str:
        return ("At --scale full the new estimator runs the experiments' full protocols "
                "against the stored full results; from book/results/manifest.json (each "
                "stored run's seconds over its number of estimators, on the machine that made "
                f"it) that is about {self.full_estimate / 60:.0f} minutes for the experiments "
                "above.")


_FLIP = {"better": "worse", "worse": "better"}


def against(verdicts: Sequence[Verdict], name: str) -> list[dict]:
    """The verdicts of estimator ``name`` against every rival, oriented as ``name - rival``
    (a row where it is the ``rival`` is turned round: diff and interval negated, better and
    worse swapped). Each dict has setting, metric, budget, rival, n, diff, ci_low, ci_high,
    p_holm and verdict."""
    rows = []
    for v in verdicts:
        if v.base_estimator == name:
            sign, rival, word = 1.0, v.rival, v.verdict
            low, high = v.ci_low, v.ci_high
        elif v.base_rival == name:
            sign, rival, word = -1.0, v.estimator, _FLIP.get(v.verdict, v.verdict)
            low, high = -v.ci_high, -v.ci_low
        else:
            continue
        rows.append(dict(setting=v.setting, metric=v.metric, budget=v.budget, rival=rival,
                         n=v.n_units, diff=sign * v.diff, ci_low=low, ci_high=high,
                         p_holm=v.p_holm, verdict=word))
    return rows


def full_seconds(experiment: str) -> float:
    """One estimator's share of the stored full run of ``experiment`` (seconds), or 0."""
    seconds = stored_seconds(experiment)
    if seconds is None:
        return 0.0
    from .experiments.verdicts import read_tuning

    try:
        n = len({t.estimator for t in read_tuning(experiment)})
    except (OSError, ValueError):
        return 0.0
    return seconds / max(n, 1)


def _polyprog_source(scale: str, smoke: bool, out: Path) -> str:
    if scale == "full" and not smoke:
        return "stored full results (book/results/polyprog)"
    return f"the book's {scale} protocol, rerun into {out / 'polyprog_book'}"


def _provenance() -> str:
    """Commit, dirty flag and machine of this run, in words."""
    from . import runtime

    meta = runtime.run_metadata(None)
    commit = str(meta.get("git_commit") or "unknown")[:10]
    dirty = " (uncommitted changes)" if meta.get("git_dirty") else ""
    return (f"Commit {commit}{dirty}; {meta.get('device_name') or 'machine not recorded'}; "
            f"torch {meta.get('torch', torch.__version__)}.")


def _write_run(result: BenchResult, stage_seconds: dict, cpu_seconds: float,
               smoke: bool) -> Path:
    """``bench.json``: what ran, its wall and CPU seconds, and the run's software, hardware
    and commit (:func:`~.runtime.run_metadata`)."""
    import json

    from . import runtime

    record = {"estimator": result.name, "knobs": result.knobs, "scale": result.scale,
              "smoke": smoke, "experiments": result.ran, "toy_problems": result.n_problems,
              "toy_draws": result.draws, "wall_seconds": round(result.seconds, 1),
              "cpu_seconds": round(cpu_seconds, 1),
              "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
              "metadata": runtime.run_metadata(None)}
    path = result.out / "bench.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def run_bench(fn: Callable, name: str, knobs: Mapping | None = None, *, out: str | Path,
              scale: str = "small", n_problems: int | None = None, draws: int | None = None,
              progress: bool = True, label: str | None = None,
              experiments: Sequence[str] = ("toy",), smoke: bool = False) -> BenchResult:
    """Register ``fn`` as ``name`` for the run, run the toy suite for it and the book's
    settings, write the tables and the report to ``out``, unregister it; return the result.

    ``knobs`` is name -> :class:`~redge_mini.Knob` as for :func:`redge_mini.register`
    (``load_estimator`` builds it from the signature). ``n_problems`` / ``draws`` override the
    scale's numbers (tests, the how-to page). ``experiments`` lists what runs: ``"toy"`` (always)
    and ``"polyprog"``, ``"vae"``, ``"sudoku"``, ``"mdm_guidance"``, ``"image_guidance"`` (each
    at the scale's protocol, written to ``out/<experiment>``; the book's estimators rerun into
    ``out/<experiment>_book`` at the small scale; ``smoke`` shrinks them to seconds, for
    tests)."""
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown or "toy" not in experiments:
        raise BenchError(f"experiments must include 'toy' and be among {EXPERIMENTS}, got "
                         f"{list(experiments)}")
    if scale not in SCALES:
        raise BenchError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    n_default, d_default = SCALES[scale]
    n_problems = n_default if n_problems is None else n_problems
    draws = d_default if draws is None else draws
    for arg, value, low in (("n_problems", n_problems, 2), ("draws", draws, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BenchError(f"{arg} must be an integer >= {low}, got {value!r}")
    out = Path(out)
    preflight(experiments, scale, smoke)  # stored full results of the current protocol
    start, cpu_start = time.perf_counter(), time.process_time()
    stage_seconds: dict[str, float] = {}
    spec = registry.register(name, fn, knobs or {}, label=label, summary="bench: user's")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: one thread is faster (as in chapter 6)
    try:
        values = spec.defaults()
        units = toy_units([*BOOK_SETTINGS, (name, values)], n_problems, draws,
                          progress=progress)
        tuning = [TuningRow(EXPERIMENT, n, "", 1, 1, "fixed in advance (toy suite: no tuning)",
                            knob_string(k), False)
                  for n, k in [*BOOK_SETTINGS, (name, values)]]
        verdicts = write_results(EXPERIMENT, units, METRICS, tuning, root=out)
        stage_seconds["toy"] = time.perf_counter() - start
        pp_verdicts = None
        if "polyprog" in experiments:
            from .experiments import polyprog as pp

            pp_units, pp_tuning, budget, pp_cost = polyprog_units(
                name, scale=scale, book_dir=out / "polyprog_book", progress=progress,
                smoke=smoke)
            pp_verdicts = write_results(pp.EXPERIMENT, pp_units, pp.METRICS, pp_tuning,
                                        budgets={pp.HEADLINE.name: [budget]},
                                        root=out / "polyprog", extra_rows=pp_cost)
            stage_seconds["polyprog"] = time.perf_counter() - start - sum(
                stage_seconds.values())
        learning = [e for e in LEARNING if e in experiments]
        done = {}
        from tqdm.auto import tqdm

        bar = tqdm(learning, desc="experiments", disable=not progress or not learning)
        for experiment in bar:
            bar.set_postfix_str(experiment)
            done[experiment] = run_experiment(experiment, name, scale=scale, out=out,
                                              smoke=smoke)
            stage_seconds[experiment] = done[experiment].seconds
        bar.close()
        seconds = time.perf_counter() - start
        result = BenchResult(name, values, verdicts, out, seconds, n_problems, draws,
                             pp_verdicts, scale, done, _polyprog_source(scale, smoke, out),
                             _provenance())
        write_report(result, units, spec.label)
        _write_run(result, stage_seconds, time.process_time() - cpu_start, smoke)
    finally:
        torch.set_num_threads(threads)
        registry.unregister(name)
    return result


# ------------------------------------------------------------------------ polynomial programming


_axes = axes_of  # one implementation, shared with the four learning experiments


def _valid(name: str, config: dict, defaults: Mapping) -> dict:
    """``config`` with every knob value the registry refuses (an open bound hit by rounding)
    replaced by the default."""
    out = dict(config)
    for key in defaults:
        try:
            registry.check_knobs(name, **{key: out[key]})
        except (TypeError, ValueError):
            out[key] = defaults[key]
    return out


def polyprog_units(name: str, *, scale: str = "small", book_dir: str | Path,
                   progress: bool = True, smoke: bool = False,
                   ) -> tuple[list[Unit], list[TuningRow], int, list]:
    """Polynomial programming (chapter 7) for registered estimator ``name`` beside the book's.

    The new estimator gets the protocol of ``scale`` and the same tuning: as many random-search
    configurations as every book estimator (:func:`~.experiments.tuning.sample_configs`, the
    learning rate on :data:`~.experiments.polyprog.LR_AXIS` and the knobs with a finite range,
    its defaults at lr 0.05 as the anchor), the same tuning seeds and choice rule (lowest mean
    final gap per exponent), then the evaluation seeds. The book's estimators come from their
    stored results when the protocol is the stored one (``full``), else they are rerun into
    ``book_dir`` (resumable; the stored results are never touched). Returns the evaluation
    units (``final_gap`` at the last step), the tuning rows, that budget, and the
    ``ms_per_step`` rows of the new estimator and Straight-Through (timed interleaved by the
    experiment's :func:`~.experiments.polyprog.time_steps`, the new one at its first choice).
    """
    from dataclasses import replace

    from .experiments import polyprog as pp
    from .experiments.tuning import edge_of_space, sample_configs
    from .experiments.verdicts import read_tuning, read_units
    from .tasks.polyprog import ESTIMATOR_NAMES, Problem, optimise_problems

    # the book's estimators only (a name list read at import may hold registered ones too)
    book_names = tuple(n for n in ESTIMATOR_NAMES if n in registry._BUILTINS)
    proto = replace(pp.protocol(scale, smoke=smoke), estimators=book_names)
    if scale == "full" and not smoke:
        stored = read_units(pp.EXPERIMENT)
        book = [u for u in stored if u.metric == "final_gap"]
        budget = max(u.budget for u in book)
        tuning_rows = read_tuning(pp.EXPERIMENT)
    else:
        records = pp.run(proto, out=Path(book_dir), progress=progress, save=True)
        table = pp.tables(records)
        budget = table["budget"]
        book = [u for u in table["units"] if u.metric == "final_gap"]
        tuning_rows = list(table["tuning"])
    # only the main comparison's settings (one per exponent): the module's ablations and
    # sweeps, when it has them, are no comparison for the new estimator
    settings = {f"p={p:g}" for p in proto.config.powers}
    book = [u for u in book if u.setting in settings]
    tuning_rows = [t for t in tuning_rows
                   if ":" not in t.tuned_on or t.tuned_on.split(":", 1)[0] in settings]
    spec = registry.get_spec(name)
    axes, fixed = _axes(spec.knobs)
    space = {"lr": pp.LR_AXIS, **axes}
    defaults = spec.defaults()
    anchor = {"lr": 0.05, **{k: defaults[k] for k in axes}}
    configs = [_valid(name, {**c, **fixed}, {**defaults})
               for c in sample_configs(space, proto.n_configs, seed=1 + len(book_names),
                                       anchors=[anchor])]
    powers = proto.config.powers

    def runs(problems, seeds):
        config = replace(proto.config, n_runs=len(seeds))
        return optimise_problems(name, problems, config, seed=seeds[0], progress=progress)

    _, gaps, _ = runs([Problem(k, p) for k in configs for p in powers], proto.tune_seeds)
    final = gaps[..., -1].reshape(len(configs), len(powers), -1)
    chosen = [configs[int(final[:, i].mean(dim=-1).argmin())] for i in range(len(powers))]
    _, gaps, _ = runs([Problem(k, p) for k, p in zip(chosen, powers, strict=True)],
                      proto.eval_seeds)
    units = list(book)
    for j, (knobs, p) in enumerate(zip(chosen, powers, strict=True)):
        units += units_from_values(
            pp.EXPERIMENT, f"p={p:g}", name, knobs, "final_gap", budget,
            {(seed, "run"): float(gaps[j, r, -1]) for r, seed in enumerate(proto.eval_seeds)})
        tuning_rows.append(TuningRow(
            pp.EXPERIMENT, name, ";".join(sorted(space)), len(configs), len(proto.tune_seeds),
            f"p={p:g}: the book's tuning seeds, {budget} steps, mean final gap"
            + (f"; fixed (no finite range): {knob_string(fixed)}" if fixed else ""),
            knob_string(knobs), edge_of_space(knobs, space)))
    from .bench_experiments import cost_rows

    knobs = {"st": {}, name: {k: v for k, v in chosen[0].items() if k != "lr"}}
    block = 0.2 if scale == "full" and not smoke else 0.01
    cost = cost_rows(pp.EXPERIMENT, lambda: pp.time_steps(proto, knobs, block_s=block), knobs)
    return units, tuning_rows, budget, cost


# ------------------------------------------------------------------------ the report


def _figure(rows: list[dict], title: str) -> str:
    """A forest plot of log-MSE differences (new - rival) per loss and budget, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rivals = sorted({r["rival"] for r in rows if r["metric"] == "log_mse"})
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(4 * len(LOSSES), 0.45 * len(rivals) + 1.6),
                             sharey=True)
    for ax, kind in zip(axes, LOSSES, strict=True):
        for j, B in enumerate(BUDGETS):
            sel = {r["rival"]: r for r in rows if r["metric"] == "log_mse"
                   and r["setting"] == kind and r["budget"] == B}
            ys = [i + 0.18 * (j - 0.5) for i in range(len(rivals))]
            mid = [sel[r]["diff"] for r in rivals]
            err = [[sel[r]["diff"] - sel[r]["ci_low"] for r in rivals],
                   [sel[r]["ci_high"] - sel[r]["diff"] for r in rivals]]
            ax.errorbar(mid, ys, xerr=err, fmt="o", ms=4, capsize=2, label=f"B = {B}")
        ax.axvline(0.0, color="0.3", lw=0.8)
        for m in (-math.log(1.25), math.log(1.25)):
            ax.axvline(m, color="0.6", lw=0.8, ls=":")
        ax.set_title(kind)
        ax.set_xlabel("log MSE difference (< 0: new is better)")
    axes[0].set_yticks(range(len(rivals)), rivals)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_report(result: BenchResult, units: Sequence[Unit], shown: str) -> Path:
    """``report.html`` (:func:`.bench_report.write_report`): the synthesis chapter's tables and
    figures for the new estimator, then the toy suite's; no network assets."""
    from .bench_report import write_report as write

    del units, shown  # kept for the signature; the report reads the written tables back
    return write(result, _figure(result.table(), f"{result.name} against the book's settings "
                                                 "(toy suite, log MSE, 95 % CI)"))


# ------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for bad input, with the reason)."""
    parser = argparse.ArgumentParser(
        prog="python -m redge_mini.book.bench",
        description="Benchmark an estimator of your own against the book's: the toy suite of "
                    "chapter 6 (exact gradients) and the five experiments of part III, with "
                    "the book's tuning and paired verdicts.")
    parser.add_argument("target", help="MODULE:FUNCTION (MODULE a .py path or a module name)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--out", default="bench_out", help="folder for the tables and report")
    parser.add_argument("--name", default=None, help="registry name (default: the function's)")
    parser.add_argument("--problems", type=int, default=None,
                        help="problems per loss (default: the scale's)")
    parser.add_argument("--draws", type=int, default=None,
                        help="gradient draws per problem (default: the scale's)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        help=f"comma-separated, among {','.join(EXPERIMENTS)} (default: all; "
                             "toy always runs)")
    parser.add_argument("--smoke", action="store_true",
                        help="shrink every experiment's protocol to seconds (checks that "
                             "everything runs; the verdicts mean nothing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    experiments = tuple(e.strip() for e in args.experiments.split(",") if e.strip())
    try:
        if "toy" not in experiments or set(experiments) - set(EXPERIMENTS):
            raise BenchError(f"--experiments must include toy and be among {EXPERIMENTS}, got "
                             f"{args.experiments!r}")
        name, fn, knobs = load_estimator(args.target, args.name)
        print(f"bench: {args.target} passed the checks; registered as {name!r} with knobs "
              f"{ {k: v.default for k, v in knobs.items()} }", flush=True)
        parts = [LONG_NAMES[e] for e in EXPERIMENTS if e in experiments and e != "toy"]
        missing = [LONG_NAMES[e] for e in EXPERIMENTS if e not in experiments]
        part = ((", ".join(parts) + ("; not run: " + ", ".join(missing) if missing else ""))
                if parts else "not run: the five experiments")
        print(f"bench: running the toy suite (chapter 6); {part}", flush=True)
        if args.scale == "full" and parts and not args.smoke:
            minutes = sum(full_seconds(e) for e in experiments if e != "toy") / 60
            print(f"bench: --scale full: about {minutes:.0f} minutes of experiments for one "
                  "estimator on the machine of the stored runs (book/results/manifest.json)",
                  flush=True)
        result = run_bench(fn, name, knobs, out=args.out, scale=args.scale,
                           n_problems=args.problems, draws=args.draws,
                           progress=not args.no_progress, experiments=experiments,
                           smoke=args.smoke)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    print(f"bench: done in {result.seconds:.0f} s; ran {result.ran_text()}")
    for experiment in result.ran:
        counts: dict[str, int] = defaultdict(int)
        for row in result.rows(experiment):
            counts[row["verdict"]] += 1
        where = args.out if experiment == "toy" else f"{args.out}/{experiment}"
        print(f"bench: {experiment}, verdicts of {name} against the book's series: "
              f"{dict(sorted(counts.items()))} (tables in {where})")
    _add_command(Path(args.out) / "bench.json", argv)
    print(f"bench: wrote {args.out}/report.html and bench.json (times, commit, machine)")
    return 0


def _add_command(path: Path, argv: Sequence[str] | None) -> None:
    import json

    record = json.loads(path.read_text(encoding="utf-8"))
    record["command"] = ["python", "-m", "redge_mini.book.bench",
                         *(sys.argv[1:] if argv is None else argv)]
    path.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
