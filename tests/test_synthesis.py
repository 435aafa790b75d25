"""The synthesis chapter's reading of the verdict files: roles, member tables, advice with
citations, the tuning-row filter (the ``tuned_lr`` bug), t_1 landings, costs, provenance."""

from __future__ import annotations

import json
import random

import pytest

from redge_mini.book.experiments import synthesis as syn
from redge_mini.book.experiments import verdicts as V
from redge_mini.book.experiments.summary import Row, summary_row, write_summary


def series(shift, seed):
    rng = random.Random(seed)
    return {(s, f"p{i}"): float(rng.random() < 0.4 + shift) for s in range(3) for i in range(80)}


@pytest.fixture
def stored(tmp_path):
    units = []
    for i, (name, knobs, shift) in enumerate([
            ("st", {"lr": 0.3}, 0.0), ("reinmax", {"lr": 0.1, "tau": 1.5}, 0.0),
            ("redge", {"lr": 0.1, "n_steps": 3, "t_1": 0.5}, 0.3),
            ("redge", {"lr": 0.05, "n_steps": 3, "t_1": 0.9}, -0.3),      # the authors' demo
            ("reindge", {"lr": 0.2, "n_steps": 5, "t_1": 0.7}, 0.0)]):
        units += V.units_from_values("sudoku", "main", name, knobs, "final_solved", 2000,
                                     series(shift, i))
    tuning = [V.TuningRow("sudoku", "st", "lr", 12, 32, "32 puzzles", "lr=0.3", False),
              V.TuningRow("sudoku", "reinmax", "lr;tau", 12, 32, "32 puzzles", "lr=0.1;tau=1.5",
                          False),
              V.TuningRow("sudoku", "redge", "lr;n_steps;t_1", 12, 32, "32 puzzles",
                          "lr=0.1;n_steps=3;t_1=0.5", False),
              V.TuningRow("sudoku", "reindge", "lr;n_steps;t_1", 12, 32, "32 puzzles",
                          "lr=0.2;n_steps=5;t_1=0.7", True)]
    timing = [summary_row("sudoku", "full", "st", {}, "ms_per_step", 1, [2.0]),
              summary_row("sudoku", "full", "redge", {}, "ms_per_step", 1, [3.0])]
    V.write_results("sudoku", units, [V.Metric("final_solved", True, 0.05, headline=True)],
                    tuning, extra_rows=timing, root=tmp_path / "sudoku")
    meta = {"git_commit": "a" * 40, "git_dirty": False, "device_name": "CPU X, 2 cores",
            "num_threads": 2, "sampler": "cpp", "scale": "full"}
    (tmp_path / "sudoku" / "full_timing.json").write_text(json.dumps(
        {"metadata": meta, "data": {"stage": "timing"}}))
    return tmp_path


def test_missing_experiments_are_none(stored) -> None:
    verdicts = syn.load_verdicts(stored)
    assert verdicts["vae"] is None and verdicts["polyprog"] is None
    assert [c.row for c in verdicts["sudoku"]] == list(range(1, 11))


def test_roles_separate_the_authors_setting_from_the_tuned_series(stored) -> None:
    tuning = syn.load_tuning(stored)["sudoku"]
    assert syn.role("st", tuning) == "tuned"
    assert syn.role("redge[lr=0.1;n_steps=3;t_1=0.5]", tuning) == "tuned"
    assert syn.role("redge[lr=0.05;n_steps=3;t_1=0.9]", tuning) == "fixed"
    rows = syn.tuned_headline(syn.load_verdicts(stored)["sudoku"], tuning)
    assert len(rows) == 6                      # 4 tuned series, every pair once
    assert all("0.9" not in c.verdict.estimator + c.verdict.rival for c in rows)


def test_member_counts_and_advice_cite_the_rows(stored) -> None:
    verdicts, tuning = syn.load_verdicts(stored), syn.load_tuning(stored)
    counts = syn.member_counts(verdicts, tuning)
    assert counts["redge"]["st"]["better"] == 1 and counts["redge"]["reinmax"]["better"] == 1
    assert sum(counts["reindge"]["redge"].values()) == 0     # ReDGE is the estimator there
    (sentence,) = syn.advice(verdicts, tuning, {"redge": "ReDGE", "st": "ST"})
    assert sentence.startswith("In sudoku (final_solved), no tuned estimator is better than ReDGE")
    beaten = [c for c in verdicts["sudoku"] if c.verdict.verdict == "better"
              and syn.role(c.verdict.rival, tuning["sudoku"]) == "tuned"
              and syn.role(c.verdict.estimator, tuning["sudoku"]) == "tuned"]
    assert beaten and all(c.ref in sentence for c in beaten[:4])


