"""The running toy problems against loop-based evaluation; determinism; REINFORCE draws."""

import functools
import itertools
import math

import pytest
import torch

from redge_mini import reinmax, st
from redge_mini.book.toy import (
    HARD_SAMPLE_ESTIMATORS,
    KINDS,
    hard_sample_gradient_moments,
    make_toy_problem,
    reinforce_gradients,
)
from redge_mini.exact import (
    exact_gradient,
    gradient_diagnostics,
    per_sample_gradients,
)
from redge_mini.score_function import sample_onehot


def loop_value(problem, classes: tuple[int, ...]) -> float:
    """f at the configuration with variable l in class classes[l], with Python floats only."""
    A = problem.f.weights.tolist()
    L = len(classes)
    s = sum(A[j][k] for j, k in enumerate(classes)) / math.sqrt(L)
    u = s - problem.f.target
    if problem.kind == "smooth":
        return u * u
    if problem.kind == "nonsmooth":
        return abs(u)
    if problem.kind == "logcosh":
        return math.log(math.cosh(u))
    return 1.0 if u > 0 else 0.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("L", "K"), [(1, 2), (2, 3), (3, 4)])
def test_f_at_one_hot_matches_loop(kind, L, K):
    problem = make_toy_problem(L, K, kind=kind, seed=3)
    configs = list(itertools.product(range(K), repeat=L))
    x = torch.zeros(len(configs), L, K, dtype=torch.float64)
    for i, classes in enumerate(configs):
        for j, k in enumerate(classes):
            x[i, j, k] = 1.0
    values = problem.f(x)
    assert values.shape == (len(configs),)
    expected = torch.tensor([loop_value(problem, c) for c in configs], dtype=torch.float64)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_value_matches_loop_expectation(kind):
    problem = make_toy_problem(3, 3, kind=kind, seed=1)
    probs = problem.probs.tolist()
    total = 0.0
    for classes in itertools.product(range(3), repeat=3):
        weight = math.prod(probs[j][k] for j, k in enumerate(classes))
        total += weight * loop_value(problem, classes)
    assert problem.exact_value() == pytest.approx(total, rel=1e-12, abs=1e-12)


def test_default_target_is_mean_plus_half_sd_of_score():
    problem = make_toy_problem(3, 4, kind="smooth", seed=2)
    probs = problem.probs.tolist()
    A = problem.f.weights.tolist()
    scores, weights = [], []
    for classes in itertools.product(range(4), repeat=3):
        weights.append(math.prod(probs[j][k] for j, k in enumerate(classes)))
        scores.append(sum(A[j][k] for j, k in enumerate(classes)) / math.sqrt(3))
    mean = sum(w * s for w, s in zip(weights, scores, strict=True))
    var = sum(w * (s - mean) ** 2 for w, s in zip(weights, scores, strict=True))
    assert problem.f.target == pytest.approx(mean + 0.5 * math.sqrt(var), rel=1e-12)


def test_deterministic_given_seed_and_shared_across_kinds():
    a = make_toy_problem(4, 3, kind="smooth", seed=7)
    b = make_toy_problem(4, 3, kind="smooth", seed=7)
    c = make_toy_problem(4, 3, kind="step", seed=7)
    d = make_toy_problem(4, 3, kind="smooth", seed=8)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.f.weights, b.f.weights, rtol=0, atol=0)
    assert a.f.target == b.f.target == c.f.target
    torch.testing.assert_close(a.logits, c.logits, rtol=0, atol=0)
    assert not torch.equal(a.logits, d.logits)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    make_toy_problem(4, 3, seed=7)
    assert torch.equal(torch.rand(1), before), "the global RNG must be untouched"


def test_shapes_batch_dims_and_soft_inputs():
    problem = make_toy_problem(2, 3, kind="smooth", seed=0)
    assert (problem.L, problem.K) == (2, 3)
    x = torch.rand(5, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    y = problem.f(x)
    assert y.shape == (5, 4)
    y.sum().backward()
    # d/dx (s - b)^2 = 2 (s - b) A / sqrt(L)
    u = problem.f.score(x.detach()) - problem.f.target
    expected = 2 * u[..., None, None] * problem.f.weights / math.sqrt(2)
    torch.testing.assert_close(x.grad, expected)


def test_step_has_zero_gradient_but_stays_in_graph():
    problem = make_toy_problem(2, 3, kind="step", seed=0)
    x = torch.rand(4, 2, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(problem.f(x).sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))
    assert problem.exact_gradient().norm() > 0


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="kind"):
        make_toy_problem(2, 3, kind="wiggly")
    with pytest.raises(ValueError, match="K"):
        make_toy_problem(2, 1)
    with pytest.raises(TypeError, match="L"):
        make_toy_problem(2.0, 3)
    with pytest.raises(ValueError, match="logit_scale"):
        make_toy_problem(2, 3, logit_scale=0.0)
    with pytest.raises(ValueError, match="seed"):
        make_toy_problem(2, 3, seed=-1)
    problem = make_toy_problem(2, 3)
    with pytest.raises(ValueError, match="shape"):
        problem.f(torch.zeros(4, 3, 2))
    with pytest.raises(TypeError, match="x"):
        problem.f([[0.0]])


