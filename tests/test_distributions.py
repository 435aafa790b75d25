"""The distribution objects: the categorical law's quantities (against torch's OneHotCategorical),
rsample = the estimator's hard sample (same draws, same gradient), sample = an exact Gumbel-max
draw, knobs validated by the registry. Masks: tests/test_masks.py."""

import inspect
import math

import pytest
import torch
from torch.distributions import OneHotCategorical

from redge_mini import ESTIMATORS, sample
from redge_mini.distributions import (
    GumbelSoftmaxCategorical,
    PathwiseCategorical,
    ReDGECategorical,
    ReDGECovCategorical,
    ReinDGECategorical,
    ReinMaxCategorical,
    STCategorical,
)
from redge_mini.estimators import sample_categorical

CLASSES = {
    "st": STCategorical,
    "gumbel": GumbelSoftmaxCategorical,
    "reinmax": ReinMaxCategorical,
    "redge": ReDGECategorical,
    "redge_cov": ReDGECovCategorical,
    "reindge": ReinDGECategorical,
}
KNOBS = {"gumbel": {"tau": 0.7}, "reinmax": {"tau": 1.5}, "redge": {"t_1": 0.3, "n_steps": 4},
         "redge_cov": {"t_1": 0.3, "n_steps": 4}, "reindge": {"t_1": 0.3, "n_steps": 4}, "st": {}}


def test_one_class_per_registered_estimator():
    assert set(CLASSES) == set(ESTIMATORS)
    for name, cls in CLASSES.items():
        assert cls.estimator == name and issubclass(cls, PathwiseCategorical)
        assert set(cls(logits=torch.zeros(3)).knobs) == set(ESTIMATORS[name].knobs)


@pytest.mark.parametrize("name", list(CLASSES))
def test_the_classes_defaults_are_the_registrys(name):
    # a knob left out takes the registry's default, in the signature and in the object
    from redge_mini.registry import defaults

    signature = inspect.signature(CLASSES[name]).parameters
    assert {k: signature[k].default for k in defaults(name)} == defaults(name)
    assert CLASSES[name](logits=torch.zeros(3)).knobs == defaults(name)
    assert PathwiseCategorical(name, logits=torch.zeros(3)).knobs == defaults(name)


@pytest.mark.parametrize("name", list(CLASSES))
def test_log_prob_entropy_mean_and_support_are_those_of_the_categorical_law(name):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    dist = CLASSES[name](logits=logits, **KNOBS[name])
    reference = OneHotCategorical(logits=logits)
    values = torch.eye(4, dtype=torch.float64)[torch.randint(0, 4, (7, 5), generator=gen)]
    torch.testing.assert_close(dist.log_prob(values), reference.log_prob(values))
    # by hand: log π_k at the class of the one-hot value; H = −Σ π log π.
    log_p = torch.log_softmax(logits, -1)
    torch.testing.assert_close(dist.log_prob(values), (values * log_p).sum(-1))
    torch.testing.assert_close(dist.entropy(), -(log_p.exp() * log_p).sum(-1))
    torch.testing.assert_close(dist.mean, log_p.exp())
    assert dist.support is reference.support and dist.has_rsample
    assert dist.batch_shape == (5,) and dist.event_shape == (4,)


@pytest.mark.parametrize("name", list(CLASSES))
def test_rsample_is_the_estimators_hard_sample_with_the_distributions_knobs(name):
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4))
    dist = CLASSES[name](logits=logits, **KNOBS[name])
    y = dist.rsample((2,), generator=torch.Generator().manual_seed(5))
    assert y.shape == (2, 3, 5) and torch.all(y.sum(-1) == 1)
    (grad,) = torch.autograd.grad((y * weights).sum(), logits)
    assert grad.abs().sum() > 0
    # the distribution normalises its logits; every estimator is invariant to a shift of them
    z = sample(name, logits.expand(2, 3, 5), generator=torch.Generator().manual_seed(5),
               **KNOBS[name]).hard
    (grad_ref,) = torch.autograd.grad((z * weights).sum(), logits)
    torch.testing.assert_close(y, z)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_probs_parameterisation_gives_the_same_law_and_a_gradient():
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], requires_grad=True)
    dist = ReDGECategorical(probs=probs, t_1=0.4, n_steps=4)
    torch.testing.assert_close(dist.probs, probs.detach())
    torch.testing.assert_close(dist.logits.exp(), probs.detach())
    y = dist.rsample((16,), generator=torch.Generator().manual_seed(1))
    (y * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


def test_sample_is_the_gumbel_max_draw_without_gradient():
    # the law of sample_categorical is checked once, in test_estimators (ST's hard sample)
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]], requires_grad=True)
    dist = ReinDGECategorical(logits=logits)
    x = dist.sample((1000,), generator=torch.Generator().manual_seed(2))
    assert x.shape == (1000, 1, 4) and not x.requires_grad
    reference = sample_categorical(
        torch.log_softmax(logits.detach(), -1).expand(1000, 1, 4),
        torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(x, reference, rtol=0, atol=0)


def test_expand_keeps_the_knobs_and_broadcasts():
    dist = ReDGECategorical(logits=torch.zeros(1, 3), t_1=0.7, n_steps=3)
    wide = dist.expand((4, 2))
    assert isinstance(wide, ReDGECategorical)
    assert (wide.t_1, wide.n_steps) == (0.7, 3) and wide.batch_shape == (4, 2)
    assert wide.rsample().shape == (4, 2, 3)
    assert math.isclose(float(wide.entropy()[0, 0]), math.log(3), rel_tol=1e-6)
    cov = ReDGECovCategorical(logits=torch.zeros(3), t_1=0.2).expand((2,))
    assert isinstance(cov, ReDGECovCategorical) and cov.estimator == "redge_cov"
    assert "t_1=0.2" in repr(cov)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="t_1"):
        ReDGECategorical(logits=torch.zeros(3), t_1=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        ReDGECategorical(logits=torch.zeros(3), n_steps=1)
    with pytest.raises(TypeError, match="n_steps"):
        ReDGECategorical(logits=torch.zeros(3), n_steps=2.5)
    with pytest.raises(ValueError, match="tau"):
        ReinMaxCategorical(logits=torch.zeros(3), tau=0.5)
    with pytest.raises(ValueError, match="knob"):
        PathwiseCategorical("st", logits=torch.zeros(3), tau=1.0)
    with pytest.raises(ValueError, match="estimator"):
        PathwiseCategorical("nope", logits=torch.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        ReDGECategorical(logits=torch.zeros(3), probs=torch.ones(3) / 3)
    with pytest.raises(ValueError, match="logits"):
        ReDGECategorical()
    with pytest.raises(AttributeError, match="tau"):
        ReDGECategorical(logits=torch.zeros(3)).tau  # noqa: B018
    dist = ReDGECategorical(logits=torch.zeros(3), validate_args=True)
    with pytest.raises(ValueError):
        dist.log_prob(torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(TypeError, match="generator"):
        dist.rsample(generator=1)
    with pytest.raises(ValueError, match="logits"):
        STCategorical(logits=torch.tensor([0.0, float("nan")]))
