"""The C++ fused sampler (redge_mini._cpp_sampler) against the PyTorch path and finite differences.

The references, in float64: for ReDGE the PyTorch path of
:func:`redge_mini.diffusion.fused_sample` (checked against autograd through ``ddim_sample`` and
``gradcheck`` in ``test_diffusion.py``), for ReDGE-cov autograd through ``ddim_sample``. For the
same noise and uniforms the C++ path must give the same soft sample and gradients (to float32 or
float64 rounding), the same hard sample except where a uniform falls within rounding of a
cumulative sum, and pass ``gradcheck`` itself (both variants). Also: masks and extreme logits,
thread-count invariance, the switch that turns it off and the fallback when it cannot be built.
"""

import shutil
import warnings

import pytest
import torch

from redge_mini import _cpp_sampler, diffusion, estimators
from redge_mini.diffusion import fused_sample

F64, F32 = torch.float64, torch.float32


@pytest.fixture(scope="module", autouse=True)
def built():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the PyTorch path is used (checked in test_diffusion.py)")
    # with a compiler (CI has g++ and ninja) a failed build is a failure, not a skip
    assert _cpp_sampler.available(), _cpp_sampler.failure()


def _inputs(shape, seed, dtype=F64, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(shape, generator=gen, dtype=dtype)
    noise = torch.randn(shape, generator=gen, dtype=dtype)
    uniform = torch.rand(shape[:-1] + (1,), generator=gen, dtype=dtype)
    weights = torch.randn(shape, generator=gen, dtype=dtype)
    return logits, noise, uniform, weights


def _run(backend, logits, noise, uniform, weights, n_steps, t_1=0.4, variant="plain"):
    """Samples and gradients (logits, noise) of <weights, hard> through one backend; ReDGE-cov's
    reference (``backend="torch"``) is autograd through ``ddim_sample``."""
    leaves = [t.clone().requires_grad_(True) for t in (logits, noise)]
    if variant == "cov" and backend == "torch":
        soft = diffusion.ddim_sample(*leaves, n_steps=n_steps, t_1=t_1, variant="cov").soft
        drawn = diffusion.inverse_cdf_sample(soft.detach(), uniform)
        hard = (drawn - soft).detach() + soft
    else:
        extra = (variant,) if variant != "plain" else ()
        hard, soft = diffusion._FusedSampler.apply(*leaves, uniform, n_steps, t_1, backend, *extra)
    grads = torch.autograd.grad((hard * weights).sum(), leaves)
    return hard.detach(), soft.detach(), *grads


def _assert_same_draws(hard, reference_hard, reference_soft, uniform, atol):
    """Equal one-hot draws, except rows whose level (1 - u) * total lies within ``atol`` of a
    cumulative sum of the reference soft sample (there rounding may pick either side)."""
    differ = (hard != reference_hard).any(-1)
    cdf = reference_soft.cumsum(-1)
    level = (1 - uniform) * cdf[..., -1:]
    ambiguous = ((cdf - level).abs() <= atol).any(-1)
    assert not (differ & ~ambiguous).any()
    assert differ.float().mean() <= 0.01
    torch.testing.assert_close(hard.sum(-1), torch.ones_like(hard.sum(-1)))


SHAPES = [(1, 2), (3, 2), (37, 9), (64, 100), (2, 3, 5), (3, 16384)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("n_steps", [2, 3, 5, 9])
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("variant", ["plain", "cov"])
def test_cpp_path_equals_the_reference(shape, n_steps, dtype, variant):
    inputs = _inputs(shape, seed=7 + n_steps, dtype=dtype)
    inputs[0].view(-1)[0] = float("-inf")  # a masked category in the first row
    ours = _run("cpp", *inputs, n_steps, variant=variant)
    # the reference in float64 (the PyTorch path; ReDGE-cov: autograd through ddim_sample)
    ref = _run("torch", *(t.double() for t in inputs), n_steps, variant=variant)
    for mine, other in zip(ours[1:], ref[1:], strict=True):  # soft, d/dlogits, d/dnoise
        if dtype == F64:
            torch.testing.assert_close(mine, other, rtol=1e-10, atol=1e-12)
        else:  # float32 rounding, amplified along the trajectory (by up to 1 / v = 10 for cov)
            scale = max(1.0, other.abs().max().item())
            torch.testing.assert_close(mine.double(), other, rtol=1e-3, atol=2e-4 * scale)
    _assert_same_draws(ours[0].double(), ref[0], ref[1], inputs[2].double(),
                       atol=1e-12 if dtype == F64 else 1e-5)
    assert ours[2].reshape(-1)[0] == 0 and ours[0].reshape(-1)[0] == 0


def _reindge(monkeypatch, cpp, logits, weights_hard, weights_soft, create_graph=False):
    """ReinDGE's samples and the logits' gradient of <w_h, hard> + <w_s, soft>, through the
    C++ kernel (``cpp``) or the PyTorch path's zero-valued surrogate."""
    monkeypatch.setenv("REDGE_MINI_CPP", "1" if cpp else "0")
    leaf = logits.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    hard, soft = estimators.sample("reindge", leaf, n_steps=5, t_1=0.4, generator=gen)
    loss = (hard * weights_hard).sum() + (soft * weights_soft).sum()
    (grad,) = torch.autograd.grad(loss, leaf, create_graph=create_graph)
    return hard.detach(), soft.detach(), grad


@pytest.mark.parametrize("shape", [(6, 4), (37, 9), (3, 2, 5), (2, 16384)], ids=str)
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("parts", ["hard", "soft", "both"])
def test_reindge_kernel_equals_the_surrogate(monkeypatch, shape, dtype, parts):
    logits, _, _, weights = _inputs(shape, seed=8, dtype=dtype)
    logits.view(-1)[0] = float("-inf")
    w_hard = weights if parts != "soft" else torch.zeros_like(weights)
    w_soft = weights.flip(-1) if parts != "hard" else torch.zeros_like(weights)
    ours = _reindge(monkeypatch, True, logits, w_hard, w_soft)
    ref = _reindge(monkeypatch, False, logits, w_hard, w_soft)
    assert torch.equal(ours[0], ref[0])  # the same draw
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], **tol)
    torch.testing.assert_close(ours[2], ref[2], **tol)
    assert ours[2].view(-1)[0] == 0  # the masked category


