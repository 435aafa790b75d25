"""PyTorch's own gumbel_softmax tests, ported to redge_mini.gumbel_softmax.

Origin: pytorch/pytorch, test/test_nn.py, ``TestNN._test_gumbel_softmax_st_shapes``,
``_test_gumbel_softmax_straight_through``, ``_test_gumbel_softmax_grad`` and the cases listed in
``test_gumbel_softmax`` (CPU, every floating dtype except half; CUDA with half too). Our own port:
the same calls and the same assertions, written for pytest; the calls go through
``redge_mini.gumbel_softmax`` exactly as they are written for ``torch.nn.functional``. Two
additions are marked as such: the same calls with torch's positional arguments, and equality with
torch's output for the same global RNG state.
"""

import pytest
import torch
import torch.nn.functional as F

import redge_mini

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# torch: NO_HALF_TENSORTYPES on CPU (float, double), ALL_TENSORTYPES on CUDA (+ half)
CASES = [(device, dtype) for device in DEVICES for dtype in (torch.float, torch.double)] + (
    [("cuda", torch.half)] if torch.cuda.is_available() else []
)
SHAPES = [([5], 0, 1), ([5], -1, 1), ([5, 4], 1, 5), ([5, 4, 3], 1, 5 * 3), ([5, 4, 3], -1, 5 * 4)]


@pytest.mark.parametrize("device, dtype", CASES)
@pytest.mark.parametrize("shape, dim, count_expected", SHAPES)
def test_gumbel_softmax_st_shapes(device, dtype, shape, dim, count_expected):
    logits = torch.randn(shape, dtype=torch.float).to(dtype).to(device)
    y_draw = redge_mini.gumbel_softmax(logits, hard=True, dim=dim)
    # All values positive
    assert y_draw.min() >= 0
    # Shape unchanged
    assert y_draw.shape == logits.shape
    # One choice per draw
    torch.testing.assert_close(
        y_draw.sum(), torch.tensor(count_expected, dtype=y_draw.dtype, device=device),
        rtol=0, atol=torch.finfo(y_draw.dtype).eps,
    )
    # addition: torch's positional form gumbel_softmax(logits, tau, hard, eps, dim)
    y_pos = redge_mini.gumbel_softmax(logits, 1, True, 1e-10, dim)
    assert y_pos.shape == logits.shape and float(y_pos.sum()) == count_expected


@pytest.mark.parametrize("device, dtype", CASES)
def test_gumbel_softmax_straight_through(device, dtype):
    torch.manual_seed(0)  # addition: torch's suite seeds every test
    num_draws = 100
    logits = torch.tensor([[0.2, 0.8, 0.1]]).reshape([1, 3]).to(dtype).requires_grad_()
    logits = logits.to(device)
    probs = logits.softmax(dim=-1)
    counts = torch.zeros_like(logits)
    for _ in range(num_draws):
        y_draw = redge_mini.gumbel_softmax(logits, hard=True)
        counts = counts + y_draw
    # All values positive
    assert y_draw.min() >= 0
    # Each experiment should result in 1 draw.
    torch.testing.assert_close(counts.sum().detach(),
                               torch.tensor(float(num_draws), dtype=dtype, device=device),
                               rtol=0, atol=torch.finfo(counts.dtype).eps)
    # check results is asymptotically as expected.
    expected = probs * num_draws
    # ~z is approximately N(0,1) for unbiased count
    z = (counts - expected) / (expected * (1 - probs)).sqrt()
    # A (lazy) approximate 99% two-sided test:
    # occurs with prob alpha~>=0.01 if unbiased
    assert z.abs().max().item() < 2.58


@pytest.mark.parametrize("device, dtype", CASES)
def test_gumbel_softmax_grad(device, dtype):
    # "hard" and "not hard" should propagate same gradient.
    logits_soft = torch.zeros(10, 10, dtype=dtype, device=device, requires_grad=True)
    logits_hard = torch.zeros(10, 10, dtype=dtype, device=device, requires_grad=True)
    seed = torch.random.get_rng_state()
    y_soft = redge_mini.gumbel_softmax(logits_soft, hard=False)
    torch.random.set_rng_state(seed)
    y_hard = redge_mini.gumbel_softmax(logits_hard, hard=True)
    y_soft.sum().backward()
    y_hard.sum().backward()
    # 2eps = 1x addition + 1x subtraction.
    tol = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(logits_soft.grad, logits_hard.grad, rtol=0, atol=tol)
    # addition: the sum of a softmax is constant, so the check above compares zeros with zeros;
    # repeat it with weights, where the gradient is not zero
    weights = torch.randn(10, 10, dtype=dtype, device=device)
    grads = []
    for hard in (False, True):
        logits = torch.zeros(10, 10, dtype=dtype, device=device, requires_grad=True)
        torch.random.set_rng_state(seed)
        (redge_mini.gumbel_softmax(logits, hard=hard) * weights).sum().backward()
        grads.append(logits.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=8 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("device, dtype", CASES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dim", [0, -1, 1])
def test_same_output_and_gradient_as_torch_for_the_same_rng_state(device, dtype, hard, dim):
    # addition: torch draws -log(Exp(1)) noise from the global RNG, as we do with generator=None
    logits = torch.randn(4, 6, 3, dtype=dtype, device=device)
    weights = torch.randn(4, 6, 3, dtype=dtype, device=device)
    outputs = []
    for fn in (F.gumbel_softmax, redge_mini.gumbel_softmax):
        theta = logits.clone().requires_grad_(True)
        torch.manual_seed(3)
        y = fn(theta, 0.7, hard, dim=dim)
        (grad,) = torch.autograd.grad((y * weights).sum(), theta)
        outputs.append((y.detach(), grad))
    (y_torch, g_torch), (y_ours, g_ours) = outputs
    tol = 10 * torch.finfo(dtype).eps
    torch.testing.assert_close(y_ours, y_torch, rtol=tol, atol=tol)
    torch.testing.assert_close(g_ours, g_torch, rtol=100 * tol, atol=100 * tol)
