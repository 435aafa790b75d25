"""Guided sampling of a masked diffusion model (E4 procedure), on tiny models."""

from __future__ import annotations

import pytest
import torch

from redge_mini.book import masked_diffusion as md
from redge_mini.book.guidance import GuidanceConfig, guide_batched, guided_sample, kl_to_prior

K, N = 4, 6


def tiny(n_classes: int = 0) -> md.MaskedDenoiser:
    torch.manual_seed(0)
    return md.MaskedDenoiser(K, N, width=16, depth=1, heads=2, n_classes=n_classes).eval()


def count_not_zero(x: torch.Tensor) -> torch.Tensor:
    """Penalty: number of cells whose token is not 0 (one-hot input ``(B, N, K)``)."""
    return (1.0 - x[..., 0]).sum(-1)


def test_kl_to_prior_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(5, K, generator=g)
    prior = torch.log_softmax(torch.randn(5, K, generator=g), -1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=phi), torch.distributions.Categorical(logits=prior))
    torch.testing.assert_close(kl_to_prior(phi, prior), expected)


def test_nan_objective_stops_guidance_naming_the_step() -> None:
    calls = {"n": 0}

    def breaks_later(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        value = count_not_zero(x)
        return value * float("nan") if calls["n"] > 7 else value  # 3 inner steps per step

    with pytest.raises(ValueError, match=r"NaN at unmasking step t=2 \(3 of 5\), inner step 2"):
        guided_sample(tiny(), breaks_later, "st", n_unmask_steps=5, n_inner=3, lam=1.0, lr=0.1,
                      generator=torch.Generator().manual_seed(0), n=4)


def test_guidance_returns_no_masks_and_keeps_revealed_tokens() -> None:
    init = torch.full((8, N), K)
    init[:, 2] = 3
    tokens, info = guided_sample(tiny(), count_not_zero, "redge", n_unmask_steps=4, n_inner=2,
                                 lam=1.0, lr=0.1, knobs={"t_1": 0.7},
                                 generator=torch.Generator().manual_seed(2), init=init)
    assert tokens.shape == (8, N) and (tokens < K).all()
    assert (tokens[:, 2] == 3).all()
    assert info["t"] == [3, 2, 1, 0]
    assert info["n_masked"][0] == 8 * (N - 1)
    assert info["kl_revealed"].shape == (8,) and (info["kl_revealed"] >= -1e-6).all()


def test_zero_inner_steps_is_greedy_decoding_on_the_schedule() -> None:
    # Independent re-implementation: reveal each masked cell with probability 1/(t+1), taking
    # the argmax of the model's log-probabilities (uniform draws from the same generator).
    model = tiny()
    steps = 5
    tokens, _ = guided_sample(model, count_not_zero, "st", n_unmask_steps=steps, n_inner=0,
                              lam=1.0, lr=0.1, generator=torch.Generator().manual_seed(3), n=16)
    g = torch.Generator().manual_seed(3)
    x = torch.full((16, N), K)
    for t in reversed(range(steps)):
        with torch.no_grad():
            best = model(x).argmax(-1)
        u = torch.rand(x.shape, generator=g)
        x = torch.where((x == K) & (u < 1.0 / (t + 1)), best, x)
    assert torch.equal(tokens, x)


@pytest.mark.parametrize("estimator", ["st", "gumbel", "reinmax", "redge", "redge_cov", "reindge"])
def test_guidance_moves_samples_towards_the_objective(estimator: str) -> None:
    # The untrained prior puts about 1/K of its mass on token 0; with lam = 0 and enough inner
    # steps every estimator drives the variational argmax to token 0 almost everywhere.
    tokens, info = guided_sample(tiny(), count_not_zero, estimator, n_unmask_steps=3,
                                 n_inner=30, lam=0.0, lr=0.3,
                                 generator=torch.Generator().manual_seed(4), n=16)
    assert (tokens == 0).float().mean() > 0.9
    assert info["objective"][-1] < info["objective"][0] or info["objective"][0] == 0


def test_maximize_flips_the_objective() -> None:
    tokens, _ = guided_sample(tiny(), count_not_zero, "st", n_unmask_steps=3, n_inner=30,
                              lam=0.0, lr=0.3, generator=torch.Generator().manual_seed(5), n=16,
                              maximize=True)
    assert (tokens == 0).float().mean() < 0.1


def test_strong_kl_keeps_the_prior_argmax() -> None:
    # With one unmasking step every cell is revealed at once. Adam moves each logit by at most
    # about lr * (1 - beta1) / sqrt(1 - beta2) ~ 3.2 lr per step, so after 20 steps at lr = 1e-3
    # phi is within ~0.065 of the prior logits: every cell whose two largest prior logits differ
    # by more than 0.15 must keep the prior's argmax, and the KL paid is tiny.
    model = tiny()
    kwargs = {"n_unmask_steps": 1, "lr": 1e-3, "generator": None, "n": 8}
    greedy, _ = guided_sample(model, count_not_zero, "st", n_inner=0, lam=1.0, **kwargs)
    tied, info = guided_sample(model, count_not_zero, "st", n_inner=20, lam=1e4, **kwargs)
    with torch.no_grad():
        top2 = model(torch.full((8, N), K)).topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.15
    assert clear.any()
    assert torch.equal(greedy[clear], tied[clear])
    assert info["kl_revealed"].max() < 1e-2


def test_class_conditional_model_is_supported() -> None:
    model = tiny(n_classes=3)
    tokens, _ = guided_sample(model, count_not_zero, "gumbel", n_unmask_steps=2, n_inner=2,
                              lam=1.0, lr=0.1, knobs={"tau": 0.5}, cond=torch.tensor([0, 1, 2]),
                              generator=torch.Generator().manual_seed(6), n=3)
    assert (tokens < K).all()


def test_bad_arguments_are_rejected() -> None:
    model = tiny()
    common = {"n_unmask_steps": 2, "n_inner": 1, "lam": 1.0, "lr": 0.1, "generator": None, "n": 2}
    with pytest.raises(ValueError, match="unknown estimator"):
        guided_sample(model, count_not_zero, "nope", **common)
    with pytest.raises(ValueError, match="t_1"):
        guided_sample(model, count_not_zero, "redge", knobs={"t_1": 0.0}, **common)
    with pytest.raises(ValueError, match="lam"):
        guided_sample(model, count_not_zero, "st", **{**common, "lam": -1.0})
    with pytest.raises(ValueError, match="shape"):
        guided_sample(model, lambda x: x.sum(), "st", **common)
    with pytest.raises(ValueError, match="either n"):
        guided_sample(model, count_not_zero, "st", **{**common, "n": None})


def linear_penalty(x: torch.Tensor) -> torch.Tensor:
    """A penalty linear in the one-hot: with ST its gradient does not depend on the sample."""
    weights = torch.linspace(0.0, 1.0, K)
    return (x * weights).sum((-1, -2))


def test_batched_budgets_match_separate_runs() -> None:
    # ST on a linear penalty moves phi deterministically (the ST gradient is J(pi)^T c, the same
    # for every sample), and with one unmasking step every cell is revealed at once; so each
    # configuration of one batched loop (rows frozen after their own N) must give exactly the
    # tokens of a separate run with that N and that model.
    models = [tiny(), md.MaskedDenoiser(K, N, width=16, depth=1, heads=2).eval()]
    for model in models:  # spread the prior logits, so that cells flip at different budgets
        torch.nn.init.normal_(model.head.weight, std=0.3,
                              generator=torch.Generator().manual_seed(7))
        torch.nn.init.normal_(model.position_embedding, std=2.0,
                              generator=torch.Generator().manual_seed(9))
    init = torch.full((5, N), K)
    init[:, 1] = torch.arange(5) % K
    common = {"n_unmask_steps": 1, "lam": 0.1, "lr": 0.05, "init": init}
    configs = [GuidanceConfig("st", n, model=m) for m in (0, 1) for n in (0, 2, 7, 25)]
    tokens, info = guide_batched(models, linear_penalty, configs,
                                 generator=torch.Generator().manual_seed(0), **common)
    assert tokens.shape == (len(configs) * 5, N) and info["n_rows_per_config"] == 5
    separate = []
    for c, config in enumerate(configs):
        alone, _ = guided_sample(models[config.model], linear_penalty, "st",
                                 n_inner=config.n_inner,
                                 generator=torch.Generator().manual_seed(1), **common)
        separate.append(alone)
        assert torch.equal(tokens[5 * c:5 * (c + 1)], alone), config
    # the budgets matter (otherwise the check above could not fail on a wrong snapshot)
    assert len({tuple(t.flatten().tolist()) for t in separate[:4]}) == 4


def test_batched_mixes_estimators_and_keeps_rows_apart() -> None:
    configs = [GuidanceConfig("redge", 3, {"t_1": 0.7}), GuidanceConfig("gumbel", 5, {"tau": 0.5}),
               GuidanceConfig("st", 0)]
    tokens, info = guide_batched(tiny(), count_not_zero, configs, n_unmask_steps=3, lam=0.0,
                                 lr=0.3, generator=torch.Generator().manual_seed(2), n=16)
    assert tokens.shape == (48, N) and (tokens < K).all()
    assert len(info["kl"][0]) == 3 and info["kl"][-1][2] == pytest.approx(0.0, abs=1e-6)
    # the guided configurations reach token 0 far more often than greedy decoding
    zero = (tokens == 0).float().reshape(3, 16, N).mean((1, 2))
    assert zero[0] > 0.8 and zero[1] > 0.8 and zero[2] < 0.5
    with pytest.raises(ValueError, match="model=1"):
        guide_batched(tiny(), count_not_zero, [GuidanceConfig("st", 1, model=1)],
                      n_unmask_steps=1, lam=1.0, lr=0.1, generator=None, n=2)
    with pytest.raises(TypeError, match="GuidanceConfig"):
        guide_batched(tiny(), count_not_zero, [("st", 1)], n_unmask_steps=1, lam=1.0, lr=0.1,
                      generator=None, n=2)
