"""The bench (issue 24): an estimator of your own, checked before the run, judged on chapter 6's
toy suite against the book's estimators by the book's one verdict rule, from the command line.

Fixed seeds throughout (the suite's and the draws'), at a tiny scale: every verdict below is a
deterministic function of the code."""

import base64
import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from redge_mini import ALL_ESTIMATORS
from redge_mini.book import bench
from redge_mini.book.experiments.verdicts import read_tuning, read_units, read_verdicts

ROOT = Path(__file__).resolve().parents[1]

# Straight-Through written from scratch (not the library's function): a clone under another name
CLONE = '''
import torch


def st_clone(logits, hard=False, dim=-1, *, generator=None):
    probs = torch.softmax(logits, dim)
    if not hard:
        return probs
    flat = probs.movedim(dim, -1)
    rows = flat.reshape(-1, flat.shape[-1])
    index = torch.multinomial(rows, 1, generator=generator)
    one_hot = torch.zeros_like(rows).scatter(-1, index, 1.0)
    one_hot = one_hot.reshape(flat.shape).movedim(-1, dim)
    return (one_hot - probs).detach() + probs


def st_scaled(logits, scale=1.5, hard=False, dim=-1, *, generator=None):
    """Straight-Through with its gradient multiplied by scale: biased on purpose."""
    probs = torch.softmax(logits, dim)
    y = st_clone(logits, hard=hard, dim=dim, generator=generator)
    if not hard:
        return y
    return (y - scale * probs).detach() + scale * probs


st_scaled.knobs = {"scale": (0.0, 10.0)}
'''


@pytest.fixture
def user_module(tmp_path):
    """The estimators above in a file outside the repository."""
    path = tmp_path / "my_estimators.py"
    path.write_text(CLONE)
    return path


def _rows_against_st(result):
    return [r for r in result.table() if r["rival"] == "st"]


def test_a_clone_of_straight_through_is_never_better_or_worse_than_st(user_module, tmp_path):
    name, fn, knobs = bench.load_estimator(f"{user_module}:st_clone")
    assert (name, knobs) == ("st_clone", {})
    result = bench.run_bench(fn, name, knobs, out=tmp_path / "out", n_problems=12, draws=300,
                             progress=False)
    rows = _rows_against_st(result)
    # every loss, every metric, every budget: 3 losses x (bias2, log_variance, 2 x log_mse)
    assert len(rows) == 12 and {r["n"] for r in rows} == {12}
    assert {r["verdict"] for r in rows} <= {"equivalent", "inconclusive"}, rows
    assert "st_clone" not in ALL_ESTIMATORS  # registered for the run only
    # the stored units and verdicts are what the result says
    units = read_units(bench.EXPERIMENT, tmp_path / "out")
    assert {u.estimator for u in units} == {"st", "reinmax", "gumbel", "redge", "reindge",
                                            "reinforce", "st_clone"}
    assert read_verdicts(bench.EXPERIMENT, tmp_path / "out") == result.verdicts


def test_a_biased_estimator_is_judged_worse_than_st(user_module, tmp_path):
    name, fn, knobs = bench.load_estimator(f"{user_module}:st_scaled", name="scaled")
    assert knobs["scale"].default == 1.5 and knobs["scale"].range_string() == "[0, 10]"
    result = bench.run_bench(fn, name, knobs, out=tmp_path / "out", n_problems=16, draws=300,
                             progress=False)
    rows = _rows_against_st(result)
    words = {(r["setting"], r["metric"], r["budget"]): r["verdict"] for r in rows}
    for kind in bench.LOSSES:
        # the headline (one draw's MSE) is worse on every loss ...
        assert words[kind, "log_mse", 1] == "worse", rows
        # ... its variance is 1.5^2 times ST's: log 2.25 = 0.81 up to the draws' noise
        var = next(r for r in rows if (r["setting"], r["metric"]) == (kind, "log_variance"))
        assert var["verdict"] == "worse" and var["ci_low"] < math.log(2.25) < var["ci_high"] + 0.1
        # and its squared bias is larger on average (heavy-tailed across problems)
        bias = next(r for r in rows if (r["setting"], r["metric"]) == (kind, "bias2"))
        assert bias["diff"] > 0
    assert "better" not in words.values()


