"""Time and memory of forward + backward: ours against the authors' package and torch's GS.

Run from the repository root::

    python benchmarks/bench_estimators.py                      # CUDA if present, else CPU
    python benchmarks/bench_estimators.py --device cpu --threads 2 --save

One call is: fresh leaf logits -> estimator (hard sample) -> ``(sample * weights).sum()`` ->
``backward()``. The contenders of one row (ours, the authors' ``redge.SAMPLERS[name]`` with the
same knobs, and ``torch.nn.functional.gumbel_softmax(hard=True)``) are timed in one process with
``torch.utils.benchmark`` through :func:`redge_mini.book.timing.time_interleaved`: each round
runs a ``blocked_autorange`` of every contender in turn; the table reports the median over rounds
(and the ratio of the fastest rounds). On a CPU shared with other jobs, ``--clock cpu`` times the
process's CPU time instead of the elapsed time. Peak memory: the extra memory of
one call (CUDA: ``max_memory_allocated``; CPU: the process's peak resident set ``VmHWM``, reset
before the call) measured in a fresh process per contender. ``ops``: aten operations dispatched
by one call (views included), counted with a dispatch mode, relative to Gumbel-Softmax's: where
per-operation overhead dominates (small shapes) the time ratio follows it. The work inside a
compiled kernel (ReDGE's C++ sampler on CPU, its Triton kernels on CUDA) is not an aten
operation and does not count.
``--save`` writes the table to ``benchmarks/results/<device>.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redge as authors
import torch

import redge_mini
from redge_mini import estimators
from redge_mini.book.runtime import device_name
from redge_mini.book.timing import count_ops, make_call, time_interleaved
from redge_mini.book.timing import peak_extra_bytes as measure_peak

SMALL = ((64, 100), (200, 48, 2), (256, 128, 2), (1, 81, 9))
LARGE = {"cpu": ((8, 128, 16384),), "cuda": ((8, 128, 16384), (64, 576, 16384))}
KNOBS = {"n_steps": 5, "t_1": 0.5}

# name -> (our function, knobs); the authors' sampler has the same name in redge.SAMPLERS.
CONTENDERS: dict[str, tuple[Callable[..., torch.Tensor], dict]] = {
    "st": (estimators.st, {}),
    "gumbel": (estimators.gumbel_softmax, {"tau": 1.0}),
    "reinmax": (estimators.reinmax, {"tau": 1.0}),
    "redge": (estimators.redge, KNOBS),
    "redge_cov": (estimators.redge_cov, KNOBS),
    "reindge": (estimators.reindge, KNOBS),
}

# targets of issue 13 for redge: (ours/GS at the listed shapes, ours/authors at the small shapes)
TARGETS = {
    "cpu": {"gs": {s: (1.5 if s == (1, 81, 9) else 1.0) for s in SMALL + LARGE["cpu"]},
            "authors": 0.5, "memory": 1.2},
    "cuda": {"gs": {s: 1.0 for s in SMALL + LARGE["cuda"]}, "authors": 0.3, "memory": 1.2},
}


def _sampler(who: str, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if who == "gs":
        return lambda x: torch.nn.functional.gumbel_softmax(x, tau=1.0, hard=True)
    fn, knobs = CONTENDERS[name]
    fn = fn if who == "ours" else authors.SAMPLERS[name]
    return lambda x: fn(x, hard=True, **knobs)  # one-hot samples, as the authors' default


def _problem(shape: tuple[int, ...], device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen).to(device)
    return logits, torch.randn(shape, generator=gen).to(device)


def peak_extra_bytes(who: str, name: str, shape: tuple[int, ...], device: str) -> int:
    """Peak memory of one call beyond the inputs, in this (fresh) process."""
    device = torch.device(device)
    logits, weights = _problem(shape, device)
    sampler = _sampler(who, name)
    make_call(sampler, logits[..., :1, :], weights[..., :1, :])()  # load code paths, tiny
    # VmHWM reset to VmRSS, one call, VmHWM - VmRSS (CUDA: the allocator's peak)
    return int(measure_peak(make_call(sampler, logits, weights), device,
                              release_freed=False))


def _measure_memory(who: str, name: str, shape: tuple[int, ...], device: str, threads: int):
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import torch; "
        f"torch.set_num_threads({threads}); import bench_estimators as b; "
        f"print(json.dumps(b.peak_extra_bytes({who!r}, {name!r}, {tuple(shape)!r}, {device!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def default_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda_" + re.sub(r"[^a-z0-9]+", "_", device_name(device).lower()).strip("_")
    return f"cpu_{os.cpu_count()}core"


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--block-ms", type=float, default=50.0, help="min run time per block")
    parser.add_argument("--estimators", nargs="*", default=list(CONTENDERS),
                        help="at the small shapes; the large shapes time redge only")
    parser.add_argument("--no-large", action="store_true", help="skip the large shapes")
    parser.add_argument("--shapes", nargs="*", default=None, metavar="AxBxK",
                        help="small shapes to time instead of the defaults, e.g. 64x100")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: elapsed time (torch.utils.benchmark's timer); cpu: this process's CPU time "
        "(time.process_time), which preemption by other jobs does not inflate: the steadier "
        "measure on a shared CPU machine (not meaningful for CUDA)",
    )
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/<tag>.txt")
    parser.add_argument("--tag", default=None, help="file name (default: from the device)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU work: use it with --device cpu")
    timer = time.process_time if args.clock == "cpu" else None
    torch.set_num_threads(args.threads)
    unknown = set(args.estimators) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown estimators {sorted(unknown)}; choose from {list(CONTENDERS)}")
    kind = "cuda" if device.type == "cuda" else "cpu"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"# device: {device_name(device)} ({device.type})",
        f"# redge_mini {redge_mini.__version__}, torch {torch.__version__}, authors' redge "
        f"{getattr(authors, '__version__', '0.1.0')}, {torch.get_num_threads()} threads, "
        f"load average {load} at start, {args.clock} clock"
        + (f", OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
           if "OMP_WAIT_POLICY" in os.environ else ""),
        f"# forward + backward of a hard sample; median of {args.rounds} interleaved rounds of "
        f"torch.utils.benchmark blocked_autorange (>= {args.block_ms:g} ms each); "
        "'fastest' = ratio of the fastest rounds; mem = peak extra MiB of one call",
    ]
    header = (
        f"{'shape':>15} {'estimator':>9} {'ours us':>10} {'authors us':>11} {'GS us':>10} "
        f"{'ours/auth':>9} {'ours/GS':>8} {'fastest':>8} {'ops/GS ops':>10} {'mem/GS mem':>14}"
    )
    lines += [header, "-" * len(header)]
    for line in lines:
        print(line, flush=True)
    verdicts = []
    small = SMALL if args.shapes is None else [
        tuple(int(v) for v in text.split("x")) for text in args.shapes
    ]
    shapes = [(s, args.estimators) for s in small]
    if not args.no_large:
        shapes += [(s, ["redge"]) for s in LARGE[kind]]
    target = TARGETS[kind]
    for shape, names in shapes:
        large = shape in LARGE[kind]
        logits, weights = _problem(shape, device)
        for name in names:
            calls = {who: make_call(_sampler(who, name), logits, weights)
                     for who in ("ours", "authors", "gs")}
            rounds = max(3, args.rounds // 3) if large else args.rounds
            times = time_interleaved(calls, device, rounds=rounds, block_s=args.block_ms / 1e3,
                                     timer=timer)
            t = {who: statistics.median(v) for who, v in times.items()}
            fastest = min(times["ours"]) / min(times["gs"])
            # (at the large shapes the count is the chunk loop's, and the arithmetic dominates)
            ops = "-" if large else f"{count_ops(calls['ours']) / count_ops(calls['gs']):.2f}"
            memory = "-"
            if large:
                mib = {who: _measure_memory(who, name, shape, args.device, args.threads) / 2**20
                       for who in ("ours", "gs")}
                memory = f"{mib['ours']:.0f}/{mib['gs']:.0f}={mib['ours'] / mib['gs']:.2f}"
                if name == "redge":
                    verdicts.append(("memory", shape, mib["ours"] / mib["gs"], target["memory"]))
            row = (
                f"{str(shape):>15} {name:>9} {t['ours'] * 1e6:10.1f} {t['authors'] * 1e6:11.1f} "
                f"{t['gs'] * 1e6:10.1f} {t['ours'] / t['authors']:9.2f} "
                f"{t['ours'] / t['gs']:8.2f} {fastest:8.2f} {ops:>10} {memory:>14}"
            )
            print(row, flush=True)
            lines.append(row)
            if name == "redge" and shape in target["gs"]:
                verdicts.append(("ours/GS", shape, t["ours"] / t["gs"], target["gs"][shape]))
                if not large:
                    verdicts.append(("ours/authors", shape, t["ours"] / t["authors"],
                                     target["authors"]))
    met = [v for v in verdicts if v[2] <= v[3]]
    missed = [v for v in verdicts if v[2] > v[3]]
    lines.append(f"# redge targets met: {len(met)} of {len(verdicts)}")
    for what, shape, value, limit in missed:
        lines.append(f"# MISSED {what} at {shape}: {value:.2f} > {limit:g}")
    for line in lines[-1 - len(missed):]:
        print(line)
    if args.save:
        out = Path("benchmarks/results") / f"{args.tag or default_tag(device)}.txt"
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out}")
    return lines


if __name__ == "__main__":
    main()
