"""The public API: torch's conventions, one source of truth for the knobs, the surrogate-loss form,
the validation switch, torch.vmap / torch.compile / CUDA graphs, gradcheck, the README example."""

import inspect
import math
import re
from pathlib import Path

import pytest
import torch

import redge_mini
from redge_mini import ALL_ESTIMATORS, ESTIMATORS, make_estimator, make_loss, registry, sample
from redge_mini.estimators import KNOBS, reinmax_surrogate
from redge_mini.registry import check_knobs, knob_table
from redge_mini.score_function import reinforce_loss

ROOT = Path(__file__).resolve().parent.parent
NAMES = list(ESTIMATORS)
F64 = torch.float64


@pytest.fixture
def no_validation():
    redge_mini.set_validate_args(False)
    try:
        yield
    finally:
        redge_mini.set_validate_args(True)


# ------------------------------------------------------------------ torch's conventions


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_logits_knobs_hard_dim_then_keyword_generator(name):
    params = list(inspect.signature(ESTIMATORS[name].fn).parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    extra = ["eps"] if name == "gumbel" else []
    assert positional == ["logits", *KNOBS[name], "hard", *extra, "dim"]
    defaults = {p.name: p.default for p in params}
    assert defaults["hard"] is False and defaults["dim"] == -1  # as torch
    for key, knob in KNOBS[name].items():
        assert defaults[key] == knob.default  # the signature agrees with the registry
    keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert keyword_only == ["generator"]


def test_gumbel_softmax_has_torchs_parameters_in_torchs_order():
    ours = inspect.signature(redge_mini.gumbel_softmax).parameters
    theirs = inspect.signature(torch.nn.functional.gumbel_softmax).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for key, param in theirs.items():
        assert ours[key].default == param.default, key


@pytest.mark.parametrize("name", NAMES)
def test_positional_and_keyword_calls_agree_and_hard_false_is_the_soft_sample(name):
    logits = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    knobs = {key: knob.default for key, knob in KNOBS[name].items()}
    if name in ("redge", "redge_cov", "reindge"):
        knobs = {"n_steps": 4, "t_1": 0.3}
    elif name in ("gumbel", "reinmax"):
        knobs = {"tau": 1.5}
    fn = ESTIMATORS[name].fn

    def gen():
        return torch.Generator().manual_seed(1)

    pair = sample(name, logits, dim=1, generator=gen(), **knobs)
    by_name = fn(logits, hard=True, dim=1, generator=gen(), **knobs)
    if name == "gumbel":
        by_position = fn(logits, *knobs.values(), True, 1e-10, 1, generator=gen())
    else:
        by_position = fn(logits, *knobs.values(), True, 1, generator=gen())
    soft = fn(logits, *knobs.values(), dim=1, generator=gen())
    torch.testing.assert_close(by_name, pair.hard, rtol=0, atol=0)
    torch.testing.assert_close(by_position, pair.hard, rtol=0, atol=0)
    torch.testing.assert_close(soft, pair.soft, rtol=0, atol=0)
    assert torch.all(pair.hard.sum(1) == 1) and pair.hard.shape == logits.shape
    # dim=1 is the same computation as moving the categories last
    last = sample(name, logits.movedim(1, -1), generator=gen(), **knobs)
    torch.testing.assert_close(last.hard.movedim(-1, 1), pair.hard, rtol=0, atol=0)
    torch.testing.assert_close(last.soft.movedim(-1, 1), pair.soft, rtol=1e-12, atol=1e-14)


def test_bad_dim_hard_and_names_are_refused_by_name():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="dim"):
        redge_mini.redge(x, dim=2)
    with pytest.raises(TypeError, match="dim"):
        redge_mini.st(x, dim=1.0)
    with pytest.raises(TypeError, match="hard"):
        redge_mini.reinmax(x, hard=0.5)
    with pytest.raises(TypeError, match="hard"):
        redge_mini.gumbel_softmax(x, 1.0, "yes")
    assert torch.equal(redge_mini.st(x, 1, generator=torch.Generator().manual_seed(0)),
                       redge_mini.st(x, True, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="categories along dim=0"):
        redge_mini.st(torch.zeros(1, 3), dim=0)
    with pytest.raises(ValueError, match="unknown estimator"):
        sample("nope", x)
    with pytest.raises(ValueError, match="no knob"):
        sample("st", x, tau=1.0)
    with pytest.warns(UserWarning, match="eps"):
        redge_mini.gumbel_softmax(x, eps=1e-3)


# ------------------------------------------------------------------ one source of truth

KNOB_VALUES = {
    "int": [2, 3, 10_000, 20_000, 1, 0, -3, 2.0, True, "3", None],
    "real": [1e-9, 0.3, 1.0, 1.5, 100.0, 0.0, -1.0, math.inf, math.nan, True, "1", None],
}


def _outcome(call):
    try:
        call()
    except (TypeError, ValueError) as error:
        return type(error)
    return None


@pytest.mark.parametrize("name", NAMES)
def test_functions_registry_and_make_estimator_accept_and_refuse_the_same_knob_values(name):
    # every value gets the same verdict from the function, check_knobs, make_estimator and
    # sample (today's n_steps = 20,000 runs in all four, where make_estimator used to refuse it)
    for key, knob in KNOBS[name].items():
        for value in KNOB_VALUES[knob.kind]:
            verdicts = {
                _outcome(lambda k=key, v=value: check_knobs(name, **{k: v})),
                _outcome(lambda k=key, v=value: make_estimator(name, **{k: v})),
                _outcome(lambda k=key, v=value: ESTIMATORS[name].fn(torch.zeros(1, 2), **{k: v})),
                _outcome(lambda k=key, v=value: sample(name, torch.zeros(1, 2), **{k: v})),
            }
            assert len(verdicts) == 1, (key, value, verdicts)
    assert check_knobs("redge", n_steps=20_000)["n_steps"] == 20_000


def test_registry_lists_every_estimator_once_with_unique_styles():
    assert NAMES == ["st", "gumbel", "reinmax", "redge", "redge_cov", "reindge"]
    assert list(ALL_ESTIMATORS) == [*NAMES, "reinforce"]
    specs = list(ALL_ESTIMATORS.values())
    labels = [spec.label for spec in specs]
    assert len(set(labels)) == len(labels)
    for spec in specs:
        assert spec.knobs is KNOBS[spec.name] is registry.KNOBS[spec.name]
        assert (spec.kernel is not None) == spec.pathwise  # every built-in sampler has a kernel
    # colours and markers are the book's (redge_mini.book.plotting), one of each per estimator
    from redge_mini.book.plotting import ESTIMATOR_STYLES

    assert set(ESTIMATOR_STYLES) == {*ALL_ESTIMATORS, "exact"}
    for part in (0, 1):
        values = [style[part] for style in ESTIMATOR_STYLES.values()]
        assert len(set(values)) == len(values)
    with pytest.raises(ValueError, match="score-function"):
        make_estimator("reinforce")


def test_the_readme_knob_table_is_the_registrys():
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- knob-table: start -->\n(.*?)\n<!-- knob-table: end -->", readme,
                      re.S)
    assert table is not None and table.group(1) == knob_table()
    for spec in ALL_ESTIMATORS.values():
        for key, knob in spec.knobs.items():
            default = f"{knob.default:g}" if knob.kind != "choice" else str(knob.default)
            row = f"| `{spec.name}` | `{key}` | {knob.kind} | {default} |"
            assert row in readme


