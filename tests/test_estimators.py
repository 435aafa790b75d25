"""Independent evidence for the estimators: the authors' packages, torch, brute-force Bayes,
closed forms, and the law of the hard samples.

Oracles: ``redge==0.1.0`` (the ReDGE authors' package; its ``ddim`` takes the initial noise as
an argument), ``reinmax==0.1.0`` (the ReinMax authors' package),
``torch.nn.functional.gumbel_softmax``, and formulas written out here from
``../shared/notes/method.md`` without the package's code.
"""

import contextlib
import functools
import math

import pytest
import redge as authors
import redge.ddim as authors_ddim
import torch
from redge.redge_cov import fm_cat_denoiser_cov
from reinmax import reinmax as reinmax_package
from scipy import stats

from redge_mini import ESTIMATORS, Sample, make_estimator, sample
from redge_mini.diffusion import ddim_sample, denoise, denoise_cov, fused_sample, time_grid
from redge_mini.estimators import reindge, reinmax, st
from redge_mini.exact import empirical_law
from redge_mini.validation import check_generator

F64 = torch.float64
NAMES = list(ESTIMATORS)
DIFFUSION = ("redge", "redge_cov", "reindge")
GRIDS = [(2, 0.5), (3, 0.1), (5, 0.5), (9, 0.9), (4, 1.0), (6, 0.03)]


