"""Run the six experiments one after another, resumably, and record the device that ran them.

Usage::

    python -m redge_mini.book.experiments.run_all --scale full                 # all six
    python -m redge_mini.book.experiments.run_all --scale full --only polyprog,vae
    python -m redge_mini.book.experiments.run_all --scale full --project       # time estimate
    python -m redge_mini.book.experiments.run_all --summarise                  # summary.csv only
    python -m redge_mini.book.experiments.run_all --provenance   # which commit made each record

Each experiment runs in its own process (``python -m redge_mini.book.experiments.<name>``), so a
crash of one does not lose the others; by default one after another, or ``--jobs`` side by side
(``--jobs 2 --threads 1`` keeps both cores of a 2-core machine busy; the manifest records it, and
a timing stage made beside another experiment can be redone alone: delete its ``*_timing.json``
and rerun with ``--recheck``, which loads every other finished stage).
The scripts are resumable stage by stage (a finished stage is a result file that is loaded, not
recomputed), and this runner keeps a manifest ``<out>/manifest.json`` (by default
``book/results/manifest.json``): the commit (``git_commit``, ``git_dirty``), the hardware, the
thread count, the software, and for every experiment each attempt's start, duration, exit status
and commit. The thread count is fixed by the runner (``--threads``, default 2) and passed to every
script, so that the runs are deterministic and their timings comparable. An experiment that
finished (exit status 0) at this scale is not started again unless ``--recheck`` is given. After
each experiment its ``summary.csv`` is regenerated from the stored files when the script offers
``write_summary_csv``.

``--project`` times a few steps of every stage at its real batch shape on this device (for the
experiments whose module offers ``measure_throughput``) and prints the projected full-scale
minutes, without running anything else.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import runtime
from . import resolve_device

__all__ = ["EXPERIMENTS", "device_description", "main", "project", "record_provenance",
           "start_experiment", "summarise_all"]

#: The experiments in the order they run (cheapest and most basic first).
EXPERIMENTS: tuple[str, ...] = ("polyprog", "vae", "sudoku", "mdm_guidance", "image_guidance",
                                 "large_vocab")

MANIFEST = "manifest.json"

#: Threads of every experiment process unless ``--threads`` says otherwise.
DEFAULT_THREADS = 2


def device_description(device: torch.device) -> dict[str, Any]:
    """Device, its name (GPU model, or CPU model and core count), software versions."""
    meta = runtime.run_metadata(device)
    return {"device": meta["device"], "device_name": meta["device_name"],
            "cpu": runtime.device_name("cpu"), "cpu_count": os.cpu_count(),
            "torch": meta["torch"], "python": meta["python"],
            "sampler": meta["sampler"], "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _load_manifest(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"runs": {}}


def _save_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def record_provenance(root: Path, scale: str, names: list[str] | tuple[str, ...] = EXPERIMENTS
                      ) -> dict[str, dict[str, dict[str, Any]]]:
    """What made the stored records: for each experiment, each commit that wrote one of its
    ``<scale>_*.json`` stage records, with how many and whether any came from a dirty tree.

    Read from the records' own metadata, so stages run outside this runner (an experiment
    script called with ``--estimators ...`` to add a series) are counted too."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        commits: dict[str, dict[str, Any]] = {}
        for path in sorted((root / name).glob(f"{scale}_*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            for record in data if isinstance(data, list) else [data]:
                meta = record.get("metadata") if isinstance(record, dict) else None
                if not isinstance(meta, dict):
                    continue
                entry = commits.setdefault(str(meta.get("git_commit", "unknown")),
                                           {"records": 0, "dirty": False, "files": []})
                entry["records"] += 1
                entry["dirty"] = bool(entry["dirty"] or meta.get("git_dirty"))
                if path.name not in entry["files"]:
                    entry["files"].append(path.name)
        if commits:
            out[name] = commits
    return out


def _summarise_manifest(manifest: dict[str, Any],
                        provenance: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """Top-level provenance of the manifest: the seconds spent on each finished experiment (all
    its attempts), the commits of the attempts that finished each experiment and of the stored
    records (``provenance``, from :func:`record_provenance`), and whether that is one clean
    commit."""
    finished = {key: entry["attempts"][-1] for key, entry in manifest["runs"].items()
                if entry.get("status") == "finished" and entry["attempts"]}
    if provenance is not None:
        manifest["record_commits"] = provenance
    provenance = manifest.get("record_commits", {})
    commits = sorted({a.get("git_commit", "unknown") for a in finished.values()}
                     | {c for per in provenance.values() for c in per})
    # an attempt resumes the stored stages of the earlier ones, so an experiment's seconds are
    # the sum over its attempts; commit and start are those of the attempt that finished it
    spent = {key: round(sum(a["seconds"] for a in manifest["runs"][key]["attempts"]), 1)
             for key in finished}
    manifest["stages"] = {key: {"seconds": spent[key], "git_commit": a.get("git_commit"),
                                "git_dirty": a.get("git_dirty"), "started": a["started"]}
                          for key, a in finished.items()}
    manifest["git_commits"] = commits
    manifest["one_commit"] = len(commits) == 1 and not any(
        a.get("git_dirty") for a in finished.values()) and not any(
        c["dirty"] for per in provenance.values() for c in per.values())
    manifest["total_seconds"] = round(sum(spent.values()), 1)


def start_experiment(name: str, *, scale: str, device: torch.device, folder: Path,
                     max_minutes: float | None, extra: list[str] | None = None,
                     threads: int = DEFAULT_THREADS) -> subprocess.Popen[bytes]:
    """Start one experiment script in a child process with ``threads`` threads."""
    command = [sys.executable, "-m", f"redge_mini.book.experiments.{name}", "--scale", scale,
               "--device", device.type, "--out", str(folder), "--no-progress",
               "--threads", str(threads), *(extra or [])]
    if max_minutes is not None:
        command += ["--max-minutes", f"{max_minutes:.3f}"]
    env = {**os.environ, "REDGE_SCALE": scale, "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(command, env=env)


def summarise_all(root: Path, scale: str, names: list[str]) -> dict[str, str]:
    """Regenerate every ``summary.csv`` that a script knows how to write; name -> outcome."""
    out = {}
    for name in names:
        module = importlib.import_module(f"redge_mini.book.experiments.{name}")
        writer = getattr(module, "write_summary_csv", None)
        if writer is None:
            out[name] = "the script writes no summary.csv from stored files"
            continue
        path = writer(root / name, scale)
        out[name] = str(path) if path else f"no stored {scale} results"
    return out


def project(names: list[str], device: torch.device, scale: str = "full") -> dict[str, float]:
    """Projected seconds of each experiment at ``scale`` on ``device`` (where measurable)."""
    out = {}
    for name in names:
        module = importlib.import_module(f"redge_mini.book.experiments.{name}")
        measure = getattr(module, "measure_throughput", None)
        if measure is None:
            print(f"run_all: {name} offers no measure_throughput; no projection", file=sys.stderr)
            continue
        tic = time.perf_counter()
        estimate = measure(module.protocol(scale), device=device)
        out[name] = float(estimate["total"])
        print(f"run_all: {name}: projected {out[name] / 60:.1f} min on {device.type} "
              f"(measured in {time.perf_counter() - tic:.0f} s)", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit status 0 when every experiment finished, else 3 (or 1)."""
    parser = argparse.ArgumentParser(prog="python -m redge_mini.book.experiments.run_all",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("small", "full"), default="full")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated experiments (default all: {', '.join(EXPERIMENTS)})")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--out", type=Path, default=None,
                        help="results root (default: book/results); one folder per experiment")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="overall budget: no experiment starts a new stage after it")
    parser.add_argument("--recheck", action="store_true",
                        help="start experiments that the manifest lists as finished too")
    parser.add_argument("--project", action="store_true",
                        help="only measure throughput and print projected full-scale times")
    parser.add_argument("--summarise", action="store_true",
                        help="only regenerate the summary.csv files from stored results")
    parser.add_argument("--provenance", action="store_true",
                        help="only rewrite the manifest's record_commits (which commit made "
                        "each stored stage record) and one_commit from the stored records")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, same code path (passed on to every script)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"CPU threads of every experiment (default {DEFAULT_THREADS})")
    parser.add_argument("--jobs", type=int, default=1,
                        help="experiments run side by side (default 1: one after another); "
                        "with --jobs 2 --threads 1 both cores of a 2-core machine work")
    args = parser.parse_args(argv)
    try:
        names = EXPERIMENTS if args.only is None else tuple(
            n.strip() for n in args.only.split(",") if n.strip())
        unknown = [n for n in names if n not in EXPERIMENTS]
        if unknown or not names:
            raise ValueError(f"--only: unknown experiment(s) {unknown}; choose from "
                             f"{list(EXPERIMENTS)}")
        device = resolve_device(args.device)
        if args.max_minutes is not None and not args.max_minutes > 0:
            raise ValueError(f"--max-minutes must be positive, got {args.max_minutes}")
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    except ValueError as error:
        parser.error(str(error))
    root = args.out if args.out is not None else runtime.results_dir()
    scale = args.scale + ("-smoke" if args.smoke else "")     # the result files' prefix
    extra = ["--smoke"] if args.smoke else []
    if args.summarise:
        for name, outcome in summarise_all(root, scale, list(names)).items():
            print(f"{name}: {outcome}")
        return 0
    if args.provenance:
        manifest_path = root / MANIFEST
        manifest = _load_manifest(manifest_path)
        _summarise_manifest(manifest, record_provenance(root, scale))
        _save_manifest(manifest_path, manifest)
        print(f"commits {manifest['git_commits']}; one_commit {manifest['one_commit']} "
              f"({manifest_path})")
        return 0
    if args.project:
        estimate = project(list(names), device, args.scale)
        path = root / f"projection_{device.type}.json"
        _save_manifest(path, {"device": device_description(device), "measured_utc": _now(),
                              "projected_seconds": estimate,
                              "total_seconds": sum(estimate.values())})
        print(f"projected total {sum(estimate.values()) / 60:.1f} min ({path})")
        return 0

    manifest_path = root / MANIFEST
    manifest = _load_manifest(manifest_path)
    git = runtime.git_state()
    manifest.update(scale=scale, num_threads=args.threads, hardware=device_description(device))
    start = time.perf_counter()
    unfinished = 0
    todo: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        entry = manifest["runs"].setdefault(f"{scale}/{name}", {"attempts": []})
        if entry.get("status") == "finished" and not args.recheck:
            print(f"run_all: {name} finished earlier ({entry['attempts'][-1]['started']}), "
                  "skipped", file=sys.stderr)
            continue
        todo.append((name, entry))
    running: list[tuple[str, dict[str, Any], subprocess.Popen[bytes], str, float]] = []

    def finish(name: str, entry: dict[str, Any], status: int, started: str,
               seconds: float) -> None:
        nonlocal unfinished
        entry["attempts"].append({"started": started, "seconds": round(seconds, 1),
                                  "exit_status": status, "threads": args.threads,
                                  "side_by_side": args.jobs, **git,
                                  "device": device_description(device)})
        entry["status"] = "finished" if status == 0 else (
            "unfinished" if status == 3 else "failed")
        manifest["device"] = device_description(device)
        manifest["jobs"] = args.jobs
        _summarise_manifest(manifest, record_provenance(root, scale))
        _save_manifest(manifest_path, manifest)
        unfinished += status != 0
        print(f"run_all: {name} {entry['status']} in {seconds:.0f} s", file=sys.stderr)
        for key, outcome in summarise_all(root, scale, [name]).items():
            print(f"run_all: {key} summary: {outcome}", file=sys.stderr)

    while todo or running:
        while todo and len(running) < args.jobs:
            name, entry = todo.pop(0)
            left = None
            if args.max_minutes is not None:
                left = args.max_minutes - (time.perf_counter() - start) / 60
                if left <= 0:
                    print(f"run_all: --max-minutes reached before {name} (rerun to resume)",
                          file=sys.stderr)
                    unfinished += 1
                    continue
            started = _now()
            print(f"run_all: {name} ({args.scale}, {device.type}) started {started}",
                  file=sys.stderr)
            process = start_experiment(name, scale=args.scale, device=device,
                                       folder=root / name, max_minutes=left, extra=extra,
                                       threads=args.threads)
            running.append((name, entry, process, started, time.perf_counter()))
        for item in list(running):
            name, entry, process, started, tic = item
            status = process.poll()
            if status is not None:
                running.remove(item)
                finish(name, entry, status, started, time.perf_counter() - tic)
        if running:
            time.sleep(0.2)
    print(f"run_all: {len(names) - unfinished}/{len(names)} experiments finished in "
          f"{time.perf_counter() - start:.0f} s; manifest {manifest_path}")
    return 0 if unfinished == 0 else 3


if __name__ == "__main__":
    raise SystemExit(main())
