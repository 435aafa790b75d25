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
from redge_mini.book.experiments.summary import knob_string
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


def _smoke(tmp_path, estimators=None):
    proto = experiment.protocol("small", smoke=True)
    records = experiment.run(proto, estimators, out=tmp_path)
    return proto, records


def test_experiment_writes_the_four_tables_and_verdicts_recompute_from_units(tmp_path) -> None:
    import csv

    from scipy import stats

    from redge_mini.book.ablations import sweep_t1

    proto, records = _smoke(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"units.csv", "summary.csv", "verdicts.csv", "tuning.csv"} <= names
    assert all(r["metadata"].get("git_commit") is not None for r in records)
    units = list(csv.DictReader((tmp_path / "units.csv").open()))
    verdicts = list(csv.DictReader((tmp_path / "verdicts.csv").open()))
    series: dict = {}
    for u in units:
        key = (u["setting"], u["estimator"], u["knobs"], u["metric"], u["budget"])
        series.setdefault(key, {})[(u["seed"], u["unit"])] = float(u["value"])

    def find(name, v):
        base, _, knobs = name.partition("[")
        keys = [k for k in series if k[0] == v["setting"] and k[1] == base
                and k[3] == v["metric"] and k[4] == v["budget"]
                and (not knobs or k[2] == knobs[:-1])]
        assert len(keys) == 1, (name, keys)
        return series[keys[0]]

    # the headline rows are the comparison's; the ablations' rows (issue 20) are no headline
    assert verdicts and all(v["metric"] == "final_gap" for v in verdicts)
    assert all((v["headline"] == "True") == v["setting"].startswith("p=") for v in verdicts)
    ablation = {(v["setting"], v["estimator"], v["rival"]) for v in verdicts
                if v["setting"].startswith("ablation ")}
    assert ablation == {(f"ablation p={p:g}", a, b) for p in proto.config.powers
                        for a, b in (("reindge", "reinmax"), ("reindge", "reindge_detach"),
                                     ("reinmax", "reindge_detach"))}
    sweep = {(v["setting"], v["estimator"], v["rival"]) for v in verdicts
             if v["setting"].startswith("t1_sweep ")}
    assert sweep == {(f"t1_sweep t_1={t:g} p={p:g}", "redge", "st")
                     for p in proto.config.powers for t in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)}
    # the swept series are ReDGE's tuned configuration with t_1 replaced
    tuned = {r["config"]["stage"]: r for r in records}["t1_sweep"]["config"]["chosen"]
    for v in verdicts:
        found = sweep_t1(v["setting"])
        if found is not None:
            t_1, base = found
            chosen = tuned[proto.config.powers.index(float(base[2:]))]
            assert {u["knobs"] for u in units if u["setting"] == v["setting"]
                    and u["estimator"] == "redge"} == {knob_string({**chosen, "t_1": t_1})}
    for v in verdicts:
        a, b = find(v["estimator"], v), find(v["rival"], v)
        shared = sorted(set(a) & set(b))
        assert len(shared) == int(v["n_units"]) == len(proto.eval_seeds)
        x, y = [a[k] for k in shared], [b[k] for k in shared]
        assert float(v["diff"]) == pytest.approx(sum(x) / len(x) - sum(y) / len(y), abs=1e-12)
        if any(xi != yi for xi, yi in zip(x, y, strict=True)) and len(set(
                xi - yi for xi, yi in zip(x, y, strict=True))) > 1:
            test = stats.ttest_rel(x, y)
            low, high = test.confidence_interval(0.95)
            assert float(v["p_value"]) == pytest.approx(test.pvalue, rel=1e-6)
            assert (float(v["ci_low"]), float(v["ci_high"])) == pytest.approx((low, high))
        assert float(v["p_holm"]) >= float(v["p_value"]) - 1e-12
        assert float(v["margin"]) == experiment.HEADLINE.margin
    # every estimator has a tuned series and (where the authors give one) their own per p
    for estimator in proto.estimators:
        for p in proto.config.powers:
            knobs = {u["knobs"] for u in units if u["estimator"] == estimator
                     and u["setting"] == f"p={p:g}" and u["metric"] == "final_gap"}
            if estimator in experiment.AUTHOR_KNOBS:
                assert knob_string(experiment.AUTHOR_KNOBS[estimator]) in knobs
            assert 1 <= len(knobs) <= 2 and all("lr=" in k for k in knobs)


