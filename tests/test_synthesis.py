"""The synthesis chapter's reading of the summary files: interval rule, headlines, t_1, costs."""

from __future__ import annotations

import pytest

from redge_mini.book.experiments import synthesis as syn
from redge_mini.book.experiments.summary import summary_row, write_summary


def rows_of(experiment, specs):
    """specs: (setting, estimator, knobs, metric, budget, values)."""
    return [summary_row(experiment, *spec) for spec in specs]


@pytest.fixture
def stored(tmp_path):
    polyprog = rows_of("polyprog", [
        ("p=2", "redge", {"n_steps": 3, "t_1": 0.9}, "final_gap", 1000, [1.0, 1.1, 0.9]),
        ("p=2", "reindge", {"n_steps": 5, "t_1": 0.3}, "final_gap", 1000, [0.1, 0.11, 0.09]),
        ("p=2", "st", {}, "final_gap", 1000, [2.0, 2.1, 1.9]),
        ("p=2", "reinmax", {"tau": 1.0}, "final_gap", 1000, [0.5, 0.6, 0.4]),
        # tuning rows and a shorter budget must not count
        ("p=2", "redge", {"t_1": 0.1}, "tune_final_gap", 250, [0.0001, 0.0001]),
        ("p=2", "st", {}, "final_gap", 100, [0.0, 0.0, 0.0]),
    ])
    vae = rows_of("vae", [
        ("binary48", "redge", {"n_steps": 5, "t_1": 0.7}, "train_neg_elbo", 4000, [100, 101, 99]),
        ("binary48", "reinmax", {"tau": 2.0}, "train_neg_elbo", 4000, [100.5, 101.5, 99.5]),
        ("binary48", "st", {}, "ms_per_step", 50, [2.0]),
        ("binary48", "redge", {"n_steps": 5, "t_1": 0.7}, "ms_per_step", 50, [3.0]),
    ])
    write_summary("polyprog", polyprog, root=tmp_path / "polyprog")
    write_summary("vae", vae, root=tmp_path / "vae")
    return syn.load_all(tmp_path)


def test_missing_files_are_none_and_present_ones_are_read(stored) -> None:
    assert stored["sudoku"] is None and stored["image_guidance"] is None
    assert len(stored["polyprog"]) == 6 and len(stored["vae"]) == 4


def test_headline_rows_skip_tuning_and_keep_the_largest_budget(stored) -> None:
    metric, rows = syn.headline_rows(stored["polyprog"], syn.first_aspect("polyprog"))
    assert metric == "final_gap"
    assert {(r.estimator, r.budget) for r in rows} == {("redge", 1000), ("reindge", 1000),
                                                       ("st", 1000), ("reinmax", 1000)}
    assert syn.headline_rows(stored["vae"], syn.ASPECTS[2]) == (None, [])


def test_interval_rule_wins_ties_and_loses(stored) -> None:
    _, rows = syn.headline_rows(stored["polyprog"], syn.first_aspect("polyprog"))
    (c,) = syn.compare(rows, higher_is_better=False)
    # ReinDGE's interval lies wholly below ReinMax's: a win; plain ReDGE's wholly above: a loss.
    assert (c.family.estimator, c.other.estimator, c.verdict) == ("reindge", "reinmax", "wins")
    assert syn.compare([c.plain_redge, c.other], False)[0].verdict == "loses"
    _, rows = syn.headline_rows(stored["vae"], syn.first_aspect("vae"))
    (c,) = syn.compare(rows, higher_is_better=False)
    assert c.verdict == "ties"                       # overlapping intervals
    # With "higher is better" the same numbers turn a win into a loss.
    _, rows = syn.headline_rows(stored["polyprog"], syn.first_aspect("polyprog"))
    (c,) = syn.compare(rows, higher_is_better=True)
    assert (c.family.estimator, c.other.estimator) == ("redge", "st") and c.verdict == "loses"


def test_t1_landings_costs_and_top_groups(stored) -> None:
    landings = syn.t1_landings(stored)
    assert {(x["experiment"], x["estimator"], x["t_1"]) for x in landings} == {
        ("polyprog", "redge", 0.9), ("polyprog", "reindge", 0.3), ("vae", "redge", 0.7)}
    assert syn.costs(stored) == {"vae": {"st": 1.0, "redge": 1.5}}
    groups = syn.top_groups(stored)
    assert groups["polyprog"] == {"reindge"} and groups["vae"] == {"redge", "reinmax"}
    assert groups["sudoku"] is None
    assert syn.parse_knobs("n_steps=3;t_1=0.5") == {"n_steps": 3.0, "t_1": 0.5}
    assert syn.parse_knobs("") == {}
