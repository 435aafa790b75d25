"""The Triton kernels of the fused sampler equal its PyTorch path (same noise, float32 rounding).

Without a GPU the kernels run through Triton's interpreter, which must be switched on before
Triton is imported: that check runs in a fresh Python process. With a GPU the automatic dispatch
(Triton for float32 CUDA tensors) is compared with the PyTorch path on the same device.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

# (shape, n_steps): last-dim and batched shapes, masked entries, one step, and the largest K
CASES = [((7, 5), 5), ((3, 4, 9), 3), ((2, 33), 2), ((4, 100), 9), ((1, 16384), 3)]

SCRIPT = """
import json, sys
import torch
from redge_mini import diffusion
from redge_mini._triton_sampler import MAX_K

device = sys.argv[1]
cases = json.loads(sys.argv[2])
gen = torch.Generator().manual_seed(0)
out = []
for shape, n_steps in cases:
    shape = tuple(shape)
    logits, noise, weights = (torch.randn(shape, generator=gen) for _ in range(3))
    logits[..., 1] = float("-inf")  # a masked category
    uniform = torch.rand(shape[:-1] + (1,), generator=gen)
    logits, noise, weights, uniform = (t.to(device) for t in (logits, noise, weights, uniform))
    results = {}
    for backend in ("torch", "triton"):
        leaves = [t.clone().requires_grad_(True) for t in (logits, noise)]
        hard, soft, *_ = diffusion._FusedSampler.apply(*leaves, uniform, n_steps, 0.5, backend)
        ((hard + soft) * weights).sum().backward()
        results[backend] = [hard, soft, leaves[0].grad, leaves[1].grad]
    auto = diffusion._backend(logits)
    scale = [r.abs().max().item() for r in results["torch"]]
    errors = [(a - b).abs().max().item() for a, b in zip(results["torch"], results["triton"])]
    masked = results["triton"][2][..., 1].abs().max().item()
    out.append(dict(shape=shape, errors=errors, scale=scale, masked=masked, auto=auto,
                    max_k=MAX_K))
print(json.dumps(out))
"""


def _run(device: str) -> list[dict]:
    env = dict(os.environ)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, device, json.dumps(CASES)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(rows: list[dict]) -> None:
    assert len(rows) == len(CASES)
    for row in rows:
        hard, soft, grad_logits, grad_noise = row["errors"]
        assert hard == 0.0, row  # the same categories drawn
        # float32: values ~1 agree to a few ulps; gradients to a few ulps of their scale
        assert soft <= 1e-6, row
        assert grad_logits <= 1e-5 * max(1.0, row["scale"][2]), row
        assert grad_noise <= 1e-5 * max(1.0, row["scale"][3]), row
        assert row["masked"] == 0.0, row  # exactly zero gradient at the masked category
    assert max(row["shape"][-1] for row in rows) == rows[0]["max_k"]


def test_kernels_equal_the_pytorch_path_under_the_interpreter():
    rows = _run("cpu")
    _check(rows)
    # CPU tensors never pick the Triton kernels (the C++ sampler where it is built)
    assert {row["auto"] for row in rows} <= {"torch", "cpp"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernels_equal_the_pytorch_path_on_cuda():
    rows = _run("cuda")
    _check(rows)
    assert {row["auto"] for row in rows} == {"triton"}
