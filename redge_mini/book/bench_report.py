"""The bench's ``report.html``: the synthesis chapter's tables for one new estimator.

Read like chapter 13 ("What the experiments show") with the new estimator in the place of the
ReDGE family: how often it is better / worse / equivalent / inconclusive against each of the
book's estimators over the headline rows of every experiment it ran (tuned series only, each
setting and headline budget once: :func:`~.experiments.synthesis.tuned_headline`), then per
experiment every headline row against each book estimator with its interval and its row in
that experiment's ``verdicts.csv`` (``experiment#row``), a forest plot of those differences
against the declared margin, the other judged metrics, the new estimator's tuning and the
generated advice (:func:`~.experiments.synthesis.advice`); last, the toy suite of chapter 6.
Standard library and matplotlib only; figures are embedded PNGs (no network assets).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import registry

__all__ = ["TITLES", "headline_counts", "oriented", "write_report"]

#: Chapter and title of each experiment, in book order.
TITLES: dict[str, str] = {
    "toy": "Toy suite (chapter 6, exact gradients)",
    "polyprog": "Polynomial programming (chapter 7)",
    "vae": "Discrete VAE (chapter 8)",
    "sudoku": "Sudoku (chapter 9)",
    "mdm_guidance": "Masked-diffusion guidance (chapter 10)",
    "image_guidance": "Image guidance (chapter 11)",
}
_FLIP = {"better": "worse", "worse": "better"}
_WORDS = ("better", "worse", "equivalent", "inconclusive")


def oriented(cited: Sequence[Any], name: str) -> list[dict]:
    """The rows of ``cited`` (:class:`~.experiments.synthesis.Cited`) that involve ``name``,
    oriented ``name - rival`` (a row where it is the rival is turned round: diff and interval
    negated, better and worse swapped), with ``ref`` the stored row."""
    rows = []
    for c in cited:
        v = c.verdict
        if v.base_estimator == name:
            sign, rival, word, low, high = 1.0, v.rival, v.verdict, v.ci_low, v.ci_high
        elif v.base_rival == name:
            sign, rival, word = -1.0, v.estimator, _FLIP.get(v.verdict, v.verdict)
            low, high = -v.ci_high, -v.ci_low
        else:
            continue
        rows.append(dict(ref=c.ref, setting=v.setting, metric=v.metric, budget=v.budget,
                         rival=rival, base_rival=rival.split("[", 1)[0], n=v.n_units,
                         diff=sign * v.diff, ci_low=low, ci_high=high, p_holm=v.p_holm,
                         margin=v.margin, higher=v.higher_is_better, verdict=word,
                         headline=v.headline))
    return rows


def headline_counts(verdicts: dict[str, list | None], tuning: dict[str, list | None],
                    name: str) -> dict[str, dict[str, Counter]]:
    """rival -> experiment -> counts of the four words of ``name`` against it, over the tuned
    headline rows of each experiment (as the synthesis chapter counts the family's)."""
    from .experiments import synthesis as syn

    out: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for experiment, rows in verdicts.items():
        for r in oriented(syn.tuned_headline(rows or (), tuning.get(experiment)), name):
            out[r["base_rival"]][experiment][r["verdict"]] += 1
    return out


def _where(tuned_on: str) -> str:
    """``"p=2: "`` where an experiment tunes per setting (polynomial programming), else ``""``."""
    head = tuned_on.split(":", 1)[0]
    return f"{head}: " if ":" in tuned_on and "=" in head and " " not in head else ""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # long labels kept whole
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _forest(rows: list[dict], title: str) -> str:
    """Differences (new - rival) with 95 % intervals, one line per row, the margins dotted."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = [f"{r['rival']}  ({r['setting']}, {r['budget']})" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ys = range(len(rows))
    colours = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue",
               "inconclusive": "0.45"}
    for y, r in zip(ys, rows, strict=True):
        ax.errorbar([r["diff"]], [y], xerr=[[r["diff"] - r["ci_low"]], [r["ci_high"] - r["diff"]]],
                    fmt="o", ms=4, capsize=2, color=colours.get(r["verdict"], "k"))
    ax.axvline(0.0, color="0.3", lw=0.8)
    if rows:
        for m in (-rows[0]["margin"], rows[0]["margin"]):
            ax.axvline(m, color="0.6", lw=0.8, ls=":")
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    better = "higher" if rows and rows[0]["higher"] else "lower"
    ax.set_xlabel(f"new - rival ({better} is better for the new estimator); dotted: margin")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _table(rows: list[dict], esc: Any) -> list[str]:
    parts = ["<table><tr><th>row</th><th>metric</th><th>setting</th><th>budget</th>"
             "<th>rival</th><th>n</th><th>diff (new - rival)</th><th>95 % CI</th>"
             "<th>Holm p</th><th>verdict</th></tr>"]
    for r in rows:
        parts.append(
            f"<tr><td>{esc(r['ref'])}</td><td>{esc(r['metric'])}</td><td>{esc(r['setting'])}"
            f"</td><td>{r['budget']}</td><td>{esc(r['rival'])}</td><td>{r['n']}</td>"
            f"<td>{r['diff']:.3g}</td><td>[{r['ci_low']:.3g}, {r['ci_high']:.3g}]</td>"
            f"<td>{r['p_holm']:.2g}</td><td class='{r['verdict']}'>{r['verdict']}</td></tr>")
    parts.append("</table>")
    return parts


def write_report(result: Any, toy_figure: str) -> Path:
    """Write ``result.out / "report.html"`` for a :class:`~.bench.BenchResult`; its path."""
    from .experiments import synthesis as syn
    from .experiments.verdicts import read_tuning, read_verdicts

    esc = html.escape
    out, name = Path(result.out), result.name
    label = registry.get_spec(name).label if name in registry.ALL_ESTIMATORS else name
    labels = {n: s.label for n, s in registry.ALL_ESTIMATORS.items()}
    ran = list(result.ran)
    roots = {"toy": out, "polyprog": out / "polyprog",
             **{e: out / e for e in ran if e not in ("toy", "polyprog")}}
    verdicts = {e: [syn.Cited(v, i + 1) for i, v in enumerate(read_verdicts(e if e != "toy"
                                                                             else "bench_toy",
                                                                             roots[e]))]
                for e in ran}
    tuning = {e: read_tuning("bench_toy" if e == "toy" else e, roots[e]) for e in ran}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Bench: {esc(label)}</title><style>body{{font-family:sans-serif;"
        "max-width:72em;margin:auto;line-height:1.4}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
        ".better{background:#d8f0d8}.worse{background:#f6d6d6}.equivalent{background:#dde8f6}"
        "</style></head><body>",
        f"<h1>What the experiments show for <code>{esc(name)}</code> ({esc(label)})</h1>",
        f"<p>Scale <b>{esc(result.scale)}</b>; knobs <code>{esc(result.knob_text or 'none')}"
        f"</code>; {result.seconds:.0f} s wall. Ran: {esc(result.ran_text())}. "
        f"{esc(result.provenance)}</p>",
        "<p>Every comparative word below is a row of an experiment's <code>verdicts.csv</code> "
        "(the book's one rule: paired on the experiment's shared units, 95 % paired "
        "t-interval, Holm's adjustment over every row of the experiment, the book-vs-book rows "
        "included, declared equivalence margins). <i>row</i> cites it as "
        "<code>experiment#row</code> (1-based row of the file, which may list the pair the "
        "other way round); here the difference is always new - rival. An inconclusive row "
        "means the units could not decide, not that the two estimators match.</p>",
    ]
    # ---------------------------------------------------------------- counts (synthesis)
    counts = headline_counts(verdicts, tuning, name)
    rivals = [r for r in syn.RIVALS if r in counts] + sorted(set(counts) - set(syn.RIVALS))
    parts.append("<h2>Against each of the book's estimators</h2><p>Over the headline rows "
                 "(tuned series; each setting and headline budget once), how often the new "
                 "estimator is better / worse / equivalent / inconclusive against the rival "
                 "(row), per experiment (column).</p><table><tr><th>rival</th>"
                 + "".join(f"<th>{esc(e)}</th>" for e in ran) + "</tr>")
    for r in rivals:
        cells = []
        for e in ran:
            c = counts[r].get(e)
            cells.append("<td>&mdash;</td>" if not c else
                         "<td>" + " / ".join(str(c[w]) for w in _WORDS) + "</td>")
        parts.append(f"<tr><td>{esc(labels.get(r, r))}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    totals = Counter()
    for per in counts.values():
        for c in per.values():
            totals.update(c)
    n_total = sum(totals.values())
    if n_total:
        parts.append(f"<p>In all, the new estimator's {n_total} headline comparisons read "
                     + ", ".join(f"{totals[w]} {w}" for w in _WORDS) + ".</p>")
    # ---------------------------------------------------------------- per experiment
    for e in ran:
        if e == "toy":
            continue
        info = result.experiment_info(e)
        rows = oriented(verdicts[e], name)
        head = [r for r in oriented(syn.tuned_headline(verdicts[e], tuning[e]), name)]
        parts.append(f"<h2>{esc(TITLES[e])}</h2><p>{esc(info)}</p>")
        mine = [t for t in tuning[e] if t.estimator == name]
        if mine:
            parts.append("<p>Tuning of the new estimator (same number of configurations, "
                         "tuning units and rule as every book estimator): "
                         + "; ".join(f"{esc(_where(t.tuned_on))}searched "
                                     f"{esc(t.knobs_tuned)} over {t.n_configs} "
                                     f"configurations x {t.n_runs} tuning units, chose "
                                     f"<code>{esc(t.chosen)}</code>"
                                     + (" (near the edge of its range)" if t.on_edge else "")
                                     for t in mine) + ".</p>")
        if head:
            v0 = head[0]
            parts.append(f"<h3>Headline: {esc(v0['metric'])} (margin {v0['margin']:g}, "
                         f"{'higher' if v0['higher'] else 'lower'} is better)</h3>")
            parts += _table(head, esc)
            parts.append(f"<img alt='{esc(e)} headline differences' src='data:image/png;"
                         f"base64,{_forest(head, TITLES[e] + ': headline, new - rival')}'>")
        rest = [r for r in rows if not r["headline"]]
        if rest:
            parts.append(f"<details><summary>The other judged rows ({len(rest)})</summary>")
            parts += _table(rest, esc)
            parts.append("</details>")
    # ---------------------------------------------------------------- cost
    from .experiments.summary import read_summary

    cost = {}
    for e in ran:
        if e == "toy":
            continue
        try:
            ms = {r.estimator: r.mean for r in read_summary(e, roots[e])
                  if r.metric == "ms_per_step"}
        except FileNotFoundError:
            continue
        if ms.get("st", 0) > 0 and name in ms:
            cost[e] = (ms[name], ms["st"])
    if cost:
        parts.append("<h2>What it costs</h2><p>Milliseconds per optimiser step of the new "
                     "estimator (at its chosen knobs) and of Straight-Through, timed "
                     "interleaved in this run by each experiment's own timing (median of "
                     "blocks after warm-up), on this machine under its load at the time; the "
                     "rows <code>ms_per_step</code> of each <code>summary.csv</code>.</p><table>"
                     "<tr><th>experiment</th><th>new (ms)</th><th>ST (ms)</th>"
                     "<th>new / ST</th></tr>"
                     + "".join(f"<tr><td>{esc(e)}</td><td>{a:.3g}</td><td>{b:.3g}</td>"
                               f"<td>{a / b:.2f}</td></tr>" for e, (a, b) in cost.items())
                     + "</table>")
    # ---------------------------------------------------------------- advice
    advice = syn.advice({e: verdicts[e] for e in ran if e != "toy"},
                        {e: tuning[e] for e in ran if e != "toy"}, labels)
    if advice:
        parts.append("<h2>Which estimator when</h2><p>Generated from the tuned headline rows "
                     "of each experiment, with the new estimator among the book's "
                     "(as in the synthesis chapter).</p><ul>"
                     + "".join(f"<li>{esc(s)}</li>" for s in advice) + "</ul>")
    # ---------------------------------------------------------------- toy suite
    rows = oriented(verdicts["toy"], name)
    parts.append(f"<h2>{esc(TITLES['toy'])}</h2><p>{esc(result.toy_text())}</p>")
    for metric in ("log_mse", "bias2", "log_variance"):
        sel = sorted((r for r in rows if r["metric"] == metric),
                     key=lambda r: (r["setting"], r["budget"], r["rival"]))
        parts.append(f"<h3>{esc(metric)}</h3>")
        parts += _table(sel, esc)
    parts.append(f"<img alt='log MSE differences' src='data:image/png;base64,{toy_figure}'>")
    parts.append("<h2>Files</h2><p><code>verdicts.csv</code>, <code>summary.csv</code>, "
                 "<code>units.csv</code>, <code>tuning.csv</code> of the toy suite here; the "
                 "same four in each experiment's folder ("
                 + ", ".join(f"<code>{esc(e)}/</code>" for e in ran if e != "toy")
                 + "), with the new estimator's records in <code>&lt;experiment&gt;/records/"
                 "</code>; the book's small-scale reruns (a cache: a second run reads them) in "
                 "<code>&lt;experiment&gt;_book/</code>.</p>")
    if not math.isnan(result.full_estimate):
        parts.append(f"<p>{esc(result.full_text())}</p>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
