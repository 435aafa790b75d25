"""REINFORCE / RLOO against exact gradients by enumeration, and its surrogate-loss contract."""

import pytest
import torch

from redge_mini.estimators import sample_categorical
from redge_mini.exact import exact_gradient
from redge_mini.score_function import reinforce_loss, sample_onehot

DTYPE = torch.float64


def nonlinear_objective(c: torch.Tensor):
    """f(x) = (Σ_lk c_lk x_lk)² + max_l x_l0 — non-linear and non-separable."""

    def f(x: torch.Tensor) -> torch.Tensor:
        lin = (x * c).sum((-1, -2))
        return lin**2 + x[..., 0].amax(-1) + 3.0

    return f


def test_sample_onehot_is_the_gumbel_max_draw_of_the_logits():
    # the law of sample_categorical is checked once, in test_estimators (ST's hard sample)
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    samples = sample_onehot(logits, 500, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (500, 2, 4) and samples.dtype == logits.dtype
    assert samples.requires_grad is False
    reference = sample_categorical(logits.detach().expand(500, 2, 4),
                                   torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, reference, rtol=0, atol=0)
    half = sample_onehot(logits.detach().half(), 500, generator=torch.Generator().manual_seed(0))
    assert half.dtype == torch.float16 and torch.equal(half.float(), reference)


def test_reinforce_value_is_the_mean_of_f_over_the_samples():
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    f = nonlinear_objective(torch.ones(3, 4, dtype=DTYPE))
    for baseline in ("loo", None):
        loss = reinforce_loss(
            f, logits, 7, generator=torch.Generator().manual_seed(2), baseline=baseline
        )
        samples = sample_onehot(logits, 7, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(loss, f(samples).mean(), rtol=1e-14, atol=1e-14)


def test_rloo_gradient_is_the_leave_one_out_score_estimate():
    # ∇_θ log softmax(θ)·x = x − π for a one-hot x.
    gen_logits = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, generator=gen_logits, dtype=DTYPE, requires_grad=True)
    f = nonlinear_objective(torch.randn(2, 3, generator=gen_logits, dtype=DTYPE))
    S = 5
    reinforce_loss(f, logits, S, generator=torch.Generator().manual_seed(4)).backward()
    x = sample_onehot(logits, S, generator=torch.Generator().manual_seed(4))
    v = f(x)
    p = torch.softmax(logits.detach(), -1)
    expected = sum((v[s] - (v.sum() - v[s]) / (S - 1)) * (x[s] - p) for s in range(S)) / S
    torch.testing.assert_close(logits.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("baseline", ["loo", None])
def test_reinforce_is_unbiased_for_the_exact_gradient(baseline):
    gen = torch.Generator().manual_seed(5)
    L, K, R, S = 2, 3, 20_000, 4
    logits = torch.randn(L, K, generator=gen, dtype=DTYPE)
    f = nonlinear_objective(torch.randn(L, K, generator=gen, dtype=DTYPE))
    exact = exact_gradient(f, logits)
    # R independent estimates in one call: a batch of R copies, f returns (S, R).
    copies = logits.expand(R, L, K).clone().requires_grad_(True)
    loss = reinforce_loss(f, copies, S, generator=gen, baseline=baseline)
    assert loss.shape == (R,)
    loss.sum().backward()
    draws = copies.grad
    mean, stderr = draws.mean(0), draws.std(0) / R**0.5
    z = (mean - exact) / stderr
    assert torch.all(z.abs() < 4), z


def test_leave_one_out_baseline_reduces_variance_for_an_offset_objective():
    gen = torch.Generator().manual_seed(6)
    L, K, R, S = 2, 3, 4_000, 4
    logits = torch.randn(L, K, generator=gen, dtype=DTYPE)
    c = torch.randn(L, K, generator=gen, dtype=DTYPE)

    def f(x):
        return (x * c).sum((-1, -2)) + 10.0  # a large offset: plain REINFORCE suffers

    variances = {}
    for baseline in ("loo", None):
        copies = logits.expand(R, L, K).clone().requires_grad_(True)
        reinforce_loss(f, copies, S, generator=gen, baseline=baseline).sum().backward()
        variances[baseline] = copies.grad.var(0).sum().item()
    assert variances["loo"] < 0.1 * variances[None]


def test_reinforce_loss_passes_the_pathwise_gradient_to_parameters_of_f():
    logits = torch.zeros(2, 3, dtype=DTYPE)
    weight = torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE, requires_grad=True)

    def f(x):
        return (x * weight).sum((-1, -2))

    reinforce_loss(f, logits, 6, generator=torch.Generator().manual_seed(7)).backward()
    x = sample_onehot(logits, 6, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(weight.grad, x.sum(1).mean(0))


def test_reinforce_loss_validates_its_arguments():
    f = lambda x: x.sum((-1, -2))  # noqa: E731
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="baseline"):
        reinforce_loss(f, logits, 4, baseline="mean")
    with pytest.raises(ValueError, match="n_samples"):
        reinforce_loss(f, logits, 1)
    with pytest.raises(TypeError, match="n_samples"):
        reinforce_loss(f, logits, 4.0)
    with pytest.raises(TypeError, match="logits"):
        reinforce_loss(f, torch.zeros(2, 3, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="logits"):
        reinforce_loss(f, torch.full((2, 3), float("inf")), 4)
    with pytest.raises(ValueError, match="logits"):
        reinforce_loss(f, torch.zeros(2, 1), 4)
    with pytest.raises(ValueError, match="f must return"):
        reinforce_loss(lambda x: x.sum((0, -1)), logits, 4)
    with pytest.raises(ValueError, match="f must return"):
        reinforce_loss(lambda x: x, logits, 4)
    with pytest.raises(TypeError, match="generator"):
        reinforce_loss(f, logits, 4, generator=0)
    assert reinforce_loss(f, logits, 1, baseline=None).shape == ()
    # per-variable values (S, L) are a valid batch: one loss per variable
    assert reinforce_loss(lambda x: x.sum(-1), logits, 4).shape == (2,)


def test_the_baseline_is_a_knob_of_the_registry():
    # REINFORCE's row of the registry: knob ``baseline``, default "loo" (RLOO); make_loss and the
    # spec's loss pass it to reinforce_loss, and check it with the same message
    from redge_mini.registry import check_knobs, get_spec, make_loss

    assert check_knobs("reinforce") == {"baseline": "loo"}
    assert check_knobs("reinforce", baseline=None) == {"baseline": None}
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=DTYPE,
                         requires_grad=True)
    f = nonlinear_objective(torch.randn(3, 4, generator=torch.Generator().manual_seed(2),
                                        dtype=DTYPE))
    for baseline, n in (("loo", 5), (None, 5), (None, 1)):
        ours = make_loss("reinforce", baseline=baseline)(
            f, logits, n, generator=torch.Generator().manual_seed(3))
        ref = reinforce_loss(f, logits, n, generator=torch.Generator().manual_seed(3),
                             baseline=baseline)
        (g_ours,) = torch.autograd.grad(ours, logits)
        (g_ref,) = torch.autograd.grad(ref, logits)
        assert torch.equal(ours, ref) and torch.equal(g_ours, g_ref)
    plain = get_spec("reinforce").loss(f, logits, 5, generator=torch.Generator().manual_seed(3),
                                       baseline=None)
    loo = get_spec("reinforce").loss(f, logits, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, loo)  # same draws, same value; only the gradient differs
    (g_plain,) = torch.autograd.grad(plain, logits)
    (g_loo,) = torch.autograd.grad(loo, logits)
    assert not torch.allclose(g_plain, g_loo)
    for bad in ("mean", 0, True):
        with pytest.raises(ValueError, match="baseline must be one of"):
            make_loss("reinforce", baseline=bad)
    with pytest.raises(ValueError, match="n_samples"):
        make_loss("reinforce")(f, logits, 1)
