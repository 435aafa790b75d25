"""Cost per call of the estimators (forward + backward) against torch's ``gumbel_softmax``.

One *call* is what a training step pays for a sample: fresh leaf logits -> estimator (hard
sample) -> ``(sample * weights).sum()`` -> ``backward()``. All contenders of one shape, and the
reference ``torch.nn.functional.gumbel_softmax(logits, tau=1, hard=True)``, are timed in
interleaved blocks in one process, so that a change of machine load hits them alike; the result is
the median (or, on a busy machine, the minimum) over blocks of the mean time per call. Ratios to
the reference are the portable result: absolute times depend on the machine.

Example:
    >>> rows = time_estimators([(64, 10)], ["st", "redge"], rounds=3, block_s=0.002)
    >>> [row.name for row in rows]
    ['st', 'redge']
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch

from ..registry import ESTIMATORS, make_estimator
from ..validation import check_int, check_real

__all__ = [
    "REFERENCE", "TimingRow", "make_call", "time_block", "time_estimators", "time_interleaved",
]

_STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}

REFERENCE = "torch.nn.functional.gumbel_softmax"
"""What every ratio is relative to (``tau = 1``, ``hard = True``)."""


class TimingRow(NamedTuple):
    """The cost of one estimator at one shape.

    Attributes:
        shape: the logits' shape.
        name: the estimator's registry name.
        knobs: its knob values.
        seconds: seconds per forward + backward call (median or minimum over blocks).
        reference_seconds: the same for ``torch.nn.functional.gumbel_softmax`` (same blocks).
        ratio: ``seconds / reference_seconds``.
    """

    shape: tuple[int, ...]
    name: str
    knobs: dict[str, float | int]
    seconds: float
    reference_seconds: float
    ratio: float


def make_call(
    sampler: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, weights: torch.Tensor
) -> Callable[[], None]:
    """One forward + backward of ``sampler`` on a fresh leaf copy of ``logits``."""

    def call() -> None:
        leaf = logits.detach().requires_grad_(True)
        (sampler(leaf) * weights).sum().backward()

    return call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(
    call: Callable[[], None],
    calls: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Mean seconds per call over ``calls`` consecutive calls of ``call``, read on ``clock``."""
    _sync(device)
    start = clock()
    for _ in range(calls):
        call()
    _sync(device)
    return (clock() - start) / calls


def time_interleaved(
    calls: Mapping[str, Callable[[], None]],
    device: torch.device,
    *,
    rounds: int,
    block_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each contender in ``rounds`` interleaved blocks of about ``block_s``.

    Each contender is warmed up and sized (calls per block) first; then every round times one
    block of each contender in turn, so that a change of machine load hits them alike.
    """
    sizes = {}
    for key, call in calls.items():
        for _ in range(3):
            call()
        single = time_block(call, 5, device, clock)
        sizes[key] = max(1, int(block_s / max(single, 1e-7)))
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            times[key].append(time_block(call, sizes[key], device, clock))
    return times


def _check_shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, Sequence) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in shape
    ):
        raise TypeError(f"shapes must hold sequences of ints, got {shape!r}")
    if len(shape) < 1 or shape[-1] < 2 or min(shape) < 1:
        raise ValueError(
            f"shapes must be (..., K) with K >= 2 and no empty dimension, got {tuple(shape)}"
        )
    return tuple(shape)


def time_estimators(
    shapes: Sequence[Sequence[int]],
    names: Sequence[str] | None = None,
    *,
    knobs: Mapping[str, Mapping[str, float | int]] | None = None,
    rounds: int = 7,
    block_s: float = 0.01,
    device: torch.device | str | None = None,
    seed: int = 0,
    num_threads: int | None = 1,
    statistic: str = "median",
) -> list[TimingRow]:
    """Median forward + backward time per call of each estimator at each logits shape.

    Args:
        shapes: logits shapes, each ``(..., K)`` with ``K >= 2``.
        names: registry names (default: every pathwise estimator of
            :data:`redge_mini.registry.ESTIMATORS`).
        knobs: optional knob values per name, e.g. ``{"redge": {"n_steps": 9}}``; missing knobs
            take the registry defaults.
        rounds: interleaved timing blocks per contender (the median is over these).
        block_s: target length of one block in seconds (sets the calls per block after a
            warm-up).
        device: where to time (default CPU).
        seed: seeds the logits and the weights of the linear loss.
        statistic: ``"median"`` (default) or ``"min"`` over the blocks. On a machine shared with
            other jobs the minimum estimates the uncontended cost and is far less noisy; the
            median describes typical conditions on a quiet machine.
        num_threads: CPU threads of torch while timing (restored afterwards); ``None`` keeps the
            current setting. One thread (the default) is what small per-call costs are best
            measured with: on a shared machine, idle worker threads of a multi-threaded run
            can dominate a call of a few microseconds.

    Returns:
        One :class:`TimingRow` per (shape, name), shapes in the given order.
    """
    names = list(ESTIMATORS) if names is None else list(names)
    knobs = dict(knobs or {})
    rounds = check_int(rounds, "rounds", 1)
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(_STATISTICS)}, got {statistic!r}")
    block_s = check_real(block_s, "block_s", minimum=0.0, strict=True)
    device = torch.device("cpu" if device is None else device)
    unknown = (set(names) | set(knobs)) - set(ESTIMATORS)
    if unknown:
        raise ValueError(
            f"unknown estimator names {sorted(unknown)}; choose from {list(ESTIMATORS)}"
        )
    shapes = [_check_shape(shape) for shape in shapes]
    samplers = {name: make_estimator(name, **knobs.get(name, {})) for name in names}
    used = {name: {**ESTIMATORS[name].defaults(), **knobs.get(name, {})} for name in names}
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(check_int(num_threads, "num_threads", 1))
    try:
        return _time_shapes(shapes, names, samplers, used, rounds, block_s, device, seed,
                            _STATISTICS[statistic])
    finally:
        torch.set_num_threads(threads_before)


def _time_shapes(
    shapes: list[tuple[int, ...]],
    names: list[str],
    samplers: dict[str, Callable[..., torch.Tensor]],
    used: dict[str, dict[str, float | int]],
    rounds: int,
    block_s: float,
    device: torch.device,
    seed: int,
    summary: Callable[[list[float]], float],
) -> list[TimingRow]:
    generator = torch.Generator().manual_seed(seed)
    rows: list[TimingRow] = []
    for shape in shapes:
        logits = torch.randn(shape, generator=generator).to(device)
        weights = torch.randn(shape, generator=generator).to(device)
        calls = {name: make_call(samplers[name], logits, weights) for name in names}
        calls[REFERENCE] = make_call(
            lambda x: torch.nn.functional.gumbel_softmax(x, tau=1.0, hard=True), logits, weights
        )
        times = time_interleaved(calls, device, rounds=rounds, block_s=block_s)
        reference = summary(times[REFERENCE])
        for name in names:
            seconds = summary(times[name])
            rows.append(TimingRow(shape, name, used[name], seconds, reference, seconds / reference))
    return rows
