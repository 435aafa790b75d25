"""The fused sampler's boundary, its torch operator and its backends compared on random inputs.

* The hard boundary: inputs that killed the process (K = 0) raise ValueErrors naming the argument
  before any kernel runs; out-of-range uniforms cannot index out of bounds; non-finite rows and
  all-masked slices (validation off) give a NaN soft and a NaN hard row on every backend.
* The operator ``torch.ops.redge_mini.sample``: ``torch.compile(fullgraph=True)`` keeps it with
  static and dynamic shapes (two batch sizes, and (2048, 512)), the compiled values and gradients
  equal eager ones, validation on under compile says to call ``set_validate_args(False)``;
  ``torch.vmap`` and the operator's vmap rule agree with a loop.
* Property-based (hypothesis, derandomized): the C++ kernel against the PyTorch reference on
  random shapes, masks, knobs, K = 1 and 2, long grids, 1 and 2 threads; float64 to 1e-9, and
  float32 as accurate as PyTorch's float32 (about 1e-6 relative where well conditioned).
"""

import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redge_mini
from redge_mini import _cpp_sampler, _op
from redge_mini.diffusion import fused_sample

settings.register_profile(
    "redge_ci", derandomize=True, deadline=None, max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("redge_ci")

HAVE_CPP = (shutil.which("c++") or shutil.which("g++")) is not None and _cpp_sampler.available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="the C++ sampler is not built")


@pytest.fixture
def validation_off():
    redge_mini.set_validate_args(False)
    yield
    redge_mini.set_validate_args(True)


@pytest.fixture(params=["cpp", "torch"])
def path(request, monkeypatch):
    if request.param == "cpp" and not HAVE_CPP:
        pytest.skip("the C++ sampler is not built")
    monkeypatch.setenv(_cpp_sampler.ENV_SWITCH, "1" if request.param == "cpp" else "0")
    return request.param


# ----------------------------------------------------------------------------- the boundary


def test_no_category_raises_before_any_kernel(path):
    # this call was a segmentation fault in the C++ kernel (drawn index -1, grain(0))
    with pytest.raises(ValueError, match="logits must have at least one category"):
        fused_sample(torch.zeros(3, 0), torch.zeros(3, 0), torch.zeros(3, 1), n_steps=5, t_1=0.5)


@pytest.mark.parametrize(
    ("noise", "uniform", "match"),
    [
        (torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 1), "noise must have the dtype"),
        (torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.float64), "uniform must have the dtype"),
        (torch.zeros(3, 5), torch.zeros(3, 1), "noise must have the shape"),
        (torch.zeros(3, 4), torch.zeros(3), "uniform must have shape"),
        (torch.zeros(3, 4), torch.full((3, 1), 1.0), r"uniform must hold values in \[0, 1\)"),
        (torch.zeros(3, 4), torch.full((3, 1), -0.5), r"uniform must hold values in \[0, 1\)"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(path, noise, uniform, match):
    with pytest.raises(ValueError, match=match):
        fused_sample(torch.zeros(3, 4), noise, uniform, n_steps=5, t_1=0.5)


def test_integer_logits_raise_a_type_error():
    with pytest.raises(TypeError, match="logits must have a floating dtype"):
        fused_sample(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4), torch.zeros(3, 1),
                     n_steps=5, t_1=0.5)


@pytest.mark.parametrize("u", [1.0, 1.5, -0.5])
def test_out_of_range_uniforms_stay_in_bounds_with_validation_off(path, validation_off, u):
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, float("-inf"), 0.0]])
    uniform = torch.full((2, 1), u)
    hard, _ = fused_sample(logits, torch.randn(2, 3), uniform, n_steps=5, t_1=0.5)
    assert torch.equal(hard.sum(-1), torch.ones(2))  # a one-hot row, nothing out of bounds
    assert hard[1, 1] == 0  # never the masked category


def test_a_nan_uniform_gives_a_nan_hard_row(path, validation_off):
    uniform = torch.tensor([[float("nan")], [0.3]])
    hard, soft = fused_sample(torch.zeros(2, 3), torch.randn(2, 3), uniform, n_steps=5, t_1=0.5)
    assert hard[0].isnan().all() and hard[1].sum() == 1 and torch.isfinite(soft).all()