def test_reinforce_gradients_unbiased_within_standard_error():
    problem = make_toy_problem(2, 3, kind="nonsmooth", seed=5)
    exact = exact_gradient(problem.f, problem.logits)
    n = 4000
    draws = reinforce_gradients(
        problem.f, problem.logits, n, 4, generator=torch.Generator().manual_seed(0)
    )
    assert draws.shape == (n, 2, 3)
    mean = draws.mean(0)
    se = draws.std(0) / math.sqrt(n)
    # each coordinate within 4.5 standard errors (6 coordinates: a false alarm has p < 1e-4)
    assert bool(((mean - exact).abs() <= 4.5 * se + 1e-12).all())
    stats = gradient_diagnostics(draws, exact)
    assert stats["cosine_of_mean"] > 0.95


def test_reinforce_gradients_match_single_reinforce_loss_calls():
    """Draw i of the batched helper equals a separate reinforce_loss call on the same samples."""
    problem = make_toy_problem(2, 3, kind="smooth", seed=6)
    batched = reinforce_gradients(
        problem.f, problem.logits, 3, 5, generator=torch.Generator().manual_seed(1)
    )
    samples = sample_onehot(
        problem.logits.expand(3, 2, 3), 5, generator=torch.Generator().manual_seed(1)
    )
    for i in range(3):
        theta = problem.logits.clone().requires_grad_(True)
        x = samples[:, i]
        values = problem.f(x).detach()
        loo = values - (values.sum() - values) / 4
        logp = (x * torch.log_softmax(theta, -1)).sum((-2, -1))
        (loo * logp).mean().backward()
        torch.testing.assert_close(batched[i], theta.grad)


def test_st_moments_match_hand_formula():
    """E[ĝ_ST] = Σ_x π(x) J(π)ᵀ ∇f(x), with J and ∇f of the smooth kind written out by hand."""
    problem = make_toy_problem(2, 3, kind="smooth", seed=9)
    moments = hard_sample_gradient_moments("st", problem.f, problem.logits)
    probs = problem.probs
    jac = [torch.diag(p) - torch.outer(p, p) for p in probs]
    A, b = problem.f.weights, problem.f.target
    mean = torch.zeros(2, 3, dtype=torch.float64)
    second = 0.0
    draws = []
    for classes in itertools.product(range(3), repeat=2):
        weight = math.prod(float(probs[j, k]) for j, k in enumerate(classes))
        s = sum(float(A[j, k]) for j, k in enumerate(classes)) / math.sqrt(2)
        grad_x = 2 * (s - b) * A / math.sqrt(2)
        g = torch.stack([jac[j] @ grad_x[j] for j in range(2)])
        draws.append((weight, g))
        mean += weight * g
    for weight, g in draws:
        second += weight * float((g - mean).square().sum())
    torch.testing.assert_close(moments.mean, mean)
    assert moments.variance == pytest.approx(second, rel=1e-10)


@pytest.mark.parametrize("name", HARD_SAMPLE_ESTIMATORS)
def test_moments_match_monte_carlo_of_package_estimators(name):
    problem = make_toy_problem(2, 3, kind="nonsmooth", seed=2)
    fn = functools.partial(st, hard=True) if name == "st" else functools.partial(
        reinmax, tau=1.5, hard=True)
    moments = hard_sample_gradient_moments(name, problem.f, problem.logits, tau=1.5)
    n = 20000
    draws = per_sample_gradients(
        fn, problem.f, problem.logits, n, generator=torch.Generator().manual_seed(0)
    )
    se = draws.std(0) / math.sqrt(n)
    assert bool(((draws.mean(0) - moments.mean).abs() <= 4.5 * se + 1e-12).all())
    stats = gradient_diagnostics(draws, moments.mean)
    assert abs(stats["variance"] - moments.variance) <= 4.5 * stats["variance_se"]


@pytest.mark.parametrize(("L", "K"), [(1, 5), (3, 3)])
def test_reinmax_is_unbiased_for_a_quadratic_and_st_is_not(L, K):
    """ReinMax is second-order accurate: exact in expectation for quadratic f; ST is first-order."""
    problem = make_toy_problem(L, K, kind="smooth", seed=1)
    exact = problem.exact_gradient()
    reinmax_mean = hard_sample_gradient_moments("reinmax", problem.f, problem.logits).mean
    st_mean = hard_sample_gradient_moments("st", problem.f, problem.logits).mean
    torch.testing.assert_close(reinmax_mean, exact, rtol=1e-10, atol=1e-12)
    assert float((st_mean - exact).norm()) > 0.05 * float(exact.norm())


def test_moments_bad_input():
    problem = make_toy_problem(2, 3)
    with pytest.raises(ValueError, match="name"):
        hard_sample_gradient_moments("gumbel", problem.f, problem.logits)
    with pytest.raises(ValueError, match="tau"):
        hard_sample_gradient_moments("reinmax", problem.f, problem.logits, tau=0.5)
    with pytest.raises(ValueError, match="max_configs"):
        hard_sample_gradient_moments("st", problem.f, problem.logits, max_configs=4)


def test_logcosh_is_stable_and_its_gradient_is_tanh():
    problem = make_toy_problem(2, 3, kind="logcosh", seed=2)
    f = problem.f
    u = torch.tensor([-800.0, -3.0, 0.0, 1e-8, 2.5, 800.0], dtype=torch.float64)
    u.requires_grad_(True)
    values = f.profile(u + f.target)
    # log cosh u ~ |u| - log 2 far from 0, where cosh itself overflows
    expected = torch.tensor(
        [800 - math.log(2), math.log(math.cosh(3.0)), 0.0, 0.5e-16,
         math.log(math.cosh(2.5)), 800 - math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(values.detach(), expected, rtol=1e-12, atol=1e-15)
    (grad,) = torch.autograd.grad(values.sum(), u)
    torch.testing.assert_close(grad, torch.tanh(u.detach()), rtol=1e-12, atol=1e-15)
