"""Sudoku: grids and puzzles generated offline, the unit-count penalty, and mean-field solving (E3).

Conventions. A grid or puzzle is a ``(81,)`` (or ``(B, 81)``) integer tensor in row-major order;
digits are ``1 .. 9`` and ``0`` marks a blank cell of a puzzle. The one-hot form of a filled grid
is ``(B, 81, 9)`` with column ``d - 1`` for digit ``d``; as tokens of the masked diffusion model
(:mod:`redge_mini.book.masked_diffusion`, ``K = 9``) digit ``d`` is token ``d - 1`` and a blank is
the
mask token ``9``.

The 27 *units* are the 9 rows, the 9 columns and the 9 boxes. A filled grid is valid when every
digit appears exactly once in every unit. With ``c[u, d]`` the number of cells of unit ``u`` holding
digit ``d``:

* ``penalty(X) = sum_{u, d} (c[u, d] - 1)^2`` -- differentiable in the one-hot ``X``, zero iff
  the grid is valid (the 9 cells of a unit hold 9 digits, so all counts are 1 iff none exceeds 1);
* ``violations(X) = sum_{u, d} max(c[u, d] - 1, 0)`` -- the number of surplus digits.

Mean-field solving (experiment E3): logits ``(B, 81, 9)`` start at 0; before every Adam step the
clue cells are clamped (logit 0 on the given digit, :data:`CLUE_LOGIT` elsewhere); a hard sample is
drawn with a pathwise estimator and the loss is the penalty of that sample.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from redge_mini.registry import check_knobs, get_spec
from redge_mini.validation import check_int

__all__ = [
    "CLUE_LOGIT",
    "MASK_TOKEN",
    "MeanFieldResult",
    "UNITS",
    "base_grid",
    "cell_groups",
    "clamp_clues_",
    "draw_sudoku",
    "format_grid",
    "generate_grids",
    "grid_to_onehot",
    "grid_to_tokens",
    "is_solved",
    "make_puzzles",
    "minirow_signature",
    "onehot_to_grid",
    "penalty",
    "shuffle_grids",
    "solve_mean_field",
    "tokens_to_grid",
    "unit_counts",
    "validate_puzzle",
    "validate_puzzles",
    "violations",
]

#: Logit of the excluded digits of a clue cell (finite: estimators reject infinite logits).
CLUE_LOGIT: float = -1.0e4
#: Token id of a blank cell for the masked diffusion model (9 digits are tokens 0..8).
MASK_TOKEN: int = 9


def _unit_matrix() -> torch.Tensor:
    """The ``(27, 81)`` 0/1 membership matrix of rows, columns and boxes."""
    units = torch.zeros(27, 81)
    for cell in range(81):
        row, col = divmod(cell, 9)
        box = 3 * (row // 3) + col // 3
        units[row, cell] = 1.0
        units[9 + col, cell] = 1.0
        units[18 + box, cell] = 1.0
    return units


#: Membership matrix ``(27, 81)``: rows 0-8, columns 9-17, boxes 18-26.
UNITS: torch.Tensor = _unit_matrix()


def cell_groups() -> list[list[int]]:
    """Row, column and box index of every cell: 3 lists of 81 ids (for position embeddings)."""
    rows = [cell // 9 for cell in range(81)]
    cols = [cell % 9 for cell in range(81)]
    boxes = [3 * (r // 3) + c // 3 for r, c in zip(rows, cols, strict=True)]
    return [rows, cols, boxes]


def base_grid() -> torch.Tensor:
    """The base Latin pattern ``(81,)``: cell ``(r, c)`` holds ``(3 (r%3) + r//3 + c) % 9 + 1``."""
    r = torch.arange(9)[:, None]
    c = torch.arange(9)[None, :]
    return ((3 * (r % 3) + r // 3 + c) % 9 + 1).reshape(81)


def _random_perms(shape: tuple[int, ...], size: int, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Independent uniform permutations of ``range(size)``, one per index of ``shape``."""
    return torch.rand(*shape, size, generator=generator, device=device).argsort(dim=-1)


def _fill_grid(rng: random.Random) -> list[int]:
    """One valid grid by depth-first search over the cells in row-major order.

    Every cell tries the digits in its own random order (drawn once, before the search), with
    bitmasks of the digits already used in each row, column and box; a dead end backtracks to
    the previous cell and tries its next digit. An empty grid always has a completion, so the
    search ends (in about 0.3 ms on a CPU core).
    """
    rows, cols, boxes, grid = [0] * 9, [0] * 9, [0] * 9, [0] * 81
    order = [rng.sample(range(1, 10), 9) for _ in range(81)]
    tried = [0] * 81
    cell = 0
    while cell < 81:
        r, c = divmod(cell, 9)
        b = 3 * (r // 3) + c // 3
        if grid[cell]:  # back here after a dead end further on: undo this cell's digit
            bit = 1 << grid[cell]
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            grid[cell] = 0
        used = rows[r] | cols[c] | boxes[b]
        i = tried[cell]
        while i < 9 and used >> order[cell][i] & 1:
            i += 1
        if i == 9:  # no digit left here: backtrack
            tried[cell] = 0
            cell -= 1
            continue
        digit = order[cell][i]
        tried[cell] = i + 1
        grid[cell] = digit
        bit = 1 << digit
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
        cell += 1
    return grid


def shuffle_grids(
    grids: torch.Tensor, *, generator: torch.Generator | None
) -> torch.Tensor:
    """Apply an independent random validity-preserving symmetry to every grid ``(n, 81)``.

    Each grid gets, independently and uniformly: a relabelling of the digits, a permutation of
    the rows within each band, of the bands, of the columns within each stack, of the stacks, and
    a transposition with probability 1/2. These maps keep valid grids valid, but they never leave
    the *orbit* of the grid they start from (see :func:`minirow_signature`).
    """
    if grids.dim() != 2 or grids.shape[1] != 81:
        raise ValueError(f"grids must have shape (n, 81), got {tuple(grids.shape)}")
    n, dev = grids.shape[0], grids.device
    if generator is not None and torch.device(generator.device).type != dev.type:
        raise ValueError(f"generator is on {generator.device} but grids are on {dev}")

    def lines() -> torch.Tensor:  # (n, 9) row (or column) order: bands, then within bands
        bands = _random_perms((n,), 3, generator, dev)
        within = _random_perms((n, 3), 3, generator, dev)
        return (3 * bands[:, :, None] + within).reshape(n, 9)

    digits = _random_perms((n,), 9, generator, dev) + 1
    rows, cols = lines(), lines()
    transpose = torch.rand(n, generator=generator, device=dev) < 0.5
    square = grids.long().reshape(n, 9, 9)
    batch = torch.arange(n, device=dev)[:, None, None]
    grid = square[batch, rows[:, :, None], cols[:, None, :]]  # (n, 9, 9) values 1..9
    grid = torch.where(transpose[:, None, None], grid.transpose(1, 2), grid)
    return torch.gather(digits, 1, (grid - 1).reshape(n, 81))


def generate_grids(
    n: int, *, generator: torch.Generator | None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``n`` diverse valid Sudoku grids ``(n, 81)`` (digits 1..9), drawn offline and seeded.

    Each grid is filled by a randomised backtracking search (every cell tries the digits in a
    random order, :func:`_fill_grid`) and then moved by a random symmetry
    (:func:`shuffle_grids`). The search reaches every valid grid (about 6.7e21 of them, about
    5.5e9 up to symmetry), though not with exactly equal probabilities; the generated grids fall
    in many different symmetry orbits (the tests check it with :func:`minirow_signature`).

    Parameters
    ----------
    n : int
        Number of grids.
    generator : torch.Generator or None
        Source of all draws: the search is seeded by one integer drawn from it (on CPU), the
        symmetries are drawn from it on ``device``. ``None``: torch's global generator.
    device : torch.device, str or None
        Where to return the grids (default: the generator's device, else CPU).
    """
    n = check_int(n, "n", 0)
    dev = torch.device(device) if device is not None else (
        generator.device if generator is not None else torch.device("cpu"))
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=dev))
    rng = random.Random(seed)
    filled = torch.tensor([_fill_grid(rng) for _ in range(n)], dtype=torch.long,
                          device=dev).reshape(n, 81)
    return shuffle_grids(filled, generator=generator)


def minirow_signature(grids: torch.Tensor) -> torch.Tensor:
    """An invariant of the symmetry orbit of each grid: ``(n, 2)`` long tensor.

    A *minirow* is the three cells of a row inside one box (27 per grid), a *minicolumn* likewise.
    The signature is the sorted pair (number of distinct digit *sets* among the minirows, the
    same for the minicolumns). Relabelling digits maps sets to sets one-to-one, permuting rows
    within a band or bands only moves minirows (and keeps each minicolumn's set), permuting
    columns within a stack reorders the cells of each minirow, and a transposition swaps the two
    numbers, so the signature is constant on an orbit of :func:`shuffle_grids`. The grid of
    :func:`base_grid` has signature ``(3, 9)`` (three digit sets cover all its minicolumns); a
    grid with another signature lies in another orbit.
    """
    if grids.dim() != 2 or grids.shape[1] != 81:
        raise ValueError(f"grids must have shape (n, 81), got {tuple(grids.shape)}")
    square = grids.long().cpu().reshape(-1, 9, 9)
    weights = 2 ** (square - 1)  # digit set of a triple as a 9-bit mask
    out = []
    for g in weights:
        minirows = g.reshape(9, 3, 3).sum(-1).flatten()
        minicols = g.T.reshape(9, 3, 3).sum(-1).flatten()
        out.append(sorted((len(set(minirows.tolist())), len(set(minicols.tolist())))))
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


def make_puzzles(
    n: int,
    n_blanks: int,
    *,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` puzzles with exactly ``n_blanks`` blank cells each, and the grids they came from.

    The blanks are a uniformly random subset of the cells of a :func:`generate_grids` grid. The
    puzzle may have other solutions than the returned grid (uniqueness is not enforced); a solver
    is judged by validity and agreement with the clues (:func:`is_solved`).

    Returns
    -------
    (puzzles, solutions)
        ``(n, 81)`` long tensors; puzzles have ``0`` at the blanks.
    """
    n = check_int(n, "n", 0)
    n_blanks = check_int(n_blanks, "n_blanks", 0)
    if n_blanks > 81:
        raise ValueError(f"n_blanks must be <= 81, got {n_blanks}")
    solutions = generate_grids(n, generator=generator, device=device)
    order = torch.rand(n, 81, generator=generator, device=solutions.device).argsort(dim=-1)
    blank = torch.zeros_like(solutions, dtype=torch.bool)
    blank.scatter_(1, order[:, :n_blanks], True)
    return solutions.masked_fill(blank, 0), solutions


def validate_puzzle(puzzle: object, name: str = "puzzle") -> torch.Tensor:
    """Check one puzzle and return it as a ``(81,)`` long tensor.

    Accepts a tensor, array or sequence of 81 integers (or a 9 x 9 one), or a string of 81
    characters where ``1``-``9`` are clues and ``0`` or ``.`` blanks.

    Raises
    ------
    TypeError
        Not a tensor, array, sequence or string, or non-integer entries.
    ValueError
        Wrong length, digits outside 0-9, or contradictory clues (a digit twice in a row, column
        or box); the message names the offending unit and digit.
    """
    if isinstance(puzzle, str):
        text = puzzle.strip()
        bad = sorted(set(text) - set("0123456789."))
        if bad:
            raise ValueError(f"{name} contains characters other than 0-9 and '.': {bad}")
        puzzle = [0 if ch == "." else int(ch) for ch in text]
    if not isinstance(puzzle, torch.Tensor):
        try:
            puzzle = torch.as_tensor(puzzle)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor, array, sequence or string: {err}") from err
    if puzzle.is_floating_point() or puzzle.is_complex() or puzzle.dtype == torch.bool:
        if puzzle.is_floating_point() and bool((puzzle == puzzle.round()).all()):
            puzzle = puzzle.long()
        else:
            raise TypeError(f"{name} must hold integers, got dtype {puzzle.dtype}")
    if puzzle.numel() != 81 or puzzle.dim() not in (1, 2) or (
            puzzle.dim() == 2 and tuple(puzzle.shape) != (9, 9)):
        raise ValueError(f"{name} must have 81 cells (shape (81,) or (9, 9)), got shape "
                         f"{tuple(puzzle.shape)}")
    puzzle = puzzle.reshape(81).long()
    if bool(((puzzle < 0) | (puzzle > 9)).any()):
        bad = sorted({int(v) for v in puzzle[(puzzle < 0) | (puzzle > 9)]})
        raise ValueError(f"{name} must hold digits 0-9 (0 = blank), got {bad}")
    counts = UNITS.to(puzzle.device) @ grid_to_onehot(puzzle[None], allow_blank=True)[0]
    clash = (counts > 1).nonzero()
    if len(clash):
        unit, digit = (int(v) for v in clash[0])
        kind = ("row", "column", "box")[unit // 9]
        raise ValueError(f"{name} has contradictory clues: digit {digit + 1} appears "
                         f"{int(counts[unit, digit])} times in {kind} {unit % 9 + 1}")
    return puzzle


def validate_puzzles(puzzles: object, name: str = "puzzles") -> torch.Tensor:
    """Check a batch of puzzles ``(B, 81)`` (each as :func:`validate_puzzle`); a long tensor."""
    if isinstance(puzzles, torch.Tensor):
        if puzzles.dim() != 2 or puzzles.shape[1] != 81:
            raise ValueError(f"{name} must have shape (B, 81), got {tuple(puzzles.shape)}")
        rows = list(puzzles)
    elif isinstance(puzzles, Sequence) and not isinstance(puzzles, str):
        rows = list(puzzles)
    else:
        raise TypeError(f"{name} must be a (B, 81) tensor or a sequence of puzzles")
    if not rows:
        raise ValueError(f"{name} must hold at least one puzzle")
    checked = [validate_puzzle(row, f"{name}[{i}]") for i, row in enumerate(rows)]
    return torch.stack(checked)


def grid_to_onehot(grids: torch.Tensor, *, allow_blank: bool = False) -> torch.Tensor:
    """``(B, 81)`` digits -> ``(B, 81, 9)`` float one-hot (blanks -> zero rows if allowed)."""
    if not allow_blank and bool((grids < 1).any()):
        raise ValueError("grids must be filled (digits 1-9); use allow_blank=True for puzzles")
    onehot = torch.zeros(*grids.shape, 10, device=grids.device)
    onehot.scatter_(-1, grids.long()[..., None], 1.0)
    return onehot[..., 1:]


def onehot_to_grid(onehot: torch.Tensor) -> torch.Tensor:
    """``(B, 81, 9)`` one-hot (or scores) -> ``(B, 81)`` digits 1..9 (argmax)."""
    return onehot.argmax(-1) + 1


def grid_to_tokens(puzzles: torch.Tensor) -> torch.Tensor:
    """Puzzles/grids (digits, 0 = blank) -> tokens of the MDM (digit - 1, blank -> 9)."""
    puzzles = puzzles.long()
    return torch.where(puzzles == 0, torch.full_like(puzzles, MASK_TOKEN), puzzles - 1)


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens of the MDM -> digits (token + 1; a mask token becomes a blank 0)."""
    tokens = tokens.long()
    return torch.where(tokens == MASK_TOKEN, torch.zeros_like(tokens), tokens + 1)


@functools.lru_cache(maxsize=16)
def _units_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:data:`UNITS` on ``device`` (cached: no host-to-device copy at every penalty call)."""
    return UNITS.to(device=device, dtype=dtype)


def unit_counts(onehot: torch.Tensor) -> torch.Tensor:
    """Digit counts per unit: ``(B, 81, 9)`` -> ``(B, 27, 9)`` (differentiable)."""
    if onehot.dim() != 3 or tuple(onehot.shape[1:]) != (81, 9):
        raise ValueError(f"onehot must have shape (B, 81, 9), got {tuple(onehot.shape)}")
    return torch.einsum("un,bnk->buk", _units_on(onehot.device, onehot.dtype), onehot)


def penalty(onehot: torch.Tensor) -> torch.Tensor:
    """Squared unit-count penalty ``sum_{u,d} (c[u,d] - 1)^2``: ``(B, 81, 9)`` -> ``(B,)``."""
    return (unit_counts(onehot) - 1.0).square().sum(dim=(1, 2))


def violations(grids_or_onehot: torch.Tensor) -> torch.Tensor:
    """Surplus digits ``sum_{u,d} max(c[u,d] - 1, 0)`` per grid, from digits ``(B, 81)``/one-hot."""
    x = grids_or_onehot
    onehot = grid_to_onehot(x) if x.dim() == 2 else x.detach()
    return (unit_counts(onehot.float()) - 1.0).clamp(min=0.0).sum(dim=(1, 2)).round().long()


def is_solved(grids: torch.Tensor, puzzles: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` bool: the grid is filled, valid, and agrees with every clue of ``puzzles``.

    ``grids`` are digits ``(B, 81)`` (``0`` = blank, never solved) or one-hot ``(B, 81, 9)``.
    """
    if grids.dim() == 3:
        grids = onehot_to_grid(grids)
    counts = unit_counts(grid_to_onehot(grids, allow_blank=True))
    ok = (grids >= 1).all(-1) & ((counts - 1.0).clamp(min=0.0).sum(dim=(1, 2)) == 0)
    if puzzles is not None:
        ok = ok & ((puzzles == 0) | (puzzles == grids)).all(-1)
    return ok


def clamp_clues_(logits: torch.Tensor, puzzles: torch.Tensor) -> torch.Tensor:
    """In place: logit 0 on the given digit of each clue cell, :data:`CLUE_LOGIT` elsewhere."""
    clue = puzzles > 0
    target = torch.full_like(logits, CLUE_LOGIT)
    target.scatter_(-1, (puzzles.clamp(min=1) - 1)[..., None], 0.0)
    with torch.no_grad():
        logits.copy_(torch.where(clue[..., None], target, logits))
    return logits


@dataclass
class MeanFieldResult:
    """What :func:`solve_mean_field` returns; tensors have a leading config axis ``C``.

    Attributes
    ----------
    configs : list of dict
        ``{"knobs": {...}, "lr": float}`` for each config, in the order of the leading axis.
    budgets : list of int
        Step counts at which ``violations`` was recorded (1-based step numbers).
    violations : torch.Tensor
        ``(C, len(budgets), B)`` violations of the hard sample drawn at each budget step.
    best_violations : torch.Tensor
        ``(C, len(budgets), B)`` fewest violations of any hard sample up to each budget (what a
        solver that keeps its best sample reports).
    solved_step : torch.Tensor
        ``(C, B)`` first step whose hard sample solved the puzzle; ``-1`` if none did.
    final_grids : torch.Tensor
        ``(C, B, 81)`` digits of the last hard sample.
    first_solution : torch.Tensor
        ``(C, B, 81)`` the first solving sample (the last sample where none solved).
    mean_violations : torch.Tensor
        ``(C, steps)`` violations of the hard sample at every step, averaged over puzzles.
    seconds : float
        Wall time of the optimisation loop.
    extra : dict
        ``clue_mismatches``: samples that disagreed with a clue (0: the clamping works).
    """

    configs: list[dict[str, Any]]
    budgets: list[int]
    violations: torch.Tensor
    best_violations: torch.Tensor
    solved_step: torch.Tensor
    final_grids: torch.Tensor
    first_solution: torch.Tensor
    mean_violations: torch.Tensor
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def solve_rate(self, budget: int) -> torch.Tensor:
        """``(C, B)`` bool: the hard sample at step ``budget`` had no violation (clues hold by
        clamping, see ``extra["clue_mismatches"]``)."""
        return self.violations[:, self.budgets.index(budget)] == 0

    def solved_within(self, budget: int) -> torch.Tensor:
        """``(C, B)`` bool: some hard sample up to step ``budget`` solved the puzzle."""
        return (self.solved_step >= 1) & (self.solved_step <= budget)


def solve_mean_field(
    puzzles: torch.Tensor,
    estimator_name: str,
    *,
    steps: int,
    lr: float | Sequence[float],
    knobs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    generator: torch.Generator | None,
    budgets: Sequence[int] | None = None,
    paired: bool = False,
) -> MeanFieldResult:
    """Solve puzzles by Adam on mean-field logits through a pathwise estimator (experiment E3).

    Each config (one ``knobs`` dict and one ``lr``) gets its own copy of the logits ``(B, 81, 9)``,
    started at 0, so several configs run side by side in one loop: the copies are rows of one
    tensor, the estimator is called once per step for each *distinct* knob setting (on all the
    rows that share it), and Adam runs with one learning rate per row. At every step: clamp the
    clues, draw the hard sample with the estimator, record its violations, and take an Adam step
    (``betas = (0.9, 0.999)``, ``eps = 1e-8``, as :class:`torch.optim.Adam`) on the summed penalty
    of the samples.

    Parameters
    ----------
    puzzles : torch.Tensor
        ``(B, 81)`` puzzles (0 = blank), validated with :func:`validate_puzzles`. Repeat rows for
        independent replicate runs of the same puzzle.
    estimator_name : str
        A name of :data:`redge_mini.registry.ESTIMATORS`.
    steps : int
        Adam steps.
    lr : float or sequence of float
        Learning rate(s).
    knobs : dict, sequence of dicts or None
        Estimator knobs (validated against the registry; defaults fill the rest).
    generator : torch.Generator or None
        Source of every sample, on the puzzles' device.
    budgets : sequence of int or None
        Steps at which to record violations (default: ``[steps]``).
    paired : bool
        False (default): every knob setting runs with every learning rate. True: ``knobs`` and
        ``lr`` are sequences of equal length and config ``i`` is ``(knobs[i], lr[i])`` (the
        configurations of a random search).

    Returns
    -------
    MeanFieldResult
        Configs ordered knobs-major: ``[(k0, lr0), (k0, lr1), ..., (k1, lr0), ...]``, or in the
        given order when ``paired``.
    """
    dev = puzzles.device if isinstance(puzzles, torch.Tensor) else torch.device("cpu")
    checked = validate_puzzles(puzzles.cpu() if isinstance(puzzles, torch.Tensor) else puzzles)
    puzzles = checked.to(dev)
    spec = get_spec(estimator_name)
    steps = check_int(steps, "steps", 1)
    lrs = [lr] if isinstance(lr, numbers.Real) else list(lr)
    if not lrs:
        raise ValueError("lr must be a number or a non-empty sequence of numbers")
    for value in lrs:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"lr must be > 0, got {value!r}")
    knob_list = [{}] if knobs is None else [knobs] if isinstance(knobs, dict) else list(knobs)
    if not knob_list:
        raise ValueError("knobs must be a dict, None or a non-empty sequence of dicts")
    knob_list = [check_knobs(estimator_name, **k) for k in knob_list]
    budgets = sorted({steps} if budgets is None else {check_int(b, "budgets", 1) for b in budgets})
    if budgets[-1] > steps:
        raise ValueError(f"budgets must be <= steps={steps}, got {budgets[-1]}")
    if generator is not None and torch.device(generator.device).type != dev.type:
        raise ValueError(f"generator is on {generator.device} but puzzles are on {dev}")
    if paired:
        if len(knob_list) != len(lrs):
            raise ValueError(f"paired=True needs as many knob settings as learning rates, got "
                             f"{len(knob_list)} and {len(lrs)}")
        pairs = list(zip(knob_list, lrs, strict=True))
    else:
        pairs = list(itertools.product(knob_list, lrs))
    batch = puzzles.shape[0]
    configs = [{"knobs": dict(k), "lr": float(r)} for k, r in pairs]
    n_cfg = len(configs)
    # one sampler call per distinct knob setting, on the rows of its configs (in config order)
    groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for c, config in enumerate(configs):
        groups.setdefault(tuple(sorted(config["knobs"].items())), []).append(c)
    order = [c for members in groups.values() for c in members]
    position = {c: i for i, c in enumerate(order)}  # config -> block of rows in the tensor
    calls = []
    for key, members in groups.items():
        first = position[members[0]]
        calls.append((slice(first * batch, (first + len(members)) * batch), dict(key)))
    rows = n_cfg * batch
    logits = torch.zeros(rows, 81, 9, device=dev, requires_grad=True)
    row_lr = torch.tensor([configs[c]["lr"] for c in order], device=dev).repeat_interleave(
        batch)[:, None, None]
    exp_avg = torch.zeros(rows, 81, 9, device=dev)
    exp_avg_sq = torch.zeros(rows, 81, 9, device=dev)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    tiled = puzzles.repeat(n_cfg, 1)
    clue = (tiled > 0)[..., None]
    free = (~clue).float()  # 1 on blank cells, 0 on clue cells
    clamp_to = torch.zeros(rows, 81, 9, device=dev)
    clamp_clues_(clamp_to, tiled)
    clamp_to = clamp_to * (1.0 - free)
    to_config = torch.tensor(order, device=dev)  # row block i holds config order[i]
    budget_index = {b: i for i, b in enumerate(budgets)}
    recorded = torch.zeros(n_cfg, len(budgets), batch, dtype=torch.long, device=dev)
    best_recorded = torch.zeros_like(recorded)
    best = torch.full((n_cfg, batch), 10**6, dtype=torch.long, device=dev)
    solved_step = torch.full((n_cfg, batch), -1, dtype=torch.long, device=dev)
    first_solution = torch.zeros(n_cfg, batch, 81, dtype=torch.long, device=dev)
    trace = torch.zeros(n_cfg, steps, device=dev)
    mismatches = torch.zeros((), dtype=torch.long, device=dev)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        with torch.no_grad():
            logits.mul_(free).add_(clamp_to)
        if len(calls) == 1:
            hard = spec.fn(logits, hard=True, generator=generator, **calls[0][1])
        else:
            hard = torch.cat([spec.fn(logits[rows_], hard=True, generator=generator, **k)
                              for rows_, k in calls])
        counts = unit_counts(hard)
        loss = (counts - 1.0).square().sum()
        (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2 ** step)).add_(eps)
            logits.sub_(exp_avg / denom * (row_lr / (1.0 - beta1 ** step)))
            viol_rows = (counts.detach() - 1.0).clamp(min=0.0).sum(dim=(1, 2)).round().long()
            grids_rows = hard.detach().argmax(-1) + 1
            agrees_rows = ((tiled == 0) | (tiled == grids_rows)).all(-1)
            # back to config order
            grids = torch.empty(n_cfg, batch, 81, dtype=torch.long, device=dev)
            grids[to_config] = grids_rows.reshape(n_cfg, batch, 81)
            viol = torch.empty(n_cfg, batch, dtype=torch.long, device=dev)
            viol[to_config] = viol_rows.reshape(n_cfg, batch)
            agrees = torch.empty(n_cfg, batch, dtype=torch.bool, device=dev)
            agrees[to_config] = agrees_rows.reshape(n_cfg, batch)
            mismatches += rows - agrees.sum()
            ok = (viol == 0) & agrees
            new = ok & (solved_step < 0)
            if bool(new.any()):
                solved_step = torch.where(new, torch.full_like(solved_step, step), solved_step)
                first_solution = torch.where(new[..., None], grids, first_solution)
            trace[:, step - 1] = viol.float().mean(-1)
            best = torch.minimum(best, viol)
            if step in budget_index:
                recorded[:, budget_index[step]] = viol
                best_recorded[:, budget_index[step]] = best
    seconds = time.perf_counter() - start
    unsolved = solved_step < 0
    first_solution = torch.where(unsolved[..., None], grids, first_solution)
    return MeanFieldResult(configs, budgets, recorded.cpu(), best_recorded.cpu(),
                           solved_step.cpu(), grids.cpu(),
                           first_solution.cpu(), trace.cpu(), seconds,
                           {"clue_mismatches": int(mismatches)})


def format_grid(grid: torch.Tensor) -> str:
    """A 9-line text rendering of a grid or puzzle (``.`` for blanks), boxes separated."""
    grid = validate_puzzle(grid, "grid") if not isinstance(grid, torch.Tensor) else grid.reshape(81)
    lines = []
    for r in range(9):
        cells = ["." if int(v) == 0 else str(int(v)) for v in grid[9 * r:9 * r + 9]]
        lines.append(" | ".join(" ".join(cells[3 * b:3 * b + 3]) for b in range(3)))
        if r in (2, 5):
            lines.append("-" * 21)
    return "\n".join(lines)


def draw_sudoku(ax: Any, grid: torch.Tensor, puzzle: torch.Tensor | None = None,
                title: str | None = None) -> None:
    """Draw a grid on a matplotlib axis: clues in black, filled cells in blue, clashes in red.

    A filled cell is red when its digit appears more than once in one of its units.
    """
    grid = grid.reshape(81).cpu().long()
    puzzle = torch.zeros(81, dtype=torch.long) if puzzle is None else puzzle.reshape(81).cpu()
    if bool((grid > 0).all()):
        counts = UNITS @ grid_to_onehot(grid[None])[0]  # (27, 9)
        clash_cell = ((UNITS.T @ (counts > 1).float()) * grid_to_onehot(grid[None])[0]).sum(-1) > 0
    else:
        clash_cell = torch.zeros(81, dtype=torch.bool)
    for k in range(10):
        width = 2.0 if k % 3 == 0 else 0.5
        ax.plot([k, k], [0, 9], color="black", lw=width)
        ax.plot([0, 9], [k, k], color="black", lw=width)
    for cell in range(81):
        value = int(grid[cell])
        if value == 0:
            continue
        row, col = divmod(cell, 9)
        color = "black" if int(puzzle[cell]) else ("#D55E00" if clash_cell[cell] else "#0072B2")
        weight = "bold" if int(puzzle[cell]) else "normal"
        ax.text(col + 0.5, 8.5 - row, str(value), ha="center", va="center", fontsize=10,
                color=color, fontweight=weight)
    ax.set_xlim(0, 9)
    ax.set_ylim(0, 9)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
