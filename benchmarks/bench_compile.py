"""One training step of a small model with ReDGE inside, eager against ``torch.compile``.

Run from the repository root::

    python benchmarks/bench_compile.py                  # batch 256, 512 codes, CPU
    python benchmarks/bench_compile.py --batch 64 --codes 8192 --threads 2

The model: ``Linear(64, K)`` -> ``redge_mini.redge(..., hard=True)`` -> ``Linear(K, 64)`` ->
squared error; one step is forward + backward. The compiled step runs
``torch.compile(forward, fullgraph=True)`` and ``backward()`` (inductor, validation off: value
checks cannot run inside a graph), so the sampler must stay in the graph as the operator
``torch.ops.redge_mini.sample``; ``dynamic=True`` also compiles for symbolic batch sizes.
Times: ``torch.utils.benchmark`` ``blocked_autorange`` medians, the two contenders interleaved
over rounds, after warm-up (the compile itself is not timed); ``--clock cpu`` times the process's
CPU time instead of wall time (steadier on a machine shared with other jobs, at one thread).
Issue 22: the compiled step must not be slower than the eager one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils import benchmark

import redge_mini


def make_step(codes: int, seed: int = 0, estimator: str = "redge"):
    gen = torch.Generator().manual_seed(seed)
    encoder = torch.nn.Linear(64, codes)
    decoder = torch.nn.Linear(codes, 64)
    with torch.no_grad():
        for p in (*encoder.parameters(), *decoder.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)

    def forward(x):
        if estimator == "redge":
            y = redge_mini.redge(encoder(x), 5, 0.5, hard=True)
        else:  # the baseline: torch's own Gumbel-softmax, which torch.compile fuses
            y = torch.nn.functional.gumbel_softmax(encoder(x), hard=True)
        return (decoder(y) - x).pow(2).mean()

    return forward


def as_step(forward):
    """forward + backward (``backward()`` stays outside the compiled function: Dynamo does
    not trace it; the backward graph is compiled by AOTAutograd all the same)."""

    def step(x):
        loss = forward(x)
        loss.backward()
        return loss.detach()

    return step


def interleaved_medians(contenders: dict, x: torch.Tensor, rounds: int, clock,
                        warmup: int = 3, min_run_time: float = 0.2) -> dict[str, float]:
    """Seconds per call of each ``fn(x)`` in ``contenders``: the median over ``rounds`` of
    ``blocked_autorange`` medians, the contenders interleaved within each round (so a change in
    the machine's load hits all of them), after ``warmup`` calls of each."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            timer = benchmark.Timer("fn(x)", globals={"fn": fn, "x": x}, timer=clock)
            times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256])
    parser.add_argument("--codes", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--cpp-wrapper", action="store_true",
                        help="inductor's C++ wrapper (options={'cpp_wrapper': True}): the "
                        "compiled graph calls its kernels and operators from C++, not Python")
    parser.add_argument("--estimator", choices=("redge", "gumbel_softmax"), default="redge",
                        help="gumbel_softmax: the same model with torch's estimator (the floor)")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    redge_mini.set_validate_args(False)
    forward = make_step(args.codes, estimator=args.estimator)
    step = as_step(forward)
    options = {"cpp_wrapper": True} if args.cpp_wrapper else None
    compiled = as_step(torch.compile(forward, fullgraph=True, dynamic=args.dynamic or None,
                                     options=options))
    lines = [f"# one step (forward + backward) with {args.estimator}, K = {args.codes}, "
             f"{args.threads} threads, "
             f"torch {torch.__version__}, dynamic={args.dynamic}, cpp_wrapper="
             f"{args.cpp_wrapper}, {args.clock} clock, load "
             f"average {os.getloadavg()[0]:.1f} at start",
             f"{'batch':>6} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15}"]
    print("\n".join(lines), flush=True)
    for batch in args.batch:
        x = torch.randn(batch, 64, generator=torch.Generator().manual_seed(1))
        medians = interleaved_medians({"eager": step, "compiled": compiled}, x, args.rounds,
                                      clock)
        eager, comp = (medians[k] * 1e3 for k in ("eager", "compiled"))
        line = f"{batch:>6} {eager:9.3f} {comp:12.3f} {comp / eager:15.2f}"
        lines.append(line)
        print(line, flush=True)
    return lines


if __name__ == "__main__":
    main()
