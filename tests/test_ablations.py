"""The ablation estimator (ReinDGE with the trajectory detached) and the ablation helpers."""

from __future__ import annotations

import pytest
import torch

from redge_mini import registry
from redge_mini.book import ablations
from redge_mini.diffusion import ddim_sample, inverse_cdf_sample
from redge_mini.estimators import redge, reindge, reindge_detach, reinmax_surrogate
from redge_mini.schedule import time_grid

try:  # the ReinMax authors' package, an independent oracle of ReinMax's gradient
    from reinmax.reinmax import ReinMax_Auto
except ImportError:  # pragma: no cover
    ReinMax_Auto = None


def _package_gradient(logits, hard, grad):
    """The ReinMax package's backward pass (tau = 1) at ``logits`` for the given one-hot sample
    ``hard`` (its forward pass draws its own sample, so its backward is called directly)."""

    class Context:
        saved_tensors = (hard, logits, torch.softmax(logits, -1),
                         torch.tensor(1.0, dtype=logits.dtype))

    return ReinMax_Auto.backward(Context(), grad, torch.zeros_like(grad))[0]


def _draws(shape, seed, dtype):
    """The noise and uniforms the estimators draw from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=gen, dtype=dtype)
    uniform = torch.rand(shape[:-1] + (1,), generator=gen, dtype=dtype)
    return noise, uniform


def _grad(fn, logits, weights, seed, **knobs):
    leaf = logits.detach().clone().requires_grad_(True)
    out = fn(leaf, hard=True, generator=torch.Generator().manual_seed(seed), **knobs)
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_steps,t_1", [(5, 0.5), (3, 0.1), (9, 0.9)])
def test_the_forward_pass_is_reindges(dtype, n_steps, t_1) -> None:
    logits = torch.randn(4, 3, 7, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for hard in (True, False):
        mine = reindge_detach(logits, n_steps, t_1, hard=hard,
                              generator=torch.Generator().manual_seed(5))
        theirs = reindge(logits, n_steps, t_1, hard=hard,
                         generator=torch.Generator().manual_seed(5))
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("n_steps,t_1", [(5, 0.5), (3, 0.3), (7, 0.8)])
def test_the_gradient_is_reinmax_at_the_t1_logits_computed_by_hand(n_steps, t_1) -> None:
    """Independent route: the state x_{t_1} from the reference sampler on detached logits, the
    conditional logits theta + c_1 x_{t_1}, the hard sample by inversion, and ReinMax's gradient
    at them (the book's surrogate, the formula written out, the authors' package)."""
    dtype = torch.float64
    shape = (5, 2, 6)
    gen = torch.Generator().manual_seed(2)
    logits, weights = torch.randn(shape, generator=gen, dtype=dtype), torch.randn(
        shape, generator=gen, dtype=dtype)
    noise, uniform = _draws(shape, 11, dtype)
    x = ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1, trajectory=True).x_t1
    alphas, sigmas = time_grid(n_steps, t_1)
    theta = logits.clone().requires_grad_(True)
    conditional = theta + alphas[1] / sigmas[1] ** 2 * x
    hard = inverse_cdf_sample(torch.softmax(conditional.detach(), -1), uniform)
    (reinmax_surrogate(conditional, hard, 1.0) * weights).sum().backward()
    value, grad = _grad(reindge_detach, logits, weights, 11, n_steps=n_steps, t_1=t_1)
    assert torch.equal(value, hard)
    torch.testing.assert_close(grad, theta.grad, rtol=1e-9, atol=1e-12)
    # and ReinMax's formula written out: [J(S)^T g + (g . d) d] / 2, d = H - S
    soft = torch.softmax(conditional.detach(), -1)
    d = hard - soft
    jtg = soft * weights - soft * (soft * weights).sum(-1, keepdim=True)
    by_hand = 0.5 * (jtg + (weights * d).sum(-1, keepdim=True) * d)
    torch.testing.assert_close(grad, by_hand, rtol=1e-9, atol=1e-12)
    if ReinMax_Auto is not None:
        package = _package_gradient(conditional.detach(), hard, weights)
        torch.testing.assert_close(grad, package, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(ReinMax_Auto is None, reason="the reinmax package is not installed")
def test_at_t1_one_the_ablation_is_reinmax() -> None:
    """At t_1 = 1 (alpha_1 = 0) the conditional categorical is Cat(pi) itself: the ablation's
    gradient is ReinMax's at the logits, for its own sample (the authors' package)."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 5, generator=gen, dtype=torch.float64)
    weights = torch.randn(50, 5, generator=gen, dtype=torch.float64)
    value, grad = _grad(reindge_detach, logits, weights, 8, n_steps=4, t_1=1.0)
    torch.testing.assert_close(grad, _package_gradient(logits, value, weights), rtol=1e-9,
                               atol=1e-12)