@pytest.mark.parametrize("variant", ["plain", "cov", "reindge"])
def test_non_finite_rows_give_nan_soft_and_hard_rows_on_every_backend(
    path, validation_off, variant
):
    inf, nan = float("inf"), float("nan")
    logits = torch.tensor([[0.0, nan, 1.0], [-inf, -inf, -inf], [0.0, inf, 1.0], [0.0, 1.0, 2.0]],
                          requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    noise, uniform = torch.randn(4, 3, generator=gen), torch.rand(4, 1, generator=gen)
    hard, soft = fused_sample(logits, noise, uniform, n_steps=5, t_1=0.5, variant=variant)
    assert hard[:3].isnan().all() and soft[:3].isnan().all()
    assert torch.isfinite(soft[3]).all() and hard[3].sum() == 1
    (hard.nansum() + soft.nansum()).backward()  # the backward pass runs, too


@needs_cpp
def test_non_finite_rows_agree_between_backends(validation_off, monkeypatch):
    logits = torch.tensor([[0.0, float("nan"), 1.0], [float("-inf")] * 3, [0.5, 1.0, -1.0]])
    noise, uniform = torch.randn(3, 3), torch.rand(3, 1)
    out = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(_cpp_sampler.ENV_SWITCH, switch)
        out[switch] = fused_sample(logits, noise, uniform, n_steps=6, t_1=0.4)
    for a, b in zip(out["1"], out["0"], strict=True):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), rtol=1e-5, atol=1e-6)


