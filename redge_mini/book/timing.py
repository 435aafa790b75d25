"""Cost per call of the estimators (forward + backward) against torch's ``gumbel_softmax``.

One *call* is what a training step pays for a sample: fresh leaf logits -> estimator (hard
sample) -> ``(sample * weights).sum()`` -> ``backward()``. All contenders of one shape, and the
reference ``torch.nn.functional.gumbel_softmax(logits, tau=1, hard=True)``, are timed in one
process with :mod:`torch.utils.benchmark` (``Timer.blocked_autorange``: blocks of calls, the
accelerator synchronised at the block edges), one block-set per contender in turn for several
rounds, so that a change of machine load hits them alike; the result is the median (or, on a busy
machine, the minimum) over rounds. Ratios to the reference are the portable result: absolute
times depend on the machine.

Example:
    >>> rows = time_estimators([(64, 10)], ["st", "redge"], rounds=3, block_s=0.002)
    >>> [row.name for row in rows]
    ['st', 'redge']
"""

from __future__ import annotations

import ctypes
import math
import re
import statistics
import timeit
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode

from ..registry import ESTIMATORS, make_estimator
from ..validation import check_int, check_real

__all__ = [
    "REFERENCE", "BenchmarkTable", "TimingRow", "count_ops", "make_call", "peak_extra_bytes",
    "read_benchmark", "stored_benchmarks", "median_ms", "time_estimators", "time_interleaved",
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
        seconds: seconds per forward + backward call (median or minimum over rounds).
        reference_seconds: the same for ``torch.nn.functional.gumbel_softmax`` (same rounds).
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


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(call: Callable[[], None]) -> int:
    """Number of aten operations (views included) that one ``call`` dispatches, forward and
    backward, counted with a dispatch mode after one warm-up call. Work done inside a compiled
    kernel (the C++ or Triton sampler) is not an aten operation: it does not count."""
    call()
    with _CountOps() as counter:
        call()
    return counter.count


def time_interleaved(
    calls: Mapping[str, Callable[[], None]],
    device: torch.device | str | None = None,
    *,
    rounds: int,
    block_s: float,
    timer: Callable[[], float] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each contender in ``rounds`` interleaved rounds.

    Each round runs :meth:`torch.utils.benchmark.Timer.blocked_autorange` (``min_run_time =
    block_s``) of every contender in turn and records its median time per call. The timer is
    torch.utils.benchmark's own (it synchronises the accelerator) for a CUDA ``device`` and
    ``timeit.default_timer`` otherwise, unless ``timer`` is given. Torch's current number of
    threads is kept.
    """
    rounds = check_int(rounds, "rounds", 1)
    block_s = check_real(block_s, "block_s", minimum=0.0, strict=True)
    on_accelerator = device is not None and torch.device(device).type != "cpu"
    if timer is None and not on_accelerator:
        timer = timeit.default_timer
    clock = {} if timer is None else {"timer": timer}
    timers = {
        key: benchmark.Timer("call()", globals={"call": call}, description=key,
                             num_threads=torch.get_num_threads(), **clock)
        for key, call in calls.items()
    }
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, measurer in timers.items():
            times[key].append(measurer.blocked_autorange(min_run_time=block_s).median)
    return times


def median_ms(times: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Contender -> median of its rounds in milliseconds (``times`` as from
    :func:`time_interleaved`: seconds per call, one value per round)."""
    return {key: 1e3 * sorted(t)[len(t) // 2] for key, t in times.items()}

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
        rounds: interleaved timing rounds per contender (the median is over these).
        block_s: minimum run time of one ``blocked_autorange`` per contender and round.
        device: where to time (default CPU).
        seed: seeds the logits and the weights of the linear loss.
        statistic: ``"median"`` (default) or ``"min"`` over the rounds. On a machine shared with
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


class BenchmarkTable(NamedTuple):
    """A table written by ``benchmarks/bench_estimators.py --save``.

    Attributes:
        path: the file.
        device: the device line (GPU model, or CPU model and core count).
        notes: the other ``#`` lines (versions, threads, load, method, verdicts).
        rows: one dict per measured row: ``shape`` (tuple), ``estimator`` and the numeric
            columns ``ours_us, authors_us, gs_us, ours_authors, ours_gs, fastest, ops_gs`` and
            ``mem_gs`` (``ops_gs`` and ``mem_gs`` are None where they were not measured).
    """

    path: Path
    device: str
    notes: list[str]
    rows: list[dict]


_NUMBER = r"\s+([-+0-9.eE]+)"
_ROW = re.compile(r"^\s*(\([0-9, ]+\))\s+(\w+)" + _NUMBER * 6 + r"\s+(\S+)\s+(\S+)\s*$")
_COLUMNS = ("ours_us", "authors_us", "gs_us", "ours_authors", "ours_gs", "fastest", "ops_gs")


def read_benchmark(path: str | Path) -> BenchmarkTable:
    """Parse one stored benchmark table; a ValueError names a file of another format."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("# device: "):
        raise ValueError(f"{path} is not a table of benchmarks/bench_estimators.py")
    rows = []
    for line in lines:
        found = _ROW.match(line)
        if found is None:
            continue
        shape = tuple(int(v) for v in found.group(1).strip("()").split(",") if v.strip())
        values = [None if v == "-" else float(v) for v in found.groups()[2:9]]
        memory = found.group(10)
        rows.append({"shape": shape, "estimator": found.group(2),
                     **dict(zip(_COLUMNS, values, strict=True)),
                     "mem_gs": None if memory == "-" else float(memory.rsplit("=", 1)[1])})
    notes = [line[2:] for line in lines[1:] if line.startswith("# ")]
    return BenchmarkTable(path, lines[0][len("# device: "):], notes, rows)


def stored_benchmarks(directory: str | Path | None = None) -> list[BenchmarkTable]:
    """Every table in ``directory`` (default: the first ``benchmarks/results`` found upward from
    the working directory), sorted by file name; files of older formats are skipped."""
    if directory is None:
        here = Path.cwd().resolve()
        found = [p / "benchmarks" / "results" for p in (here, *here.parents)]
        directory = next((p for p in found if p.is_dir()), None)
        if directory is None:
            raise FileNotFoundError(f"no benchmarks/results above {here}")
    tables = []
    for path in sorted(Path(directory).glob("*.txt")):
        try:
            tables.append(read_benchmark(path))
        except ValueError:
            continue
    return tables


# ------------------------------------------------------------------------------ memory


_MALLOC_FIXED = False


def _fix_mmap_threshold() -> bool:
    """Make glibc serve every allocation above 128 KiB by ``mmap`` and return it to the system
    when freed (``mallopt(M_MMAP_THRESHOLD)``, which also stops the threshold from growing), so
    that the resident set follows the live tensors. False where there is no glibc."""
    global _MALLOC_FIXED
    if not _MALLOC_FIXED:
        try:
            libc = ctypes.CDLL("libc.so.6")
            _MALLOC_FIXED = bool(libc.mallopt(-3, 128 * 1024))  # -3: M_MMAP_THRESHOLD
        except (OSError, AttributeError):
            return False
    return _MALLOC_FIXED


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text(encoding="utf-8")
    found = re.search(rf"^{key}:\s+(\d+)", text, re.MULTILINE)
    if found is None:
        raise OSError(f"no {key} in /proc/self/status")
    return int(found.group(1))


def peak_extra_bytes(call: Callable[[], object], device: torch.device | str | None = None, *,
                     release_freed: bool = True) -> float:
    """Peak memory of one ``call()`` beyond what was allocated before it, in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    memory allocated before. CPU (Linux): the process's resident-set high-water mark ``VmHWM``,
    reset to the current ``VmRSS`` through ``/proc/self/clear_refs`` before the call, minus that
    ``VmRSS``. With ``release_freed`` (the default), glibc's mmap threshold is first fixed at
    128 KiB (:func:`_fix_mmap_threshold`) and ``call`` run once, so that every tensor buffer is
    mapped when allocated and unmapped when freed: this counts everything the call allocates,
    the compiled sampler's own buffers included (to a page), even in a process that has run
    other work. Without it (the benchmarks, which measure in a fresh process after a tiny
    warm-up call of their own) the call is measured as it comes. NaN where neither is
    available.
    """
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    if release_freed and not _fix_mmap_threshold():
        return math.nan
    try:
        if release_freed:
            call()  # the first call after the threshold change maps its buffers afresh
        base = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")  # VmHWM := VmRSS
        call()
        return float(max(_status_kib("VmHWM") - base, 0) * 1024)
    except OSError:
        return math.nan