@contextlib.contextmanager
def default_dtype(dtype):
    """The authors' package builds its time grid and noise in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def jacobian_vjp(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """J(p)ᵀ g = p ⊙ g − p (p·g), written out from the definition J = diag(p) − p pᵀ."""
    return p * g - p * (p * g).sum(-1, keepdim=True)


def reference_ddim_state(logits, noise, n_steps, t_1):
    """The state x at t_1, by the formulas of method.md (not the package's code)."""
    alphas = [1.0] + torch.linspace(1 - t_1, 1e-4, n_steps - 1, dtype=F64).tolist()
    sigmas = [1 - a for a in alphas]
    x = noise
    for j in range(n_steps - 1, 1, -1):
        x_hat = torch.softmax(logits + alphas[j] * x / sigmas[j] ** 2, -1)
        x = alphas[j - 1] * x_hat + sigmas[j - 1] * (x - alphas[j] * x_hat) / sigmas[j]
    return x, alphas[1] / sigmas[1] ** 2


def linear_grad(y, logits, weights, retain_graph=False):
    (grad,) = torch.autograd.grad((y * weights).sum(), logits, retain_graph=retain_graph)
    return grad


def random_problem(shape, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(shape, generator=gen, dtype=dtype)).requires_grad_(True)
    weights = torch.randn(shape, generator=gen, dtype=dtype)
    return logits, weights


# ------------------------------------------------------------------ the authors' redge package


def test_time_grid_is_the_authors_schedule():
    with default_dtype(F64):
        for n_steps, t_1 in GRIDS:
            alphas, sigmas = authors_ddim.mk_schedule(n_steps=n_steps, t_1=t_1)
            ours_a, ours_s = time_grid(n_steps, t_1)
            torch.testing.assert_close(torch.tensor(ours_a), alphas, rtol=0, atol=1e-15)
            torch.testing.assert_close(torch.tensor(ours_s), sigmas, rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n_steps, t_1", GRIDS)
def test_soft_sample_and_gradient_equal_the_authors_for_the_same_noise(n_steps, t_1, dtype, tol):
    logits, weights = random_problem((4, 3, 6), seed=n_steps, dtype=dtype)
    noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with default_dtype(dtype):
        theirs = authors_ddim.ddim(
            noise,
            functools.partial(authors_ddim.cat_denoiser, logits=logits),
            n_steps=n_steps,
            t_1=t_1,
        ).soft
    grad_theirs = linear_grad(theirs, logits, weights)
    # both of our implementations: autograd through the sampler, and the hand-written adjoint
    for ours in (
        ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1).soft,
        fused_sample(logits, noise, torch.rand(logits.shape[:-1] + (1,), dtype=dtype),
                     n_steps=n_steps, t_1=t_1)[1],
    ):
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
        torch.testing.assert_close(
            linear_grad(ours, logits, weights), grad_theirs, rtol=tol, atol=tol
        )


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n_steps, t_1", GRIDS)
def test_redge_cov_equals_the_authors_for_the_same_noise(n_steps, t_1, dtype, tol):
    logits, weights = random_problem((5, 4), seed=10 + n_steps, dtype=dtype)
    eps = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with default_dtype(dtype):
        probs = torch.softmax(logits, -1)
        start = probs + (probs * (1 - probs)).clamp(min=0.1).sqrt() * eps
        denoiser = functools.partial(fm_cat_denoiser_cov, logits=logits, probs=probs)
        theirs = authors_ddim.ddim(start, denoiser, n_steps=n_steps, t_1=t_1).soft
    ours = ddim_sample(logits, eps, n_steps=n_steps, t_1=t_1, variant="cov").soft
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
    torch.testing.assert_close(
        linear_grad(ours, logits, weights), linear_grad(theirs, logits, weights),
        rtol=tol, atol=tol,
    )


def _ours_and_theirs(name, logits, hard, seed=123):
    """Our public estimator and the authors' on separate leaf copies, from the same global seed."""
    mine, yours = logits.detach().clone(), logits.detach().clone()
    mine.requires_grad_(True)
    yours.requires_grad_(True)
    torch.manual_seed(seed)
    ours = make_estimator(name, n_steps=5, t_1=0.4)(mine, hard=hard)
    torch.manual_seed(seed)
    theirs = authors.SAMPLERS[name](yours, n_steps=5, t_1=0.4, hard=hard)
    return mine, ours, yours, theirs


@pytest.mark.parametrize("name", ["redge", "redge_cov"])
def test_public_soft_samples_match_the_authors_for_the_same_global_seed(name):
    # Both draw their Gaussian noise first from the global RNG.
    logits, weights = random_problem((16, 5), seed=3, dtype=torch.float32)
    mine, ours, yours, theirs = _ours_and_theirs(name, logits, hard=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(mine.grad, yours.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DIFFUSION)
def test_public_hard_sample_gradients_match_the_authors_where_the_samples_agree(name):
    # Same global seed: same noise, and the hard samples agree wherever both samplers pick the
    # same class (with today's Gumbel-max in both, everywhere). A row's gradient depends only on
    # that row, so rows with equal hard samples must have equal gradients. The authors' ReinDGE
    # adds its correction in a tensor hook that fires only under .backward().
    logits, weights = random_problem((16, 5), seed=3, dtype=torch.float32)
    mine, ours, yours, theirs = _ours_and_theirs(name, logits, hard=True)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    agree = (ours == theirs).all(-1)
    assert agree.sum() >= 4
    torch.testing.assert_close(mine.grad[agree], yours.grad[agree], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ ReinMax, Gumbel, ST


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_reinmax_gradient_equals_the_reinmax_package_for_the_same_sample(tau):
    # The package samples with torch.multinomial from the global RNG, so we cannot hand it our
    # sample. Instead: 3 logit vectors, each repeated 400 times with the same loss weights. The
    # gradient of a row depends only on (logits, weights, hard sample); every class is drawn by
    # both, and rows with the same group and class must agree across the two implementations.
    gen = torch.Generator().manual_seed(4)
    groups, reps, K = 3, 400, 4
    base = 0.7 * torch.randn(groups, K, generator=gen, dtype=F64)
    base_w = torch.randn(groups, K, generator=gen, dtype=F64)
    logits = base.repeat_interleave(reps, 0)
    weights = base_w.repeat_interleave(reps, 0)
    theta_ours = logits.clone().requires_grad_(True)
    ours = reinmax(theta_ours, tau, True, generator=gen)
    grad_ours = linear_grad(ours, theta_ours, weights)
    theta_theirs = logits.clone().requires_grad_(True)
    torch.manual_seed(5)
    theirs, _ = reinmax_package(theta_theirs, tau)
    grad_theirs = linear_grad(theirs, theta_theirs, weights)
    group = torch.arange(groups).repeat_interleave(reps)
    for g in range(groups):
        for k in range(K):
            mine = grad_ours[(group == g) & (ours[:, k] == 1)]
            ref = grad_theirs[(group == g) & (theirs[:, k] == 1)]
            assert len(mine) > 0 and len(ref) > 0, "every class should be drawn by both"
            torch.testing.assert_close(mine, ref[:1].expand_as(mine), rtol=1e-10, atol=1e-12)


def test_reinmax_gradient_is_the_stated_formula():
    logits, weights = random_problem((6, 5), seed=6)
    y = reinmax(logits, tau=1.7, hard=True, generator=torch.Generator().manual_seed(7))
    grad = linear_grad(y, logits, weights)
    pi = torch.softmax(logits.detach(), -1)
    pi_1 = 0.5 * (y.detach() + torch.softmax(logits.detach() / 1.7, -1))
    expected = 2 * jacobian_vjp(pi_1, weights) - 0.5 * jacobian_vjp(pi, weights)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.3, 1.0, 4.0])
def test_gumbel_softmax_equals_torch_for_the_same_gumbel_noise(tau):
    # torch draws its Gumbel noise as -log(Exp(1)) from the global RNG, as we do when
    # generator=None: the same seed gives the same noise.
    logits, weights = random_problem((8, 3, 7), seed=8, dtype=torch.float32)
    torch.manual_seed(9)
    ours = sample("gumbel", logits, tau=tau)
    torch.manual_seed(9)
    hard_ref = torch.nn.functional.gumbel_softmax(logits, tau=tau, hard=True)
    torch.manual_seed(9)
    soft_ref = torch.nn.functional.gumbel_softmax(logits, tau=tau, hard=False)
    torch.testing.assert_close(ours.hard, hard_ref, rtol=0, atol=0)
    torch.testing.assert_close(ours.soft, soft_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        linear_grad(ours.hard, logits, weights), linear_grad(hard_ref, logits, weights),
        rtol=1e-5, atol=1e-6,
    )


def test_straight_through_gradient_is_the_softmax_jacobian():
    logits, weights = random_problem((5, 4), seed=11)
    y = st(logits, hard=True, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(
        linear_grad(y, logits, weights),
        jacobian_vjp(torch.softmax(logits.detach(), -1), weights),
        rtol=1e-12, atol=1e-12,
    )


# ------------------------------------------------------------------ the denoisers


def test_denoiser_is_the_bayes_posterior_mean():
    # p(e_k | x) ∝ π_k N(x; α e_k, σ² I), with the full Gaussian (no cancellation used).
    gen = torch.Generator().manual_seed(13)
    K = 6
    logits = torch.randn(10, K, generator=gen, dtype=F64)
    eye = torch.eye(K, dtype=F64)
    for alpha in (0.999, 0.7, 0.3, 1e-4):
        sigma = 1 - alpha
        x = alpha * eye[torch.randint(0, K, (10,), generator=gen)]
        x = x + sigma * torch.randn(10, K, generator=gen, dtype=F64)
        log_lik = -((x[:, None, :] - alpha * eye) ** 2).sum(-1) / (2 * sigma**2)
        posterior = torch.softmax(torch.log_softmax(logits, -1) + log_lik, -1)
        torch.testing.assert_close(
            denoise(x, logits, alpha, sigma), posterior, rtol=1e-10, atol=1e-12
        )


def test_moment_matched_denoiser_is_the_bayes_posterior_mean():
    # ReDGE-cov: X_t = α X_0 + σ ξ with ξ ~ N(π, diag v): X_t | e_k ~ N(α e_k + σ π, σ² diag v).
    gen = torch.Generator().manual_seed(14)
    K = 5
    logits = torch.randn(8, K, generator=gen, dtype=F64)
    probs = torch.softmax(logits, -1)
    var = (probs * (1 - probs)).clamp(min=0.1)
    eye = torch.eye(K, dtype=F64)
    for alpha in (0.95, 0.5, 0.05):
        sigma = 1 - alpha
        x = torch.randn(8, K, generator=gen, dtype=F64)
        mean = alpha * eye + sigma * probs[:, None, :]  # (8, K classes, K coordinates)
        log_lik = -((x[:, None, :] - mean) ** 2 / var[:, None, :]).sum(-1) / (2 * sigma**2)
        posterior = torch.softmax(torch.log(probs) + log_lik, -1)
        torch.testing.assert_close(
            denoise_cov(x, logits, probs, var, alpha, sigma), posterior, rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("n_steps", [2, 3, 7])
def test_trajectory_is_the_reference_sampler_path(n_steps):
    logits, _ = random_problem((3, 4), seed=37)
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(38), dtype=F64)
    result = ddim_sample(logits, noise, n_steps=n_steps, t_1=0.3, trajectory=True)
    assert len(result.states) == len(result.denoised) == n_steps - 1
    torch.testing.assert_close(result.states[0], noise, rtol=0, atol=0)
    x_1, _ = reference_ddim_state(logits, noise, n_steps, 0.3)
    torch.testing.assert_close(result.states[-1], x_1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.x_t1, x_1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.denoised[-1], result.soft, rtol=0, atol=0)
    torch.testing.assert_close(torch.softmax(result.log_weights, -1), result.soft)


def test_two_steps_use_the_noise_as_the_t_1_state():
    logits, _ = random_problem((3, 4), seed=15)
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(16), dtype=F64)
    soft = ddim_sample(logits, noise, n_steps=2, t_1=0.4).soft
    expected = torch.softmax(logits + 0.6 * noise / 0.4**2, -1)
    torch.testing.assert_close(soft, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ limits and laws


@pytest.mark.parametrize("n_steps", [2, 3, 5])
def test_t_1_equal_one_is_straight_through(n_steps):
    logits, weights = random_problem((7, 5), seed=17)
    for name in ("redge", "redge_cov"):
        out = sample(name, logits, n_steps=n_steps, t_1=1.0,
                     generator=torch.Generator().manual_seed(18))
        ref = sample("st", logits, generator=torch.Generator().manual_seed(19))
        # equal up to the rounding of softmax (the fused sampler may reduce over another axis)
        torch.testing.assert_close(out.soft, ref.soft, rtol=0, atol=4 * torch.finfo(F64).eps)
        torch.testing.assert_close(
            linear_grad(out.hard, logits, weights), linear_grad(ref.hard, logits, weights),
            rtol=1e-12, atol=1e-12,
        )


def test_reindge_at_t_1_equal_one_is_reinmax_with_tau_one():
    # At t_1 = 1 the trajectory part vanishes and ½[J(π)g + (g·(H−π))(H−π)] is ReinMax's
    # 2 J((H+π)/2) g − ½ J(π) g for a one-hot H (an identity of the two formulas).
    logits, weights = random_problem((9, 4), seed=20)
    y = reindge(logits, 4, 1.0, True, generator=torch.Generator().manual_seed(21))
    pi = torch.softmax(logits.detach(), -1)
    expected = 2 * jacobian_vjp(0.5 * (y.detach() + pi), weights) - 0.5 * jacobian_vjp(pi, weights)
    torch.testing.assert_close(linear_grad(y, logits, weights), expected, rtol=1e-12, atol=1e-12)


def one_hot_counts(name, logits, n, seed, **knobs):
    sampler = make_estimator(name, **knobs)
    return empirical_law(sampler, logits, n, generator=torch.Generator().manual_seed(seed))


def chi_square_p_values(counts, logits):
    expected = counts.sum(-1, keepdim=True) * torch.softmax(logits.double(), -1)
    return [
        stats.chisquare(c.numpy(), e.numpy()).pvalue for c, e in zip(counts, expected, strict=True)
    ]


LAW_LOGITS = torch.tensor(
    [[1.5, 0.3, -0.2, 0.0, -1.0, 0.8, -2.0, 0.4, 0.1, -0.5],
     [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]]
)


@pytest.mark.parametrize("name", ["st", "gumbel", "reinmax"])
def test_exact_samplers_hard_samples_are_one_hot_and_follow_pi(name):
    # The one chi-square test of Gumbel-max sampling (sample_categorical, used by ST, ReinMax,
    # the distributions' sample and sample_onehot) and of Gumbel-Softmax's argmax. Level: each of
    # the two tests (9 degrees of freedom) rejects an exact sampler with probability 1e-3.
    counts = one_hot_counts(name, LAW_LOGITS, 20_000, seed=22)  # checks one-hot
    assert all(p > 1e-3 for p in chi_square_p_values(counts, LAW_LOGITS))


def mean_soft_sample(name, logits, n, seed, **knobs):
    """E[S] by Monte Carlo over the noise: the exact law of H ~ Cat(S), with the small variance
    of S rather than of a one-hot count."""
    batch = logits.double().expand(n, *logits.shape)
    return sample(name, batch, generator=torch.Generator().manual_seed(seed), **knobs).soft.mean(0)


@pytest.mark.parametrize("name", DIFFUSION)
def test_diffusion_hard_sample_law_is_the_mean_soft_sample_and_its_bias_shrinks_with_steps(name):
    # The law of ReDGE's hard sample is E[S] (H ~ Cat(S) given the noise), not π: the finite
    # grid leaves a bias. Check both halves: (a) the hard counts are a multinomial draw from E[S]
    # (estimated with independent noise), and (b) the bias |E[S] − π| shrinks with n_steps and is
    # large at 3 steps and t_1 = 0.1 (20,000 hard draws detect it, p < 1e-10).
    knobs = {"n_steps": 4, "t_1": 0.3}
    law = mean_soft_sample(name, LAW_LOGITS, 100_000, seed=50, **knobs)
    counts = one_hot_counts(name, LAW_LOGITS.double(), 20_000, seed=51, **knobs)
    for c, p in zip(counts, law, strict=True):
        assert stats.chisquare(c.numpy(), (20_000 * p).numpy()).pvalue > 1e-3
    pi = torch.softmax(LAW_LOGITS.double(), -1)
    tv = {n: float(0.5 * (mean_soft_sample(name, LAW_LOGITS, 50_000, seed=52, n_steps=n,
                                           t_1=0.1) - pi).abs().sum(-1).max())
          for n in (3, 6, 30)}
    # Monte-Carlo error of each TV: <= ½ Σ_k sd(S_k) / sqrt(n) <= 0.5 * sqrt(K / n) ≈ 0.007
    assert tv[3] > tv[6] + 0.02 and tv[6] > tv[30] + 0.02, tv
    counts = one_hot_counts(name, LAW_LOGITS, 20_000, seed=23, n_steps=3, t_1=0.1)
    assert all(p < 1e-10 for p in chi_square_p_values(counts, LAW_LOGITS))


# ------------------------------------------------------------------ ReinDGE, no hooks


@pytest.mark.parametrize("shape", [(6, 5), (1, 3, 1, 4), (2,)])
def test_reindge_gradient_is_trajectory_part_plus_reinmax_correction(shape):
    logits, weights = random_problem(shape, seed=24)
    target = torch.randn(shape, generator=torch.Generator().manual_seed(25), dtype=F64)
    n_steps, t_1 = 5, 0.35
    out = sample("reindge", logits, n_steps=n_steps, t_1=t_1,
                 generator=torch.Generator().manual_seed(26))
    loss = (weights * (out.hard - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, logits)

    # Independent recomputation: the sampler draws its Gaussian noise first from the generator.
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(26), dtype=F64)
    x_1, c_1 = reference_ddim_state(logits, noise, n_steps, t_1)
    hard = out.hard.detach()
    g = 2 * weights * (hard - target)  # ∇_y loss at the hard sample
    soft_fixed_theta = torch.softmax(logits.detach() + c_1 * x_1, -1)  # θ held fixed here
    torch.testing.assert_close(out.soft, soft_fixed_theta, rtol=1e-10, atol=1e-12)
    (trajectory,) = torch.autograd.grad((soft_fixed_theta * g).sum(), logits)
    soft = soft_fixed_theta.detach()
    direction = hard - soft
    correction = 0.5 * (
        jacobian_vjp(soft, g) + (g * direction).sum(-1, keepdim=True) * direction
    )
    torch.testing.assert_close(grad, trajectory + correction, rtol=1e-9, atol=1e-12)


def test_reindge_survives_retain_graph_and_other_paths_to_the_logits():
    logits, weights = random_problem((1, 3, 1, 4), seed=27)
    y = reindge(logits, n_steps=4, t_1=0.5, hard=True,
                generator=torch.Generator().manual_seed(28))
    loss = (y * weights).sum()
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits, retain_graph=True)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    (both,) = torch.autograd.grad(loss + (logits**2).sum(), logits, retain_graph=True)
    torch.testing.assert_close(both, first + 2 * logits.detach(), rtol=1e-12, atol=1e-12)
    # the hard sample used twice in the loss doubles its gradient
    (twice,) = torch.autograd.grad(loss + (y * weights).sum(), logits, retain_graph=True)
    torch.testing.assert_close(twice, 2 * first, rtol=1e-12, atol=1e-12)
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(logits.grad, 2 * first, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ contract: shapes, seeds


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), (1, 3, 1, 2)])
def test_shapes_and_the_soft_sample(name, shape):
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(29), requires_grad=True)
    fn = ESTIMATORS[name].fn
    out = sample(name, logits, generator=torch.Generator().manual_seed(30))
    assert isinstance(out, Sample)
    assert out.hard.shape == shape and out.soft.shape == shape
    assert torch.all(out.hard.sum(-1) == 1) and torch.all((out.hard == 0) | (out.hard == 1))
    torch.testing.assert_close(out.soft.sum(-1), torch.ones(shape[:-1]))
    hard = fn(logits, hard=True, generator=torch.Generator().manual_seed(30))
    soft = fn(logits, generator=torch.Generator().manual_seed(30))  # hard=False, as torch
    torch.testing.assert_close(hard, out.hard, rtol=0, atol=0)
    torch.testing.assert_close(soft, out.soft, rtol=0, atol=0)
    assert soft.requires_grad and hard.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_sample_and_gradient_different_seed_different_sample(name):
    logits, weights = random_problem((64, 6), seed=31, dtype=torch.float32)
    fn = make_estimator(name)
    a = fn(logits, generator=torch.Generator().manual_seed(32))
    b = fn(logits, generator=torch.Generator().manual_seed(32))
    c = fn(logits, generator=torch.Generator().manual_seed(33))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(
        linear_grad(a, logits, weights), linear_grad(b, logits, weights), rtol=0, atol=0
    )
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_broadcast_logits_get_the_summed_gradient_of_their_copies(name):
    # An expanded (stride-0) input must give the same sample and the gradient summed over the
    # copies, as a materialised copy does.
    logits, weights = random_problem((3, 5), seed=39)
    fn = make_estimator(name)
    y_view = fn(logits.expand(4, 3, 5), generator=torch.Generator().manual_seed(40))
    y_copy = fn(logits.repeat(4, 1, 1), generator=torch.Generator().manual_seed(40))
    torch.testing.assert_close(y_view, y_copy, rtol=0, atol=0)
    w = weights.expand(4, 3, 5)
    torch.testing.assert_close(
        linear_grad(y_view, logits, w), linear_grad(y_copy, logits, w), rtol=1e-12, atol=1e-12
    )


