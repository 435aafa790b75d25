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

What runs is the toy suite of chapter 6 ("Many problems"): the same random problems
(:func:`~redge_mini.book.toy.random_toy_problems`, seed 100) under the ``smooth``, ``logcosh``
and ``nonsmooth`` losses, with exact gradients by enumeration; for every estimator setting the
relative squared bias, the log relative variance and the log relative MSE at budgets of
``B = 1`` and ``B = 64`` evaluations of ``f`` (the score-function estimator exactly, as in the
chapter). The new estimator runs at its default knobs, as the book's estimators run at knobs
fixed in advance: the toy suite tunes nobody. The units are the problems, shared by all the
estimators (paired), and the verdicts come from
:func:`~redge_mini.book.experiments.verdicts.write_results`, the book's one rule, with the
margins of chapter 6.

Of the five experiments of part III, polynomial programming (chapter 7) runs too (unless
``--experiments toy``): :func:`polyprog_units` tunes the new estimator with the book's budget,
search and seeds and judges it against the book's estimators (rerun at the small scale, read from
``book/results/polyprog`` at the full one). The discrete VAE, Sudoku and the two guidance
experiments are **not** run by this command.

Written to ``DIR``: ``units.csv``, ``summary.csv``, ``verdicts.csv``, ``tuning.csv`` (the knobs
used, nothing tuned) and ``report.html`` (the verdicts of the new estimator against each of the
book's, and one figure, embedded; no network assets); ``DIR/polyprog/`` holds the same four
tables for polynomial programming, ``DIR/polyprog_book/`` the book's small-scale reruns.
"""

from __future__ import annotations

import argparse
import base64
import html
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
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import registry
from ..exact import gradient_diagnostics
from ..validation import Knob
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
    "load_estimator",
    "main",
    "polyprog_units",
    "run_bench",
    "toy_units",
]

EXPERIMENT = "bench_toy"
#: What the bench can run: the toy suite and, of the five experiments, polynomial programming.
EXPERIMENTS = ("toy", "polyprog")
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

    def table(self) -> list[dict]:
        """The new estimator's rows, oriented (new - rival), see :func:`against`."""
        return against(self.verdicts, self.name)


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


def run_bench(fn: Callable, name: str, knobs: Mapping | None = None, *, out: str | Path,
              scale: str = "small", n_problems: int | None = None, draws: int | None = None,
              progress: bool = True, label: str | None = None,
              experiments: Sequence[str] = ("toy",), smoke: bool = False) -> BenchResult:
    """Register ``fn`` as ``name`` for the run, run the toy suite for it and the book's
    settings, write the tables and the report to ``out``, unregister it; return the result.

    ``knobs`` is name -> :class:`~redge_mini.Knob` as for :func:`redge_mini.register`
    (``load_estimator`` builds it from the signature). ``n_problems`` / ``draws`` override the
    scale's numbers (tests, the how-to page). ``experiments`` lists what runs: ``"toy"`` (always)
    and ``"polyprog"`` (chapter 7 at the scale's protocol, written to ``out/polyprog``; the book's
    estimators rerun into ``out/polyprog_book`` at the small scale; ``smoke`` shrinks it to
    seconds, for tests)."""
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
    start = time.perf_counter()
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
        pp_verdicts = None
        if "polyprog" in experiments:
            from .experiments import polyprog as pp

            pp_units, pp_tuning, budget = polyprog_units(
                name, scale=scale, book_dir=out / "polyprog_book", progress=progress,
                smoke=smoke)
            pp_verdicts = write_results(pp.EXPERIMENT, pp_units, pp.METRICS, pp_tuning,
                                        budgets={pp.HEADLINE.name: [budget]},
                                        root=out / "polyprog")
        seconds = time.perf_counter() - start
        result = BenchResult(name, values, verdicts, out, seconds, n_problems, draws,
                             pp_verdicts, scale)
        write_report(result, units, spec.label)
    finally:
        torch.set_num_threads(threads)
        registry.unregister(name)
    return result


# ------------------------------------------------------------------------ polynomial programming


def _axes(knobs: Mapping[str, Knob | registry.Choice]) -> tuple[dict, dict]:
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
                   ) -> tuple[list[Unit], list[TuningRow], int]:
    """Polynomial programming (chapter 7) for registered estimator ``name`` beside the book's.

    The new estimator gets the protocol of ``scale`` and the same tuning: as many random-search
    configurations as every book estimator (:func:`~.experiments.tuning.sample_configs`, the
    learning rate on :data:`~.experiments.polyprog.LR_AXIS` and the knobs with a finite range,
    its defaults at lr 0.05 as the anchor), the same tuning seeds and choice rule (lowest mean
    final gap per exponent), then the evaluation seeds. The book's estimators come from their
    stored results when the protocol is the stored one (``full``), else they are rerun into
    ``book_dir`` (resumable; the stored results are never touched). Returns the evaluation
    units (``final_gap`` at the last step), the tuning rows and that budget.
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
    return units, tuning_rows, budget


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


def _ran(result: BenchResult) -> str:
    ran = "the toy suite"
    if result.polyprog is not None:
        return (ran + " and polynomial programming (chapter 7); not run: the discrete VAE, "
                "Sudoku, masked-diffusion and image guidance experiments")
    return ran + "; not run: the five experiments of part III"


def write_report(result: BenchResult, units: Sequence[Unit], shown: str) -> Path:
    """``report.html``: what ran, the new estimator's verdicts against each rival per metric,
    and the figure; standard library and matplotlib only, no network assets."""
    esc = html.escape
    rows = result.table()
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Bench: {esc(shown)}</title><style>body{{font-family:sans-serif;"
        "max-width:70em;margin:auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
        ".better{background:#d8f0d8}.worse{background:#f6d6d6}</style></head><body>",
        f"<h1>Bench of <code>{esc(result.name)}</code> ({esc(shown)})</h1>",
        f"<p>Knobs: <code>{esc(knob_string(result.knobs) or 'none')}</code>. Toy suite of "
        f"chapter 6: {result.n_problems} random problems per loss, {result.draws} gradient "
        f"draws per problem and estimator, exact gradients by enumeration; {len(units)} units; "
        f"{result.seconds:.0f} s. Ran: {esc(_ran(result))}. Verdicts by the book's rule "
        "(paired t-interval on shared problems, "
        "Holm over every row of verdicts.csv, declared margins: log 1.25 for log MSE and log "
        "variance, 0.1 for the relative squared bias). diff = new - rival; lower is better "
        "for every metric.</p>",
    ]
    for metric in ("log_mse", "bias2", "log_variance"):
        parts.append(f"<h2>{esc(metric)}</h2><table><tr><th>loss</th><th>budget</th>"
                     "<th>rival</th><th>n</th><th>diff</th><th>95 % CI</th><th>Holm p</th>"
                     "<th>verdict</th></tr>")
        for r in sorted((r for r in rows if r["metric"] == metric),
                        key=lambda r: (LOSSES.index(r["setting"]), r["budget"], r["rival"])):
            parts.append(
                f"<tr><td>{esc(r['setting'])}</td><td>{r['budget']}</td>"
                f"<td>{esc(r['rival'])}</td><td>{r['n']}</td><td>{r['diff']:.3g}</td>"
                f"<td>[{r['ci_low']:.3g}, {r['ci_high']:.3g}]</td><td>{r['p_holm']:.2g}</td>"
                f"<td class='{r['verdict']}'>{r['verdict']}</td></tr>")
        parts.append("</table>")
    if result.polyprog is not None:
        parts.append("<h2>Polynomial programming (chapter 7): final gap</h2><p>Scale "
                     f"{esc(result.scale)}; the new estimator tuned like the book's (same number "
                     "of configurations, seeds and rule; tuning.csv in polyprog/); verdicts on "
                     "the evaluation seeds, Holm over every row of polyprog/verdicts.csv; lower "
                     "is better.</p><table><tr><th>setting</th><th>rival</th><th>n</th>"
                     "<th>diff</th><th>95 % CI</th><th>Holm p</th><th>verdict</th></tr>")
        for r in sorted(against(result.polyprog, result.name),
                        key=lambda r: (r["setting"], r["rival"])):
            parts.append(
                f"<tr><td>{esc(r['setting'])}</td><td>{esc(r['rival'])}</td><td>{r['n']}</td>"
                f"<td>{r['diff']:.3g}</td><td>[{r['ci_low']:.3g}, {r['ci_high']:.3g}]</td>"
                f"<td>{r['p_holm']:.2g}</td><td class='{r['verdict']}'>{r['verdict']}</td>"
                "</tr>")
        parts.append("</table>")
    png = _figure(rows, f"{shown} against the book's estimators (log MSE, 95 % CI)")
    parts.append(f"<h2>Figure</h2><img alt='log MSE differences' src='data:image/png;base64,"
                 f"{png}'></body></html>")
    path = result.out / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for bad input, with the reason)."""
    parser = argparse.ArgumentParser(
        prog="python -m redge_mini.book.bench",
        description="Benchmark an estimator of your own against the book's on the toy suite "
                    "of chapter 6 (exact gradients, paired verdicts).")
    parser.add_argument("target", help="MODULE:FUNCTION (MODULE a .py path or a module name)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--out", default="bench_out", help="folder for the tables and report")
    parser.add_argument("--name", default=None, help="registry name (default: the function's)")
    parser.add_argument("--problems", type=int, default=None,
                        help="problems per loss (default: the scale's)")
    parser.add_argument("--draws", type=int, default=None,
                        help="gradient draws per problem (default: the scale's)")
    parser.add_argument("--experiments", default="toy,polyprog",
                        help="comma-separated, among toy,polyprog (default: both)")
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
        part = ("polynomial programming (chapter 7); not run: the other four experiments"
                if "polyprog" in experiments else "not run: the five experiments")
        print(f"bench: running the toy suite (chapter 6); {part}", flush=True)
        result = run_bench(fn, name, knobs, out=args.out, scale=args.scale,
                           n_problems=args.problems, draws=args.draws,
                           progress=not args.no_progress, experiments=experiments)
    except BenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    counts: dict[str, int] = defaultdict(int)
    for row in result.table():
        counts[row["verdict"]] += 1
    print(f"bench: done in {result.seconds:.0f} s; ran {_ran(result)}")
    print(f"bench: toy suite, verdicts of {name} against the book's settings: "
          f"{dict(sorted(counts.items()))}")
    if result.polyprog is not None:
        pp_counts: dict[str, int] = defaultdict(int)
        for row in against(result.polyprog, name):
            pp_counts[row["verdict"]] += 1
        print(f"bench: polynomial programming, verdicts of {name}: "
              f"{dict(sorted(pp_counts.items()))} (tables in {args.out}/polyprog)")
    print(f"bench: wrote {args.out}/units.csv, summary.csv, verdicts.csv, tuning.csv, "
          "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
