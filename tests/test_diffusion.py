"""The fused ReDGE sampler (redge_mini._op._FusedSampler) against autograd and finite differences.

This file checks the PyTorch path (the reference, and the fallback where the C++ extension is
not built): every test runs with ``REDGE_MINI_CPP=0``. The C++ path is checked against it in
``test_cpp_sampler.py``. Every memory policy and layout of the fused sampler is checked with
``torch.autograd.gradcheck`` in float64 (finite differences, independent of the hand-derived
adjoint): the trajectory stored (categories last, and categories first for K <= 16 from 512
elements), the trajectory recomputed chunk by chunk (both layouts), and a ``create_graph``
(second-order) backward. Also: torch.vmap with different randomness per sample,
torch.compile(fullgraph=True), and -inf (masked) logits.
"""

import pytest
import torch

from redge_mini import _op
from redge_mini.diffusion import ddim_sample, fused_sample

F64 = torch.float64


def _inputs(shape, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=dtype)
    noise = torch.randn(shape, generator=gen, dtype=dtype)
    uniform = torch.rand(shape[:-1] + (1,), generator=gen, dtype=dtype)
    weights = torch.randn(shape, generator=gen, dtype=dtype)
    return logits, noise, uniform, weights


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    """The PyTorch path of the fused sampler for every test here."""
    monkeypatch.setenv("REDGE_MINI_CPP", "0")


@pytest.fixture
def recompute(monkeypatch):
    """Force the recomputing policy with small chunks (several chunks per call)."""

    def use(chunk_numel):
        monkeypatch.setattr(_op, "STORE_LIMIT", 0)
        monkeypatch.setattr(_op, "CHUNK_NUMEL", chunk_numel)

    return use


