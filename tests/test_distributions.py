"""ReDGECategorical: the categorical law's quantities, the ReDGE rsample and its measured law."""

import math

import pytest
import torch
from scipy import stats
from torch.distributions import OneHotCategorical

from redge_mini import redge
from redge_mini.distributions import ReDGECategorical
from redge_mini.exact import hard_sample_tv


def test_log_prob_entropy_and_mean_are_those_of_the_categorical_law():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    dist = ReDGECategorical(logits=logits)
    reference = OneHotCategorical(logits=logits)
    values = torch.eye(4, dtype=torch.float64)[torch.randint(0, 4, (7, 5), generator=gen)]
    torch.testing.assert_close(dist.log_prob(values), reference.log_prob(values))
    # by hand: log π_k at the class of the one-hot value; H = −Σ π log π.
    log_p = torch.log_softmax(logits, -1)
    torch.testing.assert_close(dist.log_prob(values), (values * log_p).sum(-1))
    torch.testing.assert_close(dist.entropy(), -(log_p.exp() * log_p).sum(-1))
    torch.testing.assert_close(dist.mean, log_p.exp())
    assert dist.batch_shape == (5,) and dist.event_shape == (4,) and dist.has_rsample


def test_probs_parameterisation_gives_the_same_law_and_a_gradient():
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], requires_grad=True)
    dist = ReDGECategorical(probs=probs, t_1=0.4, n_steps=4)
    torch.testing.assert_close(dist.probs, probs.detach())
    y = dist.rsample((16,), generator=torch.Generator().manual_seed(1))
    (y * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


def test_sample_is_an_exact_one_hot_draw_without_gradient():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]], requires_grad=True)
    dist = ReDGECategorical(logits=logits)
    n = 20_000
    x = dist.sample((n,), generator=torch.Generator().manual_seed(2))
    assert x.shape == (n, 1, 4) and not x.requires_grad
    assert torch.all(x.sum(-1) == 1) and torch.all((x == 0) | (x == 1))
    expected = n * torch.softmax(logits.detach().double(), -1)[0]
    assert stats.chisquare(x[:, 0].sum(0).double().numpy(), expected.numpy()).pvalue > 1e-3


def test_rsample_is_redge_with_the_distributions_knobs():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4))
    dist = ReDGECategorical(logits=logits, t_1=0.3, n_steps=4)
    y = dist.rsample((2,), generator=torch.Generator().manual_seed(5))
    assert y.shape == (2, 3, 5) and torch.all(y.sum(-1) == 1)
    (grad,) = torch.autograd.grad((y * weights).sum(), logits)
    assert grad.abs().sum() > 0
    # the distribution normalises its logits; ReDGE is invariant to a shift of the logits.
    z = redge(
        logits.expand(2, 3, 5), t_1=0.3, n_steps=4, generator=torch.Generator().manual_seed(5)
    )
    (grad_ref,) = torch.autograd.grad((z * weights).sum(), logits)
    torch.testing.assert_close(y, z)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_rsample_law_is_close_to_pi_at_the_defaults_and_biased_at_small_t_1():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(6))
    n = 40_000

    def tv(t_1, n_steps):
        dist = ReDGECategorical(logits=logits, t_1=t_1, n_steps=n_steps)

        def sampler(batch, generator=None):
            return dist.expand(batch.shape[:-1]).rsample(generator=generator)

        return hard_sample_tv(sampler, logits, n, generator=torch.Generator().manual_seed(7))

    near = tv(0.5, 5)
    assert near.tv < near.null_tv + 4 * near.stderr
    assert near.null_tv == pytest.approx(0.005, abs=0.001)  # the docstring's noise floor
    far = tv(0.1, 3)
    assert far.tv > 0.25 and far.tv - 4 * far.stderr > 10 * far.null_tv


def test_expand_keeps_the_knobs_and_broadcasts():
    dist = ReDGECategorical(logits=torch.zeros(1, 3), t_1=0.7, n_steps=3)
    wide = dist.expand((4, 2))
    assert isinstance(wide, ReDGECategorical)
    assert (wide.t_1, wide.n_steps) == (0.7, 3) and wide.batch_shape == (4, 2)
    assert wide.rsample().shape == (4, 2, 3)
    assert math.isclose(float(wide.entropy()[0, 0]), math.log(3), rel_tol=1e-6)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="t_1"):
        ReDGECategorical(logits=torch.zeros(3), t_1=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        ReDGECategorical(logits=torch.zeros(3), n_steps=1)
    with pytest.raises(TypeError, match="n_steps"):
        ReDGECategorical(logits=torch.zeros(3), n_steps=2.5)
    with pytest.raises(ValueError, match="logits"):
        ReDGECategorical(logits=torch.zeros(3), probs=torch.ones(3) / 3)
    with pytest.raises(ValueError, match="logits"):
        ReDGECategorical()
    dist = ReDGECategorical(logits=torch.zeros(3), validate_args=True)
    with pytest.raises(ValueError):
        dist.log_prob(torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(TypeError, match="generator"):
        dist.rsample(generator=1)
