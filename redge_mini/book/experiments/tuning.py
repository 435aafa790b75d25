"""Knob grids that grow past their edges: the tuning search shared by every experiment.

A tuning grid whose best point lies on its edge did not find the optimum, only a bound on it. Every
experiment therefore tunes with :func:`grow_search`: it evaluates the grid, picks the best point(s)
with the experiment's own rule, and, while a chosen point lies on an edge of some knob's axis,
evaluates one new point past that edge (:func:`extend_grid`), up to ``max_rounds`` times. A knob
at the boundary of its valid range (ReinMax's ``tau = 1``, ``n_steps = 1``) stays there: the range
itself is the edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...registry import get_spec

__all__ = ["GROW_ROUNDS", "extend_grid", "grow_search", "on_edge"]

#: Growth rounds of a full-scale tuning stage.
GROW_ROUNDS = 2

#: How a grid grows past an edge: the next value above / below, per knob.
_GROW: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "t_1": (lambda v: round(1.0 - (1.0 - v) / 3.0, 4), lambda v: round(v / 3.0, 4)),
    "n_steps": (lambda v: 2 * v - 1, lambda v: v - 1),
    "tau": (lambda v: round(v * 2.5, 4), lambda v: round(v / 3.0, 4)),
    "lr": (lambda v: round(v * 3.0, 6), lambda v: round(v / 3.0, 6)),
}


def on_edge(grid: Sequence[Any], index: int) -> bool:
    """Whether grid point ``index`` lies on an edge of the grid: its value of some knob is the
    smallest or the largest of the grid (points are dicts of knobs, or plain numbers such as
    learning rates); a knob with a single value has no edge."""
    point = grid[index]
    if not isinstance(point, dict):
        values = sorted(set(grid))
        return len(values) > 1 and point in (values[0], values[-1])
    for key, value in point.items():
        values = sorted({g[key] for g in grid})
        if len(values) > 1 and value in (values[0], values[-1]):
            return True
    return False


def extend_grid(estimator: str, points: Sequence[dict[str, Any]],
                index: int) -> list[dict[str, Any]]:
    """New grid points past the edge(s) on which ``points[index]`` lies (empty if interior).

    ``points`` are dicts of knob values (and/or ``lr``). For every knob whose chosen value is the
    largest (smallest) of the grid, one point with the next value above (below) is proposed, the
    other knobs kept at the chosen values; values outside the knob's valid range (e.g. ReinMax's
    ``tau < 1``) are dropped, so a choice on the boundary of the domain stays where it is.
    """
    spec = get_spec(estimator)
    chosen = points[index]
    new: list[dict[str, Any]] = []
    for key, value in chosen.items():
        values = sorted({p[key] for p in points})
        if len(values) < 2:
            continue
        up, down = _GROW[key]
        for edge, step in ((values[-1], up), (values[0], down)):
            if value != edge:
                continue
            candidate = step(value)
            if key in spec.knobs:
                try:
                    candidate = spec.knobs[key].check(key, candidate)
                except (TypeError, ValueError):
                    continue
            elif not candidate > 0:
                continue
            point = {**chosen, key: candidate}
            if candidate not in values and point not in new:
                new.append(point)
    return new


def grow_search(
    estimator: str,
    grid: Sequence[dict[str, Any]],
    evaluate: Callable[[list[dict[str, Any]]], list[Any]],
    choose: Callable[[list[Any]], int | list[int]],
    *,
    max_rounds: int,
    axis: Callable[[Any], dict[str, Any]] | None = None,
) -> tuple[list[Any], int | list[int], list[dict[str, Any]]]:
    """Evaluate ``grid``, then grow it past the edges of the choice, up to ``max_rounds`` times.

    ``evaluate(points)`` returns one entry per point, in order; ``choose(entries)`` returns the
    index of the best entry, or a list of indices when several settings choose at once (e.g. one
    per exponent); ``axis(entry)`` is the point an entry stands for (default: the entry itself).
    Returns ``(entries, chosen, added)``: every entry evaluated, the final choice, and the points
    added by growth, in order.
    """
    if max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    axis = axis or (lambda entry: entry)
    todo = [dict(point) for point in grid]
    entries: list[Any] = []
    added: list[dict[str, Any]] = []
    for round_ in range(max_rounds + 1):
        results = evaluate(todo)
        if len(results) != len(todo):
            raise ValueError(f"evaluate returned {len(results)} entries for {len(todo)} points")
        entries += results
        chosen = choose(entries)
        points = [axis(e) for e in entries]
        todo = []
        for index in ([chosen] if isinstance(chosen, int) else chosen):
            todo += [p for p in extend_grid(estimator, points, index) if p not in todo]
        if not todo or round_ == max_rounds:
            break
        added += todo
    return entries, chosen, added