def test_reindge_second_order_equals_the_surrogate(monkeypatch):
    logits, _, _, weights = _inputs((5, 4), seed=9)
    results = []
    for cpp in (True, False):
        leaf = logits.clone().requires_grad_(True)
        _, _, grad = _reindge(monkeypatch, cpp, leaf, weights, weights.flip(-1), True)
        (hvp,) = torch.autograd.grad((grad**2).sum(), leaf)
        results.append((grad.detach(), hvp))
    for mine, ref in zip(*results, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-12)
    assert results[0][1].abs().max() > 1e-3  # a second derivative that is not trivially zero


@pytest.mark.parametrize("variant", ["plain", "cov"])
@pytest.mark.parametrize("shape,n_steps", [((5, 4), 5), ((11, 3), 2), ((2, 2, 6), 7)])
def test_cpp_path_passes_gradcheck(shape, n_steps, variant):
    logits, noise, uniform, _ = _inputs(shape, seed=1, scale=1.0)
    logits.requires_grad_(True)
    noise.requires_grad_(True)
    extra = (variant,) if variant == "cov" else ()

    def soft(logits, noise):
        return diffusion._FusedSampler.apply(logits, noise, uniform, n_steps, 0.4, "cpp",
                                             *extra)[1]

    assert torch.autograd.gradcheck(soft, (logits, noise), atol=1e-8, rtol=1e-6)


def test_public_calls_take_the_cpp_path_on_cpu():
    for dtype in (F32, F64):
        assert diffusion._backend(torch.zeros(2, 3, dtype=dtype)) == "cpp"
    # float16 and bfloat16 reach the sampler in float32 through the estimators
    assert diffusion._backend(torch.zeros(2, 3, dtype=torch.float16)) == "torch"
    for fn in (estimators.redge, estimators.redge_cov, estimators.reindge):
        logits = torch.randn(4, 6, requires_grad=True)
        y = fn(logits, 5, 0.5, hard=True, generator=torch.Generator().manual_seed(0))
        # the C++ path: the operator, one node that keeps logits, noise, soft and the drawn
        # categories only (no trajectory)
        assert type(y.grad_fn).__name__ == "_SampleFunctionBackward"
        assert len(y.grad_fn.saved_tensors) == 4


