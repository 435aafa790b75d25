"""E4 with REINFORCE (RLOO): the equal budget of penalty evaluations, the RLOO guidance loop, its
own stages beside the pathwise ones, and the pinned set of pathwise estimators."""

from __future__ import annotations

import torch
from test_mdm_guidance import K, N, count_not_zero, tiny

from redge_mini.book.experiments import mdm_guidance as e4
from redge_mini.book.experiments.verdicts import read_tuning, read_units, read_verdicts
from redge_mini.book.guidance import GuidanceConfig, guide_with_rates
from redge_mini.registry import ESTIMATORS, register, unregister


def test_rloo_spends_exactly_the_pathwise_number_of_evaluations() -> None:
    full = e4.protocol("full")
    choices = e4.rloo_sample_choices(full)
    assert choices == (2, 3, 5, 6, 10, 15)
    for budget in (full.tune_n_inner, *full.n_inner):
        for s in choices:
            assert s * e4.rloo_steps(budget, s) == budget
    assert min(e4.rloo_steps(full.tune_n_inner, s) for s in choices) >= 2
    assert e4.rloo_sample_choices(e4.protocol("small")) == (2, 5)
    assert e4.rloo_steps(1, 2) == 0   # a budget below S: no step, greedy decoding
    space = e4.space_of(full, e4.RLOO)
    assert set(space) == {"lr", "n_samples"} and space["lr"] == e4.LR_AXIS
    configs = e4.tuning_configs(full, e4.RLOO)
    assert len(configs) == full.n_configs == len(e4.tuning_configs(full, "redge"))
    assert all(c["n_samples"] in choices for c in configs)


def test_rloo_without_steps_is_greedy_decoding_and_with_steps_optimises() -> None:
    init = torch.full((16, N), K)
    init[:, 1] = 2
    common = {"n_unmask_steps": 3, "lam": 0.0, "init": init}
    greedy, _ = guide_with_rates(tiny(), count_not_zero, [GuidanceConfig("st", 0)], [1.0],
                                 generator=torch.Generator().manual_seed(3), **common)
    mine, info = e4.guide_rloo(tiny(), count_not_zero, [(2, 0, 0.1), (4, 25, 0.5)],
                               generator=torch.Generator().manual_seed(3), **common)
    assert torch.equal(mine[:16], greedy)      # the same reveal schedule, no inner step
    assert info["kl_revealed"][:16].abs().max() < 1e-6
    assert info["evaluations"].tolist() == [0] * 16 + [100] * 16
    free = init == K
    zero_greedy = (greedy[free] == 0).float().mean()
    zero_guided = (mine[16:][free] == 0).float().mean()
    assert zero_guided > 0.9 > zero_greedy     # RLOO drives the masked cells to the optimum
    assert torch.equal(mine[16:][~free], init[~free])   # revealed cells are kept


def test_pathwise_set_is_pinned_against_new_registrations() -> None:
    def hot(logits, hard=False, dim=-1, *, generator=None):
        return torch.softmax(logits, dim)

    register("mdm_test_extra", hot, {})
    try:
        assert "mdm_test_extra" in ESTIMATORS
        assert e4.PATHWISE == ("st", "gumbel", "reinmax", "redge", "redge_cov", "reindge")
        assert e4.ESTIMATOR_NAMES == (*e4.PATHWISE, "reinforce")
    finally:
        unregister("mdm_test_extra")


def test_smoke_run_adds_rloo_as_stages_of_its_own(tmp_path) -> None:
    args = ["--smoke", "--out", str(tmp_path), "--estimators", "st,reinforce", "--device", "cpu"]
    assert e4.main(args) == 0
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == [f"small-smoke_{s}.json" for s in (
        "eval", "eval_reinforce", "eval_reinforce_steps", "timing", "timing_reinforce", "tune",
        "tune_reinforce")]
    stamp = (tmp_path / "small-smoke_eval_reinforce.json").stat().st_mtime_ns
    assert e4.main(args) == 0  # resumed: nothing recomputed
    assert (tmp_path / "small-smoke_eval_reinforce.json").stat().st_mtime_ns == stamp
    proto = e4.protocol("small", smoke=True)
    tuning = read_tuning(e4.EXPERIMENT, tmp_path)
    assert [t.estimator for t in tuning] == ["st", "reinforce"]
    assert {(t.n_configs, t.n_runs) for t in tuning} == {(proto.n_configs, proto.n_tune)}
    assert tuning[1].knobs_tuned == "lr;n_samples"
    units = read_units(e4.EXPERIMENT, tmp_path)
    rloo = {(u.budget, u.metric) for u in units if u.estimator == "reinforce"}
    assert rloo == {(n, m) for n in proto.n_inner for m in e4.METRICS}
    verdicts = read_verdicts(e4.EXPERIMENT, tmp_path)
    pairs = {(v.base_estimator, v.base_rival) for v in verdicts if v.headline}
    assert ("st", "reinforce") in pairs and ("reinforce", "unguided") in pairs
    summary = e4.summarise(e4.run(proto, ["st", "reinforce"], out=tmp_path))
    assert [s["evaluations"] for s in summary["rloo"]["series"]] == [
        s["n_samples"] * e4.rloo_steps(s["budget"], s["n_samples"])
        for s in summary["rloo"]["series"]]
    assert set(summary["timing_ms"]) == {"st", "reinforce", "st_reference"}
    steps = summary["rloo_steps"]["series"]      # the sensitivity: N steps, S x N evaluations
    assert [s["n_steps"] for s in steps] == list(proto.n_inner)
    assert [s["evaluations"] for s in steps] == [s["n_samples"] * s["budget"] for s in steps]
    rloo_units = [u for u in summary["units"] if u.estimator == "reinforce"]
    assert len(rloo_units) == len(proto.n_inner) * len(e4.METRICS) * proto.n_eval  # not judged
    # only RLOO: its stages are reused, the pathwise ones are not needed
    only = e4.run(proto, ["reinforce"], out=tmp_path)
    assert sorted(r["data"]["stage"] for r in only) == [
        "eval_reinforce", "eval_reinforce_steps", "timing_reinforce", "tune_reinforce"]
    # ... and the tables it rewrites still hold every stored series
    assert {u.estimator for u in read_units(e4.EXPERIMENT, tmp_path)} == {
        "st", "reinforce", "reindge", "unguided"}
