"""Tests of redge_mini.book.runtime: the scale switch, the results location and the JSON round
trip."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from redge_mini.book import runtime

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("REDGE_SCALE", raising=False)
    monkeypatch.delenv("REDGE_RESULTS_DIR", raising=False)
    return monkeypatch


@pytest.mark.parametrize("value", ["medium", "0", "fast", "small,full"])
def test_scale_invalid_env_raises(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("REDGE_SCALE", value)
    with pytest.raises(ValueError, match="REDGE_SCALE"):
        runtime.scale()


def test_results_dir_default_is_repo_book_results(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.chdir(REPO_ROOT / "chapters")
    assert runtime.results_dir() == REPO_ROOT / "book" / "results"
    assert runtime.results_dir("polyprog") == REPO_ROOT / "book" / "results" / "polyprog"


def test_results_dir_outside_a_clone_and_set_results_dir(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.chdir(tmp_path)
    # in a clone, the package's own book/results wins whatever the working directory
    assert runtime.results_dir() == REPO_ROOT / "book" / "results"
    # an installed wheel has none beside it: the working directory's, else ./redge_results
    clean_env.setattr(runtime, "_PACKAGE_RESULTS", tmp_path / "site-packages" / "book" / "results")
    assert runtime.results_dir() == tmp_path.resolve() / "redge_results"
    (tmp_path / "book" / "results").mkdir(parents=True)
    assert runtime.results_dir() == tmp_path.resolve() / "book" / "results"
    (tmp_path / "book" / "results").rmdir()
    (tmp_path / "elsewhere").mkdir()
    clean_env.setenv("REDGE_RESULTS_DIR", str(tmp_path / "from_env"))
    try:
        runtime.set_results_dir(tmp_path / "elsewhere")
        assert runtime.results_dir("vae") == (tmp_path / "elsewhere" / "vae").resolve()
    finally:
        runtime.set_results_dir(None)
    assert runtime.results_dir() == (tmp_path / "from_env").resolve()
    with pytest.raises(TypeError, match="path"):
        runtime.set_results_dir(3)  # type: ignore[arg-type]


def test_results_dir_env_override(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("REDGE_RESULTS_DIR", str(tmp_path))
    assert runtime.results_dir() == tmp_path.resolve()
    assert runtime.results_dir("vae") == tmp_path.resolve() / "vae"


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\\b", " x"])
def test_results_dir_rejects_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="experiment"):
        runtime.results_dir(bad)


def test_results_dir_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="experiment"):
        runtime.results_dir(3)  # type: ignore[arg-type]


def test_results_dir_from_another_cwd(tmp_path: Path) -> None:
    """nbval and jupyter-book execute from different folders inside the clone: same answer."""
    tmp_path = REPO_ROOT / "_build"
    tmp_path.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REDGE_RESULTS_DIR", "REDGE_SCALE")}
    code = (
        "from redge_mini.book import runtime; "
        "print(runtime.results_dir('polyprog')); print(runtime.scale())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(out[0]) == REPO_ROOT / "book" / "results" / "polyprog"
    assert out[1] in runtime.SCALES


def test_invalid_scale_from_subprocess_fails_loudly(tmp_path: Path) -> None:
    env = dict(os.environ, REDGE_SCALE="huge")
    proc = subprocess.run(
        [sys.executable, "-c", "from redge_mini.book import runtime; runtime.scale()"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "REDGE_SCALE" in proc.stderr


def test_run_metadata_fields() -> None:
    meta = runtime.run_metadata()
    assert meta["torch"] == torch.__version__
    assert meta["numpy"] == np.__version__
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["device"] == runtime.device().type
    assert meta["scale"] in runtime.SCALES
    assert meta["timestamp_utc"].endswith("+00:00")
    assert os.uname().nodename not in meta["platform"]
    assert meta["sampler"] in ("cpp", "triton", "torch")
    json.dumps(meta)  # plain JSON, no custom objects


def test_run_metadata_names_the_device_the_run_used(tmp_path: Path) -> None:
    """A CPU run is recorded as one even where a GPU is the default, and the stored file keeps
    the metadata of the run rather than re-describing the machine at save time."""
    meta = runtime.run_metadata("cpu")
    assert meta["device"] == "cpu"
    assert meta["device_name"] == runtime.device_name("cpu")
    assert meta["device_name"].endswith(f", {os.cpu_count()} cores")
    marked = {**meta, "device_name": "the run's device"}
    path = runtime.save_results("demo", "run", {"x": 1}, config={}, root=tmp_path,
                                metadata=marked)
    assert json.loads(path.read_text())["metadata"] == marked


def test_save_load_round_trip(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("REDGE_RESULTS_DIR", str(tmp_path))
    data = {
        "loss": [1.0, 0.5, float("nan")],
        "tensor": torch.tensor([[1, 2], [3, 4]]),
        "array": np.arange(3, dtype=np.float32),
        "scalar": np.float64(0.25),
    }
    config = {"L": 20, "K": 3, "estimator": "redge"}
    path = runtime.save_results("demo", "run_b", data, config=config, seed=7)
    assert path == tmp_path.resolve() / "demo" / "run_b.json"
    runtime.save_results("demo", "run_a", {"loss": [2.0]}, config=config)

    record = runtime.load_results("demo", "run_b")
    assert isinstance(record, dict)
    assert record["experiment"] == "demo"
    assert record["name"] == "run_b"
    assert record["config"] == config
    assert record["seed"] == 7
    assert record["data"]["tensor"] == [[1, 2], [3, 4]]
    assert record["data"]["array"] == [0.0, 1.0, 2.0]
    assert record["data"]["scalar"] == 0.25
    assert record["data"]["loss"][:2] == [1.0, 0.5]
    assert np.isnan(record["data"]["loss"][2])
    assert record["metadata"]["torch"] == torch.__version__

    records = runtime.load_results("demo")
    assert isinstance(records, list)
    assert [r["name"] for r in records] == ["run_a", "run_b"]
    assert records[0]["seed"] is None
    # atomic write leaves no temporary file behind
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["run_a.json", "run_b.json"]


def test_save_results_explicit_root(tmp_path: Path) -> None:
    path = runtime.save_results("demo", "x", {"v": 1}, config={}, root=tmp_path / "out")
    assert path == tmp_path / "out" / "x.json"
    assert json.loads(path.read_text())["data"] == {"v": 1}


def test_save_results_overwrites(tmp_path: Path) -> None:
    runtime.save_results("demo", "x", {"v": 1}, config={}, root=tmp_path)
    runtime.save_results("demo", "x", {"v": 2}, config={}, root=tmp_path)
    assert json.loads((tmp_path / "x.json").read_text())["data"] == {"v": 2}


def test_save_results_rejects_unserialisable(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="object"):
        runtime.save_results("demo", "x", {"v": object()}, config={}, root=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "exc", "argument"),
    [
        ({"data": [1, 2]}, TypeError, "data"),
        ({"config": None}, TypeError, "config"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"name": "a/b"}, ValueError, "name"),
    ],
)
def test_save_results_validates(tmp_path: Path, kwargs: dict, exc: type, argument: str) -> None:
    args = {"experiment": "demo", "name": "x", "data": {}, "config": {}, "root": tmp_path}
    args.update(kwargs)
    with pytest.raises(exc, match=argument):
        runtime.save_results(**args)


def test_load_results_missing_returns_none(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("REDGE_RESULTS_DIR", str(tmp_path))
    assert runtime.load_results("nothing") is None
    assert runtime.load_results("nothing", "x") is None
    (tmp_path / "empty").mkdir()
    assert runtime.load_results("empty") is None


def test_set_seed_reproducible() -> None:
    g1 = runtime.set_seed(123)
    a = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g1))
    g2 = runtime.set_seed(123)
    b = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g2))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    assert g2.device.type == "cpu"


@pytest.mark.parametrize(("seed", "exc"), [(-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_set_seed_validates(seed: object, exc: type) -> None:
    with pytest.raises(exc, match="seed"):
        runtime.set_seed(seed)  # type: ignore[arg-type]