# (shape, n_steps, chunk elements or None for the stored trajectory); the comments name the
# layout the sampler picks inside.
CASES = {
    "stored, categories last": ((6, 5), 5, None),
    "stored, categories first": ((4, 40, 4), 4, None),  # 640 elements, K = 4
    "recomputed, categories last": ((5, 5), 5, 10),  # 2 rows per chunk, 3 chunks
    "recomputed, categories first": ((160, 4), 3, 600),  # 150 rows per chunk, 2 chunks
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_sampler_passes_gradcheck(case, recompute):
    shape, n_steps, chunk = CASES[case]
    if chunk is not None:
        recompute(chunk)
    logits, noise, uniform, _ = _inputs(shape, seed=1)
    logits.requires_grad_(True)
    noise.requires_grad_(True)

    def soft(logits, noise):
        return fused_sample(logits, noise, uniform, n_steps=n_steps, t_1=0.4)[1]

    # float64 central differences (eps 1e-6) are accurate to ~1e-10: tolerances far below the
    # defaults, so that a coefficient of the adjoint off by 1e-4 fails
    assert torch.autograd.gradcheck(soft, (logits, noise), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_sampler_equals_autograd_through_ddim_sample(case, recompute):
    shape, n_steps, chunk = CASES[case]
    if chunk is not None:
        recompute(chunk)
    logits, noise, uniform, weights = _inputs(shape, seed=2)
    leaves = [t.clone().requires_grad_(True) for t in (logits, noise)]
    hard, soft = fused_sample(*leaves, uniform, n_steps=n_steps, t_1=0.4)
    ref_leaves = [t.clone().requires_grad_(True) for t in (logits, noise)]
    reference = ddim_sample(*ref_leaves, n_steps=n_steps, t_1=0.4).soft
    torch.testing.assert_close(soft, reference, rtol=1e-12, atol=1e-14)
    # the hard sample carries the soft sample's gradient, exactly
    grads_hard = torch.autograd.grad((hard * weights).sum(), leaves, retain_graph=True)
    grads_soft = torch.autograd.grad((soft * weights).sum(), leaves)
    grads_ref = torch.autograd.grad((reference * weights).sum(), ref_leaves)
    for mine, other, ref in zip(grads_hard, grads_soft, grads_ref, strict=True):
        assert torch.equal(mine, other)
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)


def test_memory_policy_keeps_the_trajectory_only_when_small(recompute):
    logits, noise, uniform, _ = _inputs((6, 5), seed=3)
    logits.requires_grad_(True)
    hard, _ = fused_sample(logits, noise, uniform, n_steps=6, t_1=0.4)
    # logits, noise, soft and the n_steps - 2 intermediate denoiser outputs
    assert len(hard.grad_fn.saved_tensors) == 3 + 4
    recompute(10)
    hard, _ = fused_sample(logits, noise, uniform, n_steps=6, t_1=0.4)
    assert len(hard.grad_fn.saved_tensors) == 3


def test_second_order_backward_is_that_of_the_reference_sampler():
    logits, noise, uniform, weights = _inputs((3, 4), seed=4)
    logits.requires_grad_(True)

    def soft(logits):
        return fused_sample(logits, noise, uniform, n_steps=4, t_1=0.5)[1]

    assert torch.autograd.gradgradcheck(soft, (logits,))
    (grad,) = torch.autograd.grad((soft(logits) * weights).sum(), logits, create_graph=True)
    (hessian_vector,) = torch.autograd.grad((grad**2).sum(), logits)
    leaf = logits.detach().clone().requires_grad_(True)
    reference = ddim_sample(leaf, noise, n_steps=4, t_1=0.5).soft
    (ref_grad,) = torch.autograd.grad((reference * weights).sum(), leaf, create_graph=True)
    (ref_hessian_vector,) = torch.autograd.grad((ref_grad**2).sum(), leaf)
    torch.testing.assert_close(hessian_vector, ref_hessian_vector, rtol=1e-10, atol=1e-12)


def test_vmap_with_different_randomness_equals_the_batched_call():
    logits, noise, uniform, weights = _inputs((5, 7, 3), seed=5)

    def loss(logits, noise, uniform, weights):
        return (fused_sample(logits, noise, uniform, n_steps=5, t_1=0.5)[0] * weights).sum()

    per_sample = torch.vmap(torch.func.grad(loss))(logits, noise, uniform, weights)
    leaf = logits.clone().requires_grad_(True)
    loss(leaf, noise, uniform, weights).backward()
    torch.testing.assert_close(per_sample, leaf.grad, rtol=1e-12, atol=1e-14)

    def draw(logits):
        noise = torch.randn_like(logits)
        uniform = torch.rand(logits.shape[:-1] + (1,), dtype=logits.dtype)
        return fused_sample(logits, noise, uniform, n_steps=5, t_1=0.5)[1]

    soft = torch.vmap(draw, randomness="different")(torch.zeros(4, 2, 3, dtype=F64))
    # same logits in every sample: the draws differ only through the noise
    assert not torch.equal(soft[0], soft[1])
    torch.testing.assert_close(soft.sum(-1), torch.ones(4, 2, dtype=F64))


def test_compile_fullgraph_traces_forward_and_backward():
    logits, noise, uniform, weights = _inputs((4, 6), seed=6)

    def loss(logits):
        return (fused_sample(logits, noise, uniform, n_steps=5, t_1=0.5)[0] * weights).sum()

    leaf, ref_leaf = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    # torch.compile switches torch.distributions' default validation off for the whole process;
    # restore it so that later tests see torch's default
    validate = torch.distributions.Distribution._validate_args
    try:
        compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
        compiled(leaf).backward()
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    loss(ref_leaf).backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", list(CASES))
def test_masked_categories_are_never_drawn_and_get_zero_gradient(case, recompute):
    shape, n_steps, chunk = CASES[case]
    if chunk is not None:
        recompute(chunk)
    logits, noise, uniform, weights = _inputs((200,) + shape[1:], seed=7, dtype=torch.float32)
    logits[..., 0] = float("-inf")  # category 0 masked everywhere
    logits[:50, ..., 2:] = float("-inf")  # the first rows: only category 1 left
    leaf = logits.clone().requires_grad_(True)
    hard, soft = fused_sample(leaf, noise, uniform, n_steps=n_steps, t_1=0.4)
    ((hard + soft) * weights).sum().backward()
    assert (hard[..., 0] == 0).all() and (soft[..., 0] == 0).all()
    assert (hard[:50, ..., 1] == 1).all()
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[..., 0] == 0).all() and (leaf.grad[:50] == 0).all()


