"""The six experiments read together, from their verdict files only.

Used by the synthesis chapter. Every comparative word it prints comes from a row of
``book/results/<experiment>/verdicts.csv`` (:mod:`.verdicts`: paired on shared units, 95 %
interval, Holm's adjustment over the experiment, declared equivalence margins), and every sentence
that advises an estimator cites the rows it rests on as ``<experiment>#<row>`` (the row's 1-based
position in that file). ``summary.csv`` is read only for what is not a comparison: the time of one
step or call per estimator (``ms_per_step`` and ``ms_per_call`` rows) and the hit rates of image
guidance beside its verdicts.

Estimator names, knob settings and experiment settings are read from the files, never listed here:
a series that a protocol adds (an ablation such as a detached ReinDGE, a ``t_1`` sweep, RLOO)
shows up in every table as soon as its rows are stored. :data:`RIVALS` only fixes the order of the
names it knows; other names follow, sorted.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runtime
from . import REDGE_FAMILY
from .summary import Row, read_summary
from .verdicts import TuningRow, Verdict, read_tuning, read_verdicts

__all__ = ["EXPERIMENTS", "FAMILY", "RIVALS", "Cited", "advice", "costs", "hit_rates",
           "is_ablation_pair", "is_tuning", "load_all", "load_tuning", "load_verdicts",
           "manifest", "member_counts",
           "metric_advice", "ordered", "other_series", "provenance", "role", "samplers",
           "side_rows", "sweep", "t1_landings", "tuned_headline"]

#: The six experiments, in book order.
EXPERIMENTS: tuple[str, ...] = ("polyprog", "vae", "sudoku", "mdm_guidance", "image_guidance",
                                "large_vocab")
#: The ReDGE family, each member judged on its own (never "the best of the three").
FAMILY: tuple[str, ...] = REDGE_FAMILY
#: Rivals in the order the tables show them.
RIVALS: tuple[str, ...] = ("st", "gumbel", "reinmax", "reinforce", "unguided", *FAMILY)

#: Chapter label of each experiment (for cross-references).
CHAPTERS: dict[str, str] = {
    "polyprog": "polynomial-programming", "vae": "discrete-vae", "sudoku": "sudoku",
    "mdm_guidance": "mdm-guidance", "image_guidance": "image-guidance",
    "large_vocab": "large-vocab",
}
#: Series that are references rather than estimators (never tuned, never "fixed").
BASELINES: tuple[str, ...] = ("unguided",)
#: Summary metrics that time one step or one call of an estimator.
TIME_METRICS: tuple[str, ...] = ("ms_per_step", "ms_per_call")


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in the order of :data:`RIVALS`, then the names it does not know, sorted."""
    names = set(names)
    return [n for n in RIVALS if n in names] + sorted(names - set(RIVALS))


@dataclass(frozen=True)
class Cited:
    """A verdict row and where it sits: ``<experiment>#<row>`` (1-based row of verdicts.csv)."""

    verdict: Verdict
    row: int

    @property
    def ref(self) -> str:
        """The citation, e.g. ``"sudoku#12"``."""
        return f"{self.verdict.experiment}#{self.row}"