def test_the_readme_example_runs_and_does_what_it_says():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it in your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    y, scores = namespace["y"], namespace["scores"]
    assert y.shape == (16, 5, 10) and torch.all(y.sum(1) == 1)
    assert torch.all(y[:, 3:] == 0)  # the masked categories are never drawn
    assert torch.isfinite(scores.grad).all() and torch.all(scores.grad[:, 3:] == 0)
    assert scores.grad[:, :3].abs().sum() > 0


# ------------------------------------------------------------------ the surrogate-loss form


@pytest.mark.parametrize("name", list(ALL_ESTIMATORS))
def test_every_estimator_has_the_surrogate_loss_form(name):
    gen = torch.Generator()
    logits = torch.randn(3, 4, generator=gen.manual_seed(2), dtype=F64, requires_grad=True)
    weights = torch.randn(3, 4, generator=gen.manual_seed(3), dtype=F64)

    def f(x):  # (S, 3, 4) -> (S, 3): one value per independent variable
        return (x * weights).sum(-1) ** 2

    spec = ALL_ESTIMATORS[name]
    loss = make_loss(name)(f, logits, 6, generator=gen.manual_seed(4))
    assert loss.shape == (3,)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    if spec.pathwise:  # value and gradient: f of the hard samples, averaged
        draws = make_estimator(name)(logits.expand(6, 3, 4), generator=gen.manual_seed(4))
        reference = f(draws).mean(0)
    else:
        reference = reinforce_loss(f, logits, 6, generator=gen.manual_seed(4))
    torch.testing.assert_close(loss, reference, rtol=0, atol=0)
    (ref_grad,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="n_samples"):
        spec.loss(f, logits, spec.min_samples - 1)


# ------------------------------------------------------------------ the validation switch