def test_switch_off_uses_the_torch_path(monkeypatch):
    monkeypatch.setenv("REDGE_MINI_CPP", "0")
    assert not _cpp_sampler.available()
    assert diffusion._backend(torch.zeros(2, 3)) == "torch"
    monkeypatch.setenv("REDGE_MINI_CPP", "1")
    assert diffusion._backend(torch.zeros(2, 3)) == "cpp"


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken():
        raise RuntimeError("Error building extension\nc++: not found")

    monkeypatch.setattr(_cpp_sampler, "_module", None)
    monkeypatch.setattr(_cpp_sampler, "_failure", None)
    monkeypatch.setattr(_cpp_sampler, "_build", broken)
    logits, noise, uniform, weights = _inputs((4, 5), seed=2)
    with pytest.warns(RuntimeWarning, match="could not be built.*c\\+\\+: not found"):
        assert diffusion._backend(logits) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        hard, soft = fused_sample(logits, noise, uniform, n_steps=5, t_1=0.5)
    assert _cpp_sampler.failure().startswith("RuntimeError")
    ref = _run("torch", logits, noise, uniform, weights, 5, 0.5)
    torch.testing.assert_close(soft, ref[1], rtol=0, atol=0)


def test_masks_and_extreme_logits_stay_finite():
    logits, noise, uniform, weights = _inputs((40, 7), seed=3, dtype=F32)
    logits[:, :3] = float("-inf")  # three categories masked in every row
    logits[0, 3:] = torch.tensor([1e4, -1e4, 1e4, 0.0])
    logits[1, 3:] = torch.tensor([-1e4, -1e4, -1e4, 1e4])
    hard, soft, g_logits, g_noise = _run("cpp", logits, noise, uniform, weights, 5, 0.5)
    for t in (hard, soft, g_logits, g_noise):
        assert torch.isfinite(t).all()
    assert (hard[:, :3] == 0).all() and (soft[:, :3] == 0).all()
    assert (g_logits[:, :3] == 0).all()
    assert hard[1, 6] == 1  # a logit 2e4 above the others is drawn surely


def test_results_do_not_depend_on_the_thread_count():
    # large enough for several parallel tasks (rows of 300 categories, ~110 rows per task)
    logits, noise, uniform, weights = _inputs((700, 300), seed=4, dtype=F32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("cpp", logits, noise, uniform, weights, 5)
        torch.set_num_threads(2)
        two = _run("cpp", logits, noise, uniform, weights, 5)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_empty_and_non_contiguous_inputs():
    hard, soft, drawn = _cpp_sampler.sample(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0),
                                            5, 0.5)
    assert hard.shape == soft.shape == (0, 5) and drawn.shape == (0,)
    logits, noise, uniform, weights = _inputs((6, 4), seed=5)
    t = logits.t().contiguous().t()  # same values, column-major
    assert not t.is_contiguous()
    ours = _run("cpp", t, noise, uniform, weights, 4)
    ref = _run("torch", logits, noise, uniform, weights, 4)
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-10, atol=1e-12)


def test_the_extension_names_a_wrong_argument():
    logits = torch.zeros(3, 4)
    with pytest.raises(RuntimeError, match="noise must have the dtype of logits"):
        _cpp_sampler.sample(logits, torch.zeros(3, 4, dtype=F64), torch.zeros(3), 5, 0.5)
    with pytest.raises(RuntimeError, match="uniform must hold one number per row"):
        _cpp_sampler.sample(logits, torch.zeros(3, 4), torch.zeros(2), 5, 0.5)
    with pytest.raises(RuntimeError, match="grad must have"):
        _cpp_sampler.adjoint(logits, torch.zeros(3, 4), torch.zeros(3, 5), 5, 0.5, True)


