"""E4 (Sudoku guided by a masked diffusion model): per-rate guidance and the verdict protocol."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from scipy import stats

from redge_mini.book import masked_diffusion as md
from redge_mini.book.experiments import mdm_guidance as e4
from redge_mini.book.experiments.verdicts import read_tuning, read_units, read_verdicts
from redge_mini.book.guidance import GuidanceConfig, guide_with_rates, guided_sample

K, N = 4, 6


def tiny() -> md.MaskedDenoiser:
    torch.manual_seed(0)
    return md.MaskedDenoiser(K, N, width=16, depth=1, heads=2).eval()


def count_not_zero(x: torch.Tensor) -> torch.Tensor:
    return (1.0 - x[..., 0]).sum(-1)


@pytest.mark.parametrize("lr", [0.3, 0.01])
def test_one_configuration_matches_guided_sample(lr: float) -> None:
    """The hand-written per-row Adam is torch's Adam: one configuration gives guided_sample."""
    init = torch.full((5, N), K)
    init[:, 2] = 1
    config = GuidanceConfig("redge", 7, {"n_steps": 3, "t_1": 0.6})
    common = {"n_unmask_steps": 3, "lam": 0.5, "init": init}
    mine, info = guide_with_rates(tiny(), count_not_zero, [config], [lr],
                                  generator=torch.Generator().manual_seed(4), **common)
    theirs, their_info = guided_sample(tiny(), count_not_zero, "redge", n_inner=7, lr=lr,
                                       knobs=config.knobs,
                                       generator=torch.Generator().manual_seed(4), **common)
    assert torch.equal(mine, theirs)
    torch.testing.assert_close(info["kl_revealed"], their_info["kl_revealed"])


def test_rows_keep_their_configuration_order_and_rates_matter() -> None:
    init = torch.full((8, N), K)
    configs = [GuidanceConfig("st", 0), GuidanceConfig("st", 20), GuidanceConfig("gumbel", 5,
                                                                                {"tau": 0.5})]
    tokens, info = guide_with_rates(tiny(), count_not_zero, configs, [1.0, 0.5, 0.5],
                                    n_unmask_steps=2, lam=0.0,
                                    generator=torch.Generator().manual_seed(1), init=init)
    assert tokens.shape == (24, N) and info["n_rows_per_config"] == 8
    zero = (tokens == 0).float().reshape(3, 8, N).mean((1, 2))
    assert zero[1] > 0.9 > zero[0]       # guided rows (config 1) reach the penalty's optimum
    assert info["kl_revealed"][:8].abs().max() < 1e-6   # greedy rows pay no KL
    slow, _ = guide_with_rates(tiny(), count_not_zero, [configs[1]], [1e-4], n_unmask_steps=2,
                               lam=0.0, generator=torch.Generator().manual_seed(1), init=init)
    assert (slow == 0).float().mean() < zero[1]
    with pytest.raises(ValueError, match="lrs has 1 entries"):
        guide_with_rates(tiny(), count_not_zero, configs, [0.1], n_unmask_steps=1, lam=1.0,
                         generator=None, init=init)
    with pytest.raises(ValueError, match="lrs\\[0\\]"):
        guide_with_rates(tiny(), count_not_zero, configs[:1], [0.0], n_unmask_steps=1, lam=1.0,
                         generator=None, init=init)


def test_protocol_meets_the_unit_and_tuning_thresholds() -> None:
    full = e4.protocol("full")
    assert full.n_eval >= 100 and full.n_tune >= 30 and full.n_configs >= 8
    assert full.tune_n_inner in full.n_inner
    tune, _ = e4.puzzles(full, "tune")
    evaluation, _ = e4.puzzles(full, "eval")
    assert not (evaluation[:, None] == tune[None]).all(-1).any()   # disjoint units
    assert {m.name for m in e4.JUDGED} == set(e4.MARGIN_REASONS)
    assert sum(m.headline for m in e4.JUDGED) == 1
    table = e4.protocol_table(full)
    assert all(r["reason"] for r in table if r["authors"] != r["ours"])
    assert next(r for r in table if r["item"] == "lambda")["reason"] == ""
    with pytest.raises(ValueError, match="scale"):
        e4.protocol("huge")


