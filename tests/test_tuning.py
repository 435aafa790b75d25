"""The growing tuning search shared by the experiments (redge_mini.book.experiments.tuning)."""

from __future__ import annotations

import math

import pytest

from redge_mini.book.experiments.tuning import extend_grid, grow_search


def _log_distance_objective(best: float):
    """Evaluate points {"tau": v}: entry with the score -(log v - log best)^2 (higher wins)."""
    calls: list[list[dict]] = []

    def evaluate(points):
        calls.append(points)
        return [{"knobs": p, "score": -(math.log(p["tau"]) - math.log(best)) ** 2}
                for p in points]

    def choose(entries):
        return max(range(len(entries)), key=lambda i: entries[i]["score"])

    return evaluate, choose, calls


def test_grid_grows_until_the_choice_is_interior() -> None:
    evaluate, choose, calls = _log_distance_objective(0.02)
    grid = [{"tau": 0.1}, {"tau": 0.5}, {"tau": 1.0}]
    entries, chosen, added = grow_search("gumbel", grid, evaluate, choose, max_rounds=2,
                                         axis=lambda e: e["knobs"])
    # 0.1 is on the lower edge -> 0.0333; that is an edge -> 0.0111; 0.0333 is then interior
    assert added == [{"tau": 0.0333}, {"tau": 0.0111}]
    assert entries[chosen]["knobs"] == {"tau": 0.0333}
    assert [len(c) for c in calls] == [3, 1, 1]  # only new points are evaluated
    assert extend_grid("gumbel", [e["knobs"] for e in entries], chosen) == []


def test_growth_stops_after_max_rounds_and_at_the_domain_boundary() -> None:
    evaluate, choose, _ = _log_distance_objective(1e-6)
    grid = [{"tau": 0.1}, {"tau": 1.0}]
    entries, chosen, added = grow_search("gumbel", grid, evaluate, choose, max_rounds=1,
                                         axis=lambda e: e["knobs"])
    assert len(added) == 1 and len(entries) == 3
    # the choice is still on the edge: the search reports it, it does not hide it
    assert extend_grid("gumbel", [e["knobs"] for e in entries], chosen) != []
    # ReinMax's tau = 1 is the end of its range: nothing to grow, one evaluation only
    evaluate, choose, calls = _log_distance_objective(0.5)
    entries, chosen, added = grow_search("reinmax", [{"tau": 1.0}, {"tau": 2.0}], evaluate,
                                         choose, max_rounds=2, axis=lambda e: e["knobs"])
    assert added == [] and len(calls) == 1 and entries[chosen]["knobs"] == {"tau": 1.0}


def test_several_choices_grow_together() -> None:
    """Polynomial programming chooses one point per exponent; every edge choice grows."""
    grid = [{"n_steps": n, "t_1": t} for n in (3, 5, 9) for t in (0.1, 0.5, 0.9)]

    def evaluate(points):
        return [dict(p) for p in points]

    def choose(entries):  # exponent 1 wants the largest n and t_1, exponent 2 the middle
        top = max(range(len(entries)), key=lambda i: (entries[i]["n_steps"], entries[i]["t_1"]))
        return [top, entries.index({"n_steps": 5, "t_1": 0.5})]

    entries, chosen, added = grow_search("redge", grid, evaluate, choose, max_rounds=1)
    assert added == [{"n_steps": 17, "t_1": 0.9}, {"n_steps": 9, "t_1": 0.9667}]
    assert entries[chosen[0]] == {"n_steps": 17, "t_1": 0.9}  # max_rounds reached
    assert entries[chosen[1]] == {"n_steps": 5, "t_1": 0.5}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_rounds"):
        grow_search("st", [{}], lambda p: p, lambda e: 0, max_rounds=-1)
    with pytest.raises(ValueError, match="evaluate returned"):
        grow_search("st", [{}], lambda p: [], lambda e: 0, max_rounds=0)
