"""The registry as the one table: one name check, one knob check, and estimators of your own
(``redge_mini.register``) accepted everywhere a built-in one is, after their signature and knobs
are checked."""

import math

import pytest
import torch

import redge_mini
from redge_mini import ALL_ESTIMATORS, ESTIMATORS, Knob, registry
from redge_mini.registry import Choice, check_knobs, check_name, register, unregister

BUILT_IN = ["st", "gumbel", "reinmax", "redge", "redge_cov", "reindge", "reinforce"]
TAU = Knob(1.0, 0.0, 10.0, low_inclusive=False, description="temperature")


def tempered(logits, tau=1.0, hard=False, dim=-1, *, generator=None):
    """A toy estimator: straight-through with a tempered softmax in the backward pass."""
    soft = torch.softmax(logits / tau, dim)
    if not hard:
        return soft
    index = torch.multinomial(torch.softmax(logits, dim).movedim(dim, -1).reshape(
        -1, logits.shape[dim]), 1, generator=generator)
    one_hot = torch.zeros_like(soft.movedim(dim, -1).reshape(-1, logits.shape[dim]))
    one_hot = one_hot.scatter(-1, index, 1.0).reshape(soft.movedim(dim, -1).shape).movedim(-1, dim)
    return (one_hot - soft).detach() + soft


def tempered_kernel(work, generator, tau):
    soft = torch.softmax(work / tau, -1)
    hard = tempered(work, tau, hard=True, generator=generator)
    return hard, soft


@pytest.fixture
def mine():
    """``"tempered"`` registered for one test, removed afterwards whatever happens."""
    try:
        yield register("tempered", tempered, {"tau": TAU}, label="Tempered ST",
                       summary="toy", kernel=tempered_kernel)
    finally:
        if "tempered" in ALL_ESTIMATORS:
            unregister("tempered")


def test_a_registered_estimator_works_wherever_a_built_in_one_does(mine):
    assert list(ALL_ESTIMATORS) == [*BUILT_IN, "tempered"]  # built-ins first, in their order
    assert ESTIMATORS["tempered"] is mine and mine.pathwise and mine.label == "Tempered ST"
    assert check_knobs("tempered") == {"tau": 1.0}
    with pytest.raises(ValueError, match=r"tau must lie in \(0, 10\]"):
        check_knobs("tempered", tau=11.0)
    with pytest.raises(ValueError, match="no knob"):
        check_knobs("tempered", t_1=0.5)
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = redge_mini.make_estimator("tempered", tau=2.0)(logits,
                                                       generator=torch.Generator().manual_seed(1))
    expected = tempered(logits, 2.0, True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, expected) and torch.all(y.sum(-1) == 1)
    # the surrogate loss, the distribution and sample() (it has a kernel) take it too
    loss = redge_mini.make_loss("tempered", tau=2.0)(lambda x: x[..., 0].sum(-1), logits, 3)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.shape == () and torch.isfinite(grad).all() and grad.abs().sum() > 0
    dist = redge_mini.PathwiseCategorical("tempered", logits=logits, tau=3.0)
    assert dist.tau == 3.0 and dist.rsample((2,)).shape == (2, 6, 4)
    pair = redge_mini.sample("tempered", logits, tau=0.5)
    torch.testing.assert_close(pair.soft, torch.softmax(logits / 0.5, -1))
    assert "| `tempered` | `tau` | real | 1 | (0, 10] | temperature |" in registry.knob_table()
    with pytest.raises(ValueError, match="already registered"):
        register("tempered", tempered, {"tau": TAU})
    unregister("tempered")
    assert "tempered" not in ALL_ESTIMATORS and "tempered" not in registry.KNOBS
    with pytest.raises(ValueError, match="unknown estimator 'tempered'"):
        check_knobs("tempered")


def test_without_a_kernel_sample_says_to_call_the_function():
    def plain(logits, hard=False, dim=-1, *, generator=None):
        return torch.softmax(logits, dim)

    register("plain", plain)
    try:
        assert check_knobs("plain") == {} and ESTIMATORS["plain"].kernel is None
        with pytest.raises(ValueError, match="without a kernel"):
            redge_mini.sample("plain", torch.zeros(2, 3))
    finally:
        unregister("plain")