# ------------------------------------------------------------------ validation and extremes


INVALID_KNOBS = [
    ("redge", {"t_1": 0.0}, ValueError, "t_1"),
    ("redge", {"t_1": -0.2}, ValueError, "t_1"),
    ("redge_cov", {"t_1": 1.5}, ValueError, "t_1"),
    ("reindge", {"t_1": float("nan")}, ValueError, "t_1"),
    ("redge", {"t_1": "0.5"}, TypeError, "t_1"),
    ("redge", {"n_steps": 1}, ValueError, "n_steps"),
    ("reindge", {"n_steps": 0}, ValueError, "n_steps"),
    ("redge_cov", {"n_steps": 3.0}, TypeError, "n_steps"),
    ("redge", {"n_steps": True}, TypeError, "n_steps"),
    ("gumbel", {"tau": 0.0}, ValueError, "tau"),
    ("gumbel", {"tau": -1.0}, ValueError, "tau"),
    ("reinmax", {"tau": 0.5}, ValueError, "tau"),
    ("reinmax", {"tau": float("inf")}, ValueError, "tau"),
]


@pytest.mark.parametrize("name, knobs, error, word", INVALID_KNOBS)
def test_invalid_knobs_are_refused_by_name(name, knobs, error, word):
    with pytest.raises(error, match=word):
        ESTIMATORS[name].fn(torch.zeros(2, 3), **knobs)
    with pytest.raises(error, match=word):
        make_estimator(name, **knobs)