def _load(loader: Any, root: str | Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for experiment in EXPERIMENTS:
        folder = None if root is None else Path(root) / experiment
        try:
            out[experiment] = loader(experiment, folder)
        except FileNotFoundError:
            out[experiment] = None
    return out


def load_verdicts(root: str | Path | None = None) -> dict[str, list[Cited] | None]:
    """Every experiment's verdict rows with their row numbers (None where the file is missing)."""
    raw = _load(read_verdicts, root)
    return {e: None if rows is None else [Cited(v, i + 1) for i, v in enumerate(rows)]
            for e, rows in raw.items()}


def load_tuning(root: str | Path | None = None) -> dict[str, list[TuningRow] | None]:
    """Every experiment's ``tuning.csv`` rows (None where the file is missing)."""
    return _load(read_tuning, root)


def load_all(root: str | Path | None = None) -> dict[str, list[Row] | None]:
    """Every experiment's ``summary.csv`` rows (None where the file is missing)."""
    return _load(lambda e, folder: read_summary(e, root=folder), root)


def is_tuning(row: Row) -> bool:
    """Whether a summary row reports a tuning stage rather than an evaluation.

    Tuning stages are named ``tune`` or ``tune_<something>`` (``tune_knob``, ``tune_lr``), or
    their metric is; a setting such as ``tuned_lr`` (an evaluation at the tuned learning rate)
    is an evaluation. (An earlier test on the prefix ``"tun"`` dropped those rows.)
    """
    def stage(text: str) -> bool:
        text = text.lower()
        return text in ("tune", "tuning") or text.startswith("tune_")

    return stage(row.setting) or stage(row.metric)


def role(name: str, tuning: Sequence[TuningRow] | None, setting: str | None = None) -> str:
    """``"tuned"`` or ``"fixed"`` (the authors' setting, an ablation) for a series name of
    verdicts.csv.

    A plain name is the estimator's only series: tuned when ``tuning`` records the estimator
    (or records nothing, or the name is a baseline of :data:`BASELINES`), else a fixed series
    (an ablation run at given knobs, such as a detached ReinDGE). A name ``est[knobs]`` is
    tuned when ``knobs`` is a choice that ``tuning.csv`` records for ``est``, else a fixed
    setting shown beside it.
    Where an experiment tunes per setting (its ``tuned_on`` starts with ``"<setting>:"``, as
    polynomial programming does per exponent), only the choice for ``setting`` counts: the
    authors' setting chosen at one exponent is not the tuned series at another.
    """
    base, _, rest = name.partition("[")
    rows = [t for t in tuning or () if t.estimator == base]
    if not rest:
        return "tuned" if rows or not tuning or base in BASELINES else "fixed"
    knobs = rest[:-1]
    if setting is not None:
        here = [t for t in rows if t.tuned_on.startswith(f"{setting}:")]
        rows = here or rows
    return "tuned" if knobs in {t.chosen for t in rows} else "fixed"


def tuned_headline(rows: Iterable[Cited], tuning: Sequence[TuningRow] | None) -> list[Cited]:
    """The headline rows that compare two tuned series (the authors' fixed settings aside)."""
    return [c for c in rows if c.verdict.headline
            and role(c.verdict.estimator, tuning, c.verdict.setting) == "tuned"
            and role(c.verdict.rival, tuning, c.verdict.setting) == "tuned"]


def member_counts(verdicts: dict[str, list[Cited] | None],
                  tuning: dict[str, list[TuningRow] | None],
                  ) -> dict[str, dict[str, Counter[str]]]:
    """member -> rival -> counts of the four words over the tuned headline rows of every
    experiment (each setting and headline budget counts once)."""
    out: dict[str, dict[str, Counter[str]]] = {m: defaultdict(Counter) for m in FAMILY}
    for experiment, rows in verdicts.items():
        for c in tuned_headline(rows or (), tuning.get(experiment)):
            v = c.verdict
            if v.base_estimator in FAMILY:
                out[v.base_estimator][v.base_rival][v.verdict] += 1
    return out


def _sentence(where: str, rows: Sequence[Cited], labels: dict[str, str],
              noun: str = "tuned estimator") -> str:
    """The estimators of ``rows`` that no other beats, and those beaten, with their rows."""
    beaten: dict[str, list[Cited]] = defaultdict(list)
    names: set[str] = set()
    for c in rows:
        v = c.verdict
        names |= {v.base_estimator, v.base_rival}
        if v.verdict == "worse":
            beaten[v.base_estimator].append(c)
        elif v.verdict == "better":
            beaten[v.base_rival].append(c)
    names.discard("unguided")
    top = [n for n in ordered(names) if n not in beaten]
    if top:
        text = (f"In {where}, no {noun} is better than "
                f"{', '.join(labels.get(n, n) for n in top)}")
    else:
        text = f"In {where}, every {noun} is beaten somewhere"
    losers = [n for n in ordered(names) if n in beaten]
    if losers:
        parts = []
        for n in losers:
            refs = sorted({c.ref for c in beaten[n]}, key=lambda r: int(r.split("#")[1]))
            parts.append(f"{labels.get(n, n)} ({', '.join(refs[:4])}"
                         f"{', …' if len(refs) > 4 else ''})")
        text += "; worse than some other: " + "; ".join(parts)
    else:
        text += "; none is worse than another (no row says better or worse)"
    return text + "."


def advice(verdicts: dict[str, list[Cited] | None], tuning: dict[str, list[TuningRow] | None],
           labels: dict[str, str]) -> list[str]:
    """One sentence per experiment (per setting where its headline has several): the tuned
    estimators that no other tuned estimator beats on the headline, and the ones that are
    beaten, each with the rows it rests on."""
    sentences = []
    for experiment, rows in verdicts.items():
        here = tuned_headline(rows or (), tuning.get(experiment))
        if not here:
            continue
        settings = list(dict.fromkeys(c.verdict.setting for c in here))
        for setting in settings:
            part = [c for c in here if c.verdict.setting == setting] if len(settings) > 1 else here
            metric = part[0].verdict.metric
            where = (f"{experiment}, {setting} ({metric})" if len(settings) > 1
                     else f"{experiment} ({metric})")
            sentences.append(_sentence(where, part, labels))
    return sentences


def metric_advice(rows: Sequence[Cited] | None, metric: str, labels: dict[str, str], *,
                  tuning: Sequence[TuningRow] | None = None, setting: str | None = None,
                  budget: int | None = None) -> str | None:
    """The sentence of :func:`advice` for any judged ``metric`` of one experiment (headline or
    not), restricted to ``setting`` and ``budget`` when given, and to rows between two tuned
    series when ``tuning`` is given; None when no row matches."""
    part = [c for c in rows or () if c.verdict.metric == metric
            and (setting is None or c.verdict.setting == setting)
            and (budget is None or c.verdict.budget == budget)
            and (tuning is None or all(role(s, tuning, c.verdict.setting) == "tuned"
                                       for s in (c.verdict.estimator, c.verdict.rival)))]
    if not part:
        return None
    v = part[0].verdict
    where = f"{v.experiment}{', ' + setting if setting else ''} ({metric})"
    return _sentence(where, part, labels,
                     "tuned estimator" if tuning is not None else "estimator")


def other_series(verdicts: dict[str, list[Cited] | None],
                 tuning: dict[str, list[TuningRow] | None]) -> list[dict[str, Any]]:
    """Every series that is not a tuned choice (the authors' settings, ablations, sweep points),
    per experiment and setting, with its headline rows against tuned series: the rivals it is
    better than, worse than and equivalent to (with row citations), and the count it cannot be
    separated from."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for experiment, rows in verdicts.items():
        for c in rows or ():
            v = c.verdict
            if not v.headline:
                continue
            roles = [role(s, tuning.get(experiment), v.setting) for s in (v.estimator, v.rival)]
            if roles.count("fixed") != 1:
                continue
            first = roles[0] == "fixed"
            series, other = (v.estimator, v.rival) if first else (v.rival, v.estimator)
            word = v.verdict if first else {"better": "worse", "worse": "better"}.get(
                v.verdict, v.verdict)
            item = out.setdefault((experiment, v.setting, series), {
                "experiment": experiment, "setting": v.setting, "series": series,
                "metric": v.metric, "better": [], "worse": [], "equivalent": [],
                "inconclusive": 0})
            if word == "inconclusive":
                item["inconclusive"] += 1
            else:
                item[word].append((other, c.ref))
    return list(out.values())


def side_rows(rows: Sequence[Cited] | None) -> list[Cited]:
    """The rows of an experiment's side studies (ablations, sweeps): rows of settings that hold
    no headline row, on a metric that is a headline metric of the experiment."""
    rows = list(rows or ())
    head_settings = {c.verdict.setting for c in rows if c.verdict.headline}
    head_metrics = {c.verdict.metric for c in rows if c.verdict.headline}
    return [c for c in rows if c.verdict.setting not in head_settings
            and c.verdict.metric in head_metrics]


def is_ablation_pair(verdict: Verdict) -> bool:
    """Whether a row sets an estimator against a variant of itself: one base name is the
    other's followed by ``_<something>`` (``reindge`` and ``reindge_detach``)."""
    a, b = verdict.base_estimator, verdict.base_rival
    return a.startswith(b + "_") or b.startswith(a + "_")


def sweep(rows: Sequence[Cited] | None, knob: str = "t_1") -> list[tuple[float, Cited]]:
    """The side-study rows whose setting names a value of ``knob`` (``"... t_1=0.5 ..."``), with
    that value, sorted by it."""
    out = []
    for c in side_rows(rows):
        for part in c.verdict.setting.replace(",", " ").split():
            name, _, value = part.partition("=")
            if name == knob:
                try:
                    out.append((float(value), c))
                except ValueError:
                    pass
    return sorted(out, key=lambda item: (item[0], item[1].row))


def t1_landings(tuning: dict[str, list[TuningRow] | None]) -> list[dict[str, Any]]:
    """The tuned ``t_1`` (and ``n_steps``) of every family member in every experiment."""
    out = []
    for experiment, rows in tuning.items():
        for row in rows or ():
            knobs = _parse(row.chosen)
            if row.estimator in FAMILY and "t_1" in knobs:
                out.append({"experiment": experiment, "estimator": row.estimator,
                            "t_1": knobs["t_1"], "n_steps": knobs.get("n_steps"),
                            "on_edge": row.on_edge})
    return out


def _parse(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(";")):
        name, _, value = part.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def costs(summaries: dict[str, list[Row] | None]) -> dict[str, dict[str, float]]:
    """experiment -> estimator -> time of one step (or call, :data:`TIME_METRICS`) relative to
    Straight-Through's in the same experiment and setting (where recorded). An experiment that
    timed several settings (the vocabulary sizes of ``large_vocab``) gives one column per
    setting, named ``"<experiment> <setting>"``."""
    out = {}
    for experiment, rows in summaries.items():
        timing: dict[str, dict[str, float]] = defaultdict(dict)
        for row in rows or ():
            if row.metric in TIME_METRICS and not is_tuning(row):
                timing[row.setting].setdefault(row.estimator, row.mean)
        for setting, times in timing.items():
            if times.get("st", 0) > 0:
                name = experiment if len(timing) == 1 else f"{experiment} {setting}"
                out[name] = {e: v / times["st"] for e, v in times.items()}
    return out


def hit_rates(summaries: dict[str, list[Row] | None], tuning: dict[str, list[TuningRow] | None],
              experiment: str = "image_guidance") -> dict[str, dict[str, float]]:
    """estimator -> ``reward_hit``, ``judge_hit``, ``judge_source`` (means over images) of each
    tuned series of image guidance at its largest budget; ``{}`` where none is stored."""
    rows = [r for r in summaries.get(experiment) or ()
            if r.metric in ("reward_hit", "judge_hit", "judge_source") and not is_tuning(r)]
    if not rows:
        return {}
    top = max(r.budget for r in rows)
    chosen = {t.estimator: t.chosen for t in tuning.get(experiment) or ()}
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.budget == top and chosen.get(r.estimator) == r.knobs:
            out[r.estimator][r.metric] = r.mean
    return dict(out)


def _records(experiment: str, root: str | Path | None) -> list[dict[str, Any]]:
    folder = Path(root) / experiment if root is not None else runtime.results_dir(experiment)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            out.append({**record, "_file": path.name})
    return out


def provenance(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """experiment -> what its stored records say about how they were made: commits, whether any
    tree was dirty, devices, thread counts, samplers and scales (sets), and the record count."""
    out = {}
    for experiment in EXPERIMENTS:
        fields: dict[str, set[Any]] = defaultdict(set)
        records = _records(experiment, root)
        for record in records:
            meta = record.get("metadata", {})
            for key in ("git_commit", "git_dirty", "device_name", "num_threads", "sampler",
                        "scale"):
                fields[key].add(meta.get(key, "not recorded"))
        out[experiment] = {"records": len(records), **{k: sorted(v, key=str)
                                                      for k, v in fields.items()}}
    return out


def samplers(root: str | Path | None = None) -> dict[str, str]:
    """experiment -> the sampler implementation of its timing record (``cpp``, ``torch``,
    ``triton``), where one is stored."""
    out = {}
    for experiment in EXPERIMENTS:
        for record in _records(experiment, root):
            stage = str(record.get("data", {}).get("stage", "")) + record["_file"]
            if "timing" in stage or "cost" in stage:
                out[experiment] = record.get("metadata", {}).get("sampler", "not recorded")
                break
    return out


def manifest(root: str | Path | None = None) -> dict[str, Any] | None:
    """``book/results/manifest.json`` (None when absent)."""
    path = (Path(root) if root is not None else runtime.results_dir()) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))