def test_validation_switch_is_global_and_checked():
    assert redge_mini.get_validate_args() is True
    with pytest.raises(TypeError, match="bool"):
        redge_mini.set_validate_args(0)
    redge_mini.set_validate_args(False)
    try:
        assert redge_mini.get_validate_args() is False
        # NaN logits are no longer read: no error (the caller promised valid values)
        redge_mini.st(torch.tensor([0.0, math.nan]))
        # Python-number checks stay
        with pytest.raises(ValueError, match="t_1"):
            redge_mini.redge(torch.zeros(2), t_1=2.0)
        # distributions created now skip torch's value checks too
        assert redge_mini.ReDGECategorical(logits=torch.zeros(3))._validate_args is False
    finally:
        redge_mini.set_validate_args(True)
    with pytest.raises(ValueError, match="NaN"):
        redge_mini.st(torch.tensor([0.0, math.nan]))


@pytest.mark.parametrize("name", NAMES)
def test_no_tensor_value_is_read_with_validation_off(name, no_validation, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    logits = torch.randn(4, 3, requires_grad=True)
    out = sample(name, logits)
    (out.hard * torch.arange(3.0)).sum().backward()
    monkeypatch.undo()
    redge_mini.set_validate_args(True)
    with pytest.raises(AssertionError, match="host"):
        monkeypatch.setattr(torch.Tensor, "item", refuse)
        sample(name, logits)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_with_different_randomness(name, no_validation):
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), requires_grad=True)
    batch = logits.expand(64, 3, 4)
    hard = torch.vmap(lambda x: ESTIMATORS[name].fn(x, hard=True), randomness="different")(batch)
    assert hard.shape == (64, 3, 4) and torch.all(hard.sum(-1) == 1)
    assert not torch.all(hard == hard[:1])  # each batch member has its own draw
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(6))
    (grad,) = torch.autograd.grad((hard * weights).sum(), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_forward_and_backward(name, no_validation):
    # aot_eager: dynamo must capture the whole call in one graph (fullgraph) and AOTAutograd must
    # trace the backward; inductor's code generation is not what is under test.
    torch._dynamo.reset()
    fn = ESTIMATORS[name].fn
    compiled = torch.compile(lambda x: fn(x, hard=True), fullgraph=True, backend="aot_eager")
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), requires_grad=True)
    weights = torch.randn(5, 3, generator=torch.Generator().manual_seed(8))
    y = compiled(logits)
    assert torch.all(y.sum(-1) == 1)
    (grad,) = torch.autograd.grad((y * weights).sum(), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    if name == "st":  # ST's gradient does not depend on the draw: compare with eager
        eager = redge_mini.st(logits, hard=True)
        (expected,) = torch.autograd.grad((eager * weights).sum(), logits)
        torch.testing.assert_close(grad, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_graph_capture_and_replay(name, no_validation):
    fn = ESTIMATORS[name].fn
    logits = torch.randn(256, 8, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph
        fn(logits, hard=True)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(logits, hard=True)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.clone())
    torch.cuda.synchronize()
    assert all(torch.all(d.sum(-1) == 1) for d in draws)
    assert not torch.equal(draws[0], draws[1])  # each replay draws new noise


# ------------------------------------------------------------------ gradcheck


def test_gradcheck_reinmax_function_against_its_smooth_stand_in():
    # _ReinMax's value is the constant sample H, so gradcheck of the Function alone would compare
    # its surrogate gradient with a zero Jacobian. Its backward is, by construction, the Jacobian
    # at θ0 of the smooth stand-in φ(θ) = 2 softmax(θ + c) − ½ softmax(θ), c = log π1(θ0) − θ0
    # (so softmax(θ0 + c) = π1). gradcheck of θ -> sg(φ(θ)) + surrogate(θ) − H: the value is φ
    # (numerical Jacobian: φ's), the backward is the Function's alone.
    gen = torch.Generator().manual_seed(9)
    theta0 = torch.randn(3, 4, generator=gen, dtype=F64, requires_grad=True)
    hard = torch.nn.functional.one_hot(torch.randint(0, 4, (3,), generator=gen), 4).to(F64)
    for tau in (1.0, 2.5):
        pi_1 = 0.5 * (hard + torch.softmax(theta0.detach() / tau, -1))
        shift = torch.log(pi_1) - theta0.detach()

        def probe(theta, shift=shift, tau=tau):
            stand_in = 2 * torch.softmax(theta + shift, -1) - 0.5 * torch.softmax(theta, -1)
            return stand_in.detach() + reinmax_surrogate(theta, hard, tau) - hard

        assert torch.autograd.gradcheck(probe, (theta0,))
        assert torch.equal(reinmax_surrogate(theta0, hard, tau), hard)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 4), (64, 8)])  # (64, 8): 512 elements, categories first
def test_gradcheck_of_every_soft_sample_for_fixed_noise(name, shape):
    # the soft sample is a smooth function of the logits for fixed noise: autograd (the fused
    # adjoint, the surrogates) against finite differences
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(10), dtype=F64)
    logits.requires_grad_(True)

    def soft(x):
        return sample(name, x, generator=torch.Generator().manual_seed(11)).soft

    assert torch.autograd.gradcheck(soft, (logits,), fast_mode=shape[0] > 3)
