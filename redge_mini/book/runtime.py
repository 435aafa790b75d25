"""Where and how big: the compute device, the scale switch and stored full-scale results.

Every chapter and experiment asks this module three questions:

* :func:`device` -- where to compute (CUDA when available, else CPU);
* :func:`scale` -- how much to compute: ``"small"`` (a chapter runs in well under a minute on
  two CPU cores) or ``"full"`` (the paper-sized protocol, the default on a CUDA GPU);
* :func:`load_results` -- what a full-scale run stored earlier, found from the package's
  location whatever the working directory (nbval executes a notebook from the build folder,
  jupyter-book from ``chapters/``, a reader wherever the notebook is).

Environment variables:

``REDGE_SCALE``
    ``small`` or ``full`` (case-insensitive); overrides the automatic choice. An empty value
    counts as unset; any other value raises :class:`ValueError`.
``REDGE_RESULTS_DIR``
    Root folder of stored results. :func:`set_results_dir` sets it from Python and wins over the
    variable; without either, the root is ``book/results`` beside the package (a clone of the
    book, from whichever folder a notebook runs), else the first ``book/results`` folder found in
    the working directory or one of its parents (where a downloaded notebook unpacks them), else
    ``./redge_results``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import tempfile
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SCALES",
    "device",
    "device_name",
    "load_results",
    "results_dir",
    "git_state",
    "run_metadata",
    "save_results",
    "scale",
    "set_results_dir",
    "set_seed",
]

#: The accepted values of :func:`scale`.
SCALES: tuple[str, ...] = ("small", "full")

_SCALE_ENV = "REDGE_SCALE"
_RESULTS_ENV = "REDGE_RESULTS_DIR"
_RESULTS_ROOT: Path | None = None


def set_results_dir(path: str | os.PathLike[str] | None) -> None:
    """Set the root folder of stored results for this process (``None`` restores the default).

    Parameters
    ----------
    path : str, os.PathLike or None
        Folder holding one sub-folder per experiment; it need not exist yet.
    """
    global _RESULTS_ROOT
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, os.PathLike or None, got {type(path).__name__}")
    _RESULTS_ROOT = None if path is None else Path(path).expanduser().resolve()


#: ``book/results`` of the clone that holds this package (absent for an installed wheel).
_PACKAGE_RESULTS = Path(__file__).resolve().parents[2] / "book" / "results"


def _default_results_root() -> Path:
    if _PACKAGE_RESULTS.is_dir():
        return _PACKAGE_RESULTS
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidate = folder / "book" / "results"
        if candidate.is_dir():
            return candidate
    return here / "redge_results"


def device() -> torch.device:
    """Return the compute device: ``cuda`` if a CUDA GPU is available, else ``cpu``.

    Returns
    -------
    torch.device
        ``torch.device("cuda")`` or ``torch.device("cpu")``.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def scale() -> str:
    """Return the compute scale, ``"small"`` or ``"full"``.

    The environment variable ``REDGE_SCALE`` (``small`` or ``full``, case-insensitive) wins;
    otherwise the scale is ``"full"`` when a CUDA GPU is available and ``"small"`` on CPU.

    Returns
    -------
    str
        ``"small"`` or ``"full"``.

    Raises
    ------
    ValueError
        If ``REDGE_SCALE`` is set to anything other than ``small`` or ``full``.
    """
    raw = os.environ.get(_SCALE_ENV, "")
    value = raw.strip().lower()
    if value == "":
        return "full" if torch.cuda.is_available() else "small"
    if value not in SCALES:
        raise ValueError(
            f"environment variable {_SCALE_ENV}={raw!r} is invalid: expected one of {SCALES}"
        )
    return value


def _check_name(value: object, argument: str) -> str:
    """Validate a file or folder name component (no separators, not empty)."""
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a str, got {type(value).__name__}")
    if value in ("", ".", "..") or "/" in value or "\\" in value or value.strip() != value:
        raise ValueError(f"{argument}={value!r} is not a valid name (no slashes, not empty)")
    return value


def results_dir(experiment: str | None = None) -> Path:
    """Return the folder of stored results, or of one experiment's results.

    The root is, in this order: the folder given to :func:`set_results_dir`; the environment
    variable ``REDGE_RESULTS_DIR``; ``book/results`` of the clone that holds the package (so a
    chapter finds the book's stored results from any folder: ``chapters/``, nbval's build folder,
    a copy of the notebook elsewhere); the first ``book/results`` folder in the working directory
    or one of its parents (an installed wheel: where a downloaded notebook unpacks them); else
    ``./redge_results``. The folder is not created.

    Parameters
    ----------
    experiment : str or None
        Experiment name (a single path component, e.g. ``"polyprog"``); ``None`` for the root.

    Returns
    -------
    pathlib.Path
        Absolute path of ``<root>`` or ``<root>/<experiment>``.
    """
    override = os.environ.get(_RESULTS_ENV, "").strip()
    if _RESULTS_ROOT is not None:
        root = _RESULTS_ROOT
    elif override:
        root = Path(override).expanduser().resolve()
    else:
        root = _default_results_root()
    if experiment is None:
        return root
    return root / _check_name(experiment, "experiment")


def _package_version(name: str) -> str:
    try:
        return _metadata.version(name)
    except _metadata.PackageNotFoundError:
        return "not installed"


