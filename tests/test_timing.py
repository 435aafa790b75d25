"""The per-call cost helper: exact arithmetic on a fake clock, interleaving, and a real ordering."""

import importlib
import itertools
import time
from pathlib import Path

import pytest
import torch

from redge_mini.book.timing import (
    REFERENCE,
    read_benchmark,
    stored_benchmarks,
    time_estimators,
    time_interleaved,
)


def _fake_clock_calls(costs, log):
    """Calls that advance a fake clock by a known cost each, and the clock itself."""
    now = [0.0]

    def make(key, cost):
        def call():
            now[0] += cost
            log.append(key)

        return call

    return {key: make(key, cost) for key, cost in costs.items()}, lambda: now[0]


def test_time_per_call_is_exact_on_a_fake_clock_and_rounds_interleave():
    log = []
    calls, clock = _fake_clock_calls({"a": 2e-6, "b": 7e-6}, log)
    times = time_interleaved(calls, "cpu", rounds=3, block_s=1e-3, timer=clock)
    assert times["a"] == pytest.approx([2e-6] * 3, rel=1e-9)
    assert times["b"] == pytest.approx([7e-6] * 3, rel=1e-9)
    # contenders take turns: a's calls, then b's, three times over
    assert [key for key, _ in itertools.groupby(log)] == ["a", "b"] * 3


def test_ten_times_the_work_costs_several_times_more():
    # A real clock (process CPU time: steady on a busy machine): interleaved medians of 1 vs 10
    # repetitions of the same op. Any ratio below 3 means the timer does not measure what it runs.
    x, y = torch.randn(20000), torch.empty(20000)

    def ten():
        for _ in range(10):
            torch.sin(x, out=y)

    calls = {"one": lambda: torch.sin(x, out=y), "ten": ten}
    times = time_interleaved(calls, "cpu", rounds=5, block_s=0.01, timer=time.process_time)
    median = {key: sorted(t)[len(t) // 2] for key, t in times.items()}
    assert 3.0 < median["ten"] / median["one"] < 30.0


def test_rows_cover_every_shape_and_name_with_consistent_ratios():
    shapes = [(8, 3), (2, 4, 2)]
    rows = time_estimators(shapes, ["st", "redge"], knobs={"redge": {"n_steps": 3}},
                           rounds=2, block_s=0.001)
    assert [(r.shape, r.name) for r in rows] == [
        ((8, 3), "st"), ((8, 3), "redge"), ((2, 4, 2), "st"), ((2, 4, 2), "redge")
    ]
    assert rows[1].knobs == {"n_steps": 3, "t_1": 0.5}
    for row in rows:
        assert row.ratio == pytest.approx(row.seconds / row.reference_seconds)
    # Contenders of one shape share the reference measurement.
    assert rows[0].reference_seconds == rows[1].reference_seconds
    assert rows[0].reference_seconds != rows[2].reference_seconds
    assert "gumbel_softmax" in REFERENCE


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    time_estimators([(4, 2)], ["st"], rounds=1, block_s=0.0005, num_threads=1)
    assert torch.get_num_threads() == before


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown estimator"):
        time_estimators([(4, 2)], ["nope"])
    with pytest.raises(ValueError, match="shapes"):
        time_estimators([(4, 1)], ["st"])
    with pytest.raises(TypeError, match="shapes"):
        time_estimators([(4.0, 2)], ["st"])
    with pytest.raises(ValueError, match="statistic"):
        time_estimators([(4, 2)], ["st"], statistic="mean")
    with pytest.raises(ValueError, match="rounds"):
        time_estimators([(4, 2)], ["st"], rounds=0)
    with pytest.raises(ValueError, match="block_s"):
        time_interleaved({"a": lambda: None}, rounds=1, block_s=0.0)
    with pytest.raises(ValueError, match="t_1"):
        time_estimators([(4, 2)], ["redge"], knobs={"redge": {"t_1": 2.0}})


def test_benchmark_tables_round_trip_through_the_reader(tmp_path, monkeypatch):
    # the benchmark script's own output, on a tiny budget, read back by the chapter's reader
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_estimators")
    shapes = [(8, 3), (2, 4, 2)]
    lines = bench.main(["--device", "cpu", "--threads", "1", "--estimators", "st", "redge",
                        "--rounds", "1", "--block-ms", "1", "--no-large", "--clock", "cpu",
                        "--shapes", *("x".join(map(str, s)) for s in shapes)])
    path = tmp_path / "table.txt"
    path.write_text("\n".join(lines) + "\n")
    table = read_benchmark(path)
    assert table.device == f"{bench.device_name(torch.device('cpu'))} (cpu)"
    assert [(r["shape"], r["estimator"]) for r in table.rows] == [
        (shape, name) for shape in shapes for name in ("st", "redge")
    ]
    for row in table.rows:
        assert row["ours_gs"] == pytest.approx(row["ours_us"] / row["gs_us"], rel=0.02, abs=0.01)
        assert row["ops_gs"] > 0 and row["mem_gs"] is None
    assert any("targets met" in note for note in table.notes)


def test_every_stored_table_names_its_device_and_covers_the_small_shapes():
    tables = stored_benchmarks()
    assert tables, "benchmarks/results holds no table"
    for table in tables:
        assert table.device.endswith(("(cpu)", "(cuda)"))
        shapes = {row["shape"] for row in table.rows if row["estimator"] == "redge"}
        assert {(64, 100), (200, 48, 2), (256, 128, 2), (1, 81, 9)} <= shapes


def test_reader_refuses_other_formats(tmp_path):
    path = tmp_path / "old.txt"
    path.write_text("redge_mini 0.1.0, torch 2.11.0, device cuda\n")
    with pytest.raises(ValueError, match="not a table"):
        read_benchmark(path)