def test_the_extension_refuses_zero_categories():
    # was a segmentation fault (drawn index -1, grain(0) divided by zero)
    for module_call in (
        lambda: _cpp_sampler.sample(torch.zeros(3, 0), torch.zeros(3, 0), torch.zeros(3), 5, 0.5),
        lambda: _cpp_sampler.adjoint(torch.zeros(3, 0), torch.zeros(3, 0), torch.zeros(3, 0), 5,
                                     0.5, True),
    ):
        with pytest.raises(RuntimeError, match="at least one category"):
            module_call()


@pytest.mark.parametrize("variant", ["plain", "cov", "reindge"])
@pytest.mark.parametrize("n_steps", [3, 12, 31])
def test_checkpointed_adjoint_gives_the_same_bits(variant, n_steps):
    """Above STORE_BYTES the adjoint recomputes segments from checkpoints: the same operations
    on the same numbers, so bit-identical gradients (threshold 0 forces it at any size)."""
    logits, noise, uniform, weights = _inputs((13, 7), seed=9, dtype=F32)
    logits[2, 3] = float("-inf")
    grads = []
    previous = _cpp_sampler.set_store_bytes(0)
    try:
        for store in (0, 1 << 40):
            _cpp_sampler.set_store_bytes(store)
            grads.append(_run("cpp", logits, noise, uniform, weights, n_steps, variant=variant)[2:])
    finally:
        _cpp_sampler.set_store_bytes(previous)
    for checkpointed, stored in zip(*grads, strict=True):
        assert torch.equal(checkpointed, stored)


# ---- the operators' C++ kernels (registered with the dispatcher by the extension) ----


def test_the_operators_kernels_read_the_schedules_step_table():
    """The CPU kernels take their coefficients from schedule.step_tensor (fetched once per
    (n_steps, t_1)), and check n_steps and t_1 themselves."""
    from redge_mini.schedule import step_tensor

    module = _cpp_sampler.load()
    for n_steps, t_1 in [(2, 1.0), (5, 0.5), (257, 0.3), (1000, 1e-6)]:
        assert torch.equal(module.step_tensor(n_steps, t_1), step_tensor(n_steps, t_1))
    for n_steps, t_1, match in [(1, 0.5, "n_steps"), (5, 0.0, "t_1"), (5, float("nan"), "t_1")]:
        with pytest.raises(ValueError, match=match):
            module.step_tensor(n_steps, t_1)
    # the operator with a fresh (n_steps, t_1) equals the extension's Python entry point
    logits, noise, uniform, _ = _inputs((4, 6), seed=3, dtype=F32)
    hard, soft, _ = torch.ops.redge_mini.sample(logits, noise, uniform, 7, 0.4321, "plain")
    ref = _cpp_sampler.sample(logits, noise, uniform.reshape(-1), 7, 0.4321)
    assert torch.equal(hard, ref[0]) and torch.equal(soft, ref[1])


