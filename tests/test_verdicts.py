"""The one verdict rule: paired intervals and tests against scipy, Holm against its definition,
the four verdict words, the file formats, and the equal-budget random search."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from scipy import stats

from redge_mini.book import runtime
from redge_mini.book.experiments import tuning
from redge_mini.book.experiments import verdicts as V


def series(shift: float, n: int = 40, seeds: int = 2, noise: float = 0.3, seed: int = 0):
    rng = random.Random(seed)
    return {(s, f"u{i}"): (i % 5) * 0.5 + shift + rng.gauss(0, noise)
            for s in range(seeds) for i in range(n)}


def test_paired_difference_matches_scipy_ttest_rel_and_the_t_interval() -> None:
    a, b = series(0.2, seed=1), series(0.0, seed=2)
    del b[(0, "u3")]                                   # only shared units count
    n, diff, low, high, p = V.paired_difference(a, b)
    keys = sorted(set(a) & set(b))
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    assert n == len(keys) == 79
    assert p == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-10)
    d = [u - v for u, v in zip(x, y, strict=True)]
    mean, sd = sum(d) / n, stats.tstd(d)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert diff == pytest.approx(mean) and (low, high) == pytest.approx((mean - half, mean + half))


def test_paired_difference_degenerate_cases() -> None:
    same = {(0, "a"): 1.0, (0, "b"): 2.0}
    assert V.paired_difference(same, same) == (2, 0.0, 0.0, 0.0, 1.0)
    shifted = {k: v + 1.0 for k, v in same.items()}
    assert V.paired_difference(shifted, same) == (2, 1.0, 1.0, 1.0, 0.0)
    n, diff, low, high, p = V.paired_difference({(0, "a"): 1.0}, {(0, "a"): 0.0})
    assert n == 1 and diff == 1.0 and math.isnan(low) and math.isnan(p)


def holm_by_definition(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    k = len(ps)
    out = [0.0] * k
    for rank, i in enumerate(order):
        out[i] = min(1.0, max((k - j) * ps[order[j]] for j in range(rank + 1)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_its_definition(seed) -> None:
    rng = random.Random(seed)
    ps = [rng.random() ** 3 for _ in range(12)]
    assert V.holm(ps) == pytest.approx(holm_by_definition(ps))
    with_nan = [*ps[:3], math.nan, *ps[3:]]
    adjusted = V.holm(with_nan)
    assert math.isnan(adjusted[3]) and adjusted[:3] == pytest.approx(V.holm(ps)[:3])


def test_decide_gives_each_word() -> None:
    assert V.decide(0.1, 0.3, 0.01, 0.05, True) == "better"
    assert V.decide(0.1, 0.3, 0.01, 0.05, False) == "worse"
    assert V.decide(-0.3, -0.1, 0.01, 0.05, True) == "worse"
    assert V.decide(-0.02, 0.03, 0.5, 0.05, True) == "equivalent"
    assert V.decide(-0.2, 0.3, 0.5, 0.05, True) == "inconclusive"
    # a raw difference that Holm's adjustment does not let through
    assert V.decide(0.1, 0.3, 0.2, 0.05, True) == "inconclusive"
    assert V.decide(0.01, 0.03, 0.2, 0.05, True) == "equivalent"
    assert V.decide(math.nan, math.nan, math.nan, 0.05, True) == "inconclusive"


def make_units():
    units = []
    for est, knobs, shift in [("st", {"lr": 0.1}, 0.0), ("redge", {"lr": 0.1, "t_1": 0.5}, 0.4),
                              ("redge", {"lr": 0.05, "t_1": 0.9}, 0.01),
                              ("gumbel", {"lr": 0.3, "tau": 1.0}, 0.0)]:
        for metric in ("solved", "violations"):
            for budget in (100, 200):
                units += V.units_from_values("sudoku", "main", est, knobs, metric, budget,
                                             series(shift, seed=hash((est, shift)) % 1000))
    return units


def test_verdicts_pair_every_series_name_knobs_and_adjust_over_all_rows(tmp_path) -> None:
    units = make_units()
    metrics = [V.Metric("solved", True, 0.05, headline=True, headline_budgets=(200,)),
               V.Metric("violations", False, 1.0)]
    rows = V.write_results("sudoku", units, metrics, [], root=tmp_path,
                           budgets={"violations": [200]})
    # 4 series -> 6 pairs, for solved at two budgets and violations at one
    assert len(rows) == 18
    names = {r.estimator for r in rows} | {r.rival for r in rows}
    assert {"st", "gumbel", "redge[lr=0.1;t_1=0.5]", "redge[lr=0.05;t_1=0.9]"} == names
    # the family member is the estimator of its pairs
    assert all(r.base_rival != "redge" or r.base_estimator == "redge" for r in rows)
    assert {r.headline for r in rows if r.metric == "solved" and r.budget == 200} == {True}
    assert not any(r.headline for r in rows if r.metric == "violations" or r.budget == 100)
    assert [r.p_holm for r in rows] == pytest.approx(holm_by_definition([r.p_value
                                                                         for r in rows]))
    strong = V.select(rows, estimator="redge[lr=0.1;t_1=0.5]", rival="st", metric="solved",
                      budget=200)[0]
    assert strong.verdict == "better" and strong.n_units == 80
    assert strong.sentence({"redge": "ReDGE", "st": "ST"}).startswith(
        "ReDGE[lr=0.1;t_1=0.5] vs ST: better")
    # the files round-trip, and the headline verdicts are recomputable from units.csv alone
    assert V.read_verdicts("sudoku", tmp_path) == rows
    back = V.read_units("sudoku", tmp_path)
    assert sorted(back, key=repr) == sorted(units, key=repr)
    for row in rows:
        def values(name, r=row):
            est, _, knobs = name.partition("[")
            return {(u.seed, u.unit): u.value for u in back
                    if u.estimator == est and u.metric == r.metric and u.budget == r.budget
                    and (not knobs or u.knobs == knobs[:-1])}
        a, b = values(row.estimator), values(row.rival)
        assert len(a) == len(b) == row.n_units
        keys = sorted(a)
        test = stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys])
        assert row.p_value == pytest.approx(test.pvalue, rel=1e-9)
    summary = {(r.estimator, r.knobs, r.metric, r.budget): r
               for r in V.summary_from_units(units)}
    row = summary[("st", "lr=0.1", "solved", 200)]
    assert row.n_seeds == 80 and row.ci_low < row.mean < row.ci_high


def test_units_refuse_nan_duplicates_and_bad_budgets(tmp_path) -> None:
    with pytest.raises(ValueError, match="NaN"):
        V.units_from_values("vae", "s", "st", {}, "m", 1, {(0, "a"): math.nan})
    with pytest.raises(ValueError, match="budget"):
        V.units_from_values("vae", "s", "st", {}, "m", -1, {(0, "a"): 1.0})
    unit = V.units_from_values("vae", "s", "st", {}, "m", 1, {(0, "a"): 1.0})
    with pytest.raises(ValueError, match="twice"):
        V.write_units("vae", unit * 2, tmp_path)
    with pytest.raises(ValueError, match="margin"):
        V.Metric("m", True, 0.0)
    with pytest.raises(ValueError, match="headline"):
        V.verdicts_from_units("vae", unit, [V.Metric("m", True, 1.0)])


def test_tuning_rows_round_trip(tmp_path) -> None:
    rows = [V.TuningRow("sudoku", "st", "lr", 12, 32, "32 tuning puzzles", "lr=0.3", False),
            V.TuningRow("sudoku", "redge", "lr;n_steps;t_1", 12, 32, "32 tuning puzzles",
                        "lr=0.1;n_steps=3;t_1=0.5", True)]
    V.write_tuning("sudoku", rows, tmp_path)
    assert V.read_tuning("sudoku", tmp_path) == rows


def test_random_search_gives_every_estimator_the_same_budget() -> None:
    lr = tuning.Axis(0.01, 1.0, log=True)
    spaces = {name: tuning.search_space(name, lr) for name in
              ("st", "gumbel", "reinmax", "redge", "redge_cov", "reindge")}
    anchor = {"lr": 0.05, "n_steps": 3, "t_1": 0.9}
    drawn = {name: tuning.sample_configs(space, 12, seed=3,
                                         anchors=[anchor] if name == "redge" else [])
             for name, space in spaces.items()}
    assert {len(c) for c in drawn.values()} == {12}
    assert drawn["redge"][0] == anchor
    for name, configs in drawn.items():
        assert all(set(c) == set(spaces[name]) for c in configs)
        assert len({tuple(sorted(c.items())) for c in configs}) == 12      # no duplicates
        for config in configs:
            assert 0.01 <= config["lr"] <= 1.0
            for key, axis in spaces[name].items():
                if axis.choices:
                    assert config[key] in axis.choices
                else:
                    assert axis.low <= config[key] <= axis.high
    # a Latin hypercube puts one learning rate in each twelfth of the log range
    cells = sorted(int(12 * lr.position(c["lr"]) - 1e-9) for c in drawn["st"])
    assert cells == list(range(12))
    assert tuning.sample_configs(spaces["gumbel"], 12, seed=3) == drawn["gumbel"]
    assert tuning.sample_configs(spaces["gumbel"], 12, seed=4) != drawn["gumbel"]
    space = spaces["redge"]
    assert tuning.edge_of_space({"lr": 0.011, "n_steps": 3, "t_1": 0.5}, space)
    assert tuning.edge_of_space({"lr": 0.1, "n_steps": 9, "t_1": 0.5}, space)
    assert not tuning.edge_of_space({"lr": 0.1, "n_steps": 3, "t_1": 0.5}, space)
    with pytest.raises(ValueError, match="estimator"):
        tuning.search_space("chess", lr)
    with pytest.raises(ValueError, match="n must"):
        tuning.sample_configs(space, 0, seed=0)


def test_records_carry_the_commit_and_the_scale_run() -> None:
    state = runtime.git_state()
    assert len(state["git_commit"]) == 40 and isinstance(state["git_dirty"], bool)
    meta = runtime.run_metadata("cpu", run_scale="full")
    assert meta["scale"] == "full" and meta["git_commit"] == state["git_commit"]
    assert meta["device_name"] not in ("", "x86_64", "cpu") and meta["num_threads"] >= 1
    assert runtime.git_state("/")["git_commit"] == "unknown"


def test_pairs_are_all_pairs() -> None:
    units = []
    names = ["st", "gumbel", "reinmax", "redge", "redge_cov", "reindge", "unguided"]
    for i, name in enumerate(names):
        units += V.units_from_values("mdm_guidance", "N=5", name, {}, "solved", 5,
                                     series(0.1 * i, seed=i))
    rows = V.verdicts_from_units("mdm_guidance", units, [V.Metric("solved", True, 0.05, True)])
    assert len(rows) == len(list(itertools.combinations(names, 2)))
    family = [r for r in rows if r.estimator in ("redge", "redge_cov", "reindge")]
    assert {(r.estimator, r.rival) for r in family} >= {("redge", "st"), ("reindge", "unguided"),
                                                        ("redge", "redge_cov")}
