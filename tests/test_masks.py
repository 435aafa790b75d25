"""Masked categories: a logit of -inf means probability zero, for every estimator, the
distribution objects and exact enumeration.

Oracle: the reduced problem. A masked category must behave as if it did not exist, so the
estimators' soft samples and gradients on masked logits, restricted to the kept categories, must
equal those of the same estimator on the logits with the masked columns removed (same noise), and
the masked entries must get exactly zero probability and exactly zero gradient, with no NaN.
"""

import pytest
import torch

from redge_mini import ALL_ESTIMATORS, ESTIMATORS, sample
from redge_mini.diffusion import ddim_sample, fused_sample
from redge_mini.distributions import (
    GumbelSoftmaxCategorical,
    ReDGECategorical,
    ReDGECovCategorical,
    ReinDGECategorical,
    ReinMaxCategorical,
    STCategorical,
)
from redge_mini.estimators import reinmax_surrogate, straight_through
from redge_mini.exact import enumerate_onehot, exact_expectation, exact_gradient
from redge_mini.score_function import reinforce_loss, sample_onehot

F64 = torch.float64
INF = float("inf")
NAMES = list(ESTIMATORS)
DISTRIBUTIONS = [STCategorical, GumbelSoftmaxCategorical, ReinMaxCategorical, ReDGECategorical,
                 ReDGECovCategorical, ReinDGECategorical]