def _series(units, name: str, setting: str, metric: str, budget: int) -> dict:
    base, _, knobs = name.partition("[")
    knobs = knobs[:-1] if knobs else None
    found = defaultdict(dict)
    for u in units:
        if (u.setting, u.estimator, u.metric, u.budget) == (setting, base, metric, budget) and (
                knobs is None or u.knobs == knobs):
            found[u.knobs][(u.seed, u.unit)] = u.value
    assert len(found) == 1, (name, list(found))
    return next(iter(found.values()))


def test_smoke_run_writes_recomputable_verdicts(tmp_path) -> None:
    args = ["--smoke", "--out", str(tmp_path), "--estimators", "st,redge,reindge",
            "--device", "cpu"]
    assert e4.main(args) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["small-smoke_eval.json", "small-smoke_timing.json", "small-smoke_tune.json",
                     "summary.csv", "tuning.csv", "units.csv", "verdicts.csv"]
    stamp = (tmp_path / "small-smoke_eval.json").stat().st_mtime_ns
    assert e4.main(args) == 0  # resumed: nothing recomputed
    assert (tmp_path / "small-smoke_eval.json").stat().st_mtime_ns == stamp
    proto = e4.protocol("small", smoke=True)
    units = read_units(e4.EXPERIMENT, tmp_path)
    verdicts = read_verdicts(e4.EXPERIMENT, tmp_path)
    tuning = read_tuning(e4.EXPERIMENT, tmp_path)
    # equal tuning: the same configurations x runs for every estimator, lr always tuned
    assert {t.estimator for t in tuning} == {"st", "redge", "reindge"}
    assert {(t.n_configs, t.n_runs) for t in tuning} == {(proto.n_configs, proto.n_tune)}
    assert all("lr" in t.knobs_tuned.split(";") for t in tuning)
    # the units: one per evaluation puzzle, series = tuned + demo + unguided
    guided = {(u.estimator, u.knobs) for u in units if u.budget in proto.n_inner}
    assert ("reindge", "lr=0.1;n_steps=3;t_1=0.5") in guided
    assert ("unguided", "sampler=greedy") in guided
    assert {u.unit for u in units} == set(e4.unit_names(proto.n_eval))
    # every headline verdict, recomputed with scipy's paired t-test from units.csv
    heads = [v for v in verdicts if v.headline]
    assert heads and {v.metric for v in heads} == {"final_solved"}
    assert {v.budget for v in verdicts} == set(proto.n_inner)
    for v in heads:
        a = _series(units, v.estimator, v.setting, v.metric, v.budget)
        b = _series(units, v.rival, v.setting, v.metric, v.budget)
        keys = sorted(set(a) & set(b))
        assert len(keys) == v.n_units == proto.n_eval
        d = [a[k] - b[k] for k in keys]
        assert v.diff == pytest.approx(sum(d) / len(d), abs=1e-12)
        if len(set(d)) > 1:
            test = stats.ttest_rel([a[k] for k in keys], [b[k] for k in keys])
            low, high = test.confidence_interval(0.95)
            assert v.p_value == pytest.approx(test.pvalue)
            assert (v.ci_low, v.ci_high) == pytest.approx((low, high))
        assert v.p_holm >= v.p_value or math.isnan(v.p_value)
    summary = e4.summarise(e4.run(proto, ["st", "redge", "reindge"], out=tmp_path))
    assert [v.verdict for v in summary["verdicts"]] == [v.verdict for v in verdicts]
    # deterministic: a fresh run (nothing loaded) gives the same units
    again = e4.summarise(e4.run(proto, ["st", "redge", "reindge"], out=tmp_path, save=False))
    assert sorted(again["units"], key=repr) == sorted(units, key=repr)
    projected = e4.measure_throughput(proto, device="cpu")
    assert projected["total"] >= projected["eval"] > 0