def test_built_in_estimators_cannot_be_replaced_or_removed():
    for name in BUILT_IN:
        with pytest.raises(ValueError, match="already registered"):
            register(name, tempered, {"tau": TAU})
        with pytest.raises(ValueError, match="built in"):
            unregister(name)
    assert list(ALL_ESTIMATORS) == BUILT_IN


def _signature_errors():
    def no_generator(logits, tau=1.0, hard=False, dim=-1):
        return logits

    def knob_after_hard(logits, hard=False, tau=1.0, dim=-1, *, generator=None):
        return logits

    def hard_true(logits, tau=1.0, hard=True, dim=-1, *, generator=None):
        return logits

    def other_default(logits, tau=2.0, hard=False, dim=-1, *, generator=None):
        return logits

    def fixed_generator(logits, tau=1.0, hard=False, dim=-1, *, generator=0):
        return logits

    return [
        (no_generator, {"tau": TAU}, TypeError, "signature"),
        (knob_after_hard, {"tau": TAU}, TypeError, "signature"),
        (tempered, {}, TypeError, "signature"),  # a knob the table does not declare
        (hard_true, {"tau": TAU}, ValueError, "hard=False"),
        (other_default, {"tau": TAU}, ValueError, "default of tau"),
        (fixed_generator, {"tau": TAU}, ValueError, "generator=None"),
        (tempered, {"tau": 1.0}, TypeError, "Knob"),
        (tempered, {"tau": Knob(20.0, 0.0, 10.0)}, ValueError, "default of 'tau'"),
        (tempered, {"tau": Knob(1.0, 5.0, 0.5)}, ValueError, "low"),
        (tempered, {"tau": Knob(1.0, math.nan, 2.0)}, ValueError, "low"),
        (tempered, [("tau", TAU)], TypeError, "mapping"),
        ("tempered", {"tau": TAU}, TypeError, "callable"),
    ]


@pytest.mark.parametrize("fn, knobs, error, words", _signature_errors())
def test_register_refuses_what_the_rest_of_the_library_could_not_call(fn, knobs, error, words):
    with pytest.raises(error, match=words):
        register("bad", fn, knobs)
    assert "bad" not in ALL_ESTIMATORS and "bad" not in registry.KNOBS


@pytest.mark.parametrize("name", [None, 3, "", "two words", "exact"])
def test_register_refuses_bad_names(name):
    with pytest.raises(ValueError, match="name"):
        register(name, tempered, {"tau": TAU})


def test_one_name_check_with_one_message_everywhere():
    messages = set()
    for call in (lambda: check_name("nope"), lambda: redge_mini.sample("nope", torch.zeros(3)),
                 lambda: redge_mini.PathwiseCategorical("nope", logits=torch.zeros(3)),
                 lambda: redge_mini.make_estimator("nope"), lambda: check_knobs("nope"),
                 lambda: redge_mini.get_spec("nope")):
        with pytest.raises(ValueError, match="unknown estimator 'nope'") as info:
            call()
        messages.add(str(info.value).split(";")[0])
    assert messages == {"unknown estimator 'nope'"}
    with pytest.raises(ValueError, match="score-function"):
        redge_mini.PathwiseCategorical("reinforce", logits=torch.zeros(3))
    with pytest.raises(ValueError, match="score-function"):
        redge_mini.sample("reinforce", torch.zeros(3))


def test_choice_knobs_compare_type_and_value():
    knob = Choice("a", ("a", None, 1))
    assert knob.check("k", "a") == "a" and knob.check("k", None) is None
    assert knob.check("k", 1) == 1
    for bad in (True, 1.0, "b", 0):
        with pytest.raises(ValueError, match="k must be one of"):
            knob.check("k", bad)
    assert knob.range_string() == "{a, None, 1}" and knob.kind == "choice"


def test_the_tuning_search_spaces_lie_inside_the_registrys_valid_ranges():
    # the experiments' search ranges (redge_mini.book.experiments.tuning) name the registry's
    # numeric knobs, and every value they can draw is one the registry accepts
    from redge_mini.book.experiments.tuning import KNOB_SPACE

    assert set(KNOB_SPACE) == set(ALL_ESTIMATORS)
    for name, space in KNOB_SPACE.items():
        numeric = {k for k, knob in registry.KNOBS[name].items() if isinstance(knob, Knob)}
        assert set(space) == numeric, name
        for key, axis in space.items():
            values = axis.choices or [axis.value(u) for u in (0.0, 0.5, 0.999999)]
            for value in values:
                check_knobs(name, **{key: value})
