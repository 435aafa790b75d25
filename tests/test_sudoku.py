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


def test_mean_field_runs_paired_configs() -> None:
    g = torch.Generator().manual_seed(12)
    puzzles, _ = sudoku.make_puzzles(3, 20, generator=g)
    knobs = [{"t_1": 0.5}, {"t_1": 0.9, "n_steps": 3}, {"t_1": 0.5}]
    result = sudoku.solve_mean_field(puzzles, "redge", steps=4, lr=[0.1, 0.2, 0.3], knobs=knobs,
                                     paired=True, generator=g, budgets=[2, 4])
    assert [c["lr"] for c in result.configs] == [0.1, 0.2, 0.3]
    assert [c["knobs"]["t_1"] for c in result.configs] == [0.5, 0.9, 0.5]
    assert result.violations.shape == (3, 2, 3) and result.extra["clue_mismatches"] == 0
    # the recorded violations are those of the recorded final grids
    assert torch.equal(result.violations[:, -1], sudoku.violations(
        result.final_grids.reshape(-1, 81)).reshape(3, 3))
    with pytest.raises(ValueError, match="paired"):
        sudoku.solve_mean_field(puzzles, "redge", steps=2, lr=[0.1], knobs=knobs, paired=True,
                                generator=None)


def test_protocol_meets_the_thresholds_and_tunes_equally() -> None:
    from redge_mini.book.experiments import sudoku as e3

    full = e3.protocol("full")
    assert full.n_eval >= 200 and full.n_seeds >= 3 and full.n_tune >= 30
    assert full.steps == 2000 and full.budgets[-1] == full.steps
    assert {m.name for m in e3.METRICS} == set(e3.MARGINS)
    assert [m.name for m in e3.METRICS if m.headline] == ["final_solved"]
    for name in e3.ESTIMATOR_NAMES:  # the same number of configurations, lr always tuned
        configs = e3.tuning_configs(full, name)
        assert len(configs) == full.n_configs
        assert all("lr" in c and full.lr_low <= c["lr"] <= full.lr_high for c in configs)
        assert len({tuple(sorted(c.items())) for c in configs}) == full.n_configs
    # the authors' settings run beside the tuned ReDGE only
    assert len(e3.eval_series("redge", {"lr": 0.2, "n_steps": 5, "t_1": 0.5})) == 3
    assert len(e3.eval_series("redge", dict(e3.AUTHOR_SERIES["README demo"]))) == 2
    assert e3.eval_series("st", {"lr": 0.2}) == [{"lr": 0.2}]
    table = e3.protocol_table(full)
    assert all(r["reason"] for r in table if r["authors"] != r["ours"])
    # tuning and evaluation puzzles are disjoint
    tune = {tuple(p.tolist()) for p in e3.tuning_puzzles(full)}
    assert len(tune) == full.n_tune
    assert not tune & {tuple(p.tolist()) for p in e3.eval_puzzles(full)}


