"""Exact enumeration against hand computations and closed forms; diagnostics against known laws."""

import itertools
import math

import pytest
import torch

from redge_mini.exact import (
    empirical_law,
    enumerate_onehot,
    exact_expectation,
    exact_gradient,
    gradient_diagnostics,
    hard_sample_tv,
    per_sample_gradients,
)
from redge_mini.score_function import sample_onehot

DTYPE = torch.float64


def softmax_jacobian(p: torch.Tensor) -> torch.Tensor:
    """J(p) = diag(p) - p pᵀ, written out independently of the package."""
    return torch.diag(p) - torch.outer(p, p)


def table_objective(table: torch.Tensor):
    """f(x) = table[i_1, ..., i_L] where i_l is the class of variable l."""

    def f(x: torch.Tensor) -> torch.Tensor:
        idx = x.argmax(-1)
        return table[tuple(idx.unbind(-1))]

    return f


# ---------------------------------------------------------------- enumeration


def test_enumerate_onehot_lists_every_configuration_once():
    L, K = 3, 4
    configs = enumerate_onehot(L, K, dtype=DTYPE)
    assert configs.shape == (K**L, L, K)
    assert configs.dtype == DTYPE
    assert torch.all(configs.sum(-1) == 1) and torch.all((configs == 0) | (configs == 1))
    codes = [tuple(c.argmax(-1).tolist()) for c in configs]
    assert codes == list(itertools.product(range(K), repeat=L))  # lexicographic, variable 0 slowest
    # slices for chunked enumeration: the same rows, and max_configs counts the returned rows
    torch.testing.assert_close(enumerate_onehot(L, K, dtype=DTYPE, start=5, stop=17),
                               configs[5:17], rtol=0, atol=0)
    assert enumerate_onehot(L, K, start=60, stop=10**6, max_configs=4).shape == (4, L, K)
    assert enumerate_onehot(30, 2, start=2**30 - 2).shape == (2, 30, 2)


def test_enumerate_onehot_refuses_large_and_invalid_problems():
    with pytest.raises(ValueError, match="max_configs"):
        enumerate_onehot(21, 2)
    with pytest.raises(ValueError, match="max_configs"):
        enumerate_onehot(3, 5, max_configs=100)
    with pytest.raises(ValueError, match="K"):
        enumerate_onehot(3, 1)
    with pytest.raises(TypeError, match="L"):
        enumerate_onehot(2.0, 3)
    with pytest.raises(ValueError, match="L"):
        enumerate_onehot(0, 3)
    with pytest.raises(ValueError, match="stop"):
        enumerate_onehot(2, 3, start=5, stop=4)


# ---------------------------------------------------------------- exact expectation / gradient


def test_exact_expectation_matches_a_hand_sum():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, generator=gen, dtype=DTYPE)
    table = torch.randn(3, 3, generator=gen, dtype=DTYPE)
    p = torch.softmax(logits, -1)
    by_hand = sum(p[0, i] * p[1, j] * table[i, j] for i in range(3) for j in range(3))
    value = exact_expectation(table_objective(table), logits)
    torch.testing.assert_close(value, by_hand, rtol=1e-12, atol=1e-12)


def test_exact_gradient_of_a_linear_objective_is_jacobian_times_c():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, generator=gen, dtype=DTYPE)
    c = torch.randn(3, 4, generator=gen, dtype=DTYPE)
    grad = exact_gradient(lambda x: (x * c).sum((-1, -2)), logits)
    p = torch.softmax(logits, -1)
    expected = torch.stack([softmax_jacobian(p[v]) @ c[v] for v in range(3)])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_exact_gradient_of_a_product_objective_factorises_over_variables():
    # f(x) = Π_l h_l(x^l): E f = Π_l π_l·h_l, so ∇_l = J(π_l) h_l Π_{m≠l} π_m·h_m.
    gen = torch.Generator().manual_seed(2)
    L, K = 4, 3
    logits = torch.randn(L, K, generator=gen, dtype=DTYPE)
    h = torch.rand(L, K, generator=gen, dtype=DTYPE) + 0.5
    grad = exact_gradient(lambda x: (x * h).sum(-1).prod(-1), logits)
    p = torch.softmax(logits, -1)
    means = (p * h).sum(-1)
    expected = torch.stack(
        [softmax_jacobian(p[v]) @ h[v] * (means.prod() / means[v]) for v in range(L)]
    )
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_exact_gradient_matches_central_finite_differences():
    gen = torch.Generator().manual_seed(3)
    L, K = 3, 3
    logits = torch.randn(L, K, generator=gen, dtype=DTYPE)
    target = torch.randn(L, K, generator=gen, dtype=DTYPE)

    def f(x: torch.Tensor) -> torch.Tensor:  # non-smooth and non-separable in x
        return (x - target).abs().sum((-1, -2)) + x[:, 0, 1] * x[:, 2, 2]

    grad = exact_gradient(f, logits)
    eps = 1e-6
    fd = torch.zeros_like(logits)
    for idx in itertools.product(range(L), range(K)):
        step = torch.zeros_like(logits)
        step[idx] = eps
        fd[idx] = (exact_expectation(f, logits + step) - exact_expectation(f, logits - step)) / (
            2 * eps
        )
    torch.testing.assert_close(grad, fd, rtol=0, atol=1e-8)