def masked_problem(dtype=F64, seed=0, rows=6, K=5):
    """Logits (rows, K) with masks: row 0 none, rows 1.. some, the last row all but one."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, K, generator=gen, dtype=F64)
    mask = torch.zeros(rows, K, dtype=torch.bool)
    mask[1, 0] = True
    mask[2, [1, 3]] = True
    mask[3, K - 1] = True
    mask[4, [0, 2, 4]] = True
    mask[rows - 1, 1:] = True  # only category 0 left
    logits = logits.masked_fill(mask, -INF).to(dtype)
    weights = torch.randn(rows, K, generator=gen, dtype=F64).to(dtype)
    return logits, mask, weights


def check_masked_output(hard, soft, grads, mask):
    assert torch.all(hard[..., mask] == 0), "a masked category was drawn"
    assert torch.all(hard.sum(-1) == 1)
    assert not torch.isnan(soft).any() and torch.all(soft[..., mask] == 0)
    for grad in grads:
        assert torch.isfinite(grad).all(), "non-finite gradient"
        assert torch.all(grad[..., mask] == 0), "non-zero gradient at a masked category"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_masked_categories_are_never_drawn_and_get_zero_gradient(name, dtype):
    logits, mask, weights = masked_problem(dtype)
    n = 400
    theta = logits.clone().requires_grad_(True)
    out = sample(name, theta.expand(n, *logits.shape), generator=torch.Generator().manual_seed(1))
    (g_hard,) = torch.autograd.grad((out.hard * weights).sum(), theta, retain_graph=True)
    (g_soft,) = torch.autograd.grad((out.soft * weights).sum(), theta)
    check_masked_output(out.hard, out.soft, [g_hard, g_soft], mask)
    assert torch.all(out.hard[:, -1, 0] == 1)  # the only category left is always drawn
    # every kept category is drawn at least once in 400 draws (probabilities >= 1 %)
    assert torch.all(out.hard.sum(0)[~mask] > 0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_masks_next_to_extreme_logits_give_no_nan(name, dtype):
    logits = torch.tensor([[1e4, -INF, -1e4, 0.0], [-1e4, -1e4, -INF, -1e4],
                           [-INF, -INF, -INF, -1e4], [1e4, 1e4, -INF, -INF]], dtype=dtype)
    mask = torch.isneginf(logits)
    knob_sets = [{}]
    if name in ("redge", "redge_cov", "reindge"):
        knob_sets = [{"t_1": 1e-3, "n_steps": 2}, {"t_1": 1e-3, "n_steps": 9}, {"t_1": 1.0}]
    elif name == "gumbel":
        knob_sets = [{"tau": 0.01}, {"tau": 100.0}]
    for knobs in knob_sets:
        theta = logits.clone().requires_grad_(True)
        out = sample(name, theta.expand(50, 4, 4), generator=torch.Generator().manual_seed(12),
                     **knobs)
        weights = torch.linspace(-1, 1, 16, dtype=dtype).view(4, 4)
        (g_hard,) = torch.autograd.grad((out.hard * weights).sum(), theta, retain_graph=True)
        (g_soft,) = torch.autograd.grad((out.soft * weights).sum(), theta)
        check_masked_output(out.hard, out.soft, [g_hard, g_soft], mask)
        assert torch.all(out.hard[:, 2, 3] == 1), knobs  # the only category left
        if knobs.get("n_steps") != 2:  # two grid points: S forgets the logits (chapter 4)
            assert torch.all(out.hard[:, 0, 0] == 1), knobs  # dominant by 1e4


@pytest.mark.parametrize("name", NAMES)
def test_masks_along_another_dim(name):
    logits, mask, weights = masked_problem()
    # categories along dim 0: shape (K, rows); and in the middle of a 3-d tensor
    for dim, perm in ((0, (1, 0)), (1, None)):
        if perm is None:
            theta = logits.T.unsqueeze(0).expand(3, -1, -1).contiguous().requires_grad_(True)
            to_rows = lambda x: x.movedim(1, -1)  # noqa: E731
        else:
            theta = logits.T.contiguous().requires_grad_(True)
            to_rows = lambda x: x.T  # noqa: E731
        out = sample(name, theta, dim=dim, generator=torch.Generator().manual_seed(2))
        w = to_rows(torch.ones_like(theta)) * weights
        (grad,) = torch.autograd.grad((to_rows(out.hard) * w).sum(), theta)
        check_masked_output(to_rows(out.hard), to_rows(out.soft), [to_rows(grad)], mask)


def test_fused_and_cov_samplers_on_masked_logits_equal_the_reduced_problem():
    # the masked column removed, the same noise on the kept columns: same soft sample, same
    # gradient on the kept logits (the masked coordinate of the state never feeds back)
    gen = torch.Generator().manual_seed(3)
    K, rows, keep = 6, 700, [0, 2, 3, 5]  # rows * K >= 512: the categories-first layout too
    for rows_now in (8, rows):
        base = torch.randn(rows_now, K, generator=gen, dtype=F64)
        masked = base.clone()
        masked[:, [1, 4]] = -INF
        noise = torch.randn(rows_now, K, generator=gen, dtype=F64)
        uniform = torch.rand(rows_now, 1, generator=gen, dtype=F64)
        weights = torch.randn(rows_now, K, generator=gen, dtype=F64)
        full = masked.clone().requires_grad_(True)
        small = base[:, keep].clone().requires_grad_(True)
        for run in ("fused", "cov"):
            if run == "fused":
                hard_f, soft_f = fused_sample(full, noise, uniform, n_steps=5, t_1=0.4)
                hard_s, soft_s = fused_sample(small, noise[:, keep], uniform, n_steps=5, t_1=0.4)
            else:
                soft_f = ddim_sample(full, noise, n_steps=5, t_1=0.4, variant="cov").soft
                soft_s = ddim_sample(small, noise[:, keep], n_steps=5, t_1=0.4,
                                     variant="cov").soft
                hard_f, hard_s = soft_f, soft_s
            torch.testing.assert_close(soft_f[:, keep], soft_s, rtol=1e-12, atol=1e-14)
            assert torch.all(soft_f[:, [1, 4]] == 0)
            torch.testing.assert_close(hard_f[:, keep], hard_s, rtol=0, atol=1e-14)
            (g_full,) = torch.autograd.grad((hard_f * weights).sum(), full)
            (g_small,) = torch.autograd.grad((hard_s * weights[:, keep]).sum(), small)
            torch.testing.assert_close(g_full[:, keep], g_small, rtol=1e-10, atol=1e-12)
            assert torch.all(g_full[:, [1, 4]] == 0)


def test_st_and_reinmax_gradients_on_masked_logits_equal_the_reduced_problem():
    logits, mask, weights = masked_problem(rows=5)
    keep_rows = [0, 1, 3]  # rows 1 and 3 mask one category each: compare them one by one
    for r in keep_rows:
        kept = ~mask[r]
        full = logits[r].clone().requires_grad_(True)
        small = logits[r, kept].clone().requires_grad_(True)
        hard = torch.zeros_like(logits[r])
        hard[int(torch.nonzero(kept)[0, 0])] = 1.0
        for tau in (1.0, 2.0):
            y_full = reinmax_surrogate(full, hard, tau)
            y_small = reinmax_surrogate(small, hard[kept], tau)
            (g_full,) = torch.autograd.grad((y_full * weights[r]).sum(), full)
            (g_small,) = torch.autograd.grad((y_small * weights[r, kept]).sum(), small)
            torch.testing.assert_close(g_full[kept], g_small, rtol=1e-12, atol=1e-14)
            assert torch.all(g_full[~kept] == 0)
        y_full = straight_through(hard, torch.softmax(full, -1))
        y_small = straight_through(hard[kept], torch.softmax(small, -1))
        (g_full,) = torch.autograd.grad((y_full * weights[r]).sum(), full)
        (g_small,) = torch.autograd.grad((y_small * weights[r, kept]).sum(), small)
        torch.testing.assert_close(g_full[kept], g_small, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(ALL_ESTIMATORS))
def test_every_surrogate_loss_gives_zero_gradient_to_masked_logits(name):
    # the uniform interface, REINFORCE included
    logits, mask, weights = masked_problem()
    theta = logits.clone().requires_grad_(True)

    def f(x):  # (S, rows, K) -> (S,), not linear, so no estimator is exact by accident
        return ((x * weights).sum(-1) ** 2).sum(-1)

    loss = ALL_ESTIMATORS[name].loss(f, theta, 64, generator=torch.Generator().manual_seed(4))
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and torch.all(grad[mask] == 0)
    assert grad[~mask].abs().sum() > 0


def test_reinforce_on_masked_logits_is_the_reduced_problems_rloo_estimate():
    # reinforce_loss draws with sample_onehot from the generator first: the same seed gives the
    # same draws. The RLOO estimate written out with the reduced problem's probabilities (the
    # softmax of the kept logits only) must equal autograd's gradient on the kept logits.
    logits, mask, weights = masked_problem()
    row, S = 2, 16  # two masked categories
    kept = ~mask[row]
    w = weights[row]

    def f(x):
        return (x * w).sum(-1) ** 2

    draws = sample_onehot(logits[row], S, generator=torch.Generator().manual_seed(6))
    assert torch.all(draws[:, ~kept] == 0)
    full = logits[row].clone().requires_grad_(True)
    loss = reinforce_loss(f, full, S, generator=torch.Generator().manual_seed(6))
    (grad,) = torch.autograd.grad(loss, full)
    values = f(draws)
    advantage = values - (values.sum() - values) / (S - 1)
    reduced_probs = torch.softmax(logits[row, kept], -1)
    expected = (advantage[:, None] * (draws[:, kept] - reduced_probs)).mean(0)
    torch.testing.assert_close(grad[kept], expected, rtol=1e-12, atol=1e-14)
    assert torch.all(grad[~kept] == 0)


def test_exact_enumeration_with_masks_equals_the_reduced_problem():
    gen = torch.Generator().manual_seed(7)
    L, K = 3, 4
    base = torch.randn(L, K, generator=gen, dtype=F64)
    weights = torch.randn(L, K, generator=gen, dtype=F64)
    masked = base.clone()
    masked[0, 1] = -INF
    masked[2, [0, 3]] = -INF

    def f(x):
        return torch.sin((x * weights).sum((-2, -1))) + (x[..., 0] * x[..., 2]).sum(-1)

    value = exact_expectation(f, masked)
    grad = exact_gradient(f, masked)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad[0, 1] == 0 and torch.all(grad[2, [0, 3]] == 0)
    # reference: only the configurations that avoid the masked classes, weighted by the product
    # of the kept probabilities (written out, no log-space)
    configs = enumerate_onehot(L, K, dtype=F64)
    theta = masked.clone().requires_grad_(True)
    probs = torch.softmax(theta, -1)
    allowed = (configs[:, 0, 1] == 0) & (configs[:, 2, 0] == 0) & (configs[:, 2, 3] == 0)
    kept = configs[allowed]
    weight = (kept * probs).sum(-1).prod(-1)
    reference = (weight * f(kept)).sum()
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-14)
    (ref_grad,) = torch.autograd.grad(reference, theta)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", DISTRIBUTIONS)
def test_distributions_with_masks(cls):
    logits, mask, weights = masked_problem()
    for param in ("logits", "probs"):
        theta = (logits if param == "logits" else torch.softmax(logits, -1)).clone()
        theta.requires_grad_(True)
        dist = cls(**{param: theta}, validate_args=True)
        x = dist.rsample((300,), generator=torch.Generator().manual_seed(8))
        (grad,) = torch.autograd.grad((x * weights).sum(), theta)
        draws = dist.sample((300,), generator=torch.Generator().manual_seed(9))
        for h in (x, draws):
            assert torch.all(h[..., mask] == 0) and torch.all(h.sum(-1) == 1)
        assert torch.isfinite(grad).all()
        if param == "logits":
            assert torch.all(grad[mask] == 0)
        else:  # probs are normalised by their sum, whose gradient reaches every entry: it is
            # Σ_j g_j p_j / s² = Σ of the logits' gradient = 0 up to rounding
            assert grad[mask].abs().max() < 1e-12
        entropy = dist.entropy()
        assert torch.isfinite(entropy).all() and entropy[-1] == 0  # one category left
        assert torch.all(torch.isneginf(dist.log_prob(torch.eye(5, dtype=F64)[1])[[2, 5]]))
        assert torch.isfinite(dist.log_prob(draws)).all()


BAD = [
    (torch.tensor([[0.0, float("nan"), 1.0]]), -1, "NaN"),
    (torch.tensor([[0.0, INF, 1.0]]), -1, r"\+inf"),
    (torch.tensor([[0.0, 1.0, 2.0], [-INF, -INF, -INF]]), -1, "every entry is -inf"),
    (torch.tensor([[0.0, -INF], [1.0, -INF], [2.0, -INF]]), 0, "dim=0"),
]


@pytest.mark.parametrize("name", NAMES)
def test_nan_plus_inf_and_fully_masked_slices_are_refused_by_name(name):
    for logits, dim, words in BAD:
        with pytest.raises(ValueError, match="logits") as info:
            sample(name, logits, dim=dim)
        assert info.match(words)
    # the same logits are fine along the other dimension
    assert torch.all(sample(name, BAD[3][0], dim=-1).hard[:, 0] == 1)


def test_exact_and_reinforce_refuse_bad_logits_by_name():
    for logits, _, words in BAD[:3]:
        with pytest.raises(ValueError, match=words):
            exact_expectation(lambda x: x.sum((-2, -1)), logits)
        with pytest.raises(ValueError, match=words):
            reinforce_loss(lambda x: x.sum((-2, -1)), logits, 4)