def test_experiment_smoke_writes_verdicts_recomputable_from_units(tmp_path, capsys) -> None:
    import math

    from scipy import stats

    from redge_mini.book.experiments import sudoku as e3
    from redge_mini.book.experiments import verdicts as vd

    args = ["--smoke", "--out", str(tmp_path), "--device", "cpu", "--threads", "1"]
    assert e3.main(args) == 0
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == sorted([f"small-smoke_{stage}_{e}.json" for stage in ("eval", "tune")
                            for e in e3.ESTIMATOR_NAMES] + [
        f"small-smoke_{stage}.json" for stage in ("timing", "ablation", "t1_sweep")])
    stamp = (tmp_path / "small-smoke_eval_st.json").stat().st_mtime_ns
    assert e3.main(args) == 0  # resumed: nothing recomputed
    assert (tmp_path / "small-smoke_eval_st.json").stat().st_mtime_ns == stamp
    proto = e3.protocol("small", smoke=True)
    units = vd.read_units("sudoku", tmp_path)
    series: dict = {}
    for u in units:
        series.setdefault((u.setting, u.estimator, u.knobs, u.metric, u.budget), {})[
            (u.seed, u.unit)] = u.value
    assert all(len(v) == proto.n_eval * proto.n_seeds for v in series.values())
    demo = "lr=0.05;n_steps=3;t_1=0.9"
    assert ("eval", "redge", demo, "final_solved", proto.steps) in series
    # the ablations' settings (issue 20): detached ReinDGE with its rivals, ReDGE's t_1 sweep
    settings = {k[0] for k in series}
    assert settings == {"eval", "ablation eval"} | {
        f"t1_sweep t_1={t:g} eval" for t in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)}
    assert {k[1] for k in series if k[0] == "ablation eval"} == {
        "reindge", "reinmax", "reindge_detach"}
    # the detached ReinDGE ran at ReinDGE's tuned configuration
    assert {k[2] for k in series if k[0] == "ablation eval" and k[1] == "reindge"} == {
        k[2] for k in series if k[0] == "ablation eval" and k[1] == "reindge_detach"}
    # every verdict recomputed from units.csv by a paired t-test
    rows = vd.read_verdicts("sudoku", tmp_path)
    assert rows and {r.budget for r in rows} == {proto.steps}
    assert {r.metric for r in rows if r.headline} == {"final_solved"}
    assert all(r.headline == (r.setting == "eval") for r in rows if r.metric == "final_solved")

    def key(name: str, row: vd.Verdict) -> tuple:
        base, _, knobs = name.partition("[")
        if knobs:
            return (row.setting, base, knobs[:-1], row.metric, row.budget)
        (only,) = [k for k in series if k[:2] == (row.setting, base)
                   and k[3:] == (row.metric, row.budget)]
        return only

    for row in rows:
        a, b = series[key(row.estimator, row)], series[key(row.rival, row)]
        shared = sorted(set(a) & set(b))
        x, y = [a[k] for k in shared], [b[k] for k in shared]
        assert row.n_units == len(shared) == proto.n_eval * proto.n_seeds
        assert math.isclose(row.diff, sum(x) / len(x) - sum(y) / len(y), abs_tol=1e-9)
        if len({p - q for p, q in zip(x, y, strict=True)}) > 1:
            test = stats.ttest_rel(x, y)
            low, high = test.confidence_interval(0.95)
            assert math.isclose(row.p_value, test.pvalue, rel_tol=1e-6)
            assert math.isclose(row.ci_low, low, rel_tol=1e-6, abs_tol=1e-9)
            assert math.isclose(row.ci_high, high, rel_tol=1e-6, abs_tol=1e-9)
    # equal tuning budgets, lr among the tuned knobs, on the tuning puzzles
    tuning = vd.read_tuning("sudoku", tmp_path)
    assert {t.estimator for t in tuning} == set(e3.ESTIMATOR_NAMES)
    assert {t.n_configs * t.n_runs for t in tuning} == {proto.n_configs * proto.n_tune}
    assert all("lr" in t.knobs_tuned.split(";") for t in tuning)
    # the chapter's in-memory verdicts are those of the file
    summary = e3.summarise(e3.current_records(tmp_path, proto.scale))
    assert [(v.setting, v.estimator, v.rival, v.metric, v.verdict, v.headline)
            for v in summary["verdicts"] + summary["ablation_verdicts"]] == [
        (v.setting, v.estimator, v.rival, v.metric, v.verdict, v.headline)
        for v in sorted(rows, key=lambda v: v.setting != "eval")]
    (tmp_path / "verdicts.csv").unlink()
    assert e3.write_summary_csv(tmp_path, proto.scale) is not None
    assert (tmp_path / "verdicts.csv").is_file()
    with pytest.raises(SystemExit):
        e3.main(["--smoke", "--out", str(tmp_path), "--estimators", "nope"])
    assert "unknown estimator" in capsys.readouterr().err
