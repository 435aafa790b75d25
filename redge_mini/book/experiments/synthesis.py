"""The five experiments read together, from their verdict files only.

Used by the synthesis chapter. Every comparative word it prints comes from a row of
``book/results/<experiment>/verdicts.csv`` (:mod:`.verdicts`: paired on shared units, 95 %
interval, Holm's adjustment over the experiment, declared equivalence margins), and every sentence
that advises an estimator cites the rows it rests on as ``<experiment>#<row>`` (the row's 1-based
position in that file). ``summary.csv`` is read only for what is not a comparison: the time of one
step per estimator (``ms_per_step`` rows).
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

__all__ = ["EXPERIMENTS", "FAMILY", "RIVALS", "Cited", "advice", "costs", "is_tuning",
           "load_all", "load_tuning", "load_verdicts", "manifest", "member_counts", "provenance",
           "role", "samplers", "t1_landings", "tuned_headline"]

#: The five experiments, in book order.
EXPERIMENTS: tuple[str, ...] = ("polyprog", "vae", "sudoku", "mdm_guidance", "image_guidance")
#: The ReDGE family, each member judged on its own (never "the best of the three").
FAMILY: tuple[str, ...] = REDGE_FAMILY
#: Rivals in the order the tables show them.
RIVALS: tuple[str, ...] = ("st", "gumbel", "reinmax", "reinforce", "unguided", *FAMILY)

#: Chapter label of each experiment (for cross-references).
CHAPTERS: dict[str, str] = {
    "polyprog": "polynomial-programming", "vae": "discrete-vae", "sudoku": "sudoku",
    "mdm_guidance": "mdm-guidance", "image_guidance": "image-guidance",
}


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
    """``"tuned"`` or ``"fixed"`` (the authors' setting) for a series name of verdicts.csv.

    A plain name is the estimator's only series. A name ``est[knobs]`` is tuned when ``knobs``
    is a choice that ``tuning.csv`` records for ``est``, else a fixed setting shown beside it.
    Where an experiment tunes per setting (its ``tuned_on`` starts with ``"<setting>:"``, as
    polynomial programming does per exponent), only the choice for ``setting`` counts: the
    authors' setting chosen at one exponent is not the tuned series at another.
    """
    base, _, rest = name.partition("[")
    if not rest:
        return "tuned"
    knobs = rest[:-1]
    rows = [t for t in tuning or () if t.estimator == base]
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


def advice(verdicts: dict[str, list[Cited] | None], tuning: dict[str, list[TuningRow] | None],
           labels: dict[str, str]) -> list[str]:
    """One sentence per experiment: the tuned estimators that no other tuned estimator beats on
    the headline, and the ones that are beaten, each with the rows it rests on."""
    sentences = []
    for experiment, rows in verdicts.items():
        here = tuned_headline(rows or (), tuning.get(experiment))
        if not here:
            continue
        beaten: dict[str, list[Cited]] = defaultdict(list)
        names: set[str] = set()
        for c in here:
            v = c.verdict
            names |= {v.base_estimator, v.base_rival}
            if v.verdict == "worse":
                beaten[v.base_estimator].append(c)
            elif v.verdict == "better":
                beaten[v.base_rival].append(c)
        names.discard("unguided")
        top = sorted(n for n in names if n not in beaten)
        metric = here[0].verdict.metric
        order = [n for n in RIVALS if n in names] + sorted(names - set(RIVALS))
        if top:
            text = (f"In {experiment} ({metric}), no tuned estimator is better than "
                    f"{', '.join(labels.get(n, n) for n in order if n in top)}")
        else:
            text = f"In {experiment} ({metric}), every tuned estimator is beaten somewhere"
        losers = [n for n in order if n in beaten]
        if losers:
            parts = []
            for n in losers:
                refs = sorted({c.ref for c in beaten[n]}, key=lambda r: int(r.split("#")[1]))
                parts.append(f"{labels.get(n, n)} ({', '.join(refs[:4])}"
                             f"{', …' if len(refs) > 4 else ''})")
            text += "; worse than some other: " + "; ".join(parts)
        else:
            text += "; none is worse than another (no row says better or worse)"
        sentences.append(text + ".")
    return sentences


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
    """experiment -> estimator -> ms per step relative to Straight-Through (where recorded)."""
    out = {}
    for experiment, rows in summaries.items():
        timing: dict[str, float] = {}
        for row in rows or ():
            if row.metric == "ms_per_step" and not is_tuning(row):
                timing.setdefault(row.estimator, row.mean)
        if timing.get("st", 0) > 0:
            out[experiment] = {e: v / timing["st"] for e, v in timing.items()}
    return out


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

