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
    SUITE_K,
    SUITE_L,
    SUITE_LOGIT_SCALES,
    hard_sample_gradient_moments,
    make_toy_problem,
    random_toy_problems,
    reinforce_gradient_moments,
    reinforce_gradients,
    stacked_gradients,
)
from redge_mini.exact import (
    exact_gradient,
    gradient_diagnostics,
    per_sample_gradients,
)
from redge_mini.registry import make_estimator
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


# --- exact moments of REINFORCE and RLOO ---------------------------------------------------------


def brute_force_reinforce(problem, n_samples, baseline):
    """Mean and variance of one estimate by enumerating every tuple of n_samples configurations,
    with the estimator written from its definition (no U-statistic algebra)."""
    L, K = problem.L, problem.K
    probs = problem.probs
    configs = list(itertools.product(range(K), repeat=L))
    onehots = torch.zeros(len(configs), L, K, dtype=torch.float64)
    for i, classes in enumerate(configs):
        for j, k in enumerate(classes):
            onehots[i, j, k] = 1.0
    values = problem.f(onehots)
    scores = onehots - probs
    p = [math.prod(float(probs[j, k]) for j, k in enumerate(c)) for c in configs]
    estimates, weights = [], []
    for tup in itertools.product(range(len(configs)), repeat=n_samples):
        f = values[list(tup)]
        b = (f.sum() - f) / (n_samples - 1) if baseline == "loo" else torch.zeros_like(f)
        estimates.append(((f - b)[:, None, None] * scores[list(tup)]).mean(0))
        weights.append(math.prod(p[i] for i in tup))
    w = torch.tensor(weights, dtype=torch.float64)
    g = torch.stack(estimates)
    mean = torch.einsum("n,nlk->lk", w, g)
    variance = float(w @ (g - mean).square().sum((-2, -1)))
    return mean, variance


