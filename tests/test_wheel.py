"""A clean install: build the wheel, install it without extras into a fresh virtual environment
that holds torch (and torch's own dependencies) only, and run the library there.

The fresh environment sees torch through a ``.pth`` file pointing at a directory of links to
torch and its required packages from this environment (a ``pip install torch`` would download
hundreds of megabytes); numpy, matplotlib, tqdm, scipy and the rest are not on its path, so the
script below fails if the core imports any of them.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import importlib.util, json, sys
import torch
import redge_mini
from redge_mini import ALL_ESTIMATORS, ESTIMATORS, ReDGECategorical, sample
from redge_mini.exact import exact_gradient

out = {"absent": [m for m in ("numpy", "matplotlib", "tqdm", "scipy", "ipywidgets")
                  if importlib.util.find_spec(m) is None]}
out["book_imported"] = any(m.startswith("redge_mini.book") for m in sys.modules)
out["location"] = redge_mini.__file__
logits = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
logits[:, 4] = -torch.inf  # a masked category, categories along dim 1
ok = {}
for name in ESTIMATORS:
    theta = logits.clone().requires_grad_(True)
    pair = sample(name, theta, dim=1, generator=torch.Generator().manual_seed(1))
    (pair.hard * torch.arange(5.0).view(1, 5, 1)).sum().backward()
    ok[name] = bool((pair.hard.sum(1) == 1).all() and (pair.hard[:, 4] == 0).all()
                    and torch.isfinite(theta.grad).all() and (theta.grad[:, 4] == 0).all())
for name, spec in ALL_ESTIMATORS.items():
    theta = torch.zeros(2, 3, requires_grad=True)
    spec.loss(lambda x: x[..., 0].sum(-1), theta, 4).backward()
    ok[name + "_loss"] = bool(torch.isfinite(theta.grad).all())
dist = ReDGECategorical(logits=torch.zeros(2, 3))
ok["distribution"] = dist.rsample((5,)).shape == (5, 2, 3)
ok["exact"] = exact_gradient(lambda x: x[..., 0].sum(-1), torch.zeros(2, 3)).shape == (2, 3)
from redge_mini import _cpp_sampler, diffusion
out["cpp_source"] = _cpp_sampler.SOURCE.is_file()  # shipped in the wheel
out["cpp_backend"] = diffusion._backend(torch.zeros(2, 3))
out["ok"] = ok
out["modules"] = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(out))
"""

TORCH_DEPS = ("torch", "filelock", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2",
              "markupsafe", "fsspec")


def _link_torch(target: Path) -> None:
    """Links to torch and the packages it needs at import time, taken from this environment."""
    target.mkdir()
    for dist_name in TORCH_DEPS:
        dist = metadata.distribution(dist_name)
        tops = (dist.read_text("top_level.txt") or "").split() or [dist_name.replace("-", "_")]
        for top in tops:
            for candidate in (Path(dist.locate_file(top)), Path(dist.locate_file(top + ".py"))):
                if candidate.exists():
                    (target / candidate.name).symlink_to(candidate)
    for extra in ("torchgen", "functorch"):  # shipped inside the torch distribution
        path = Path(metadata.distribution("torch").locate_file(extra))
        if path.exists() and not (target / extra).exists():
            (target / extra).symlink_to(path)


def _copy_sources(target: Path) -> None:
    """The files the build reads (building in the checkout would write build/ and egg-info)."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, target / name)
    shutil.copytree(ROOT / "redge_mini", target / "redge_mini",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks and venv layout of POSIX")
def test_wheel_installs_without_extras_next_to_torch_only_and_runs(tmp_path):
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    _copy_sources(src)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--disable-pip-version-check", "-w", str(wheels), str(src)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("redge_mini-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip()
                    for line in archive.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["torch>=2.3"]
    assert any("matplotlib" in r and 'extra == "book"' in r for r in requires)

    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    _link_torch(tmp_path / "torch_only")
    (Path(purelib) / "torch_only.pth").write_text(str(tmp_path / "torch_only") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, text=True,
    )
    # the C++ sampler built here (or cached) is what the installed copy imports: same torch,
    # same source, same cache folder
    from redge_mini import _cpp_sampler

    built = _cpp_sampler.available()
    cache = _cpp_sampler.build_directory().parent.parent
    result = subprocess.run(
        [str(python), "-I", "-c", SCRIPT], check=True, capture_output=True, text=True,
        cwd=tmp_path, env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
                           "TORCH_EXTENSIONS_DIR": str(cache)},
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["location"].startswith(purelib)  # the installed copy, not the checkout
    assert out["absent"] == ["numpy", "matplotlib", "tqdm", "scipy", "ipywidgets"]
    assert not out["book_imported"]
    assert all(out["ok"].values()), out["ok"]
    assert out["cpp_source"]
    assert out["cpp_backend"] == ("cpp" if built else "torch")
    assert sysconfig.get_paths()["purelib"] not in purelib