def test_tuning_is_equal_and_disjoint_from_evaluation(tmp_path) -> None:
    from redge_mini.book.experiments.verdicts import read_tuning, read_units

    proto, records = _smoke(tmp_path)
    rows = read_tuning("polyprog", root=tmp_path)
    assert {r.estimator for r in rows} == set(proto.estimators)
    assert {(r.n_configs, r.n_runs) for r in rows} == {(proto.n_configs, len(proto.tune_seeds))}
    assert all(r.knobs_tuned.split(";").count("lr") == 1 for r in rows)
    units = read_units("polyprog", root=tmp_path)
    tune_seeds = {u.seed for u in units if u.metric == "tune_final_gap"}
    eval_seeds = {u.seed for u in units if u.metric == "final_gap"}
    assert tune_seeds == set(proto.tune_seeds) and eval_seeds == set(proto.eval_seeds)
    assert not tune_seeds & eval_seeds
    # the choice per p is the configuration with the lowest mean tuning gap
    for record in records:
        if record["config"]["stage"] != "tune":
            continue
        data = record["data"]
        for i, choice in enumerate(data["chosen"]):
            means = [sum(runs[i]) / len(runs[i]) for runs in data["final_gap"]]
            assert choice == data["configs"][means.index(min(means))]
    # the full protocol: >= 10 evaluation and >= 3 tuning seeds, the same n for everyone
    full = experiment.protocol("full")
    assert len(full.eval_seeds) >= 10 and len(full.tune_seeds) >= 3
    assert not set(full.eval_seeds) & set(full.tune_seeds)
    sizes = {e: len(full.configs(e)) for e in full.estimators}
    assert set(sizes.values()) == {experiment.N_CONFIGS}
    for estimator, author in experiment.AUTHOR_KNOBS.items():
        assert full.configs(estimator)[0] == author
    with pytest.raises(ValueError, match="disjoint"):
        replace(full, tune_seeds=(0, 1, 2))


def test_a_rerun_resumes_from_the_stored_records(tmp_path) -> None:
    proto, records = _smoke(tmp_path, ["st", "redge"])
    name = tmp_path / f"{proto.scale}_eval_st.json"
    mtime = name.stat().st_mtime_ns
    again = experiment.run(proto, ["st", "redge"], out=tmp_path)
    assert name.stat().st_mtime_ns == mtime
    assert json.dumps([r["data"] for r in again]) == json.dumps([r["data"] for r in records])
    stored = json.loads(name.read_text())
    assert stored["config"]["scale"] == stored["metadata"]["scale"] == proto.scale
    # the tables of a live (unsaved) run equal those written from the stored files
    live = experiment.run(proto, ["st", "redge"], out=tmp_path / "none", save=False)
    table = experiment.tables(live)
    from redge_mini.book.experiments.verdicts import read_units
    assert set(table["units"]) == set(read_units("polyprog", root=tmp_path))
    assert experiment.write_tables(tmp_path / "empty", proto.scale) is None


def test_protocol_table_and_throughput_projection() -> None:
    table = experiment.protocol_table(experiment.protocol("full"))
    assert table.count("\n") >= 10 and "**differs**" in table and "128" in table
    proto = experiment.protocol("small", smoke=True)
    projected = experiment.measure_throughput(proto, n_iters=1)
    assert set(projected) == {*proto.estimators, "total"}
    assert projected["total"] == pytest.approx(sum(v for k, v in projected.items()
                                                   if k != "total"))


def test_adam_with_one_learning_rate_per_problem_matches_torch() -> None:
    from redge_mini.book.tasks.polyprog import _adam_step

    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(5, 2, 3, generator=gen)
    lrs = torch.tensor([0.1, 0.01]).view(2, 1)
    ours = torch.zeros(2, 3)
    m, v = torch.zeros_like(ours), torch.zeros_like(ours)
    for step, g in enumerate(grads, start=1):
        _adam_step(ours, g, m, v, lrs, step)
    for i, lr in enumerate((0.1, 0.01)):
        theirs = torch.zeros(3, requires_grad=True)
        adam = torch.optim.Adam([theirs], lr=lr)
        for g in grads:
            theirs.grad = g[i].clone()
            adam.step()
        torch.testing.assert_close(ours[i], theirs.detach())


def test_optimise_problems_runs_each_problem_at_its_own_p_and_lr() -> None:
    from redge_mini.book.tasks.polyprog import Problem, optimise_problems

    config = PolyProgConfig(n_vars=8, n_samples=8, n_iters=20, n_runs=2, record_every=10)
    problems = [Problem({"t_1": 0.5, "lr": 0.2}, 2.0), Problem({"t_1": 0.3}, 3.0),
                Problem({"t_1": 0.5, "lr": 1e-6}, 1.5)]
    steps, gaps, probs = optimise_problems("redge", problems, config, seed=0)
    assert steps.tolist() == [0, 10, 20] and gaps.shape == (3, 2, 3) and probs.shape == (3, 2)
    for i, p in enumerate((2.0, 3.0, 1.5)):       # the starting gap tells the exponent
        assert float(gaps[i, 0, 0]) == pytest.approx(((1 - C) ** p - C**p) / 2, rel=1e-6)
    assert float(gaps[2, :, -1].min()) > 0.999 * float(gaps[2, 0, 0])   # lr 1e-6: no move
    assert float(gaps[0, :, -1].max()) < float(gaps[0, 0, 0])
    with pytest.raises(ValueError, match="lr"):
        optimise_problems("st", [Problem({"lr": -1.0}, 2.0)], config)


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