def _write(tmp_path, body, name="bad.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return f"{path}:fn"


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('boom')\n", r"does not import: RuntimeError: boom"),
    ("def other(logits, hard=False, dim=-1, *, generator=None):\n    return logits\n",
     r"has no function 'fn'; its functions: \['other'\]"),
    ("def fn(logits, hard=False):\n    return logits\n", r"signature .* must be fn\(logits"),
    ("def fn(logits, tau, hard=False, dim=-1, *, generator=None):\n    return logits\n",
     r"knob 'tau' of fn has no default"),
    ("import torch\n"
     "def fn(logits, hard=False, dim=-1, *, generator=None):\n"
     "    return torch.softmax(logits, dim)\n", r"is not one-hot along dim=-1"),
    ("import torch\n"
     "calls = []\n"
     "def fn(logits, hard=False, dim=-1, *, generator=None):\n"
     "    calls.append(1)  # a new category at every call, whatever the generator\n"
     "    h = torch.zeros_like(logits)\n"
     "    h[..., len(calls) % logits.shape[-1]] = 1.0\n"
     "    return h + 0 * logits\n",
     r"ignores its generator"),
    ("import torch\n"
     "def fn(logits, hard=False, dim=-1, *, generator=None):\n"
     "    p = torch.softmax(logits, dim)\n"
     "    i = torch.multinomial(p, 1, generator=generator)\n"
     "    h = torch.zeros_like(p).scatter(-1, i, 1.0)\n"
     "    s = p * (p - p.detach()).sqrt()\n"  # 0 forward, infinite backward
     "    return (h - s).detach() + s if hard else p\n", r"NaN or infinite gradients"),
    ("import torch\n"
     "def fn(logits, tau=1.0, hard=False, dim=-1, *, generator=None):\n"
     "    return logits\n"
     "fn.knobs = {'temperature': (0, 1)}\n", r"not knobs of its signature"),
    ("def fn(logits, tau=5.0, hard=False, dim=-1, *, generator=None):\n    return logits\n"
     "fn.knobs = {'tau': (0, 1)}\n", r"lies outside its range"),
])
def test_bad_input_is_refused_before_the_run_with_a_message(tmp_path, body, message):
    with pytest.raises(bench.BenchError, match=message):
        bench.load_estimator(_write(tmp_path, body))


def test_other_bad_targets(tmp_path):
    with pytest.raises(bench.BenchError, match="MODULE:FUNCTION"):
        bench.load_estimator("no_colon_here")
    with pytest.raises(bench.BenchError, match="does not exist"):
        bench.load_estimator(f"{tmp_path / 'missing.py'}:fn")
    with pytest.raises(bench.BenchError, match="does not import: ModuleNotFoundError"):
        bench.load_estimator("surely_not_a_module_h6:fn")
    body = ("import torch\n"
            "def st(logits, hard=False, dim=-1, *, generator=None):\n    return logits\n")
    with pytest.raises(bench.BenchError, match="taken by a registered estimator"):
        bench.load_estimator(_write(tmp_path, body).replace(":fn", ":st"))


def test_the_command_line_on_an_estimator_outside_the_repository(user_module, tmp_path):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "redge_mini.book.bench", f"{user_module}:st_scaled",
               "--out", str(out), "--problems", "4", "--draws", "50", "--experiments", "toy",
               "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "not run: the five experiments" in done.stdout
    for name in ("units.csv", "summary.csv", "verdicts.csv", "tuning.csv", "report.html"):
        assert (out / name).is_file(), name
    with (out / "verdicts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert any(r["rival"] == "st_scaled" or r["estimator"] == "st_scaled" for r in rows)
    report = (out / "report.html").read_text()
    assert "http" not in report and "st_scaled" in report
    png = report.split("data:image/png;base64,", 1)[1].split("'", 1)[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    # bad input: exit status 2 and the reason, nothing written
    bad = subprocess.run([sys.executable, "-m", "redge_mini.book.bench", f"{user_module}:nope",
                          "--out", str(tmp_path / "none")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "has no function 'nope'" in bad.stderr
    assert not (tmp_path / "none").exists()


def test_the_book_series_do_not_depend_on_the_estimator_benched():
    """Paired: each setting draws from its own seeds, so adding a setting leaves the others."""
    book = list(bench.BOOK_SETTINGS[:2])
    alone = bench.toy_units(book, 4, 50, progress=False)
    torch.manual_seed(0)  # the global RNG plays no part
    beside = bench.toy_units([*book, ("gumbel", {"tau": 1.0})], 4, 50, progress=False)
    assert alone == [u for u in beside if u.estimator != "gumbel"]
    assert {u.unit for u in alone} == {"0", "1", "2", "3"}


def test_polynomial_programming_takes_the_new_estimator_with_the_same_tuning(user_module,
                                                                          tmp_path):
    """Smoke protocol: the new estimator is tuned over as many configurations, on the same
    tuning seeds, as each book estimator, and judged by the same rule on the evaluation seeds;
    the book's stored results are not touched."""
    from redge_mini.book import runtime
    from redge_mini.book.experiments import polyprog as pp

    stored = runtime.results_dir("polyprog") / "units.csv"
    before = stored.read_bytes()
    name, fn, knobs = bench.load_estimator(f"{user_module}:st_scaled", name="scaled")
    result = bench.run_bench(fn, name, knobs, out=tmp_path / "out", n_problems=4, draws=50,
                             progress=False, experiments=("toy", "polyprog"), smoke=True)
    assert stored.read_bytes() == before
    rows = bench.against(result.polyprog, "scaled")
    proto = pp.protocol("small", smoke=True)
    assert {r["setting"] for r in rows} == {f"p={p:g}" for p in proto.config.powers}
    assert {r["n"] for r in rows} == {len(proto.eval_seeds)}
    tuning = read_tuning("polyprog", tmp_path / "out" / "polyprog")
    mine = [t for t in tuning if t.estimator == "scaled"]
    st = [t for t in tuning if t.estimator == "st"]
    assert len(mine) == len(proto.config.powers) and mine[0].knobs_tuned == "lr;scale"
    assert {t.n_configs for t in mine} == {t.n_configs for t in st} == {proto.n_configs}
    assert {t.n_runs for t in mine} == {t.n_runs for t in st} == {len(proto.tune_seeds)}
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Polynomial programming" in report and "not run: the discrete VAE" in report