def test_bad_shapes_are_refused_by_name():
    logits, noise, uniform, _ = _inputs((3, 4), seed=8)
    with pytest.raises(ValueError, match="noise"):
        fused_sample(logits, noise[:2], uniform, n_steps=5, t_1=0.5)
    with pytest.raises(ValueError, match="uniform"):
        fused_sample(logits, noise, uniform[:, 0], n_steps=5, t_1=0.5)
    with pytest.raises(ValueError, match="n_steps"):
        fused_sample(logits, noise, uniform, n_steps=1, t_1=0.5)


@pytest.mark.parametrize("n_steps,t_1", [(2, 0.5), (3, 1.0), (9, 0.05), (50, 0.3)])
def test_step_table_is_its_definition_in_exact_arithmetic(n_steps, t_1):
    """Every coefficient of schedule.step_table (the one table all backends read) against its
    definition from the time grid, evaluated with exact rationals."""
    from fractions import Fraction

    from redge_mini.schedule import STEP_COLUMNS, step_table, step_tensor, time_grid

    alphas, sigmas = (list(map(Fraction, v)) for v in time_grid(n_steps, t_1))
    table, last = step_table(n_steps, t_1), n_steps - 1
    scale = [s / sigmas[last] for s in sigmas]
    c = [Fraction(0)] + [alphas[j] / sigmas[j] ** 2 for j in range(1, n_steps)]
    r = [Fraction(0)] * 2 + [sigmas[j - 1] / sigmas[j] for j in range(2, n_steps)]
    b = [Fraction(0)] * 2 + [alphas[j - 1] - r[j] * alphas[j] for j in range(2, n_steps)]
    k = [Fraction(0)] + [c[1] * sigmas[1] / sigmas[j] for j in range(1, n_steps)]
    exact = dict(
        alpha=alphas, sigma=sigmas, c=c, r=r, b=b, scale=scale,
        weight=[c[j] * scale[j] for j in range(n_steps)],
        move=[Fraction(0)] * 2 + [b[j] / scale[j - 1] for j in range(2, n_steps)],
        k=k, to_logits=[Fraction(0), Fraction(1)] + [b[j] * k[j - 1] for j in range(2, n_steps)],
        to_state=[Fraction(0)] * 2 + [c[j] * b[j] / r[j] for j in range(2, n_steps)],
    )
    assert set(exact) == set(STEP_COLUMNS)
    for name in STEP_COLUMNS:
        for ours, truth in zip(getattr(table, name), exact[name], strict=True):
            assert abs(Fraction(ours) - truth) <= 1e-14 * max(abs(truth), 1), (name, ours)
    assert torch.equal(step_tensor(n_steps, t_1), torch.tensor(table, dtype=F64))


@pytest.mark.parametrize("variant", ["plain", "cov"])
def test_ddim_sample_equals_the_textbook_ddim_loop(variant):
    """ddim_sample (the table's coefficients, rescaled state) against the DDIM move written
    with the grid's alpha and sigma (diffusion.ddim_step and the denoisers), float64."""
    from redge_mini.diffusion import ddim_step, denoise, denoise_cov, reference_moments
    from redge_mini.schedule import time_grid

    logits, noise, _, _ = _inputs((6, 7), seed=4)
    n_steps, t_1 = 12, 0.2
    alphas, sigmas = time_grid(n_steps, t_1)
    probs, var = reference_moments(logits)
    x = noise if variant == "plain" else probs + var.sqrt() * noise

    def d(x, j):
        if variant == "plain":
            return denoise(x, logits, alphas[j], sigmas[j])
        return denoise_cov(x, logits, probs, var, alphas[j], sigmas[j])

    for j in range(n_steps - 1, 1, -1):
        x = ddim_step(x, d(x, j), alphas[j - 1], sigmas[j - 1], alphas[j], sigmas[j])
    soft = ddim_sample(logits, noise, n_steps=n_steps, t_1=t_1, variant=variant).soft
    torch.testing.assert_close(soft, d(x, 1), rtol=1e-12, atol=1e-14)