@pytest.mark.parametrize(("L", "K"), [(1, 3), (2, 2)])
@pytest.mark.parametrize("n_samples", [2, 3, 4])
@pytest.mark.parametrize("baseline", ["loo", None])
def test_reinforce_moments_match_enumeration_of_sample_tuples(L, K, n_samples, baseline):
    problem = make_toy_problem(L, K, kind="nonsmooth", seed=4)
    mean, variance = brute_force_reinforce(problem, n_samples, baseline)
    moments = reinforce_gradient_moments(problem.f, problem.logits, n_samples, baseline=baseline)
    torch.testing.assert_close(moments.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(moments.mean, problem.exact_gradient(), rtol=1e-10, atol=1e-12)
    assert moments.variance == pytest.approx(variance, rel=1e-10)


@pytest.mark.parametrize(("n_samples", "baseline"), [(2, "loo"), (16, "loo"), (1, None)])
def test_reinforce_moments_match_monte_carlo_of_the_package(n_samples, baseline):
    """The closed form against draws of reinforce_gradients (reinforce_loss underneath)."""
    problem = make_toy_problem(3, 4, kind="logcosh", seed=3)
    moments = reinforce_gradient_moments(problem.f, problem.logits, n_samples, baseline=baseline)
    draws = reinforce_gradients(problem.f, problem.logits, 20000, n_samples,
                                baseline=baseline, generator=torch.Generator().manual_seed(0))
    stats = gradient_diagnostics(draws, moments.mean)
    # the variance estimate is a mean of 20000 squared distances: within 4.5 standard errors
    assert abs(stats["variance"] - moments.variance) <= 4.5 * stats["variance_se"]


def test_rloo_is_unchanged_by_a_constant_and_one_estimate_uses_a_budget_best():
    problem = make_toy_problem(3, 3, kind="smooth", seed=8)

    def shifted(x):
        return problem.f(x) + 100.0

    for n_samples in (2, 5):
        a = reinforce_gradient_moments(problem.f, problem.logits, n_samples).variance
        b = reinforce_gradient_moments(shifted, problem.logits, n_samples).variance
        assert b == pytest.approx(a, rel=1e-8)
    # a budget of 24 evaluations: one estimate of 24 samples beats 24 / S estimates of S
    one = reinforce_gradient_moments(problem.f, problem.logits, 24).variance
    for n_samples in (2, 3, 4, 6, 8, 12):
        split = reinforce_gradient_moments(problem.f, problem.logits, n_samples).variance
        assert one <= split * n_samples / 24


def test_reinforce_moments_bad_input():
    problem = make_toy_problem(2, 3)
    with pytest.raises(ValueError, match="n_samples"):
        reinforce_gradient_moments(problem.f, problem.logits, 1)
    with pytest.raises(ValueError, match="baseline"):
        reinforce_gradient_moments(problem.f, problem.logits, 4, baseline="mean")
    with pytest.raises(ValueError, match="max_configs"):
        reinforce_gradient_moments(problem.f, problem.logits, 4, max_configs=4)
    with pytest.raises(ValueError, match="shape"):
        reinforce_gradient_moments(problem.f, problem.logits[None], 4)


# --- the suite of random problems ----------------------------------------------------------------


def test_random_problems_are_toy_problems_of_the_drawn_shapes():
    suite = random_toy_problems(200, kind="logcosh", seed=11)
    seen = {(p.L, p.K, p.logit_scale) for p in suite}
    assert {L for L, _, _ in seen} == set(SUITE_L)
    assert {K for _, K, _ in seen} == set(SUITE_K)
    assert {s for _, _, s in seen} == set(SUITE_LOGIT_SCALES)
    for i, problem in enumerate(suite[:20]):
        assert problem.seed == 11 + i and problem.kind == "logcosh"
        again = make_toy_problem(problem.L, problem.K, kind="logcosh", seed=11 + i,
                                 logit_scale=problem.logit_scale)
        torch.testing.assert_close(problem.logits, again.logits, rtol=0, atol=0)
        torch.testing.assert_close(problem.f.weights, again.f.weights, rtol=0, atol=0)


def test_random_problems_deterministic_and_shared_across_kinds():
    a = random_toy_problems(12, kind="smooth", seed=5)
    b = random_toy_problems(12, kind="nonsmooth", seed=5)
    c = random_toy_problems(12, kind="smooth", seed=6)
    for p, q in zip(a, b, strict=True):
        assert (p.L, p.K, p.logit_scale, p.f.target) == (q.L, q.K, q.logit_scale, q.f.target)
        torch.testing.assert_close(p.logits, q.logits, rtol=0, atol=0)
    assert [(p.L, p.K, p.logit_scale) for p in a] != [(p.L, p.K, p.logit_scale) for p in c]
    sharp = random_toy_problems(3, seed=0, logit_scale=(4.0,))
    assert all(p.logit_scale == 4.0 for p in sharp)


def test_random_problems_bad_input():
    with pytest.raises(ValueError, match="n"):
        random_toy_problems(0)
    with pytest.raises(ValueError, match="kind"):
        random_toy_problems(3, kind="wiggly")
    with pytest.raises(ValueError, match="K"):
        random_toy_problems(3, K=(1, 2))
    with pytest.raises(ValueError, match="L"):
        random_toy_problems(3, L=(2.5,))
    with pytest.raises(ValueError, match="L"):
        random_toy_problems(3, L=())
    with pytest.raises(ValueError, match="logit_scale"):
        random_toy_problems(3, logit_scale=(0.0, 1.0))
    with pytest.raises(TypeError, match="logit_scale"):
        random_toy_problems(3, logit_scale=1.0)


# --- many problems in one pass -------------------------------------------------------------------


def test_stacked_gradients_keep_the_problems_apart():
    """With a deterministic 'estimator' (the softmax itself) each block's gradient is exactly the
    gradient of its own problem: nothing leaks between stacked problems."""
    problems = [make_toy_problem(L, 3, kind=k, seed=s)
                for L, k, s in ((1, "smooth", 0), (3, "logcosh", 1), (2, "nonsmooth", 2))]

    def soft(logits, generator=None):
        return torch.softmax(logits, -1)

    draws = stacked_gradients(soft, problems, 2)
    for problem, block in zip(problems, draws, strict=True):
        alone = per_sample_gradients(soft, problem.f, problem.logits, 2)
        assert block.shape == (2, problem.L, 3)
        torch.testing.assert_close(block, alone, rtol=1e-12, atol=1e-14)


def test_stacked_redge_draws_have_the_moments_of_separate_draws():
    problems = random_toy_problems(6, kind="nonsmooth", seed=3, K=(3,))
    sampler = make_estimator("redge", t_1=0.5, n_steps=5)
    n = 4000
    stacked = stacked_gradients(sampler, problems, n, generator=torch.Generator().manual_seed(0))
    for i, (problem, block) in enumerate(zip(problems, stacked, strict=True)):
        alone = per_sample_gradients(sampler, problem.f, problem.logits, n,
                                     generator=torch.Generator().manual_seed(10 + i))
        se = torch.sqrt(block.var(0) / n + alone.var(0) / n)
        # 6 problems x up to 12 coordinates: 4.5 standard errors keep false alarms below 1e-3
        assert bool(((block.mean(0) - alone.mean(0)).abs() <= 4.5 * se + 1e-12).all())
        a, b = (gradient_diagnostics(d, problem.exact_gradient()) for d in (block, alone))
        assert abs(a["variance"] - b["variance"]) <= 4.5 * math.hypot(a["variance_se"],
                                                                      b["variance_se"])


def test_stacked_gradients_bad_input():
    a, b = make_toy_problem(2, 3), make_toy_problem(2, 4)
    sampler = make_estimator("st")
    with pytest.raises(ValueError, match="share K"):
        stacked_gradients(sampler, [a, b], 4)
    with pytest.raises(TypeError, match="problems"):
        stacked_gradients(sampler, [], 4)
    with pytest.raises(ValueError, match="dtype"):
        stacked_gradients(sampler, [a, make_toy_problem(2, 3, dtype=torch.float32)], 4)
