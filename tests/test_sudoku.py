"""Sudoku generator, penalty, puzzle validation and mean-field solver (checked by brute force)."""

from __future__ import annotations

import pytest
import torch

from redge_mini.book.tasks import sudoku


def brute_valid(grid: list[int]) -> bool:
    """Validity by explicit loops over rows, columns and boxes (independent of ``UNITS``)."""
    rows = [grid[9 * r:9 * r + 9] for r in range(9)]
    cols = [[grid[9 * r + c] for r in range(9)] for c in range(9)]
    boxes = [[grid[9 * (3 * br + i) + 3 * bc + j] for i in range(3) for j in range(3)]
             for br in range(3) for bc in range(3)]
    return all(sorted(unit) == list(range(1, 10)) for unit in rows + cols + boxes)


def brute_counts(grid: list[int]) -> list[list[int]]:
    """Digit counts per unit, by loops: 27 lists of 9 counts."""
    cells_of_units = [[9 * r + c for c in range(9)] for r in range(9)]
    cells_of_units += [[9 * r + c for r in range(9)] for c in range(9)]
    cells_of_units += [[9 * (3 * br + i) + 3 * bc + j for i in range(3) for j in range(3)]
                       for br in range(3) for bc in range(3)]
    return [[sum(grid[cell] == d for cell in cells) for d in range(1, 10)]
            for cells in cells_of_units]


def test_generated_grids_are_valid_by_brute_force() -> None:
    grids = sudoku.generate_grids(200, generator=torch.Generator().manual_seed(0))
    assert grids.shape == (200, 81)
    assert all(brute_valid(row.tolist()) for row in grids)
    assert brute_valid(sudoku.base_grid().tolist())