def test_with_two_grid_points_the_trajectory_carries_nothing() -> None:
    """n_steps = 2: no DDIM move, x_{t_1} is the noise itself, so ReinDGE has no trajectory
    term and its gradient is the ablation's."""
    gen = torch.Generator().manual_seed(4)
    logits, weights = torch.randn(6, 9, generator=gen), torch.randn(6, 9, generator=gen)
    _, mine = _grad(reindge_detach, logits, weights, 3, n_steps=2, t_1=0.4)
    _, theirs = _grad(reindge, logits, weights, 3, n_steps=2, t_1=0.4)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_reindge_minus_the_ablation_is_the_trajectorys_part_of_redge() -> None:
    """ReinDGE = trajectory + ReinMax step, the ablation = ReinMax step, ReDGE = trajectory +
    J(S)^T g (all from the same draws): so ReinDGE - ablation = ReDGE - J(S)^T g."""
    dtype = torch.float64
    gen = torch.Generator().manual_seed(5)
    logits, weights = (torch.randn(8, 3, 5, generator=gen, dtype=dtype),
                       torch.randn(8, 3, 5, generator=gen, dtype=dtype))
    knobs = {"n_steps": 5, "t_1": 0.6}
    _, g_reindge = _grad(reindge, logits, weights, 9, **knobs)
    _, g_detach = _grad(reindge_detach, logits, weights, 9, **knobs)
    _, g_redge = _grad(redge, logits, weights, 9, **knobs)
    soft = reindge(logits, hard=False, generator=torch.Generator().manual_seed(9), **knobs)
    direct = soft * weights - soft * (soft * weights).sum(-1, keepdim=True)
    torch.testing.assert_close(g_reindge - g_detach, g_redge - direct, rtol=1e-8, atol=1e-10)
    assert (g_reindge - g_detach).abs().max() > 1e-3  # the trajectory does carry a gradient


def test_the_soft_sample_has_the_last_denoisers_jacobian_alone() -> None:
    """The soft sample's Jacobian in the logits is that of softmax(theta + c_1 x) with the
    state x held at its value: compared with torch.autograd.functional.jacobian (float64)."""
    dtype = torch.float64
    logits = torch.randn(2, 4, generator=torch.Generator().manual_seed(6), dtype=dtype)
    n_steps, t_1 = 5, 0.5
    noise, _ = _draws(logits.shape, 7, dtype)
    x = ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1, trajectory=True).x_t1
    alphas, sigmas = time_grid(n_steps, t_1)
    closed = torch.autograd.functional.jacobian(
        lambda t: torch.softmax(t + alphas[1] / sigmas[1] ** 2 * x, -1), logits)
    mine = torch.autograd.functional.jacobian(
        lambda t: reindge_detach(t, n_steps, t_1, generator=torch.Generator().manual_seed(7)),
        logits)
    torch.testing.assert_close(mine, closed, rtol=1e-9, atol=1e-12)


def test_masked_logits_stay_finite_with_zero_gradient() -> None:
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(8))
    logits[:, 2] = float("-inf")
    leaf = logits.clone().requires_grad_(True)
    out = reindge_detach(leaf, 4, 0.5, hard=True, generator=torch.Generator().manual_seed(1))
    (out * torch.arange(6.0)).sum().backward()
    assert torch.isfinite(out).all() and (out[:, 2] == 0).all()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad[:, 2] == 0).all()


