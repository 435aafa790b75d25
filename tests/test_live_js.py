"""The JavaScript port behind the book's live figures (``redge_mini/book/js/live.js``).

The port runs in Node.js and is fed the noise that torch drew in Python; its states, denoiser
outputs, soft samples, hard samples and Gumbel-Softmax samples must equal redge_mini's for the
same noise (to 1e-6; both compute in float64). Its own seeded generator is checked against the
laws it claims to sample (scipy's Kolmogorov-Smirnov test). The HTML that carries it into a page is
checked in ``tests/test_widgets.py``; that the figures respond in a browser, in the browser check.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from scipy import stats

from redge_mini import gumbel_softmax
from redge_mini.diffusion import ddim_sample, inverse_cdf_sample, time_grid

LIVE_JS = Path(__file__).resolve().parent.parent / "redge_mini" / "book" / "js" / "live.js"
NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="no Node.js (.ci/run installs it)")

# Reads {"calls": [[function, args], ...]} on stdin and prints the list of results. "draws":
# n draws of one kind from a seeded generator; "<function>Seeded": the last argument is a seed.
DRIVER = """
const live = require(process.argv[1]);
let text = "";
process.stdin.on("data", (chunk) => { text += chunk; });
process.stdin.on("end", () => {
  const out = JSON.parse(text).calls.map(([name, args]) => {
    if (name === "draws") {
      const [seed, kind, n] = args;
      const gen = live.rng(seed);
      return Array.from({ length: n }, gen[kind]);
    }
    if (name.endsWith("Seeded")) {  // the last argument seeds a generator
      return live[name.slice(0, -6)](...args.slice(0, -1), live.rng(args[args.length - 1]));
    }
    return live[name](...args);
  });
  process.stdout.write(JSON.stringify(out));
});
"""


def run_js(*calls: tuple[str, list]) -> list:
    result = subprocess.run(
        [NODE, "-e", DRIVER, str(LIVE_JS)],
        input=json.dumps({"calls": [list(c) for c in calls]}),
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


SETTINGS = [  # (logits, t_1, n_steps): the defaults, the extremes of both knobs, sharp logits
    ((1.0, 0.0, -0.5), 0.5, 5),
    ((1.0, 0.0, -0.5), 1.0, 7),
    ((2.5, -1.0, 0.3), 0.05, 2),
    ((-3.0, 3.0, 0.0), 0.3, 12),
    ((0.2, 0.1, 0.0, -0.4, 1.5), 0.7, 4),  # K = 5: the port is not tied to K = 3
]


def test_time_grid_matches():
    settings = [(2, 0.3), (3, 1.0), (5, 0.5), (12, 0.05)]
    out = run_js(*[("timeGrid", [n, t]) for n, t in settings])
    for (n, t), grid in zip(settings, out, strict=True):
        alphas, sigmas = time_grid(n, t)
        assert grid["alphas"] == pytest.approx(alphas, abs=1e-12)
        assert grid["sigmas"] == pytest.approx(sigmas, abs=1e-12)


@pytest.mark.parametrize("logits, t_1, n_steps", SETTINGS)
def test_sampler_matches_redge_mini_for_the_same_noise(logits, t_1, n_steps):
    gen = torch.Generator().manual_seed(7)
    theta = torch.tensor(logits, dtype=torch.float64)
    noise = torch.randn(6, len(logits), generator=gen, dtype=torch.float64)
    uniform = torch.rand(6, 1, generator=gen, dtype=torch.float64)
    ref = ddim_sample(theta.expand(6, -1), noise.clone(), n_steps=n_steps, t_1=t_1,
                      trajectory=True)
    hard = inverse_cdf_sample(ref.soft, uniform).argmax(-1).tolist()
    calls = [("ddimSample", [list(logits), row.tolist(), n_steps, t_1]) for row in noise]
    calls += [("inverseCdf", [s.tolist(), u.item()]) for s, u in zip(ref.soft, uniform,
                                                                      strict=True)]
    out = run_js(*calls)
    for i, js in enumerate(out[:6]):
        for key, ours in (("states", ref.states), ("denoised", ref.denoised)):
            expected = torch.stack([step[i] for step in ours])
            got = torch.tensor(js[key], dtype=torch.float64)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.tensor(js["soft"], dtype=torch.float64), ref.soft[i],
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.tensor(js["logWeights"], dtype=torch.float64),
                                   ref.log_weights[i], rtol=0, atol=1e-6)
    assert out[6:] == hard


def test_gumbel_softmax_matches_redge_mini_for_the_same_noise():
    logits = torch.tensor([[1.0, 0.0, -0.5]], dtype=torch.float64).expand(40, 3)
    # redge_mini draws Gumbel noise as -log(E), E ~ Exp(1), from the generator: draw the same.
    exp = torch.empty(40, 3, dtype=torch.float64).exponential_(
        generator=torch.Generator().manual_seed(3))
    gumbel = -exp.log()
    for tau in (0.1, 1.0, 3.0):
        soft_ref, hard_ref = (
            gumbel_softmax(logits, tau=tau, hard=hard, generator=torch.Generator().manual_seed(3))
            for hard in (False, True)
        )
        out = run_js(*[("gumbelSoftmax", [[1.0, 0.0, -0.5], g.tolist(), tau]) for g in gumbel])
        soft = torch.tensor([o["soft"] for o in out], dtype=torch.float64)
        torch.testing.assert_close(soft, soft_ref, rtol=0, atol=1e-6)
        assert [o["hard"] for o in out] == hard_ref.argmax(-1).tolist()


def test_seeded_generator_draws_the_laws_it_claims():
    n = 20_000
    normal, gumbel, uniform, again, other = run_js(
        ("draws", [5, "normal", n]), ("draws", [5, "gumbel", n]), ("draws", [5, "uniform", n]),
        ("draws", [5, "normal", 50]), ("draws", [6, "normal", 50]),
    )
    assert again == normal[:50]  # the seed fixes the draws ...
    assert other != again  # ... and another seed changes them
    assert stats.kstest(normal, "norm").pvalue > 1e-3
    assert stats.kstest(gumbel, "gumbel_r").pvalue > 1e-3
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3
    assert 0.0 < min(uniform) and max(uniform) < 1.0


def test_hard_law_of_the_port_is_pi_at_t1_one_and_biased_at_one_small_step():
    logits = [1.0, 0.0, -0.5]
    pi = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1).tolist()
    n = 20_000
    exact, biased, floor = run_js(
        ("hardLawSeeded", [logits, 5, 1.0, n, 1]),
        ("hardLawSeeded", [logits, 3, 0.1, n, 2]),
        ("noiseFloorSeeded", [pi, n, 20, 3]),
    )
    # at t_1 = 1 the sampler draws H ~ pi: every frequency within 4 standard errors
    for f, p in zip(exact, pi, strict=True):
        assert abs(f - p) < 4 * (p * (1 - p) / n) ** 0.5
    # one long step at a small t_1 rounds S to the mode (chapter 4): far from pi
    assert biased[0] > pi[0] + 0.2
    # the noise floor is the mean TV of n exact draws: of order sqrt(K / n)
    assert 0.1 * (3 / n) ** 0.5 < floor < (3 / n) ** 0.5


def test_bad_arguments_are_named():
    script = (
        "const live = require(process.argv[1]);"
        "for (const f of [() => live.timeGrid(1, 0.5), () => live.timeGrid(3, 0),"
        " () => live.gumbelSoftmax([0, 1], [0, 0], 0), () => live.ddimSample([0, 1], [0], 3, 0.5)]"
        ") { try { f(); console.log('no error'); } catch (e) { console.log(e.message); } }"
    )
    result = subprocess.run([NODE, "-e", script, str(LIVE_JS)], capture_output=True, text=True,
                            check=True, timeout=60)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("n_steps must be")
    assert lines[1].startswith("t_1 must be")
    assert lines[2].startswith("tau must be")
    assert lines[3].startswith("noise must have")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (.ci/run installs it)")
def test_sliders_keep_their_keys_from_notebook_shortcuts():
    """In JupyterLab the arrows move a slider, not the notebook's cell selection.

    Lumino reads keydown on the document (bubbling) and skips targets marked
    ``data-lm-suppress-shortcuts``; a document listener stands in for it here. The slider must
    move and the figure redraw, while the document sees the arrow keys of no slider (and still
    sees other keys, so the listener is live).
    """
    playwright = pytest.importorskip("playwright.sync_api")
    from redge_mini.book.widgets import live_figure

    page_html = (
        "<!DOCTYPE html><html><body><script>window.seen = [];"
        "document.addEventListener('keydown', (e) => {"
        " if (!e.target.closest('[data-lm-suppress-shortcuts]')) window.seen.push(e.key); });"
        "window.bubbled = [];"
        "document.addEventListener('keydown', (e) => window.bubbled.push(e.key));</script>"
        + live_figure("sampler").data + "</body></html>"
    )
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_content(page_html)
            sliders = page.locator(".redge-live input[type=range]")
            assert sliders.count() >= 2
            for i in range(sliders.count()):
                assert sliders.nth(i).get_attribute("data-lm-suppress-shortcuts") == "true"
            slider = sliders.first
            before_value = slider.input_value()
            before_svg = page.locator(".redge-live svg").first.inner_html()
            slider.focus()
            for key in ("ArrowRight", "ArrowRight", "ArrowUp", "End"):
                page.keyboard.press(key)
            page.wait_for_timeout(200)  # one animation frame redraws
            assert slider.input_value() != before_value
            assert page.locator(".redge-live svg").first.inner_html() != before_svg
            page.keyboard.press("a")
            assert page.evaluate("window.seen") == []
            assert page.evaluate("window.bubbled") == ["a"]
        finally:
            browser.close()
