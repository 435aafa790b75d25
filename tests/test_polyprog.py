"""Tests of the polynomial programming task and experiment against closed forms and enumeration."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
import torch

from redge_mini import st
from redge_mini.book.experiments import (
    Deadline,
    compact,
    existing_result,
    mean_se,
    parse_estimators,
)
from redge_mini.book.experiments import polyprog as experiment
from redge_mini.book.tasks.polyprog import (
    PolyProgConfig,
    exact_objective,
    objective,
    optimality_gap,
    optimise,
    optimum,
    st_stationary_prob,
)

C = 0.45


def one_hot(bits: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(bits), 2).double()


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_objective_of_deterministic_configurations(p: float) -> None:
    L = 8
    assert float(objective(one_hot([0] * L), C, p)) == pytest.approx(C**p)
    assert float(objective(one_hot([1] * L), C, p)) == pytest.approx((1 - C) ** p)
    bits = [1, 0, 0, 1, 1, 0, 0, 0]
    expected = (3 * (1 - C) ** p + 5 * C**p) / L
    assert float(objective(one_hot(bits), C, p)) == pytest.approx(expected)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_exact_objective_at_zero_logits_is_the_bernoulli_half_mean(p: float) -> None:
    logits = torch.zeros(128, 2, dtype=torch.float64)
    assert float(exact_objective(logits, C, p)) == pytest.approx((C**p + (1 - C) ** p) / 2)
    gap = float(optimality_gap(logits, C, p))
    assert gap == pytest.approx(((1 - C) ** p - C**p) / 2)
    assert optimum(C, p) == pytest.approx(C**p)


def enumerated_objective(logits: torch.Tensor, p: float) -> torch.Tensor:
    """E[f] summing f over all 2^L configurations weighted by their probabilities."""
    log_probs = torch.log_softmax(logits, dim=-1)
    total = torch.zeros((), dtype=logits.dtype)
    L = logits.shape[0]
    for bits in itertools.product([0, 1], repeat=L):
        x = one_hot(list(bits))
        log_w = (x * log_probs).sum()
        total = total + log_w.exp() * objective(x, C, p)
    return total


@pytest.mark.parametrize("p", [1.5, 3.0])
def test_exact_objective_and_gradient_match_enumeration(p: float) -> None:
    logits = torch.randn(5, 2, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1)).requires_grad_()
    closed = exact_objective(logits, C, p)
    (g_closed,) = torch.autograd.grad(closed, logits)
    brute = enumerated_objective(logits, p)
    (g_brute,) = torch.autograd.grad(brute, logits)
    assert float(closed.detach()) == pytest.approx(float(brute.detach()), rel=1e-12)
    torch.testing.assert_close(g_closed, g_brute, rtol=1e-10, atol=1e-12)
    gap = float(optimality_gap(logits.detach(), C, p))
    assert gap == pytest.approx(float(brute.detach()) - C**p, rel=1e-10)


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_straight_through_expected_gradient_vanishes_at_its_stationary_point(p: float) -> None:
    # Independent computation: E[J(pi)^T grad f(x)] summed over the two values of one variable.
    q_star = st_stationary_prob(C, p)
    for q, sign in ((q_star, 0), (0.5, 1)):
        probs = torch.tensor([1 - q, q], dtype=torch.float64)
        jac = torch.diag(probs) - torch.outer(probs, probs)
        expected = torch.zeros(2, dtype=torch.float64)
        for value, weight in ((0.0, 1 - q), (1.0, q)):
            df = p * abs(value - C) ** (p - 1) * math.copysign(1.0, value - C)
            expected += weight * jac @ torch.tensor([0.0, df], dtype=torch.float64)
        if sign == 0:
            assert abs(float(expected[1])) < 1e-12
        else:
            assert float(expected[1]) > 0   # at q = 1/2 ST pushes q down, towards the optimum


def test_st_estimator_gradient_at_the_stationary_point_is_zero_in_mean() -> None:
    p, n = 2.0, 200_000
    q = st_stationary_prob(C, p)
    logits = torch.tensor([[0.0, math.log(q / (1 - q))]]).expand(n, 1, 2).clone()
    logits.requires_grad_()
    x = st(logits, hard=True, generator=torch.Generator().manual_seed(0))
    objective(x, C, p).sum().backward()
    grads = logits.grad[:, 0, 1]
    mean, se = float(grads.mean()), float(grads.std()) / math.sqrt(n)
    assert abs(mean) < 4 * se


def test_optimise_records_gaps_and_reduces_them_with_reinforce() -> None:
    config = PolyProgConfig(n_vars=16, n_samples=16, n_iters=60, n_runs=2, record_every=20,
                            powers=(2.0,))
    run = optimise("reinforce", None, config, seed=0)
    assert run.gaps.shape == (1, 1, 2, 4)
    assert run.steps.tolist() == [0, 20, 40, 60]
    initial = ((1 - C) ** 2 - C**2) / 2
    torch.testing.assert_close(run.gaps[..., 0], torch.full((1, 1, 2), initial))
    assert bool((run.gaps[..., -1] < 0.5 * initial).all())
    again = optimise("reinforce", None, config, seed=0)
    torch.testing.assert_close(again.gaps, run.gaps)


def test_optimise_straight_through_stalls_near_its_stationary_point() -> None:
    config = PolyProgConfig(n_vars=32, n_samples=64, n_iters=150, n_runs=2, record_every=50,
                            powers=(3.0,))
    run = optimise("st", None, config, seed=1)
    q_star = st_stationary_prob(C, 3.0)
    assert float(run.final_probs.mean()) == pytest.approx(q_star, abs=0.03)


def test_optimise_runs_a_knob_grid_side_by_side() -> None:
    config = PolyProgConfig(n_vars=8, n_samples=4, n_iters=3, n_runs=2, record_every=1)
    run = optimise("redge", [{"t_1": 0.3}, {"t_1": 0.8, "n_steps": 3}], config, seed=0)
    assert run.gaps.shape == (2, 3, 2, 4)
    assert run.knob_values[1] == {"n_steps": 3, "t_1": 0.8}
    assert run.knob_values[0]["n_steps"] == 5   # default filled in


def test_bad_input_is_refused_with_the_argument_named() -> None:
    config = PolyProgConfig(n_vars=4, n_samples=2, n_iters=1, n_runs=1)
    with pytest.raises(ValueError, match="unknown estimator"):
        optimise("sparsemax", None, config)
    with pytest.raises(ValueError, match="t_1"):
        optimise("redge", [{"t_1": 0.0}], config)
    with pytest.raises(ValueError, match="tau"):
        optimise("st", [{"tau": 1.0}], config)
    with pytest.raises(ValueError, match="no knob"):
        optimise("reinforce", [{"tau": 1.0}], config)
    with pytest.raises(ValueError, match="n_samples"):
        optimise("reinforce", None, PolyProgConfig(n_samples=1))
    with pytest.raises(ValueError, match="c must be"):
        PolyProgConfig(c=0.7)
    with pytest.raises(ValueError, match="powers"):
        PolyProgConfig(powers=(0.5,))
    with pytest.raises(ValueError, match="n_iters"):
        PolyProgConfig(n_iters=0)


def test_experiment_writes_resumes_and_summarises(tmp_path) -> None:
    proto = experiment.protocol("small", smoke=True)
    records = experiment.run(proto, ["st", "redge", "reinforce"], out=tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == ["small-smoke_redge.json", "small-smoke_reinforce.json", "small-smoke_st.json",
                     "small-smoke_tune_redge.json"]
    stored = json.loads((tmp_path / "small-smoke_redge.json").read_text())
    assert stored["config"]["estimator"] == "redge" and "torch" in stored["metadata"]
    tune = json.loads((tmp_path / "small-smoke_tune_redge.json").read_text())["data"]
    # The main stage runs, for every p, the grid value with the lowest mean tuning gap.
    for i, knobs in enumerate(stored["config"]["chosen"]):
        means = [sum(runs[i]) / len(runs[i]) for runs in tune["final_gap"]]
        assert knobs == tune["knob_values"][means.index(min(means))]
        assert stored["data"]["per_p"][i]["knobs"] == knobs
    mtime = (tmp_path / "small-smoke_st.json").stat().st_mtime_ns
    again = experiment.run(proto, ["st", "redge", "reinforce"], out=tmp_path)
    assert (tmp_path / "small-smoke_st.json").stat().st_mtime_ns == mtime
    assert json.dumps([r["data"] for r in again]) == json.dumps([r["data"] for r in records])
    summary = experiment.summarise(again)
    assert {row["estimator"] for row in summary["rows"]} == {"st", "redge", "reinforce"}
    assert all(row["gap_low"] <= row["gap_mean"] <= row["gap_high"] for row in summary["rows"])
    assert all(row["n_eval"] == proto.config.n_runs for row in summary["rows"])
    assert {v["verdict"] for v in summary["verdicts"].values()} <= {"wins", "ties", "loses"}
    with pytest.raises(ValueError, match="different configuration"):
        experiment.run(proto, ["st"], out=tmp_path, seed=5)


def test_a_run_of_every_estimator_times_one_step_of_each(tmp_path) -> None:
    from redge_mini.book.experiments.summary import read_summary

    proto = experiment.protocol("small", smoke=True)
    proto = replace(proto, grids={"st": [{}], "reinforce": [{}]})
    records = experiment.run(proto, out=tmp_path)
    timing = next(r for r in records if r["config"]["stage"] == "timing")
    assert set(timing["data"]["timing_ms"]) == {"st", "reinforce"}
    assert timing["data"]["p"] == proto.config.powers[len(proto.config.powers) // 2]
    experiment.write_summary_csv(tmp_path, proto.scale)
    rows = [r for r in read_summary("polyprog", root=tmp_path) if r.metric == "ms_per_step"]
    assert {r.estimator: r.mean for r in rows} == pytest.approx(timing["data"]["timing_ms"],
                                                              rel=1e-4)
    assert {row["estimator"] for row in experiment.summarise(records)["rows"]} == {
        "st", "reinforce"}


def test_summary_csv_from_stored_files_matches_the_records(tmp_path) -> None:
    from scipy import stats

    from redge_mini.book.experiments.summary import read_summary

    proto = experiment.protocol("small", smoke=True)
    experiment.run(proto, ["st", "gumbel"], out=tmp_path)
    assert experiment.write_summary_csv(tmp_path, "none") is None
    experiment.write_summary_csv(tmp_path, proto.scale)
    rows = read_summary("polyprog", root=tmp_path)
    main = json.loads((tmp_path / "small-smoke_gumbel.json").read_text())["data"]["per_p"][0]
    row = next(r for r in rows if r.estimator == "gumbel" and r.metric == "final_gap"
               and r.setting == f"p={main['p']:g}")
    values = main["final_gap"]
    mean = sum(values) / len(values)
    half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
    assert (row.n_seeds, row.budget) == (len(values), proto.config.n_iters)
    assert row.mean == pytest.approx(mean) and row.ci_high == pytest.approx(mean + half)
    assert row.knobs == f"tau={main['knobs']['tau']:g}"
    tuning = [r for r in rows if r.metric == "tune_final_gap"]
    assert len(tuning) == len(proto.grids["gumbel"]) * len(proto.config.powers)
    assert {r.budget for r in tuning} == {proto.tune_iters}
    # The command-line --summarise writes the same file from the stored records alone.
    (tmp_path / "summary.csv").unlink()
    assert experiment.main(["--smoke", "--scale", "small", "--summarise",
                            "--out", str(tmp_path)]) == 0
    assert read_summary("polyprog", root=tmp_path) == rows


def test_records_of_the_earlier_one_stage_protocol_are_summarised() -> None:
    gaps = [[[0.5, 0.4, 0.3, 0.2, 0.1]], [[0.05, 0.06, 0.01, 0.02, 0.03]]]   # (G, P, R)
    record = {"config": {"scale": "full", "n_select": 2, "n_iters": 1000},
              "metadata": {"device_name": "gpu"},
              "data": {"estimator": "gumbel", "knob_values": [{"tau": 1.0}, {"tau": 0.1}],
                       "powers": [2.0], "steps": [0, 1000], "final_gap": gaps,
                       "final_prob": gaps, "initial_gap": [0.5],
                       "curve_mean": [[[0.5, 0.1]], [[0.5, 0.02]]],
                       "curve_se": [[[0.0, 0.1]], [[0.0, 0.01]]]}}
    (row,) = experiment.summarise([record])["rows"]
    assert row["knobs"] == {"tau": 0.1} and row["n_eval"] == 3      # runs 3-5 of tau = 0.1
    assert row["gap_mean"] == pytest.approx(0.02) and row["budget"] == 1000
    assert row["at_edge"]
    metrics = {(r.metric, r.n_seeds) for r in experiment.summary_rows([record])}
    assert metrics == {("final_gap", 3), ("final_mean_q", 3), ("tune_final_gap", 2)}


def test_full_grids_extend_past_the_authors_and_cover_the_required_axes() -> None:
    grids = experiment.protocol("full").grids
    for name in ("redge", "redge_cov", "reindge"):
        t_values = {k["t_1"] for k in grids[name]}
        assert {0.1, 0.3, 0.5, 0.7, 0.9} <= t_values
        assert {k["n_steps"] for k in grids[name]} == {3, 5, 9}
        author = experiment.AUTHOR_KNOBS[name]["t_1"]
        assert min(t_values) < author < max(t_values) or author == 0.1 and min(t_values) < 0.1
    taus = sorted(k["tau"] for k in grids["gumbel"])
    assert taus[0] < 0.02 < taus[-1]
    table = experiment.protocol_table(experiment.protocol("small"))
    assert table.count("\n") >= 10 and "**differs**" in table


def test_welch_verdict_agrees_with_scipy_and_respects_the_tolerance() -> None:
    from scipy import stats

    from redge_mini.book.experiments import welch_verdict

    a, b = [1.0, 1.1, 0.9, 1.05, 0.95], [2.0, 2.2, 1.8, 2.1, 1.9]
    assert stats.ttest_ind(a, b, equal_var=False).pvalue < 0.05
    assert welch_verdict(a, b) == "wins" and welch_verdict(b, a) == "loses"
    assert welch_verdict(a, b, lower_is_better=False) == "loses"
    noisy = [0.0, 3.0, -2.0, 4.0, 1.0]
    assert stats.ttest_ind(a, noisy, equal_var=False).pvalue > 0.05
    assert welch_verdict(a, noisy) == "ties"
    assert welch_verdict([1e-9] * 3, [2e-9] * 3, tolerance=1e-6) == "ties"
    with pytest.raises(ValueError, match="two seeds"):
        welch_verdict([1.0], [2.0, 3.0])


def test_experiment_cli_refuses_bad_input(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        experiment.main(["--smoke", "--estimators", "st,foo", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "unknown estimator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiment.main(["--smoke", "--max-minutes", "0", "--out", str(tmp_path)])
    assert experiment.main(["--smoke", "--scale", "small", "--estimators", "st",
                            "--out", str(tmp_path), "--no-progress"]) == 0


# Shared helpers of redge_mini.book.experiments (used by every experiment script).


def test_mean_se_matches_the_textbook_formula() -> None:
    import statistics

    values = [1.0, 4.0, 2.5, 7.0, 3.0]
    mean, se = mean_se(values)
    assert mean == pytest.approx(statistics.fmean(values))
    assert se == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
    assert math.isnan(mean_se([2.0])[1])
    with pytest.raises(ValueError, match="empty"):
        mean_se([])


def test_compact_rounds_nested_floats_and_keeps_non_finite() -> None:
    data = {"a": [0.123456789, torch.tensor([1.0 / 3.0])], "b": math.inf, "c": 3}
    assert compact(data, 3) == {"a": [0.123, [0.333]], "b": math.inf, "c": 3}


def test_existing_result_detects_a_config_change(tmp_path) -> None:
    from redge_mini.book.runtime import save_results

    assert not existing_result(tmp_path, "x", {"a": 1})
    save_results("demo", "x", {"v": 1}, config={"a": 1, "t": (1, 2)}, root=tmp_path)
    assert existing_result(tmp_path, "x", {"a": 1, "t": (1, 2)})
    with pytest.raises(ValueError, match="different configuration"):
        existing_result(tmp_path, "x", {"a": 2, "t": (1, 2)})


def test_parse_estimators_and_deadline_refuse_bad_input() -> None:
    assert parse_estimators(None, ["st", "redge"]) == ["st", "redge"]
    assert parse_estimators("redge, st", ["st", "redge"]) == ["redge", "st"]
    with pytest.raises(ValueError, match="unknown"):
        parse_estimators("st,bogus", ["st"])
    with pytest.raises(ValueError, match="twice"):
        parse_estimators("st,st", ["st"])
    with pytest.raises(ValueError, match="max-minutes"):
        Deadline(0)
    assert not Deadline(None).expired()
    import time

    short = Deadline(1e-6)          # 60 microseconds
    time.sleep(0.01)
    assert short.expired() and short.elapsed() >= 0.01


def test_optimise_stops_when_asked_and_the_script_resumes(tmp_path) -> None:
    from redge_mini.book.tasks import TrainingInterrupted

    config = PolyProgConfig(n_vars=4, n_samples=2, n_iters=120, n_runs=1)
    with pytest.raises(TrainingInterrupted):
        optimise("st", None, config, stop=lambda: True)
    # A spent budget leaves the script unfinished (exit code 3) without a partial file.
    code = experiment.main(["--smoke", "--scale", "small", "--out", str(tmp_path),
                            "--max-minutes", "1e-9", "--no-progress"])
    assert code == 3 and not list(tmp_path.glob("*.json"))