def test_bad_knobs_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="t_1"):
        reindge_detach(torch.zeros(2, 3), 5, 1.5)
    with pytest.raises(ValueError, match="n_steps"):
        reindge_detach(torch.zeros(2, 3), 1, 0.5)


def test_the_ablation_is_registered_only_inside_the_context() -> None:
    assert ablations.DETACH not in registry.ALL_ESTIMATORS
    with ablations.registered() as name:
        assert name in registry.ESTIMATORS and name in registry.ALL_ESTIMATORS
        loss = registry.make_loss(name, n_steps=3, t_1=0.5)
        theta = torch.zeros(4, 3, requires_grad=True)
        loss(lambda x: (x * torch.arange(3.0)).sum((-2, -1)), theta, 8,
             generator=torch.Generator().manual_seed(0)).backward()
        assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
        with ablations.registered():  # nested: left to the outer block
            pass
        assert name in registry.ALL_ESTIMATORS
    assert ablations.DETACH not in registry.ALL_ESTIMATORS
    assert ablations.DETACH not in registry.KNOBS
    with pytest.raises(RuntimeError), ablations.registered():
        raise RuntimeError("removed after an error too")
    assert ablations.DETACH not in registry.ALL_ESTIMATORS


def test_setting_names_round_trip() -> None:
    assert ablations.sweep_t1(ablations.sweep_setting(0.3, "p=2")) == (0.3, "p=2")
    assert ablations.sweep_t1(ablations.sweep_setting(1.0, "K=16384")) == (1.0, "K=16384")
    assert ablations.sweep_t1("p=2") is None and ablations.sweep_t1("ablation p=2") is None
    assert ablations.is_ablation(ablations.ablation_setting("eval"))
    assert ablations.is_ablation(ablations.sweep_setting(0.5, "eval"))
    assert not ablations.is_ablation("eval") and not ablations.is_ablation("K=256")
    assert ablations.T1_SWEEP[-1] == 1.0 and len(ablations.T1_SWEEP) >= 5


def test_sweep_points_pair_each_t1_with_its_verdict_and_draw() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from redge_mini.book.experiments.verdicts import (
        Metric,
        summary_from_units,
        units_from_values,
        verdicts_from_units,
    )

    units = []
    for t_1 in (1.0, 0.3):  # out of order on purpose
        setting = ablations.sweep_setting(t_1, "p=2")
        # ReDGE lower by 1 at t_1 = 0.3 on every unit (plus a little spread), equal at 1
        shift, spread = (-1.0, 0.02) if t_1 == 0.3 else (0.0, 0.01)
        units += units_from_values("x", setting, "redge", {"t_1": t_1}, "gap", 5,
                                   {(s, "u"): 2.0 + shift + spread * (s % 3) for s in range(8)})
        units += units_from_values("x", setting, "st", {}, "gap", 5,
                                   {(s, "u"): 2.0 + 0.01 * (s % 3) for s in range(8)})
    units += units_from_values("x", "p=2", "st", {}, "gap", 5, {(0, "u"): 9.0, (1, "u"): 9.0})
    metric = Metric("gap", higher_is_better=False, margin=0.1, headline=True)
    verdicts = ablations.not_headline(verdicts_from_units("x", units, [metric]))
    points = ablations.sweep_points(summary_from_units(units), verdicts, "p=2", "gap", 5)
    assert [p["t_1"] for p in points] == [0.3, 1.0]
    assert [p["verdict"].verdict for p in points] == ["better", "equivalent"]
    assert points[0]["mine"].mean == pytest.approx(1.0175) and points[0]["rival"].mean == (
        pytest.approx(2.00875))
    assert all(not v.headline for v in verdicts if ablations.is_ablation(v.setting))
    fig, ax = plt.subplots()
    ablations.plot_sweep(ax, points, "gap")
    assert len(ax.lines) >= 2
    plt.close(fig)
    with pytest.raises(ValueError, match="points"):
        ablations.plot_sweep(ax, [], "gap")
    text = ablations.ablation_markdown(verdicts, [("p = 2", "p=2")], "gap")
    assert text.count("—") == len(ablations.PAIRS)  # no ablation rows in this setting