def _python_calls_during(fn):
    """Names of the Python functions of redge_mini and torch.library that run inside ``fn()``."""
    import sys

    seen = []

    def profile(frame, event, arg):
        name = frame.f_code.co_filename
        if event == "call" and ("redge_mini" in name or "_library" in name):
            seen.append(f"{name}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("dtype", [F32, F64])
def test_the_operators_run_in_cpp_without_python_frames(dtype):
    """What a torch.compile graph calls: the operators with no gradient asked for. The
    dispatcher goes to the extension's AutogradCPU and CPU kernels, with no Python kernel."""
    logits, noise, uniform, weights = _inputs((6, 2, 5), seed=9, dtype=dtype)
    leaf = logits.clone().requires_grad_(True)  # grad mode off below: no gradient asked for
    sample, adjoint = torch.ops.redge_mini.sample.default, torch.ops.redge_mini.adjoint.default
    sample(logits, noise, uniform, 5, 0.5, "reindge")  # (registers the kernels if not yet)
    out = {}
    with torch.no_grad():
        assert _python_calls_during(
            lambda: out.update(s=sample(leaf, noise, uniform, 5, 0.5, "reindge"))) == []
        hard, soft, drawn = out["s"]
        assert _python_calls_during(lambda: out.update(a=adjoint(
            logits, noise, weights, weights, drawn, 5, 0.5, "reindge", True))) == []
    # the values of the extension's Python entry points
    ref = _cpp_sampler.sample(logits.reshape(-1, 5), noise.reshape(-1, 5), uniform.reshape(-1),
                              5, 0.5)
    assert torch.equal(hard, ref[0].view(6, 2, 5)) and torch.equal(soft, ref[1].view(6, 2, 5))
    assert torch.equal(drawn, ref[2].view(6, 2))
    grads = _cpp_sampler.adjoint(logits.reshape(-1, 5), noise.reshape(-1, 5),
                                 weights.reshape(-1, 5), 5, 0.5, True,
                                 grad_hard=weights.reshape(-1, 5), drawn=drawn)
    assert torch.equal(out["a"][0], grads[0].view(6, 2, 5))
    assert torch.equal(out["a"][1], grads[1].view(6, 2, 5))


def test_the_operators_cpu_kernels_hand_back_what_they_do_not_run(monkeypatch):
    """REDGE_MINI_CPP=0 at the time of a call and float16 go to the Python kernel: the values
    of the PyTorch path, bit for bit; errors name the argument."""
    from redge_mini import _op

    logits, noise, uniform, weights = _inputs((5, 7), seed=10)
    sample = torch.ops.redge_mini.sample.default
    sample(logits, noise, uniform, 5, 0.5, "plain")  # (registers the kernels if not yet)
    monkeypatch.setenv("REDGE_MINI_CPP", "0")
    for variant in ("plain", "cov", "reindge"):
        ours = sample(logits, noise, uniform, 5, 0.5, variant)
        ref = _op._sample_kernel(logits, noise, uniform, 5, 0.5, variant)
        for a, b in zip(ours, ref, strict=True):
            assert torch.equal(a, b)
    monkeypatch.setenv("REDGE_MINI_CPP", "1")
    half = sample(logits.half(), noise.half(), uniform.half(), 5, 0.5, "plain")
    assert half[1].dtype == torch.float16 and torch.isfinite(half[1]).all()
    for args, match in [((1, 0.5, "plain"), "n_steps must lie in"),
                        ((5, 0.0, "plain"), "t_1 must lie in"),
                        ((5, float("nan"), "plain"), "t_1 must lie in"),
                        ((5, 0.5, "other"), "variant must be one of")]:
        with pytest.raises(ValueError, match=match):
            sample(logits, noise, uniform, *args)
    leaf = logits.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="adjoint is not differentiable"):
        torch.ops.redge_mini.adjoint(leaf, noise, weights, None, None, 5, 0.5, "plain", False)


@pytest.mark.parametrize("variant", ["plain", "cov", "reindge"])
def test_the_operators_gradient_on_cpu_is_the_fused_samplers(variant):
    """With a gradient asked for, the AutogradCPU kernel hands over to the operator's registered
    derivative: the same values as the eager autograd Function (and double backward works)."""
    logits, noise, uniform, weights = _inputs((4, 3, 6), seed=11)
    leaves = [t.clone().requires_grad_(True) for t in (logits, noise)]
    hard, soft, _ = torch.ops.redge_mini.sample(*leaves, uniform, 5, 0.5, variant)
    ours = torch.autograd.grad((hard * weights).sum() + (soft * weights.flip(-1)).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in (logits, noise)]
    extra = (variant,) if variant != "plain" else ()
    hard_r, soft_r = diffusion._FusedSampler.apply(*ref_leaves, uniform, 5, 0.5, "cpp", *extra)
    ref = torch.autograd.grad((hard_r * weights).sum() + (soft_r * weights.flip(-1)).sum(),
                              ref_leaves)
    assert torch.equal(hard, hard_r) and torch.equal(soft, soft_r)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    leaf = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda lg: torch.autograd.grad(
            (torch.ops.redge_mini.sample(lg, noise, uniform, 5, 0.5, variant)[1] * weights).sum(),
            lg, create_graph=True)[0],
        (leaf,))