@pytest.mark.parametrize("name", NAMES)
def test_invalid_logits_and_generators_are_refused_by_name(name):
    fn = ESTIMATORS[name].fn
    cases = [
        (torch.zeros(2, 3, dtype=torch.int64), TypeError, "logits"),
        (torch.zeros(2, 3, dtype=torch.bool), TypeError, "logits"),
        (torch.tensor([[0.0, float("nan"), 1.0]]), ValueError, "logits"),
        (torch.tensor([[0.0, float("inf"), 1.0]]), ValueError, "logits"),
        (torch.tensor([[0.0, 1.0], [-float("inf"), -float("inf")]]), ValueError, "logits"),
        (torch.zeros(4, 1), ValueError, "logits"),
        (torch.tensor(1.0), ValueError, "logits"),
        ([0.0, 1.0], TypeError, "logits"),
    ]
    for logits, error, word in cases:
        with pytest.raises(error, match=word):
            fn(logits)
    with pytest.raises(TypeError, match="generator"):
        fn(torch.zeros(2, 3), generator=0)


def test_generator_on_another_device_is_refused():
    # A CUDA generator cannot be built without CUDA (and torch refuses a 'meta' generator), so
    # the check itself is exercised with a device type it does not match.
    with pytest.raises(ValueError, match="generator"):
        check_generator(torch.Generator(), torch.device("cuda"))
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA to build a generator on another device than the logits")
    for spec in ESTIMATORS.values():
        with pytest.raises(ValueError, match="generator"):
            spec.fn(torch.zeros(2, 3), generator=torch.Generator(device="cuda"))