def test_exact_functions_validate_their_arguments():
    f = lambda x: x.sum((-1, -2))  # noqa: E731
    with pytest.raises(TypeError, match="logits"):
        exact_gradient(f, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits"):
        exact_gradient(f, torch.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        exact_gradient(f, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="logits"):
        exact_gradient(f, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="f must map"):
        exact_expectation(lambda x: x.sum(-1), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="max_configs"):
        exact_expectation(f, torch.zeros(30, 2))


# ---------------------------------------------------------------- per-sample gradients


def straight_through_for_test(record: list):
    """A tiny ST estimator (H + π − sg(π)) that records its hard samples."""

    def estimator(logits: torch.Tensor, generator=None) -> torch.Tensor:
        probs = torch.softmax(logits, -1)
        hard = sample_onehot(logits, 1, generator=generator)[0]
        record.append(hard)
        return hard + probs - probs.detach()

    return estimator


def test_per_sample_gradients_are_the_per_sample_surrogate_gradients():
    gen = torch.Generator().manual_seed(4)
    L, K, n = 3, 4, 50
    logits = torch.randn(L, K, generator=gen, dtype=DTYPE)
    target = torch.randn(L, K, generator=gen, dtype=DTYPE)
    record: list = []
    grads = per_sample_gradients(
        straight_through_for_test(record),
        lambda x: ((x - target) ** 2).sum((-1, -2)),
        logits,
        n,
        generator=gen,
        chunk_size=20,
    )
    assert grads.shape == (n, L, K) and grads.dtype == DTYPE
    hard = torch.cat(record)
    assert hard.shape == (n, L, K)
    p = torch.softmax(logits, -1)
    jac = torch.stack([softmax_jacobian(p[v]) for v in range(L)])  # (L, K, K), symmetric
    expected = torch.einsum("lkj,nlj->nlk", jac, 2 * (hard - target))
    torch.testing.assert_close(grads, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- diagnostics


def test_diagnostics_of_exact_draws_are_zero_error():
    exact = torch.tensor([[0.3, -0.3], [1.0, -1.0]], dtype=DTYPE)
    d = gradient_diagnostics(exact.expand(10, 2, 2), exact)
    assert d["bias"] == 0 and d["variance"] == 0 and d["mse"] == 0
    assert d["cosine_of_mean"] == pytest.approx(1.0) and d["mean_cosine"] == pytest.approx(1.0)


def test_diagnostics_recover_a_known_bias_and_variance():
    gen = torch.Generator().manual_seed(5)
    n, dim, s = 20_000, 6, 0.5
    exact = torch.randn(dim, generator=gen, dtype=DTYPE)
    shift = torch.zeros(dim, dtype=DTYPE)
    shift[0] = 0.2
    grads = exact + shift + s * torch.randn(n, dim, generator=gen, dtype=DTYPE)
    d = gradient_diagnostics(grads, exact)
    # bias along an axis of isotropic noise: the delta-method error is s / sqrt(n).
    assert d["bias_se"] == pytest.approx(s / math.sqrt(n), rel=0.05)
    assert abs(d["bias"] - 0.2) < 4 * d["bias_se"] + d["bias_floor"]
    assert abs(d["bias2_unbiased"] - 0.04) < 4 * d["bias2_unbiased_se"]
    assert abs(d["variance"] - dim * s**2) < 4 * d["variance_se"]
    assert abs(d["mse"] - (0.04 + dim * s**2)) < 4 * d["mse_se"]
    # algebra: the MSE splits into squared bias and variance (with the 1/n variance).
    assert d["mse"] == pytest.approx(d["bias"] ** 2 + d["variance"] * (n - 1) / n, rel=1e-10)
    cos_true = float((exact + shift) @ exact / ((exact + shift).norm() * exact.norm()))
    assert abs(d["cosine_of_mean"] - cos_true) < 4 * d["cosine_of_mean_se"] + 1e-3


def test_unbiased_draws_show_bias_at_the_noise_floor():
    gen = torch.Generator().manual_seed(6)
    n, dim = 5_000, 8
    exact = torch.randn(dim, generator=gen, dtype=DTYPE)
    grads = exact + torch.randn(n, dim, generator=gen, dtype=DTYPE)
    d = gradient_diagnostics(grads, exact)
    # ‖ḡ − e‖² ~ χ²_dim / n: its mean is the squared floor, its std sqrt(2 dim)/n.
    assert abs(d["bias"] ** 2 - d["bias_floor"] ** 2) < 4 * math.sqrt(2 * dim) / n
    assert abs(d["bias2_unbiased"]) < 4 * math.sqrt(2 * dim) / n


def test_delta_method_stderr_of_cosine_matches_replication():
    gen = torch.Generator().manual_seed(7)
    reps, n, dim = 300, 200, 5
    exact = torch.tensor([1.0, 0.5, 0.0, -0.5, 0.2], dtype=DTYPE)
    mean = exact + torch.tensor([0.3, -0.2, 0.4, 0.0, 0.1], dtype=DTYPE)
    cosines, ses = [], []
    for _ in range(reps):
        grads = mean + torch.randn(n, dim, generator=gen, dtype=DTYPE)
        d = gradient_diagnostics(grads, exact)
        cosines.append(d["cosine_of_mean"])
        ses.append(d["cosine_of_mean_se"])
    spread = torch.tensor(cosines).std().item()
    # the std of a std estimated from 300 replicates is about 4 %: allow 20 %.
    assert sum(ses) / reps == pytest.approx(spread, rel=0.2)


def test_gradient_diagnostics_validates_shapes():
    with pytest.raises(ValueError, match="grads"):
        gradient_diagnostics(torch.zeros(5, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="grads"):
        gradient_diagnostics(torch.zeros(1, 3), torch.zeros(3))


# ---------------------------------------------------------------- hard-sample law


def exact_sampler(logits: torch.Tensor, generator=None) -> torch.Tensor:
    return sample_onehot(logits, 1, generator=generator)[0]


def shifted_sampler(shift: torch.Tensor):
    def sampler(logits: torch.Tensor, generator=None) -> torch.Tensor:
        return sample_onehot(logits + shift, 1, generator=generator)[0]

    return sampler


def test_empirical_law_counts_every_sample():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 4, generator=gen)
    counts = empirical_law(exact_sampler, logits, 1000, generator=gen, chunk_size=300)
    assert counts.shape == (3, 4)
    assert torch.all(counts.sum(-1) == 1000)


def test_tv_of_an_exact_sampler_sits_at_the_noise_floor():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(5, 6, generator=gen)
    n = 4000
    est = hard_sample_tv(exact_sampler, logits, n, generator=gen, null_reps=400)
    null_spread = est.null_stderr * math.sqrt(400)
    assert abs(est.tv - est.null_tv) < 4 * null_spread
    # the noise floor agrees with its normal approximation ½ Σ_k sqrt(2 p(1 − p) / (π n)).
    p = torch.softmax(logits.double(), -1)
    approx = float((0.5 * (2 * p * (1 - p) / (math.pi * n)).sqrt().sum(-1)).mean())
    assert est.null_tv == pytest.approx(approx, rel=0.05)


def test_tv_detects_a_biased_sampler():
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 4, generator=gen)
    shift = torch.tensor([0.6, 0.0, 0.0, -0.4])
    est = hard_sample_tv(shifted_sampler(shift), logits, 20_000, generator=gen)
    p, q = torch.softmax(logits, -1), torch.softmax(logits + shift, -1)
    true_tv = float(0.5 * (p - q).abs().sum(-1).mean())
    assert true_tv > 10 * est.null_tv
    assert abs(est.tv - true_tv) < 4 * est.stderr + est.null_tv


def test_hard_sample_tv_refuses_soft_samples():
    def soft_sampler(logits, generator=None):
        return torch.softmax(logits, -1)

    with pytest.raises(ValueError, match="one-hot"):
        hard_sample_tv(soft_sampler, torch.zeros(2, 3), 10)
    with pytest.raises(ValueError, match="n"):
        hard_sample_tv(exact_sampler, torch.zeros(2, 3), 1)
