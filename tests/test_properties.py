"""Property-based tests of the public estimators (hypothesis, derandomised: the same examples on
every run).

For random shapes, dims, dtypes (float16, bfloat16, float32, float64), memory layouts (transposed,
strided, broadcast), ``-inf`` masks, logit scales, knobs (``n_steps`` up to 300) and 1 or 2
threads, every estimator must give finite outputs, a one-hot hard sample on the unmasked
categories, a soft sample on the simplex that is zero where masked, and finite gradients that are
zero where masked. For the ReDGE family the compiled C++ sampler must give what the PyTorch path
gives (``REDGE_MINI_CPP=0``) from the same generator: the same hard sample and the soft sample and
gradients within a tolerance set by the working dtype. Fewer than two categories is refused with a
ValueError naming ``logits``, never a crash.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redge_mini
from redge_mini import ESTIMATORS, _cpp_sampler

settings.register_profile(
    "redge_mini",
    derandomize=True,  # a fixed sequence of examples: CI runs the same cases every time
    database=None,  # nothing written to .hypothesis/
    deadline=None,  # the first call of a shape may build or warm a kernel
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("redge_mini")

NAMES = ["st", "gumbel", "reinmax", "redge", "redge_cov", "reindge"]
DIFFUSION = ["redge", "redge_cov", "reindge"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LAYOUTS = ["contiguous", "transposed", "strided", "broadcast"]


@contextlib.contextmanager
def threads(n: int):
    """``torch.set_num_threads(n)`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cpp_path(on: bool):
    """The compiled C++ sampler (``on``) or the PyTorch path, by the documented switch."""
    key = _cpp_sampler.ENV_SWITCH
    before = os.environ.get(key)
    os.environ[key] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key)
        else:
            os.environ[key] = before


@st.composite
def knobs_of(draw, name: str) -> dict:
    if name in ("gumbel", "reinmax"):
        low = 1.0 if name == "reinmax" else 0.05
        return {"tau": draw(st.sampled_from([low, 0.3 if low < 1 else 1.5, 1.0, 4.0]))}
    if name in DIFFUSION:
        n_steps = draw(st.one_of(st.integers(2, 12), st.sampled_from([50, 300])))
        t_1 = draw(st.sampled_from([1e-3, 0.05, 0.3, 0.5, 0.9, 1.0]))
        return {"n_steps": n_steps, "t_1": t_1}
    return {}


@st.composite
def problems(draw, names=NAMES, dtypes=DTYPES):
    """A random public call: estimator, knobs, logits (with their layout and mask), dim."""
    name = draw(st.sampled_from(names))
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim))
    dim = draw(st.integers(-ndim, ndim - 1))
    shape[dim] = draw(st.sampled_from([2, 3, 7, 33]))  # K = 2 and larger
    return {
        "name": name,
        "knobs": draw(knobs_of(name)),
        "shape": tuple(shape),
        "dim": dim,
        "dtype": draw(st.sampled_from(dtypes)),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "scale": draw(st.sampled_from([0.0, 1e-3, 1.0, 8.0, 300.0])),
        "mask": draw(st.sampled_from([0.0, 0.4, 0.9])),
        "seed": draw(st.integers(0, 2**16)),
        "threads": draw(st.sampled_from([1, 2])),
    }


def make_logits(p: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(leaf, logits, mask)``: ``logits`` is a view of the leaf in the requested layout (it may
    share memory between entries: ``broadcast``); ``mask`` marks the ``-inf`` entries, at least
    one category of every slice along ``dim`` kept."""
    shape, dim = p["shape"], p["dim"] % len(p["shape"])
    gen = torch.Generator().manual_seed(p["seed"])
    values = torch.randn(shape, generator=gen, dtype=torch.float64) * p["scale"]
    mask = torch.rand(shape, generator=gen) < p["mask"]
    keep = torch.randint(0, shape[dim], shape[:dim] + (1,) + shape[dim + 1:], generator=gen)
    mask.scatter_(dim, keep, False)
    layout = p["layout"]
    if layout == "broadcast":  # one row shared by every batch entry (stride 0)
        index = [slice(None)] * len(shape)
        for d in range(len(shape)):
            if d != dim:
                index[d] = slice(0, 1)
        values, mask = values[tuple(index)], mask[tuple(index)]
    values = values.masked_fill(mask, -torch.inf).to(p["dtype"])
    if layout == "transposed":
        leaf = values.mT.contiguous().requires_grad_() if len(shape) > 1 else \
            values.clone().requires_grad_()
        logits = leaf.mT if len(shape) > 1 else leaf
    elif layout == "strided":  # every other element of a twice longer last dimension
        wide = torch.stack([values, torch.full_like(values, 7.0)], -1).flatten(-2)
        leaf = wide.requires_grad_()
        logits = leaf[..., ::2]
    elif layout == "broadcast":
        leaf = values.clone().requires_grad_()
        logits = leaf.expand(shape)
        mask = mask.expand(shape)
    else:
        leaf = values.clone().requires_grad_()
        logits = leaf
    assert logits.shape == shape and torch.equal(logits.isneginf(), mask)
    return leaf, logits, mask


def run(p: dict, logits: torch.Tensor, leaf: torch.Tensor):
    """Both samples from one call, and the gradient in the leaf of a random linear loss."""
    gen = torch.Generator().manual_seed(p["seed"] + 1)
    out = redge_mini.sample(p["name"], logits, dim=p["dim"], generator=gen, **p["knobs"])
    weights = torch.randn((2, *logits.shape), generator=gen, dtype=torch.float64)
    loss = (out.hard.double() * weights[0]).sum() + (out.soft.double() * weights[1]).sum()
    (grad,) = torch.autograd.grad(loss, leaf)
    return out.hard.detach(), out.soft.detach(), grad


def simplex_tolerance(dtype: torch.dtype, k: int) -> float:
    # a sum of k values each rounded to the output dtype
    return k * {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-6,
                torch.float64: 1e-12}[dtype]


@settings(PROFILE, max_examples=140)
@given(problems())
def test_samples_and_gradients_are_well_formed(p):
    leaf, logits, mask = make_logits(p)
    with threads(p["threads"]):
        hard, soft, grad = run(p, logits, leaf)
    dim, k = p["dim"], p["shape"][p["dim"]]
    assert hard.dtype == soft.dtype == p["dtype"] and hard.shape == soft.shape == p["shape"]
    # the hard sample: one-hot along dim, never on a masked category
    assert torch.all((hard == 0) | (hard == 1)) and torch.all(hard.sum(dim) == 1)
    assert not torch.any(hard.bool() & mask)
    # the soft sample: on the simplex, zero where masked
    assert torch.isfinite(soft).all() and torch.all(soft >= 0)
    sums = soft.double().sum(dim)
    assert torch.all((sums - 1).abs() <= simplex_tolerance(p["dtype"], k)), sums
    assert torch.all(soft[mask] == 0)
    # the gradient: finite, and zero where masked
    assert torch.isfinite(grad).all()
    grad_view = grad.mT if p["layout"] == "transposed" and grad.dim() > 1 else grad
    if p["layout"] == "strided":
        assert torch.all(grad[..., 1::2] == 0)  # the skipped elements are not read
        grad_view = grad[..., ::2]
    if p["layout"] != "broadcast":  # (a broadcast leaf sums the gradients of its copies)
        assert torch.all(grad_view[mask] == 0)


# (rtol, atol) of the soft sample and the gradient's tolerance relative to its largest entry.
# float32 and float64 run in their own dtype; measured on these examples (since the C++ kernel
# carries the scaled state and adjoint of schedule.StepTable, as the PyTorch path does), the two
# differ by at most 0 (soft, absolute) and 4.5e-7 (gradient, relative to its largest entry) in
# float32, 3e-24 and 4e-13 in float64. Half precision runs in float32 and is
# compared after rounding back, so its tolerance is one step of the output dtype.
TOLERANCE = {torch.float64: (1e-12, 1e-14, 1e-12), torch.float32: (1e-5, 1e-6, 2e-5),
             torch.float16: (2e-3, 2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2, 1.6e-2)}


@pytest.mark.skipif(not _cpp_sampler.available(), reason="the C++ sampler is not built here")
@settings(PROFILE, max_examples=90)
@given(problems(names=DIFFUSION))
def test_the_cpp_sampler_gives_what_the_pytorch_path_gives(p):
    leaf, logits, _ = make_logits(p)
    results = {}
    for on in (True, False):
        with cpp_path(on), threads(p["threads"]):
            results[on] = run(p, logits, leaf)
    (hard, soft, grad), (hard_ref, soft_ref, grad_ref) = results[True], results[False]
    rtol, atol, grad_tol = TOLERANCE[p["dtype"]]
    torch.testing.assert_close(soft, soft_ref, rtol=rtol, atol=atol)
    assert torch.equal(hard, hard_ref)
    scale = grad_ref.abs().max().item() + 1.0
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=grad_tol * scale)


@settings(PROFILE, max_examples=30)
@given(st.sampled_from(NAMES), st.lists(st.integers(0, 4), min_size=1, max_size=3),
       st.data())
def test_fewer_than_two_categories_is_refused_by_name(name, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    shape[dim] = data.draw(st.sampled_from([0, 1]))  # K = 0 or 1
    logits = torch.zeros(shape, requires_grad=True)
    with pytest.raises(ValueError, match="logits must have at least 2 categories"):
        redge_mini.sample(name, logits, dim=dim)
    with pytest.raises(ValueError, match="logits must have at least 2 categories"):
        ESTIMATORS[name].fn(logits, hard=True, dim=dim)