@needs_cpp
def test_reindge_backward_receives_the_drawn_categories():
    """The C++ kernel's ReinDGE step uses the categories of the forward pass: a uniform changed
    in place after the forward pass no longer changes the gradient."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    uniform = torch.rand(16, 1, generator=gen, dtype=torch.float64)
    weights = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    grads = []
    for tamper in (False, True):
        u = uniform.clone()
        hard, _ = fused_sample(logits, noise, u, n_steps=5, t_1=0.5, variant="reindge")
        if tamper:
            u.copy_(1.0 - uniform)  # would draw other categories
        (grad,) = torch.autograd.grad((hard * weights).sum(), logits)
        grads.append(grad)
    assert torch.equal(grads[0], grads[1])


# ------------------------------------------------------------------------------ the operator


@pytest.mark.parametrize("variant", ["plain", "cov", "reindge"])
def test_operator_equals_the_eager_sampler(path, variant):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    uniform = torch.rand(6, 1, generator=gen, dtype=torch.float64)
    weights = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    if path == "cpp":  # (fused_sample itself calls the operator there: the autograd Function)
        hard, soft = _op._FusedSampler.apply(logits, noise, uniform, 5, 0.5, "cpp", variant)
    else:
        hard, soft = fused_sample(logits, noise, uniform, n_steps=5, t_1=0.5, variant=variant)
    (grad,) = torch.autograd.grad((hard * weights).sum(), logits)
    op_hard, op_soft, drawn = torch.ops.redge_mini.sample(logits, noise, uniform, 5, 0.5, variant)
    (op_grad,) = torch.autograd.grad((op_hard * weights).sum(), logits)
    assert torch.equal(op_hard, hard.detach())
    assert torch.equal(drawn, hard.argmax(-1))
    torch.testing.assert_close(op_soft, soft.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(op_grad, grad, rtol=1e-10, atol=1e-12)


def test_operator_passes_opcheck():
    gen = torch.Generator().manual_seed(2)
    args = (torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True),
            torch.randn(4, 5, generator=gen, dtype=torch.float64),
            torch.rand(4, 1, generator=gen, dtype=torch.float64), 5, 0.5, "plain")
    torch.library.opcheck(torch.ops.redge_mini.sample.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_operator_vmap_rule_equals_a_loop():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 4, 5, generator=gen)
    noise = torch.randn(3, 4, 5, generator=gen)
    uniform = torch.rand(4, 1, generator=gen)  # shared by the batch: in_dim None
    hard, soft, drawn = torch.vmap(
        lambda lg, nz: torch.ops.redge_mini.sample(lg, nz, uniform, 5, 0.5, "plain")
    )(logits, noise)
    for b in range(3):
        h, s, d = torch.ops.redge_mini.sample(logits[b], noise[b], uniform, 5, 0.5, "plain")
        assert torch.equal(hard[b], h) and torch.equal(soft[b], s) and torch.equal(drawn[b], d)


def _step(name):
    function = getattr(redge_mini, name)

    def step(logits, weights):
        y = function(logits, 5, 0.5, hard=True)  # (a Generator cannot enter a compiled graph)
        return y, (y * weights).sum()

    return step


@pytest.mark.parametrize("name", ["redge", "redge_cov", "reindge"])
def test_compile_fullgraph_dynamic_shapes_equal_eager(validation_off, name):
    step = _step(name)
    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for shape in ((4, 6), (9, 6), (2048, 512)):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=gen, requires_grad=True)
        weights = torch.randn(shape, generator=gen)
        torch.manual_seed(1)
        y, loss = step(logits, weights)
        (grad,) = torch.autograd.grad(loss, logits)
        torch.manual_seed(1)
        y_c, loss_c = compiled(logits, weights)
        (grad_c,) = torch.autograd.grad(loss_c, logits)
        assert torch.equal(y_c, y)
        torch.testing.assert_close(grad_c, grad, rtol=1e-6, atol=1e-7)


def test_compile_keeps_the_operator_in_one_graph(validation_off):
    explained = torch._dynamo.explain(_step("redge"))(
        torch.randn(8, 5, requires_grad=True), torch.randn(8, 5)
    )
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    code = "\n".join(g.code for g in explained.graphs)
    assert "redge_mini.sample" in code


@needs_cpp
@pytest.mark.parametrize("name", ["redge", "reindge"])
def test_a_compiled_step_runs_no_python_of_the_operator(validation_off, name):
    """Inside a compiled graph the operators go from the dispatcher to the extension's C++
    kernels: no Python frame of redge_mini or torch.library in a compiled forward and backward
    (what made a compiled step cost more than the eager one, issue 22)."""
    from test_cpp_sampler import _python_calls_during

    compiled = torch.compile(_step(name), fullgraph=True)
    logits, weights = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5)
    for _ in range(2):  # compiles, and loads the extension
        torch.autograd.grad(compiled(logits, weights)[1], logits)
    grads = []
    seen = _python_calls_during(
        lambda: grads.extend(torch.autograd.grad(compiled(logits, weights)[1], logits)))
    assert seen == [] and torch.isfinite(grads[0]).all()


def test_compile_with_validation_on_says_what_to_do():
    compiled = torch.compile(_step("redge"), fullgraph=True)
    with pytest.raises(Exception, match=r"set_validate_args\(False\)"):
        compiled(torch.randn(3, 4), torch.randn(3, 4))


# ----------------------------------------------------------------- backends on random inputs


@st.composite
def problems(draw):
    rows = draw(st.integers(1, 12))
    k = draw(st.integers(1, 40))
    n_steps = draw(st.sampled_from([2, 3, 5, 9, 30, 100]))
    t_1 = draw(st.sampled_from([0.05, 0.3, 0.5, 0.9, 1.0]))
    variant = draw(st.sampled_from(["plain", "cov", "reindge"]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    masked = draw(st.booleans()) and k > 1
    threads = draw(st.sampled_from([1, 2]))
    return rows, k, n_steps, t_1, variant, seed, scale, masked, threads


def _problem(rows, k, seed, scale, masked, dtype):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(rows, k, generator=gen, dtype=torch.float64)
    if masked:
        mask = torch.rand(rows, k, generator=gen) < 0.4
        mask[:, torch.randint(k, (1,), generator=gen)] = False  # one category stays
        logits = logits.masked_fill(mask, float("-inf"))
    noise = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    uniform = torch.rand(rows, 1, generator=gen, dtype=torch.float64)
    weights = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    return [t.to(dtype) for t in (logits, noise, uniform, weights)]


def _both_paths(problem, dtype, inputs=None, switches=("1", "0")):
    rows, k, n_steps, t_1, variant, seed, scale, masked, threads = problem
    if inputs is None:
        inputs = _problem(rows, k, seed, scale, masked, dtype)
    logits, noise, uniform, weights = inputs
    out = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for switch in switches:  # "1": the C++ kernel, "0": the PyTorch path
            os.environ[_cpp_sampler.ENV_SWITCH] = switch
            leaves = [logits.clone().requires_grad_(), noise.clone().requires_grad_()]
            hard, soft = fused_sample(*leaves, uniform, n_steps=n_steps, t_1=t_1,
                                      variant=variant)
            grads = torch.autograd.grad((soft * weights).sum(), leaves)
            out[switch] = (hard.detach(), soft.detach(), *grads)
    finally:
        os.environ.pop(_cpp_sampler.ENV_SWITCH)
        torch.set_num_threads(previous)
    return out.get("1"), out.get("0"), uniform


def _assert_close_to_reference(cpp, ref, uniform, rtol, atol):
    hard, soft, g_logits, g_noise = cpp
    r_hard, r_soft, r_logits, r_noise = ref
    torch.testing.assert_close(soft, r_soft, rtol=rtol, atol=atol)
    torch.testing.assert_close(g_logits, r_logits, rtol=rtol, atol=atol * 10)
    torch.testing.assert_close(g_noise, r_noise, rtol=rtol, atol=atol * 10)
    assert torch.equal(hard.sum(-1), torch.ones_like(hard[..., 0]))
    # the same draw except where the level falls within rounding of a cumulative sum
    cdf = r_soft.cumsum(-1)
    level = (1 - uniform) * cdf[..., -1:]
    near = ((cdf - level).abs() <= 10 * atol).any(-1)
    assert torch.equal(hard[~near], r_hard[~near])


@needs_cpp
@given(problems())
def test_cpp_equals_the_reference_in_float64(problem):
    cpp, ref, uniform = _both_paths(problem, torch.float64)
    _assert_close_to_reference(cpp, ref, uniform, rtol=1e-9, atol=1e-11)


def _nudged(inputs, seed):
    """The problem with its finite logits and noise moved by one float32 step, up or down at
    random: as near to the original as float32 allows, rounded along other paths."""
    gen = torch.Generator().manual_seed(seed)
    out = list(inputs)
    for i in (0, 1):
        t = inputs[i]
        up = torch.rand(t.shape, generator=gen) < 0.5
        target = torch.where(up, float("inf"), -float("inf")).to(t.dtype)
        out[i] = torch.where(torch.isfinite(t), torch.nextafter(t, target), t)
    return out


def _float32_errors(problem, inputs, switches=("1", "0")):
    """The float32 results of the paths in ``switches`` on ``inputs`` and their errors against
    the PyTorch path in float64 on the same (float32) numbers: ``(cpp, torch, exact, cpp errors,
    torch errors)``, one error per output (soft sample, logits' gradient, noise's gradient);
    None for a path not run."""
    cpp, ref, _ = _both_paths(problem, torch.float32, inputs, switches)
    _, exact, _ = _both_paths(problem, torch.float64, [t.double() for t in inputs], ("0",))

    def errors(result):
        if result is None:
            return None
        pairs = zip(result[1:], exact[1:], strict=True)
        return [(a.double() - b).abs().max().item() for a, b in pairs]

    return cpp, ref, exact, errors(cpp), errors(ref)


@needs_cpp
@given(problems())
def test_cpp_float32_is_as_accurate_as_torch_float32(problem):
    """Both float32 paths against float64 on the same (float32-rounded) inputs. Where the sampler
    is well conditioned (t_1 >= 0.5 for ReDGE and ReinDGE, >= 0.7 for ReDGE-cov) the two paths
    agree to 1e-6 relative (measured: 3.6e-7 and 8.1e-7 at most on a 1,134-problem grid). At
    small t_1 the coefficients c_j = alpha_j / sigma_j^2 (380 at t_1 = 0.05) amplify every
    rounding, in both paths alike (PyTorch's own float32 error reaches 5e-4 there): the C++
    kernel's error is then at most 4 times the PyTorch path's float32 error on this problem or
    on three neighbours one float32 step away (the scale of float32 rounding here, which a lucky
    problem can hide), plus 2e-6 relative. Measured on a 2,520-problem grid with masks: at most
    1.9 times."""
    rows, k, n_steps, t_1, variant, seed, scale, masked, threads = problem
    inputs = _problem(rows, k, seed, scale, masked, torch.float32)
    cpp, ref, exact, cpp_errors, ref_errors = _float32_errors(problem, inputs)
    float32_scale = list(ref_errors)
    for neighbour in range(3):
        *_, errors = _float32_errors(problem, _nudged(inputs, seed + neighbour), ("0",))
        float32_scale = [max(a, b) for a, b in zip(float32_scale, errors, strict=True)]
    conditioned = t_1 >= (0.7 if variant == "cov" else 0.5)
    for ours, theirs, truth, error, bound in zip(cpp[1:], ref[1:], exact[1:], cpp_errors,
                                                 float32_scale, strict=True):
        size = max(truth.abs().max().item(), 1.0)
        assert error <= 4 * bound + 2e-6 * size
        if conditioned:
            assert (ours - theirs).abs().max().item() <= 1e-6 * size


def test_kernel_choice():
    assert _op.kernel(torch.zeros(2, 3, dtype=torch.float16), "plain") == "torch"
    expected = "cpp" if HAVE_CPP else "torch"
    assert _op.kernel(torch.zeros(2, 3), "plain") == expected