def device_name(where: torch.device | str | None = None) -> str:
    """A readable name of a device: the GPU model, or the CPU model and its core count.

    ``None`` means :func:`device`. The CPU model comes from ``/proc/cpuinfo`` where there is
    one, else from :mod:`platform`.
    """
    where = device() if where is None else torch.device(where)
    if where.type == "cuda":
        return torch.cuda.get_device_name(where)
    model = platform.processor() or platform.machine() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def git_state(folder: str | Path | None = None) -> dict[str, Any]:
    """``{"git_commit": 40 hex digits, "git_dirty": bool}`` of the checkout holding this package
    (or ``folder``); ``{"git_commit": "unknown", "git_dirty": None}`` outside a git checkout.

    ``git_dirty`` is True when tracked files differ from the commit (untracked files and the
    result folder ``book/results`` do not count: a run writes there while it runs).
    """
    import subprocess

    where = Path(folder) if folder is not None else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                 ".", ":(exclude)book/results"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}
    if len(commit) != 40:
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def run_metadata(where: torch.device | str | None = None, *,
                 run_scale: str | None = None) -> dict[str, Any]:
    """Describe the software and hardware a result was computed with.

    Parameters
    ----------
    where : torch.device, str or None
        The device the computation ran on; ``None`` means :func:`device` (the default device).
        A CPU run on a machine with a GPU is thus recorded as a CPU run.

    Returns
    -------
    dict
        Keys ``python``, ``torch``, ``numpy``, ``redge_mini`` (version strings), ``device``
        (``"cpu"`` or ``"cuda"``), ``device_name``, ``num_threads`` (torch CPU threads),
        ``scale``, ``platform`` (OS and architecture, no hostname), ``timestamp_utc``
        (ISO 8601), ``sampler``, the implementation of ReDGE's fused sampler for float32
        tensors there (``"cpp"``, ``"triton"`` or ``"torch"``), and ``git_commit`` /
        ``git_dirty`` (:func:`git_state`). ``scale`` is ``run_scale`` when given (the scale the
        run actually used), else :func:`scale`.
    """
    from ..diffusion import _backend

    where = device() if where is None else torch.device(where)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "redge_mini": _package_version("redge_mini"),
        "device": where.type,
        "device_name": device_name(where),
        "num_threads": torch.get_num_threads(),
        "scale": run_scale if run_scale is not None else scale(),
        "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
        "timestamp_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "sampler": _backend(torch.zeros(1, 2, device=where)),
        **git_state(),
    }


def _to_jsonable(value: Any) -> Any:
    """``json.dump`` fallback for tensors, arrays and numpy scalars."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} cannot be stored as JSON")


def save_results(
    experiment: str,
    name: str,
    data: dict[str, Any],
    *,
    config: dict[str, Any],
    seed: int | None = None,
    root: Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Store one run's results as JSON, atomically.

    Writes ``<root or results_dir(experiment)>/<name>.json`` holding
    ``{"experiment", "name", "config", "seed", "metadata", "data": data}``, where ``metadata``
    is the one given or else :func:`run_metadata`.
    Tensors, numpy arrays and numpy scalars are converted to lists and numbers. The file is
    written to a temporary file in the same folder and then renamed, so a reader never sees a
    half-written file.

    Parameters
    ----------
    experiment : str
        Experiment name (one path component).
    name : str
        File stem (one path component), e.g. ``"L20_K3_seed0"``.
    data : dict
        The metrics and histories to store.
    config : dict
        The configuration that produced ``data``.
    seed : int or None
        The seed of the run, if any.
    root : pathlib.Path or None
        Folder to write into instead of ``results_dir(experiment)``.
    metadata : dict or None
        What :func:`run_metadata` said when the run was made (default: call it now).

    Returns
    -------
    pathlib.Path
        The path of the written file.
    """
    _check_name(experiment, "experiment")
    _check_name(name, "name")
    if not isinstance(data, dict):
        raise TypeError(f"data must be a dict, got {type(data).__name__}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    folder = Path(root) if root is not None else results_dir(experiment)
    record = {
        "experiment": experiment,
        "name": name,
        "config": config,
        "seed": seed,
        "metadata": run_metadata() if metadata is None else metadata,
        "data": data,
    }
    text = json.dumps(record, indent=1, default=_to_jsonable, allow_nan=True)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_results(experiment: str, name: str | None = None) -> dict | list[dict] | None:
    """Load stored results of an experiment.

    Parameters
    ----------
    experiment : str
        Experiment name (one path component).
    name : str or None
        File stem of one result; ``None`` loads every ``*.json`` of the experiment.

    Returns
    -------
    dict, list of dict, or None
        The record written by :func:`save_results` when ``name`` is given; otherwise the list of
        all records sorted by file name. ``None`` when nothing is stored (missing file, or a
        missing or empty folder).
    """
    folder = results_dir(experiment)
    if name is not None:
        path = folder / f"{_check_name(name, 'name')}.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    if not files:
        return None
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def set_seed(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators and return a fresh CPU generator.

    Parameters
    ----------
    seed : int
        Non-negative seed, below ``2**63``.

    Returns
    -------
    torch.Generator
        A CPU generator seeded with ``seed``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator
