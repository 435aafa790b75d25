"""The bench's four learning experiments (issue 24): the discrete VAE, Sudoku, masked-diffusion
and image guidance take a user's estimator with the book's tuning (same number of configurations,
same tuning units, a seed of its own), are judged on the book's units by the experiment's own
rule, leave the modules and the stored results as they were, and bad input or stored results of
another protocol stop the bench before any run.

The runs use each experiment's smoke protocol (seconds): they check the plumbing, not results."""

import json
import shutil
from pathlib import Path

import pytest

from redge_mini import registry
from redge_mini.book import bench, runtime
from redge_mini.book.bench_experiments import LEARNING, known_to_experiments
from redge_mini.book.experiments import tuning as tuning_module
from redge_mini.book.experiments.summary import read_summary
from redge_mini.book.experiments.verdicts import read_tuning, read_units

# the how-to page's example estimator (book/results/bench_example), as a user's own module
TEMPERED = (Path(__file__).resolve().parents[1] / "book" / "results" / "bench_example"
            / "my_estimators.py").read_text(encoding="utf-8")


@pytest.fixture
def tempered(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(TEMPERED)
    return bench.load_estimator(f"{path}:st_tempered", name="tempered")


def _modules():
    from redge_mini.book.experiments import image_guidance, mdm_guidance, sudoku, vae

    return [vae, sudoku, mdm_guidance, image_guidance]


def test_the_four_experiments_judge_the_new_estimator_on_the_books_units(tempered, tmp_path):
    name, fn, knobs = tempered
    stored = {e: (runtime.results_dir(e) / "units.csv").read_bytes() for e in LEARNING}
    before = (dict(tuning_module.KNOB_SPACE), [m.ESTIMATOR_NAMES for m in _modules()])
    out = tmp_path / "out"
    result = bench.run_bench(fn, name, knobs, out=out, n_problems=3, draws=20, progress=False,
                             experiments=("toy", *LEARNING), smoke=True)
    assert result.ran == ["toy", *LEARNING]
    assert {e: (runtime.results_dir(e) / "units.csv").read_bytes() for e in LEARNING} == stored
    assert (dict(tuning_module.KNOB_SPACE), [m.ESTIMATOR_NAMES for m in _modules()]) == before
    assert name not in registry.ALL_ESTIMATORS
    for experiment in LEARNING:
        rows = read_tuning(experiment, out / experiment)
        mine = [t for t in rows if t.estimator == name]
        st = [t for t in rows if t.estimator == "st"]
        assert len(mine) == 1 and mine[0].knobs_tuned == "lr;tau", experiment
        # the same budget and tuning units as the book's estimators
        assert (mine[0].n_configs, mine[0].n_runs) == (st[0].n_configs, st[0].n_runs), experiment
        # evaluated on exactly the units of the book's Straight-Through, at every budget
        units = read_units(experiment, out / experiment)
        keys = {}
        for u in units:
            if u.estimator in (name, "st") and u.metric == units[0].metric:
                keys.setdefault((u.estimator, u.budget), set()).add((u.seed, u.unit))
        budgets = {b for e, b in keys if e == "st"}
        assert budgets and {b for e, b in keys if e == name} == budgets, experiment
        for b in budgets:
            assert keys[name, b] == keys["st", b], (experiment, b)
        # a verdict against every book estimator of the experiment's headline
        rivals = {r["rival"].split("[")[0] for r in result.rows(experiment) if r["verdict"]}
        assert {"st", "gumbel", "reinmax", "redge"} <= rivals, experiment
        assert list((out / experiment / "records").glob("*.json")), experiment
    report = (out / "report.html").read_text()
    for title in ("Discrete VAE", "Sudoku", "Masked-diffusion guidance", "Image guidance",
                  "Against each of the book"):
        assert title in report
    assert "http" not in report and report.count("data:image/png;base64,") == 1 + len(LEARNING)
    run = json.loads((out / "bench.json").read_text())
    assert run["experiments"] == result.ran and run["wall_seconds"] > 0
    assert run["cpu_seconds"] > 0 and "git_commit" in run["metadata"]
    assert set(run["stage_seconds"]) == {"toy", *LEARNING}
    assert "What it costs" in report
    for experiment in LEARNING:  # one step of each, timed interleaved with ST
        rows = [r for r in read_summary(experiment, out / experiment)
                if r.metric == "ms_per_step"]
        assert {r.estimator for r in rows} == {"st", name} and min(r.mean for r in rows) > 0


def test_the_new_estimator_gets_a_seed_of_its_own_and_the_modules_are_restored(tempered):
    from redge_mini.book.experiments import sudoku, vae

    name, fn, knobs = tempered
    registry.register(name, fn, knobs)
    try:
        books = {e: vae.tuning_configs(vae.protocol("small"), e) for e in vae.ESTIMATOR_NAMES}
        with pytest.raises(RuntimeError, match="inside"):
            with known_to_experiments(name, [vae, sudoku]) as fixed:
                assert fixed == {}
                assert vae.ESTIMATOR_NAMES[-1] == sudoku.ESTIMATOR_NAMES[-1] == name
                mine = vae.tuning_configs(vae.protocol("small"), name)
                assert len(mine) == vae.protocol("small").n_configs
                assert all(set(c) == {"lr", "tau"} and 0.05 <= c["tau"] <= 20 for c in mine)
                # the book's configurations do not move
                assert books == {e: vae.tuning_configs(vae.protocol("small"), e)
                                 for e in books}
                raise RuntimeError("inside")
        assert name not in tuning_module.KNOB_SPACE
        assert name not in vae.ESTIMATOR_NAMES and name not in sudoku.ESTIMATOR_NAMES
    finally:
        registry.unregister(name)


def test_full_scale_checks_the_stored_results_before_any_run(tempered, tmp_path):
    name, fn, knobs = tempered
    book = tmp_path / "results"
    try:
        runtime.set_results_dir(book)
        with pytest.raises(bench.BenchError, match="no stored full-scale vae"):
            bench.run_bench(fn, name, knobs, out=tmp_path / "a", scale="full",
                            experiments=("toy", "vae"), progress=False)
        assert not (tmp_path / "a").exists()  # the toy suite did not run either
        # stored records of another protocol: refused, naming the setting that differs
        runtime.set_results_dir(None)
        source = runtime.results_dir("vae")
        (book / "vae").mkdir(parents=True)
        for path in source.glob("full_eval_st.json"):
            record = json.loads(path.read_text())
            record["config"]["n_train"] = 123
            (book / "vae" / path.name).write_text(json.dumps(record))
        runtime.set_results_dir(book)
        with pytest.raises(bench.BenchError, match="n_train = 123"):
            bench.run_bench(fn, name, knobs, out=tmp_path / "b", scale="full",
                            experiments=("toy", "vae"), progress=False)
        assert not (tmp_path / "b").exists()
    finally:
        runtime.set_results_dir(None)
    assert name not in registry.ALL_ESTIMATORS


def test_the_command_line_refuses_an_unknown_experiment(tmp_path):
    from redge_mini.book.bench import main

    path = tmp_path / "mine.py"
    path.write_text(TEMPERED)
    assert main([f"{path}:st_tempered", "--experiments", "toy,vae,nope",
                 "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_the_stored_example_is_the_pages_estimator_and_complete():
    """book/results/bench_example: one run of the command at --scale small, recorded."""
    folder = Path(runtime.results_dir()) / "bench_example"
    run = json.loads((folder / "bench.json").read_text())
    assert run["scale"] == "small" and not run["smoke"]
    assert run["experiments"] == ["toy", "polyprog", *LEARNING]
    assert run["metadata"]["git_commit"] and run["metadata"]["device_name"]
    for experiment in ("polyprog", *LEARNING):
        for table in ("units.csv", "summary.csv", "verdicts.csv", "tuning.csv"):
            assert (folder / experiment / table).is_file(), (experiment, table)
    page = (Path(__file__).resolve().parents[1] / "book" / "how_to_bench.md").read_text()
    assert (folder / "my_estimators.py").read_text() in page


def test_copying_the_stored_example_keeps_it_readable(tmp_path):
    """The report reads the tables back: a copied example folder gives the same verdicts."""
    from redge_mini.book.experiments.verdicts import read_verdicts

    folder = Path(runtime.results_dir()) / "bench_example"
    shutil.copytree(folder, tmp_path / "copy")
    for experiment in LEARNING:
        assert (read_verdicts(experiment, tmp_path / "copy" / experiment)
                == read_verdicts(experiment, folder / experiment))


CLONE = '''
import torch


def st_twin(logits, hard=False, dim=-1, *, generator=None):
    probs = torch.softmax(logits, dim)
    if not hard:
        return probs
    rows = probs.movedim(dim, -1).reshape(-1, probs.shape[dim])
    index = torch.multinomial(rows, 1, generator=generator)
    one_hot = torch.zeros_like(rows).scatter(-1, index, 1.0)
    one_hot = one_hot.reshape(probs.movedim(dim, -1).shape).movedim(-1, dim)
    return (one_hot - probs).detach() + probs
'''


def _as(record, name, **where):
    """A copy of a stored record of Straight-Through, relabelled as ``name``."""
    out = json.loads(json.dumps(record))
    for part in ("config", "data"):
        if "estimator" in out[part]:
            out[part]["estimator"] = name
    return out


def test_full_scale_pairs_the_new_estimator_with_the_stored_results(tmp_path, monkeypatch):
    """At --scale full the book's series are the stored ones, read and paired on their units.
    The new estimator's runs are replaced by Straight-Through's stored records under its name
    (the full protocols take minutes to hours): the bench must then find a difference of
    exactly 0 on every unit against the stored ST and judge them equivalent."""
    from redge_mini.book import bench_experiments as be
    from redge_mini.book.experiments import image_guidance, mdm_guidance, sudoku, vae

    path = tmp_path / "twin.py"
    path.write_text(CLONE)
    name, fn, knobs = bench.load_estimator(f"{path}:st_twin")

    def stored(experiment, file):
        return json.loads((runtime.results_dir(experiment) / file).read_text())

    def mdm_run(proto, estimators, **kwargs):
        tune, evaluation = stored("mdm_guidance", "full_tune.json"), stored(
            "mdm_guidance", "full_eval.json")
        tune["data"]["estimators"] = {name: tune["data"]["estimators"]["st"]}
        evaluation["data"]["series"] = [dict(s, estimator=name)
                                        for s in evaluation["data"]["series"]
                                        if s["estimator"] == "st"]
        return [tune, evaluation]

    for module, experiment in ((vae, "vae"), (sudoku, "sudoku")):
        monkeypatch.setattr(module, "run", lambda proto, estimators, e=experiment, **kw: [
            _as(stored(e, "full_tune_st.json"), name), _as(stored(e, "full_eval_st.json"), name)])
    monkeypatch.setattr(mdm_guidance, "run", mdm_run)
    monkeypatch.setattr(image_guidance, "load_image_models", lambda **kw: None)
    monkeypatch.setattr(image_guidance, "run_tuning", lambda *a, **kw: _as(
        stored("image_guidance", "full_tune_st.json"), name)["data"])
    monkeypatch.setattr(image_guidance, "run_evaluation", lambda *a, **kw: _as(
        stored("image_guidance", "full_eval_st.json"), name)["data"])
    monkeypatch.setattr(be, "cost_rows", lambda *args: [])  # full-scale timings take minutes
    registry.register(name, fn, knobs)
    try:
        for experiment in LEARNING:
            result = be.run_experiment(experiment, name, scale="full", out=tmp_path / "out")
            assert result.book_source.startswith("stored full results"), experiment
            chosen = [t.chosen for t in result.tuning if t.estimator == "st"][0]
            rows = [r for r in bench.against(result.verdicts, name)
                    if r["rival"] in ("st", f"st[{chosen}]") and r["setting"] != "tuning"]
            assert rows, experiment
            for r in rows:
                assert r["diff"] == 0.0 and r["verdict"] == "equivalent", (experiment, r)
            units = read_units(experiment, tmp_path / "out" / experiment)
            assert ({(u.seed, u.unit) for u in units if u.estimator == name
                     and u.setting != "tuning"}
                    == {(u.seed, u.unit) for u in units if u.estimator == "st"
                        and u.setting != "tuning"}), experiment
    finally:
        registry.unregister(name)
