"""ReDGE in someone else's model: the discrete VAE of DALL-E, eager against ``torch.compile``.

The model is OpenAI's own code (``pip install DALL-E``; not a dependency of the book, imported
only here): its ``Encoder`` gives logits over ``K`` codes at every position of a grid
(``(batch, K, h, w)``, the codes along ``dim=1``), its ``Decoder`` reads a relaxed one-hot grid
of the same shape. The one change a user makes is the relaxation::

    z = torch.nn.functional.gumbel_softmax(logits, tau=1.0, dim=1)   # as in DALL-E's training
    z = redge_mini.redge(logits, 5, 0.5, dim=1)                      # swapped in

One step is forward + backward of the squared error between the decoder's output and the
input (random images; only the cost is measured). ``torch.compile(forward, fullgraph=True)``
must keep the whole model in one graph; the second batch size recompiles with dynamic shapes.
Times: interleaved ``blocked_autorange`` medians (``bench_compile.interleaved_medians``), the
compile itself not timed. Run from the repository root::

    pip install --no-deps DALL-E
    python benchmarks/bench_dvae.py --codes 512 8192 --batch 8 16

Issue 22: with the sampler as a torch operator a compiled step must cost no more than the eager
one, and must compile at all (before: 7-8 graph breaks, a failure at the second batch size).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import redge_mini

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import as_step, interleaved_medians  # noqa: E402

RELAXATIONS = {
    "redge": lambda logits: redge_mini.redge(logits, 5, 0.5, dim=1),
    "gumbel_softmax": lambda logits: torch.nn.functional.gumbel_softmax(logits, tau=1.0, dim=1),
}


def make_forward(codes: int, relaxation: str, n_hid: int = 64, seed: int = 0):
    try:
        from dall_e import Decoder, Encoder
    except ImportError as error:  # not a dependency of the book
        raise SystemExit("this benchmark needs OpenAI's DALL-E package: pip install --no-deps "
                         f"DALL-E ({error})") from None
    torch.manual_seed(seed)  # DALL-E's layers initialise from the global generator
    encoder = Encoder(n_hid=n_hid, vocab_size=codes, use_mixed_precision=False)
    decoder = Decoder(n_init=32, n_hid=n_hid, vocab_size=codes, use_mixed_precision=False)
    # (their requires_grad=True fails: an in-place init of a leaf; trained weights need grads)
    for parameter in (*encoder.parameters(), *decoder.parameters()):
        parameter.requires_grad_(True)
    relax = RELAXATIONS[relaxation]

    def forward(x):
        z = relax(encoder(x))
        out = decoder(z)[:, :3]  # the first three of the logit-Laplace channels: the means
        return (out - x).pow(2).mean()

    return forward


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, nargs="+", default=[512, 8192])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--size", type=int, default=32, help="image side (a multiple of 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    redge_mini.set_validate_args(False)  # value checks cannot run inside a graph
    lines = [f"# DALL-E dVAE (n_hid 64), {args.size}x{args.size} images, one step = forward + "
             f"backward, {args.threads} threads, torch {torch.__version__}, {args.clock} clock, "
             f"load average {os.getloadavg()[0]:.1f} at start; fullgraph=True, the second batch "
             "size compiled with dynamic shapes",
             f"{'codes':>6} {'batch':>6} {'relaxation':>15} {'eager ms':>9} {'compiled ms':>12} "
             f"{'compiled/eager':>15} {'eager/GS eager':>15}"]
    print("\n".join(lines), flush=True)
    for codes in args.codes:
        steps = {}
        for name in RELAXATIONS:
            forward = make_forward(codes, name)
            steps[f"{name} eager"] = as_step(forward)
            steps[f"{name} compiled"] = as_step(torch.compile(forward, fullgraph=True))
        for batch in args.batch:
            x = torch.rand(batch, 3, args.size, args.size,
                           generator=torch.Generator().manual_seed(batch))
            medians = interleaved_medians(steps, x, args.rounds, clock)
            for name in RELAXATIONS:
                eager, comp = medians[f"{name} eager"], medians[f"{name} compiled"]
                line = (f"{codes:>6} {batch:>6} {name:>15} {eager * 1e3:9.2f} "
                        f"{comp * 1e3:12.2f} {comp / eager:15.2f} "
                        f"{eager / medians['gumbel_softmax eager']:15.2f}")
                lines.append(line)
                print(line, flush=True)
    return lines


if __name__ == "__main__":
    main()