def test_is_tuning_keeps_tuned_lr_rows() -> None:
    def row(setting, metric="final_solved"):
        return Row("sudoku", setting, "st", "lr=0.3", metric, 2000, 3, 0.4, 0.3, 0.5)

    assert not syn.is_tuning(row("tuned_lr"))          # the bug: "tun" matched "tuned_lr"
    assert not syn.is_tuning(row("authors_lr")) and not syn.is_tuning(row("p=2"))
    assert syn.is_tuning(row("tune_knob")) and syn.is_tuning(row("tune_lr"))
    assert syn.is_tuning(row("tuning")) and syn.is_tuning(row("main", "tune_final_gap"))


def test_landings_costs_provenance_and_samplers(stored) -> None:
    landings = syn.t1_landings(syn.load_tuning(stored))
    assert {(x["estimator"], x["t_1"], x["on_edge"]) for x in landings} == {
        ("redge", 0.5, False), ("reindge", 0.7, True)}
    cost = syn.costs(syn.load_all(stored))
    assert cost == {"sudoku": {"st": 1.0, "redge": 1.5}}
    info = syn.provenance(stored)["sudoku"]
    assert info["git_commit"] == ["a" * 40] and info["num_threads"] == [2]
    assert syn.samplers(stored) == {"sudoku": "cpp"}
    assert syn.manifest(stored) is None
    write_summary("vae", [], root=stored / "vae")
    assert syn.load_all(stored)["vae"] == []


def test_roles_per_setting_when_tuning_is_per_setting() -> None:
    rows = [V.TuningRow("polyprog", "redge_cov", "lr;n_steps;t_1", 8, 3, "p=1.5: seeds",
                        "lr=0.05;n_steps=5;t_1=0.2", False),
            V.TuningRow("polyprog", "redge_cov", "lr;n_steps;t_1", 8, 3, "p=2: seeds",
                        "lr=0.07;n_steps=9;t_1=0.4", True)]
    authors = "redge_cov[lr=0.05;n_steps=5;t_1=0.2]"
    # the search chose the authors' setting at p = 1.5 only
    assert syn.role(authors, rows, "p=1.5") == "tuned"
    assert syn.role(authors, rows, "p=2") == "fixed"
    assert syn.role("redge_cov[lr=0.07;n_steps=9;t_1=0.4]", rows, "p=2") == "tuned"
    assert syn.role(authors, rows) == "tuned"          # without a setting: any choice counts


def test_new_series_and_settings_are_read_generically(tmp_path) -> None:
    """An ablation, a new estimator name and several settings appear without being listed."""
    units = []
    for setting in ("K=256", "K=16384"):
        for i, (name, knobs, shift) in enumerate([
                ("st", {"lr": 0.3}, 0.0), ("reinforce", {"lr": 0.2}, 0.0),
                ("reindge", {"lr": 0.2, "n_steps": 5, "t_1": 0.7}, 0.3),
                ("reindge_detach", {"lr": 0.2, "n_steps": 5, "t_1": 0.7}, -0.3),
                ("redge", {"lr": 0.1, "n_steps": 3, "t_1": 0.95}, 0.0)]):
            units += V.units_from_values("large_vocab", setting, name, knobs, "final_ratio", 20,
                                         series(shift, i))
    tuning = [V.TuningRow("large_vocab", e, "lr", 6, 6, f"{s}: problems", c, False)
              for s in ("K=256", "K=16384")
              for e, c in (("st", "lr=0.3"), ("reinforce", "lr=0.2"),
                           ("reindge", "lr=0.2;n_steps=5;t_1=0.7"))]
    timing = [summary_row("large_vocab", s, e, {}, "ms_per_call", 1, [t])
              for s, k in (("K=256", 1.0), ("K=16384", 4.0))
              for e, t in (("st", 2.0 * k), ("reindge", 3.0 * k))]
    V.write_results("large_vocab", units,
                    [V.Metric("final_ratio", False, 0.02, headline=True)], tuning,
                    extra_rows=timing, root=tmp_path / "large_vocab")
    assert "large_vocab" in syn.EXPERIMENTS
    verdicts, tuning_rows = syn.load_verdicts(tmp_path), syn.load_tuning(tmp_path)
    sentences = syn.advice(verdicts, tuning_rows, {})
    # one sentence per setting, and the tuned REINFORCE is among the names
    assert sorted(s.split(" (")[0] for s in sentences) == ["In large_vocab, K=16384",
                                                           "In large_vocab, K=256"]
    assert all("reinforce" in s for s in sentences)
    # the detached ablation and the fixed t_1 point are not tuned choices: listed apart
    others = syn.other_series(verdicts, tuning_rows)
    names = {(o["setting"], o["series"]) for o in others}
    assert ("K=16384", "reindge_detach") in names and ("K=16384", "redge") in names
    detach = next(o for o in others if o["series"] == "reindge_detach")
    # lower is better: the detached series (p = 0.1 of a 1) beats every tuned one (0.4, 0.7)
    assert {n for n, _ in detach["better"]} == {"st", "reinforce", "reindge"}
    assert all(ref.startswith("large_vocab#") for _, ref in detach["better"])
    assert syn.ordered({"zeta", "reindge_detach", "st"}) == ["st", "reindge_detach", "zeta"]
    sentence = syn.metric_advice(verdicts["large_vocab"], "final_ratio", {},
                                 setting="K=16384")
    assert sentence.startswith("In large_vocab, K=16384 (final_ratio), no estimator")
    assert syn.costs(syn.load_all(tmp_path)) == {
        "large_vocab K=256": {"st": 1.0, "reindge": 1.5},
        "large_vocab K=16384": {"st": 1.0, "reindge": 1.5}}


