"""The large-vocabulary experiment: its exact objective against enumeration, its estimator
registry, its memory measurement and its files, end to end at the smoke scale."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from redge_mini.book.experiments import large_vocab as lv
from redge_mini.book.experiments.verdicts import (
    Verdict,
    read_tuning,
    read_units,
    read_verdicts,
    verdicts_from_units,
)
from redge_mini.book.toy import hard_sample_gradient_moments, make_toy_problem
from redge_mini.exact import exact_expectation, exact_gradient
from redge_mini.registry import ESTIMATORS, check_knobs


@pytest.mark.parametrize(("L", "K", "seed"), [(1, 7, 0), (2, 5, 1), (3, 4, 2), (4, 3, 3)])
def test_closed_form_matches_enumeration(L, K, seed):
    toy = make_toy_problem(L, K, kind="smooth", seed=seed)
    closed = lv.exact_objective(toy.f.weights, toy.f.target, toy.logits)
    assert torch.allclose(closed, exact_expectation(toy.f, toy.logits), rtol=1e-12, atol=1e-12)
    theta = toy.logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(lv.exact_objective(toy.f.weights, toy.f.target, theta), theta)
    assert torch.allclose(grad, exact_gradient(toy.f, toy.logits), rtol=1e-10, atol=1e-12)


def test_problems_batch_rows_are_the_toy_problems():
    problems = lv.Problems.make(2, 5, (3, 8))
    for row, seed in enumerate((3, 8)):
        toy = make_toy_problem(2, 5, kind="smooth", seed=seed)
        assert torch.equal(problems.logits[row], toy.logits)
        x = torch.nn.functional.one_hot(torch.tensor([[1, 4], [0, 2]]), 5).double()
        batch = x.unsqueeze(1).expand(2, 2, 2, 5)  # (S, U, L, K)
        assert torch.allclose(problems.f(batch)[:, row], toy.f(x))
        assert math.isclose(float(problems.objective(problems.logits)[row]),
                            toy.exact_value(), rel_tol=1e-12)


def test_every_pathwise_estimator_is_covered_with_valid_settings():
    assert lv.ESTIMATOR_NAMES == tuple(ESTIMATORS)
    assert set(lv.AUTHORS_IMAGE) == set(ESTIMATORS)
    proto = lv.protocol("full")
    assert proto.vocabs == (256, 4096, 16384) and proto.estimators == tuple(ESTIMATORS)
    for name in ESTIMATORS:
        configs = proto.configs(name)
        assert len(configs) == proto.n_configs and configs[0] == lv.AUTHORS_IMAGE[name]
        for knobs in configs:
            check_knobs(name, **{k: v for k, v in knobs.items() if k != "lr"})
            assert lv.LR_AXIS.low <= knobs["lr"] <= lv.LR_AXIS.high


def test_settings_are_named_by_vocabulary():
    assert lv.setting_of(16384) == "K=16384" and lv.vocab_of("K=16384") == 16384
    with pytest.raises(ValueError, match="setting"):
        lv.vocab_of("V=3")


def test_protocol_refuses_bad_values():
    proto = lv.protocol("small", smoke=True)
    with pytest.raises(ValueError, match="n_draws"):
        replace(proto, n_draws=1)
    with pytest.raises(ValueError, match="disjoint"):
        replace(proto, tune_seeds=(0, 1))
    with pytest.raises(ValueError, match="vocabs"):
        replace(proto, vocabs=(1,))
    with pytest.raises(ValueError, match="scale"):
        lv.protocol("huge")


def test_straight_through_moments_agree_with_enumeration():
    # ST's gradient is a function of H ~ Cat(pi) alone, so its mean and variance are sums over
    # the K categories; n = 4000 draws put the estimates within a few standard errors
    # (relative error of a variance estimate ~ sqrt(2 / n) ~ 0.02 for light tails).
    proto = replace(lv.protocol("small", smoke=True), vocabs=(6,), n_draws=4000,
                    eval_seeds=(0, 1))
    data = lv.gradient_stage("st", 6, proto)
    for seed, unit in zip(proto.eval_seeds, data["single"], strict=True):
        toy = make_toy_problem(1, 6, kind="smooth", seed=seed)
        exact = exact_gradient(toy.f, toy.logits)
        moments = hard_sample_gradient_moments("st", toy.f, toy.logits)
        scale = float(exact.square().sum())
        assert math.isclose(unit["exact_norm"] ** 2, scale, rel_tol=1e-9)
        assert abs(unit["log10_rel_variance"] - math.log10(moments.variance / scale)) < 0.05
        bias2 = float((moments.mean - exact).square().sum()) / scale
        rel_var = moments.variance / scale
        assert abs(unit["rel_bias2"] - bias2) < 6 * math.sqrt(4 * bias2 * rel_var / 4000) + 1e-3


def test_run_adam_starts_at_one_and_descends_with_exact_scale():
    problems = lv.Problems.make(2, 8, (0, 1, 2))
    curve = lv.run_adam("st", {"lr": 0.5}, problems, steps=15, n_samples=8, seed=0)
    assert curve.shape == (3, 16)
    assert (curve[:, 0] == 1.0).all()
    assert curve[:, -1].mean() < 0.8


def test_peak_extra_bytes_sees_a_known_allocation():
    # In a fresh process, as the experiment's cost stage runs (run_all starts each experiment in
    # its own process): in a long-lived one, earlier allocations leave freed heap pages that
    # glibc reuses without raising the resident-set high-water mark.
    code = (
        "import torch\n"
        "from redge_mini.book.experiments import large_vocab as lv\n"
        "n = 8 * 2**20\n"
        "print(lv.peak_extra_bytes(lambda: torch.ones(n).sum()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    measured = float(result.stdout.split()[-1])
    if math.isnan(measured):
        pytest.skip("no /proc or glibc: memory is not measurable here")
    n = 8 * 2**20  # 32 MiB of float32
    # to a few pages: memory the process frees during the call lowers the high-water mark
    assert 0.99 * 4 * n <= measured < 4 * n + 8 * 2**20


def _verdict(estimator, rival, word):
    return Verdict("large_vocab", "K=8", "final_ratio", 3, estimator, rival, 3, 0.0, -1.0, 1.0,
                   0.5, 0.5, 0.02, False, word, True)


def test_claim_status_reads_the_rows():
    rivals = ("st", "gumbel", "reinmax")
    rows = [_verdict("redge", r, w) for r, w in zip(rivals, ("better", "inconclusive",
                                                              "equivalent"), strict=True)]
    assert lv.claim_status(rows, "redge") == "supports"
    rows[1] = _verdict("redge", "gumbel", "worse")
    assert lv.claim_status(rows, "redge") == "contradicts"
    rows[1] = _verdict("redge", "gumbel", "inconclusive")
    rows[0] = _verdict("redge", "st", "inconclusive")
    assert lv.claim_status(rows, "redge") == "undecided"
    assert lv.claim_status(rows[:2], "redge") == "undecided"


def test_smoke_run_end_to_end_writes_the_verdict_files(tmp_path):
    proto = lv.protocol("small", smoke=True)
    records = lv.run(proto, out=tmp_path)
    names = {p.name for p in tmp_path.glob("*.json")}
    # per K: three stages of six estimators and the cost; at the largest K four ablation stages
    assert len(names) == len(records) == len(proto.vocabs) * (3 * 6 + 1) + 4
    units = read_units("large_vocab", root=tmp_path)
    main = {f"K={k}" for k in proto.vocabs}
    settings = {u.setting for u in units}
    top = f"K={max(proto.vocabs)}"
    assert settings == main | {f"ablation {top}"} | {
        f"t1_sweep t_1={t:g} {top}" for t in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)}
    for setting in settings - main:  # every metric, the ablation's series and its rivals'
        rivals = ({"reindge_detach", "reindge", "reinmax"} if setting.startswith("ablation")
                  else {"redge", "st"})
        for metric in [m.name for m in lv.METRICS]:
            found = {u.estimator for u in units if u.setting == setting and u.metric == metric}
            assert found == rivals, (setting, metric)
    for setting in main:
        for metric in [m.name for m in lv.METRICS]:
            found = {u.estimator for u in units if u.setting == setting and u.metric == metric}
            assert found == set(ESTIMATORS), (setting, metric)
    stored = read_verdicts("large_vocab", root=tmp_path)
    computed = verdicts_from_units("large_vocab", units, lv.METRICS)
    assert [replace(v, headline=v.headline and v.setting in main) for v in computed] == stored
    assert {v.metric for v in stored if v.headline} == {"final_ratio"}
    assert not any(v.headline for v in stored if v.setting not in main)
    tuning = read_tuning("large_vocab", root=tmp_path)
    assert len(tuning) == 6 * len(proto.vocabs)
    assert all("lr" in t.knobs_tuned for t in tuning)
    assert len({t.n_configs * t.n_runs for t in tuning}) == 1
    summary = (tmp_path / "summary.csv").read_text()
    assert "ms_per_call" in summary and "extra_memory_ratio" in summary
    # a second run loads every stage instead of recomputing it
    again = lv.run(proto, out=tmp_path)
    assert [r["data"] for r in again] == [r["data"] for r in records]
