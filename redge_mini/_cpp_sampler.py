"""ReDGE's fused sampler for CPU tensors: a C++ extension compiled on first use.

:func:`sample` and :func:`adjoint` have the signatures of :mod:`redge_mini._triton_sampler`'s
(plus ``variant="cov"``: ReDGE-cov, whose reference noise and its moments are differentiated too)
and the same algorithm (the trajectory recomputed in the backward pass, nothing stored between
the passes), written in C++ (``redge_mini/csrc/fused_sampler.cpp``, which explains its layout:
eight rows side by side). On small problems a ReDGE call through the PyTorch path is dominated by
the dispatch of dozens of small operations; here each pass is one call.

The source is compiled with :func:`torch.utils.cpp_extension.load` the first time a CPU tensor
reaches :func:`redge_mini._op.fused_sample` (about 30 s on 2 cores; it needs a C++
compiler and ``ninja``, from the system or ``pip install ninja``) and cached in torch's
extension folder (:func:`build_directory`) under a name that holds the torch version and a hash
of the source (and of the compiler flags), so a later process only imports it, and a changed
source is built afresh under a new name: a cached build of another source is never loaded. Once
loaded, the extension also registers the CPU and AutogradCPU kernels of the operators
``torch.ops.redge_mini.sample`` and ``adjoint`` (defined in :mod:`redge_mini._op`; the dispatcher
refuses a kernel whose signature does not match an operator's schema, which then counts as a
failed build). If the build fails, one warning says why and the PyTorch path is used. Set the
environment variable ``REDGE_MINI_CPP=0`` to never build or use it (the C++ kernels read it at
every call too).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("csrc") / "fused_sampler.cpp"
"""The C++ source of both passes."""

ENV_SWITCH = "REDGE_MINI_CPP"
"""Environment variable: ``0`` disables the extension (the PyTorch path is used); read at every
call, so it can be switched within a process."""

FLAGS = ["-O3", "-fopenmp-simd"]
"""Compiler flags: ``-fopenmp-simd`` lets the row loops' reductions vectorise (no OpenMP
runtime); the float32 kernels also carry an AVX2/FMA copy picked at load time on x86-64."""

KERNEL_MODULE = "redge_mini._op"
"""The module with the operators' Python kernels, which the C++ kernels call for what they do
not run (``REDGE_MINI_CPP=0`` at the time of a call, dtypes other than float32/float64)."""

TABLE_MODULE = "redge_mini.schedule"
"""The module with :func:`~redge_mini.schedule.step_tensor`, the step coefficients that the C++
kernels read (the operators' kernels fetch each ``(n_steps, t_1)``'s table from it once)."""

_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def enabled() -> bool:
    """Whether the environment allows the extension (``REDGE_MINI_CPP`` is not ``0``)."""
    return os.environ.get(ENV_SWITCH, "1").strip() != "0"


def extension_name() -> str:
    """The extension's name: the torch version and a hash of the source, so that a new torch
    or a changed source never loads a stale build."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:10]
    version = re.sub(r"\W", "_", torch.__version__)
    return f"redge_mini_fused_{version}_{digest}"


