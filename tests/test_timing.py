"""The per-call cost helper: structure of its answer, its reference, and its argument checks."""

import pytest
import torch

from redge_mini.book.timing import REFERENCE, time_estimators


def test_rows_cover_every_shape_and_name_with_consistent_ratios():
    shapes = [(8, 3), (2, 4, 2)]
    rows = time_estimators(shapes, ["st", "redge"], knobs={"redge": {"n_steps": 3}},
                           rounds=2, block_s=0.001)
    assert [(r.shape, r.name) for r in rows] == [
        ((8, 3), "st"), ((8, 3), "redge"), ((2, 4, 2), "st"), ((2, 4, 2), "redge")
    ]
    assert rows[1].knobs == {"n_steps": 3, "t_1": 0.5}
    for row in rows:
        assert row.seconds > 0 and row.reference_seconds > 0
        assert row.ratio == pytest.approx(row.seconds / row.reference_seconds)
    # Contenders of one shape share the reference measurement.
    assert rows[0].reference_seconds == rows[1].reference_seconds
    assert "gumbel_softmax" in REFERENCE


def test_min_statistic_gives_positive_times():
    kwargs = dict(rounds=5, block_s=0.001, seed=1)
    low = time_estimators([(16, 4)], ["st"], statistic="min", **kwargs)[0]
    assert low.seconds > 0 and low.ratio > 0


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
    with pytest.raises(ValueError, match="t_1"):
        time_estimators([(4, 2)], ["redge"], knobs={"redge": {"t_1": 2.0}})
