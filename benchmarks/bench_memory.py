"""Peak extra memory of one forward + backward call on CPU: ReDGE's estimators against torch's
``gumbel_softmax``, at a large vocabulary and a long grid.

Run from the repository root::

    python benchmarks/bench_memory.py                       # (256, 151936) float32, n_steps = 50
    python benchmarks/bench_memory.py --shape 64x32000 --n-steps 5 50 --threads 1 2

How it measures: each contender runs in a fresh process (so that no earlier allocation is
cached by the allocator), which builds the logits and the weights, runs the call once on one row
(code paths loaded), then resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5:
``VmHWM`` becomes the current ``VmRSS``), runs one call (fresh leaf logits -> hard sample ->
``(sample * weights).sum()`` -> ``backward()``) and reports ``VmHWM - VmRSS before``: every page
the call touched beyond the inputs, from torch's CPU allocator and from the C++ kernel's scratch
alike (``tracemalloc`` sees neither). Linux only. ``--store-bytes`` sets the C++ adjoint's
checkpointing threshold (:data:`redge_mini._cpp_sampler.STORE_BYTES`; a huge value restores the
policy before issue 22, every denoiser output kept). The bound of issue 22: at most 1.2 times
``gumbel_softmax``'s extra memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

BOUND = 1.2
"""Issue 22: peak extra memory at most this multiple of gumbel_softmax's."""


def peak_extra_bytes(name: str, shape: tuple[int, ...], n_steps: int, store_bytes: int | None):
    """Peak RSS of one call beyond its inputs, in this (fresh) process."""
    import redge_mini
    from redge_mini import _cpp_sampler
    from redge_mini.book.timing import peak_extra_bytes

    if store_bytes is not None and _cpp_sampler.available():
        _cpp_sampler.set_store_bytes(store_bytes)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=gen)
    weights = torch.randn(shape, generator=gen)
    if name == "gumbel_softmax":
        def sampler(x):
            return torch.nn.functional.gumbel_softmax(x, tau=1.0, hard=True)
    else:
        function = getattr(redge_mini, name)

        def sampler(x):
            return function(x, n_steps, 0.5, hard=True)

    def call(x, w):
        leaf = x.detach().requires_grad_(True)
        (sampler(leaf) * w).sum().backward()

    call(logits[..., :1, :], weights[..., :1, :])
    return int(peak_extra_bytes(lambda: call(logits, weights), release_freed=False))


def measure(name, shape, n_steps, threads, store_bytes=None) -> int:
    """:func:`peak_extra_bytes` in a fresh process with ``threads`` intra-op threads."""
    code = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import torch; "
        f"torch.set_num_threads({threads}); import bench_memory as b; "
        f"print(json.dumps(b.peak_extra_bytes({name!r}, {tuple(shape)!r}, {n_steps!r}, "
        f"{store_bytes!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="256x151936", help="AxK or AxBxK")
    parser.add_argument("--n-steps", type=int, nargs="+", default=[50])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--estimators", nargs="+", default=["redge", "redge_cov", "reindge"])
    parser.add_argument("--store-bytes", type=int, default=None,
                        help="the C++ adjoint's checkpointing threshold (default: the package's)")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    lines = [f"# peak extra MiB of one forward + backward call (VmHWM - VmRSS), float32 {shape}, "
             f"store_bytes={args.store_bytes or 'default'}",
             f"{'threads':>7} {'n_steps':>7} {'estimator':>10} {'MiB':>9} {'GS MiB':>9} "
             f"{'ratio':>6} {'<= 1.2':>6}"]
    print("\n".join(lines), flush=True)
    for threads in args.threads:
        gs = measure("gumbel_softmax", shape, 0, threads) / 2**20
        for n_steps in args.n_steps:
            for name in args.estimators:
                ours = measure(name, shape, n_steps, threads, args.store_bytes) / 2**20
                ratio = ours / gs
                line = (f"{threads:>7} {n_steps:>7} {name:>10} {ours:9.0f} {gs:9.0f} "
                        f"{ratio:6.2f} {str(ratio <= BOUND):>6}")
                lines.append(line)
                print(line, flush=True)
    return lines


if __name__ == "__main__":
    main()