def build_directory() -> Path:
    """Where the extension is built and cached: ``redge_mini/<name>`` under torch's extension
    folder (``TORCH_EXTENSIONS_DIR``, else ``$XDG_CACHE_HOME/torch_extensions``, else
    ``~/.cache/torch_extensions``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(cache) / "torch_extensions")
    return Path(root) / "redge_mini" / extension_name()


def _import_built(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> ModuleType:
    name, folder = extension_name(), build_directory()
    built = folder / f"{name}.so"
    if built.exists():  # built by an earlier process: import it (~5 ms instead of ~1 s)
        try:
            return _import_built(built)
        except ImportError:
            pass  # half-written by a concurrent build, or foreign: build again below
    if shutil.which("ninja") is None:  # torch's build needs it; the `ninja` wheel brings one
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # cpp_extension then says that ninja is missing
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    # the only slow step of the package: say so, once per machine and torch version
    print(
        f"redge_mini: building the C++ sampler into {folder} (about 30 s, once; "
        f"{ENV_SWITCH}=0 skips it)...", file=sys.stderr, flush=True,
    )
    return cpp_extension.load(
        name, [str(SOURCE)], extra_cflags=FLAGS, build_directory=str(folder), verbose=False
    )


def load() -> ModuleType | None:
    """The compiled extension (built on the first call of the process if not cached), or None
    when it is disabled or could not be built (then :func:`failure` says why)."""
    global _module, _failure
    if not enabled():
        return None
    if _module is not None or _failure is not None:
        return _module
    with _lock:
        if _module is None and _failure is None:
            try:
                module = _build()
                # the CPU kernels of torch.ops.redge_mini.sample/adjoint (defined by _op)
                module.register_kernels(KERNEL_MODULE, TABLE_MODULE)
                _module = module
            except Exception as error:  # no compiler, no ninja, a failed build
                lines = str(error).strip().splitlines() or [""]
                _failure = f"{type(error).__name__}: {lines[-1]}"
                warnings.warn(
                    "redge_mini: the C++ sampler could not be built, using the PyTorch path "
                    f"(slower on small problems). {_failure}",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module


def available() -> bool:
    """Whether the extension is enabled and built (builds it on the first call)."""
    return load() is not None


def failure() -> str | None:
    """Why the build failed (None if it did not, or was not tried)."""
    return _failure


def _table(n_steps: int, t_1: float) -> torch.Tensor:
    from .schedule import cached, step_tensor

    return cached(step_tensor, n_steps, t_1)


def _extension() -> ModuleType:
    module = load()
    if module is None:
        raise RuntimeError(f"the C++ sampler is not available: {_failure or 'disabled'}")
    return module


def _is_cov(variant: str) -> bool:
    if variant not in ("plain", "cov"):
        raise ValueError(f"variant must be 'plain' or 'cov', got {variant!r}")
    return variant == "cov"


def sample(
    logits: torch.Tensor,
    noise: torch.Tensor,
    uniform: torch.Tensor,
    n_steps: int,
    t_1: float,
    variant: str = "plain",
    want_drawn: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(hard, soft, drawn)`` of ReDGE (``variant="cov"``: ReDGE-cov) for ``(rows, K)`` float32
    or float64 CPU logits and noise and ``rows`` uniforms (any shape); ``drawn`` holds the
    ``rows`` drawn categories (int64; None unless ``want_drawn``). Same values as
    :func:`redge_mini.diffusion.ddim_sample` and an inverse-CDF draw, to rounding. A row whose
    soft sample (or uniform) is NaN (non-finite logits, or every category masked) gets a NaN hard
    row (and category 0 in ``drawn``)."""
    cov = _is_cov(variant)
    out = _extension().sample(
        logits.contiguous(), noise.contiguous(), uniform.contiguous(), _table(n_steps, t_1), cov,
        want_drawn,
    )
    return out[0], out[1], (out[2] if want_drawn else None)


def adjoint(
    logits: torch.Tensor,
    noise: torch.Tensor,
    grad: torch.Tensor,
    n_steps: int,
    t_1: float,
    want_noise: bool,
    variant: str = "plain",
    grad_hard: torch.Tensor | None = None,
    drawn: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of ``<grad, S(logits, noise)>`` in the logits and (if asked) the noise.

    ReinDGE: with ``grad_hard`` (the part of ``grad`` that reached the hard sample) and the
    categories ``drawn`` by the forward pass (int64, one per row), the logits' gradient also gets
    ReinMax's step at ``t_1``, ``[(g . d) d - J(S)^T g] / 2`` for ``g = grad_hard``,
    ``d = H - S`` (plain sampler only).
    """
    cov = _is_cov(variant)
    reinmax = (None, None) if grad_hard is None else (grad_hard.contiguous(),
                                                      drawn.reshape(-1).contiguous())
    out = _extension().adjoint(
        logits.contiguous(), noise.contiguous(), grad.contiguous(), _table(n_steps, t_1), cov,
        want_noise, *reinmax,
    )
    return out[0], (out[1] if want_noise else None)


STORE_BYTES = 1 << 22
"""The C++ adjoint keeps every denoiser output of a block of rows (``n_steps - 1`` slots of
``8 K`` values per thread) up to this many bytes; above, it keeps every ``seg``-th state,
``seg = ceil(sqrt(n_steps - 1))``, and recomputes each segment from its checkpoint (the same
values: the same operations on the same numbers), so that its scratch memory grows as
``sqrt(n_steps) K``."""


def set_store_bytes(value: int) -> int:
    """Set the C++ adjoint's checkpointing threshold (bytes per thread, see
    :data:`STORE_BYTES`); returns the previous value. For tests and memory measurements."""
    return int(_extension().set_store_bytes(int(value)))