EXTREME_LOGITS = torch.tensor(
    [[1e4, -1e4, 0.0, 3.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -1e4, 0.0], [0.0, 0.0, 0.0, 0.0]]
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("name", NAMES)
def test_extremes_give_finite_values_and_gradients_in_the_input_dtype(name, dtype):
    knob_sets = [{}]
    if name in DIFFUSION:
        knob_sets = [{"t_1": 1e-3, "n_steps": 2}, {"t_1": 1e-3, "n_steps": 5},
                     {"t_1": 0.5, "n_steps": 5}, {"t_1": 1.0, "n_steps": 3}]
    elif name in ("gumbel", "reinmax"):
        knob_sets = [{"tau": 1.0}, {"tau": 0.05 if name == "gumbel" else 50.0}]
    weights = torch.randn(EXTREME_LOGITS.shape, generator=torch.Generator().manual_seed(34))
    for knobs in knob_sets:
        logits = EXTREME_LOGITS.to(dtype).requires_grad_(True)
        out = sample(name, logits, generator=torch.Generator().manual_seed(35), **knobs)
        assert out.hard.dtype == dtype and out.soft.dtype == dtype, knobs
        assert torch.all(out.hard.sum(-1) == 1), knobs
        assert torch.isfinite(out.soft).all(), knobs
        grad = linear_grad(out.hard, logits, weights.to(dtype), retain_graph=True)
        assert grad.dtype == dtype and torch.isfinite(grad).all(), knobs
        # where one class dominates by 1e4, every estimator must return it
        assert out.hard[0, 0] == 1, knobs
        soft_grad = linear_grad(out.soft, logits, weights.to(dtype))
        assert torch.isfinite(soft_grad).all(), knobs


def test_registry_lists_every_estimator_with_valid_defaults():
    assert set(NAMES) == {"st", "gumbel", "reinmax", "redge", "redge_cov", "reindge"}
    for name, spec in ESTIMATORS.items():
        sampler = make_estimator(name)  # the defaults must pass their own checks
        y = sampler(torch.zeros(2, 3), generator=torch.Generator().manual_seed(36))
        assert y.shape == (2, 3) and isinstance(spec.label, str) and spec.label
    with pytest.raises(ValueError, match="estimator"):
        make_estimator("nope")
    with pytest.raises(ValueError, match="tau"):
        make_estimator("redge", tau=1.0)
    assert math.isclose(ESTIMATORS["reinmax"].knobs["tau"].low, 1.0)
