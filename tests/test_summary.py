"""summary.csv records: t-intervals against a closed form, knob strings, round trip."""

from __future__ import annotations

import math

import pytest

from redge_mini.book.experiments import summary


def test_t_interval_matches_closed_form() -> None:
    # n = 5, mean 3, sample sd sqrt(2.5); t_{0.975, 4} = 2.7764451051977987
    mean, low, high = summary.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == pytest.approx(3.0)
    assert low == pytest.approx(3.0 - half, rel=1e-9)
    assert high == pytest.approx(3.0 + half, rel=1e-9)


def test_t_interval_refuses_nan_and_empty() -> None:
    with pytest.raises(ValueError, match="NaN"):
        summary.t_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="empty"):
        summary.t_interval([])


def test_knob_string_sorted_and_compact() -> None:
    text = summary.knob_string({"t_1": 0.5, "n_steps": 3, "lr": 0.05})
    assert text == "lr=0.05;n_steps=3;t_1=0.5"
    assert summary.knob_string({}) == ""
    with pytest.raises(ValueError, match="knobs"):
        summary.knob_string({"a;b": 1})


def test_round_trip_and_validation(tmp_path) -> None:
    rows = [
        summary.summary_row("sudoku", "lr=0.05", "redge", {"t_1": 0.9, "n_steps": 3},
                            "final_violations", 2000, [3.0, 4.0, 5.0, 4.0, 4.0]),
        summary.summary_row("sudoku", "lr=0.05", "st", {}, "final_solved", 2000, [0.1] * 5),
    ]
    path = summary.write_summary("sudoku", rows, root=tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(summary.COLUMNS)
    assert summary.read_summary("sudoku", root=tmp_path) == rows
    with pytest.raises(ValueError, match="estimator"):
        summary.summary_row("sudoku", "", "ST", {}, "final_solved", 1, [1.0])
    with pytest.raises(ValueError, match="metric"):
        summary.summary_row("sudoku", "", "st", {}, "Final Solved", 1, [1.0])
    with pytest.raises(ValueError, match="experiment"):
        summary.write_summary("vae", rows, root=tmp_path)
