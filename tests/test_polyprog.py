"""Tests of the polynomial programming task and experiment against closed forms and enumeration."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from redge_mini import st
from redge_mini.book.experiments import (
    Deadline,
    compact,
    existing_result,
    mean_se,
    parse_estimators,
    verdict,
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
    x = st(logits, generator=torch.Generator().manual_seed(0))
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
    assert files == ["small-smoke_redge.json", "small-smoke_reinforce.json", "small-smoke_st.json"]
    stored = json.loads((tmp_path / "small-smoke_redge.json").read_text())
    assert stored["config"]["estimator"] == "redge" and "torch" in stored["metadata"]
    mtime = (tmp_path / "small-smoke_st.json").stat().st_mtime_ns
    again = experiment.run(proto, ["st", "redge", "reinforce"], out=tmp_path)
    assert (tmp_path / "small-smoke_st.json").stat().st_mtime_ns == mtime
    assert json.dumps([r["data"] for r in again]) == json.dumps([r["data"] for r in records])
    summary = experiment.summarise(again)
    assert {row["estimator"] for row in summary["rows"]} == {"st", "redge", "reinforce"}
    assert all(row["gap_mean"] >= 0 for row in summary["rows"])
    assert {v["verdict"] for v in summary["verdicts"].values()} <= {"wins", "ties", "loses"}
    with pytest.raises(ValueError, match="different configuration"):
        experiment.run(proto, ["st"], out=tmp_path, seed=5)


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


def test_verdict_needs_two_standard_errors_and_the_tolerance() -> None:
    assert verdict(1.0, 0.1, 2.0, 0.1) == "wins"          # 1.0 apart, 2 SE = 0.28
    assert verdict(2.0, 0.1, 1.0, 0.1) == "loses"
    assert verdict(1.0, 0.4, 1.5, 0.4) == "ties"          # 0.5 < 2 * 0.57
    assert verdict(2.0, 0.1, 1.0, 0.1, lower_is_better=False) == "wins"
    assert verdict(1e-9, 0.0, 2e-9, 0.0, tolerance=1e-6) == "ties"
    with pytest.raises(ValueError, match="mean"):
        verdict(math.nan, 0.1, 1.0, 0.1)


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
