"""The one-command runner: sequential, resumable, recording the device; summaries on demand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redge_mini.book.experiments import run_all
from redge_mini.book.experiments.summary import read_summary


def test_runner_runs_in_order_records_the_device_and_resumes(tmp_path) -> None:
    argv = ["--smoke", "--scale", "small", "--only", "polyprog,vae", "--device", "cpu",
            "--out", str(tmp_path), "--jobs", "2", "--threads", "1"]
    assert run_all.main(argv) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    runs = manifest["runs"]
    assert list(runs) == ["small-smoke/polyprog", "small-smoke/vae"]
    for entry in runs.values():
        assert entry["status"] == "finished" and len(entry["attempts"]) == 1
        assert entry["attempts"][0]["device"]["device"] == "cpu"
        assert entry["attempts"][0]["exit_status"] == 0
    # The attempts started in the order asked for, side by side (--jobs 2), one thread each,
    # and the manifest says so, with the commit.
    first, second = (runs[k]["attempts"][0] for k in runs)
    assert first["started"] <= second["started"]
    assert manifest["jobs"] == 2 and first["threads"] == 1 and first["side_by_side"] == 2
    assert len(first["git_commit"]) == 40 and manifest["total_seconds"] > 0
    assert read_summary("polyprog", root=tmp_path / "polyprog")
    assert read_summary("vae", root=tmp_path / "vae")
    stored = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json") if p.parent != tmp_path}
    # A second call starts nothing: finished experiments are neither redone nor lost.
    assert run_all.main(argv) == 0
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert all(len(e["attempts"]) == 1 for e in again["runs"].values())
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    # --recheck starts the scripts again, which load their finished stages instead of rerunning.
    assert run_all.main([*argv, "--recheck"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stored} == stored
    (tmp_path / "vae" / "summary.csv").unlink()
    assert run_all.main([*argv, "--summarise"]) == 0
    assert (tmp_path / "vae" / "summary.csv").is_file()


def test_runner_refuses_bad_input(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        run_all.main(["--only", "polyprog,chess", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.main(["--max-minutes", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        run_all.main(["--device", "tpu", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        run_all.main(["--jobs", "0", "--out", str(tmp_path)])
    assert "--jobs" in capsys.readouterr().err


def test_device_description_names_the_device() -> None:
    import torch

    info = run_all.device_description(torch.device("cpu"))
    assert info["device"] == "cpu" and info["cpu_count"] >= 1 and info["torch"]


def test_manifest_records_commit_threads_and_whether_one_commit_made_everything() -> None:
    manifest = {"runs": {
        "full/polyprog": {"status": "finished", "attempts": [
            {"started": "a", "seconds": 10.0, "git_commit": "a" * 40, "git_dirty": False}]},
        "full/vae": {"status": "finished", "attempts": [
            {"started": "b", "seconds": 5.0, "git_commit": "a" * 40, "git_dirty": False}]},
        "full/sudoku": {"status": "failed", "attempts": [
            {"started": "c", "seconds": 1.0, "git_commit": "b" * 40, "git_dirty": False}]}}}
    run_all._summarise_manifest(manifest)
    assert manifest["one_commit"] and manifest["git_commits"] == ["a" * 40]
    assert manifest["total_seconds"] == 15.0 and set(manifest["stages"]) == {
        "full/polyprog", "full/vae"}
    manifest["runs"]["full/sudoku"]["status"] = "finished"
    run_all._summarise_manifest(manifest)
    assert not manifest["one_commit"] and len(manifest["git_commits"]) == 2


def test_record_provenance_counts_stages_run_outside_the_runner(tmp_path: Path) -> None:
    """A series added by calling an experiment script directly (not through run_all) writes
    records from another commit: the manifest must see it in the records' own metadata."""
    folder = tmp_path / "vae"
    folder.mkdir()

    def record(commit: str, dirty: bool) -> dict:
        return {"name": "x", "metadata": {"git_commit": commit, "git_dirty": dirty}}

    (folder / "full_tune_st.json").write_text(json.dumps(record("a" * 40, False)))
    (folder / "full_eval_st.json").write_text(json.dumps([record("a" * 40, False)] * 2))
    (folder / "small_eval_st.json").write_text(json.dumps(record("c" * 40, True)))
    prov = run_all.record_provenance(tmp_path, "full", ["vae", "sudoku"])
    assert prov == {"vae": {"a" * 40: {"records": 3, "dirty": False,
                                      "files": ["full_eval_st.json", "full_tune_st.json"]}}}
    manifest = {"runs": {"full/vae": {"status": "finished", "attempts": [
        {"started": "a", "seconds": 10.0, "git_commit": "a" * 40, "git_dirty": False}]}}}
    run_all._summarise_manifest(manifest, prov)
    assert manifest["one_commit"]
    (folder / "full_eval_reinforce.json").write_text(json.dumps(record("b" * 40, True)))
    run_all._summarise_manifest(manifest, run_all.record_provenance(tmp_path, "full", ["vae"]))
    assert not manifest["one_commit"] and manifest["git_commits"] == ["a" * 40, "b" * 40]