def test_generator_is_seeded_and_varied() -> None:
    a = sudoku.generate_grids(50, generator=torch.Generator().manual_seed(3))
    b = sudoku.generate_grids(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert len({tuple(row.tolist()) for row in a}) == 50
    # every digit appears in every cell position across many grids
    many = sudoku.generate_grids(400, generator=torch.Generator().manual_seed(4))
    assert all(len(set(many[:, cell].tolist())) == 9 for cell in range(81))


def brute_signature(grid: list[int]) -> tuple[int, int]:
    """Distinct digit sets of the 27 minirows and of the 27 minicolumns, by loops (sorted)."""
    minirows = {frozenset(grid[9 * r + 3 * s + j] for j in range(3))
                for r in range(9) for s in range(3)}
    minicols = {frozenset(grid[9 * (3 * s + i) + c] for i in range(3))
                for c in range(9) for s in range(3)}
    return tuple(sorted((len(minirows), len(minicols))))


def test_minirow_signature_matches_loops_and_is_an_orbit_invariant() -> None:
    grids = sudoku.generate_grids(60, generator=torch.Generator().manual_seed(12))
    signature = sudoku.minirow_signature(grids)
    assert [tuple(s) for s in signature.tolist()] == [brute_signature(g) for g in grids.tolist()]
    # the symmetries keep validity and the signature (it is an invariant of the orbit)
    moved = sudoku.shuffle_grids(grids, generator=torch.Generator().manual_seed(13))
    assert all(brute_valid(row) for row in moved.tolist())
    assert not torch.equal(moved, grids)
    assert torch.equal(sudoku.minirow_signature(moved), signature)
    # so every relabelling / shuffle of the base grid stays in one orbit: signature (3, 9)
    orbit = sudoku.shuffle_grids(sudoku.base_grid().repeat(200, 1),
                                 generator=torch.Generator().manual_seed(14))
    assert len({tuple(row) for row in orbit.tolist()}) == 200
    assert (sudoku.minirow_signature(orbit) == torch.tensor([3, 9])).all()


def test_generated_grids_lie_in_many_symmetry_orbits() -> None:
    grids = sudoku.generate_grids(500, generator=torch.Generator().manual_seed(15))
    signatures = {tuple(s) for s in sudoku.minirow_signature(grids).tolist()}
    # grids with different signatures are not symmetries of each other: at least this many
    # orbits (a one-orbit generator would give a single signature)
    assert len(signatures) >= 20
    assert (3, 9) not in signatures or len(signatures) > 1
    # no cell holds one digit much more often than the others (mean 500 / 9 = 55.6 per digit;
    # a binomial count with p = 1/9, n = 500 has sd 7.0, so 6 sd is a generous bound)
    counts = torch.stack([torch.bincount(grids[:, c], minlength=10)[1:] for c in range(81)])
    assert (counts - 500 / 9).abs().max() < 6 * (500 * (1 / 9) * (8 / 9)) ** 0.5


def test_puzzles_have_the_requested_blanks_and_agree_with_solutions() -> None:
    puzzles, solutions = sudoku.make_puzzles(20, 45, generator=torch.Generator().manual_seed(1))
    assert ((puzzles == 0).sum(-1) == 45).all()
    clue = puzzles > 0
    assert torch.equal(puzzles[clue], solutions[clue])
    assert sudoku.is_solved(solutions, puzzles).all()
    sudoku.validate_puzzles(puzzles)


def test_penalty_and_violations_match_a_loop_recount() -> None:
    g = torch.Generator().manual_seed(2)
    grids = torch.randint(1, 10, (30, 81), generator=g)
    grids[:5] = sudoku.generate_grids(5, generator=g)
    pen = sudoku.penalty(sudoku.grid_to_onehot(grids))
    viol = sudoku.violations(grids)
    for i, row in enumerate(grids.tolist()):
        counts = brute_counts(row)
        assert pen[i].item() == pytest.approx(sum((c - 1) ** 2 for u in counts for c in u))
        assert viol[i].item() == sum(max(c - 1, 0) for u in counts for c in u)
        assert (pen[i].item() == 0) == brute_valid(row) == (viol[i].item() == 0)
    assert (pen[:5] == 0).all() and (pen[5:] > 0).all()


def test_penalty_is_differentiable_in_the_one_hot() -> None:
    grid = sudoku.generate_grids(1, generator=torch.Generator().manual_seed(5))
    grid[0, 0], grid[0, 1] = grid[0, 1].item(), grid[0, 0].item()  # swap: breaks two columns
    x = sudoku.grid_to_onehot(grid).requires_grad_(True)
    sudoku.penalty(x).sum().backward()
    # d penalty / d x[n, k] = 2 * sum over the 3 units of cell n of (count[u, k] - 1)
    counts = sudoku.UNITS @ sudoku.grid_to_onehot(grid)[0]
    expected = 2.0 * sudoku.UNITS.T @ (counts - 1.0)
    torch.testing.assert_close(x.grad[0], expected)


@pytest.mark.parametrize(
    ("puzzle", "message"),
    [
        ([0] * 80, "81 cells"),
        ([0] * 82, "81 cells"),
        ([0] * 80 + [10], "digits 0-9"),
        ([-1] + [0] * 80, "digits 0-9"),
        ([5, 5] + [0] * 79, "contradictory clues: digit 5 appears 2 times in row 1"),
        ([3] + [0] * 8 + [3] + [0] * 71, "column 1"),
        ([7] + [0] * 9 + [7] + [0] * 70, "box 1"),
        ("12x" + "0" * 78, "characters"),
    ],
)
def test_malformed_puzzles_are_rejected(puzzle: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sudoku.validate_puzzle(puzzle)


def test_validate_puzzle_accepts_strings_grids_and_names_the_row() -> None:
    text = "." * 80 + "9"
    assert sudoku.validate_puzzle(text)[-1].item() == 9
    assert sudoku.validate_puzzle(torch.zeros(9, 9, dtype=torch.long)).shape == (81,)
    with pytest.raises(TypeError, match="integers"):
        sudoku.validate_puzzle(torch.full((81,), 0.5))
    bad = torch.zeros(3, 81, dtype=torch.long)
    bad[2, :2] = 4
    with pytest.raises(ValueError, match=r"puzzles\[2\]"):
        sudoku.validate_puzzles(bad)


def test_is_solved_checks_validity_clues_and_blanks() -> None:
    puzzles, solutions = sudoku.make_puzzles(2, 30, generator=torch.Generator().manual_seed(6))
    assert sudoku.is_solved(solutions, puzzles).all()
    other = sudoku.generate_grids(2, generator=torch.Generator().manual_seed(7))
    assert not sudoku.is_solved(other, puzzles).any()  # valid, but breaks the clues
    assert not sudoku.is_solved(puzzles).any()  # blanks are never solved
    assert torch.equal(sudoku.tokens_to_grid(sudoku.grid_to_tokens(puzzles)), puzzles)


def test_clamping_fixes_clue_cells() -> None:
    puzzles, _ = sudoku.make_puzzles(3, 40, generator=torch.Generator().manual_seed(8))
    logits = torch.randn(3, 81, 9)
    before = logits.clone()
    sudoku.clamp_clues_(logits, puzzles)
    clue = puzzles > 0
    assert torch.equal(logits[~clue], before[~clue])
    assert torch.equal(logits[clue].argmax(-1) + 1, puzzles[clue])
    assert (logits[clue].max(-1).values == 0).all()


def test_mean_field_solves_easy_puzzles_and_keeps_clues() -> None:
    g = torch.Generator().manual_seed(9)
    puzzles, _ = sudoku.make_puzzles(6, 8, generator=g)
    result = sudoku.solve_mean_field(puzzles, "st", steps=150, lr=[0.3, 0.03],
                                     generator=g, budgets=[50, 150])
    assert result.violations.shape == (2, 2, 6)
    assert result.extra["clue_mismatches"] == 0
    assert result.solved_within(150)[0].all()  # lr 0.3: 8 blanks are easy
    solved = result.first_solution[0]
    assert sudoku.is_solved(solved, puzzles).all()
    assert all(brute_valid(row.tolist()) for row in solved)


def test_mean_field_runs_several_knobs_side_by_side() -> None:
    g = torch.Generator().manual_seed(10)
    puzzles, _ = sudoku.make_puzzles(2, 20, generator=g)
    result = sudoku.solve_mean_field(puzzles, "redge", steps=5, lr=[0.1, 0.2],
                                     knobs=[{"t_1": 0.5}, {"t_1": 0.9, "n_steps": 3}],
                                     generator=g)
    assert [c["lr"] for c in result.configs] == [0.1, 0.2, 0.1, 0.2]
    assert result.configs[2]["knobs"] == {"n_steps": 3, "t_1": 0.9}
    assert result.mean_violations.shape == (4, 5)


def test_mean_field_rejects_bad_arguments() -> None:
    puzzles, _ = sudoku.make_puzzles(1, 20, generator=torch.Generator().manual_seed(11))
    with pytest.raises(ValueError, match="unknown estimator"):
        sudoku.solve_mean_field(puzzles, "nope", steps=2, lr=0.1, generator=None)
    with pytest.raises(ValueError, match="t_1"):
        sudoku.solve_mean_field(puzzles, "redge", steps=2, lr=0.1, knobs={"t_1": 1.5},
                                generator=None)
    with pytest.raises(ValueError, match="has no knob"):
        sudoku.solve_mean_field(puzzles, "st", steps=2, lr=0.1, knobs={"tau": 1.0},
                                generator=None)
    with pytest.raises(ValueError, match="lr"):
        sudoku.solve_mean_field(puzzles, "st", steps=2, lr=-0.1, generator=None)
    with pytest.raises(ValueError, match="budgets"):
        sudoku.solve_mean_field(puzzles, "st", steps=2, lr=0.1, budgets=[3], generator=None)


def test_experiment_script_runs_resumes_and_refuses_bad_input(tmp_path, capsys) -> None:
    from redge_mini.book.experiments import sudoku as e3
    from redge_mini.book.experiments.summary import read_summary

    args = ["--smoke", "--out", str(tmp_path), "--estimators", "st,redge", "--device", "cpu"]
    assert e3.main(args) == 0
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == [f"small-smoke_{stage}.json" for stage in (
        "main_redge", "main_st", "timing", "tune_knob_redge", "tune_knob_st", "tune_lr_redge",
        "tune_lr_st")]
    stamp = (tmp_path / "small-smoke_main_st.json").stat().st_mtime_ns
    assert e3.main(args) == 0  # resumed: nothing recomputed
    assert (tmp_path / "small-smoke_main_st.json").stat().st_mtime_ns == stamp
    proto = e3.protocol("small", smoke=True)
    summary = e3.summarise(e3.run(proto, ["st", "redge"], out=tmp_path))
    assert set(summary["estimators"]) == {"st", "redge"}
    assert summary["chosen"]["redge"]["knobs"] in proto.grids["redge"]
    assert summary["chosen"]["st"]["tuned_lr"] in proto.lr_grid
    rows = read_summary("sudoku", tmp_path)
    main_rows = [r for r in rows if r.setting in ("authors_lr", "tuned_lr")]
    assert {r.metric for r in main_rows} == set(e3.METRICS)
    assert all(r.n_seeds == proto.n_seeds for r in main_rows)
    assert all("lr=0.05" in r.knobs for r in main_rows if r.setting == "authors_lr")
    assert {r.setting for r in rows} >= {"tune_knob", "tune_lr"}
    (tmp_path / "summary.csv").unlink()
    assert e3.write_summary_csv(tmp_path, "small-smoke") is None  # st and redge only
    with pytest.raises(SystemExit):
        e3.main(["--smoke", "--out", str(tmp_path), "--estimators", "nope"])
    assert "unknown estimator" in capsys.readouterr().err


def test_edge_detection_and_choice_rule() -> None:
    from redge_mini.book.experiments import sudoku as e3
    from redge_mini.book.experiments import tuning

    grid = e3.REDGE_GRID
    assert tuning.on_edge(grid, grid.index({"n_steps": 5, "t_1": 0.9}))  # t_1 at its top
    assert tuning.on_edge(grid, grid.index({"n_steps": 3, "t_1": 0.5}))  # n_steps at its bottom
    assert not tuning.on_edge(grid, grid.index({"n_steps": 5, "t_1": 0.5}))
    assert tuning.on_edge([0.01, 0.05, 0.1], 0) and not tuning.on_edge([0.01, 0.05, 0.1], 1)
    assert not tuning.on_edge([0.05, 0.01, 0.1], 0)  # unsorted grids (grown ones) work too
    # a grid grows past the edge the choice sits on, one knob at a time, inside the knob's range
    assert tuning.extend_grid("redge", grid, grid.index({"n_steps": 9, "t_1": 0.9})) == [
        {"n_steps": 17, "t_1": 0.9}, {"n_steps": 9, "t_1": 0.9667}]
    assert tuning.extend_grid("redge", grid, grid.index({"n_steps": 5, "t_1": 0.5})) == []
    assert tuning.extend_grid("reinmax", [{"tau": 1.0}, {"tau": 2.0}], 0) == []  # tau >= 1
    assert tuning.extend_grid("gumbel", [{"tau": 0.1}, {"tau": 2.0}], 0) == [{"tau": 0.0333}]
    assert tuning.extend_grid("st", [{"lr": 0.1}, {"lr": 0.3}], 1) == [{"lr": 0.9}]
    # in a tuning stage, a choice on the edge makes the grid grow (one round here)
    proto = e3.protocol("small", smoke=True)
    data = e3.run_tuning("tune_knob", "gumbel", proto, [{"tau": 0.5}, {"tau": 1.0}], [0.05],
                         seed=0, device=torch.device("cpu"), max_rounds=1)
    assert len(data["configs"]) == 3 and len(data["extended"]) == 1
    assert data["extended"][0]["tau"] in (0.1667, 2.5)
    assert not tuning.on_edge([{}], 0)
    configs = [{"final_solved": [0, 1], "final_violations": [2, 0], "best_violations": [0, 0]},
               {"final_solved": [1, 1], "final_violations": [0, 0], "best_violations": [0, 0]},
               {"final_solved": [1, 1], "final_violations": [0, 0], "best_violations": [1, 0]}]
    assert e3.choose(configs) == 1
    table = e3.protocol_table(e3.protocol("full"))
    assert next(r for r in table if r["item"] == "steps")["ours"] == "2000"
    assert all(r["reason"] for r in table if r["authors"] != r["ours"])