def test_hit_rates_read_the_tuned_series_at_the_largest_budget(tmp_path) -> None:
    rows = [summary_row("image_guidance", "full", e, k, m, b, [v])
            for e, k in (("st", {"lr": 1.0}), ("redge", {"lr": 0.5, "t_1": 0.5}))
            for m, v in (("reward_hit", 0.9), ("judge_hit", 0.2), ("judge_source", 0.6))
            for b in (10, 20)]
    rows.append(summary_row("image_guidance", "full", "st", {"lr": 9.0}, "judge_hit", 20, [1.0]))
    write_summary("image_guidance", rows, root=tmp_path / "image_guidance")
    tuning = {"image_guidance": [
        V.TuningRow("image_guidance", "st", "lr", 8, 30, "images", "lr=1", False),
        V.TuningRow("image_guidance", "redge", "lr;t_1", 8, 30, "images", "lr=0.5;t_1=0.5",
                    False)]}
    hits = syn.hit_rates(syn.load_all(tmp_path), tuning)
    assert hits == {e: {"reward_hit": 0.9, "judge_hit": 0.2, "judge_source": 0.6}
                    for e in ("st", "redge")}
    assert syn.hit_rates({"image_guidance": None}, tuning) == {}


def test_side_studies_ablation_pairs_and_sweeps_are_found_by_their_settings(tmp_path) -> None:
    units = []
    for i, (setting, name, shift) in enumerate([
            ("eval", "st", 0.0), ("eval", "reindge", 0.2),
            ("ablation eval", "reindge", 0.0), ("ablation eval", "reindge_detach", 0.0),
            ("ablation eval", "reinmax", 0.3),
            ("t1_sweep t_1=0.1 eval", "redge", -0.3), ("t1_sweep t_1=0.1 eval", "st", 0.0),
            ("t1_sweep t_1=1 eval", "redge", 0.0), ("t1_sweep t_1=1 eval", "st", 0.0)]):
        units += V.units_from_values("sudoku", setting, name, {}, "final_solved", 2000,
                                     series(shift, i))
    rows = V.verdicts_from_units("sudoku", units,
                                 [V.Metric("final_solved", True, 0.05, headline=True)])
    # the protocol marks only the main setting's rows as headline
    rows = [V.Verdict(**{**v.__dict__, "headline": v.setting == "eval"}) for v in rows]
    cited = [syn.Cited(v, i + 1) for i, v in enumerate(rows)]
    side = syn.side_rows(cited)
    assert {c.verdict.setting for c in side} == {"ablation eval", "t1_sweep t_1=0.1 eval",
                                                 "t1_sweep t_1=1 eval"}
    pairs = [c.verdict for c in side if syn.is_ablation_pair(c.verdict)]
    assert [(v.base_estimator, v.base_rival) for v in pairs] == [("reindge", "reindge_detach")]
    swept = syn.sweep(cited)
    assert [value for value, _ in swept] == [0.1, 1.0]
    assert all(c.verdict.base_estimator == "redge" for _, c in swept)
    assert swept[0][1].verdict.verdict == "worse"      # p = 0.1 of a solve against 0.4
