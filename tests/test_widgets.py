"""The K = 3 trajectory pictures, the ipywidgets explorer of ReDGE's sampler, and the HTML of the
live figures (their JavaScript is checked against redge_mini in tests/test_live_js.py)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from redge_mini.book.widgets import (  # noqa: E402
    LIVE_FIGURES,
    draw_trajectories,
    explorer,
    explorer_figure,
    hard_law,
    live_figure,
    project_to_plane,
    simplex_trajectories,
)
from redge_mini.diffusion import denoise, time_grid  # noqa: E402

LOGITS = (1.0, 0.0, -0.5)


@pytest.mark.parametrize("n_steps", [2, 3, 7])
def test_trajectories_have_one_state_per_denoiser_call(n_steps):
    traj = simplex_trajectories(LOGITS, t_1=0.4, n_steps=n_steps, n=9, seed=3)
    assert traj.states.shape == (9, n_steps - 1, 3)
    assert traj.denoised.shape == (9, n_steps - 1, 3)
    assert torch.equal(traj.hard.sum(-1), torch.ones(9))
    # Every denoiser output is the closed-form posterior mean of the state at its grid level.
    alphas, sigmas = time_grid(n_steps, 0.4)
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    for i, j in enumerate(range(n_steps - 1, 0, -1)):
        expected = denoise(traj.states[:, i], logits, alphas[j], sigmas[j])
        torch.testing.assert_close(traj.denoised[:, i], expected)


def test_first_state_is_standard_normal_noise_from_the_seed():
    traj = simplex_trajectories(LOGITS, t_1=0.5, n_steps=5, n=4, seed=11)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    torch.testing.assert_close(traj.states[:, 0], noise)


def test_t_1_one_puts_every_soft_sample_at_pi():
    traj = simplex_trajectories(LOGITS, t_1=1.0, n_steps=4, n=6, seed=0)
    torch.testing.assert_close(traj.denoised[:, -1], traj.probs.expand(6, 3))


def test_projection_lands_on_the_plane_and_fixes_simplex_points():
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(project_to_plane(x).sum(-1), torch.ones(5, dtype=torch.float64))
    p = torch.softmax(x, -1)
    torch.testing.assert_close(project_to_plane(p), p)


@pytest.mark.parametrize("which", ["denoised", "states"])
def test_draw_returns_one_line_per_trajectory(which):
    traj = simplex_trajectories(LOGITS, t_1=0.5, n_steps=5, n=7, seed=0)
    fig, ax = plt.subplots()
    lines = draw_trajectories(ax, traj, which=which)
    assert len(lines) == 7
    plt.close(fig)


def test_hard_law_matches_pi_with_many_steps():
    # Many DDIM steps: the law of H is close to pi (5 standard errors of 20 000 draws).
    n = 20_000
    freq = torch.as_tensor(hard_law(LOGITS, t_1=0.5, n_steps=40, n=n, seed=1))
    probs = torch.softmax(torch.tensor(LOGITS, dtype=torch.float64), -1)
    assert torch.all((freq - probs).abs() < 5 * (probs * (1 - probs) / n).sqrt())


def test_explorer_figure_and_widget_build():
    fig = explorer_figure(list(LOGITS), 0.3, 4, 2, n=5, n_law=200)
    assert len(fig.axes) == 3
    # the triangle, then a path and an end point per trajectory, then the star at pi
    assert len(fig.axes[1].lines) == 1 + 2 * 5 + 1
    plt.close(fig)
    widget = explorer(LOGITS, t_1=0.3, n_steps=4, seed=2, n=5)
    sliders = widget.children[0].children[0].children + widget.children[0].children[1].children
    assert [s.description for s in sliders] == ["θ1", "θ2", "θ3", "t_1", "n_steps", "seed"]
    plt.close("all")


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="logits"):
        simplex_trajectories((1.0, 2.0), t_1=0.5, n_steps=3)
    with pytest.raises(ValueError, match="t_1"):
        simplex_trajectories(LOGITS, t_1=0.0, n_steps=3)
    with pytest.raises(ValueError, match="n_steps"):
        simplex_trajectories(LOGITS, t_1=0.5, n_steps=1)
    with pytest.raises(TypeError, match="n"):
        simplex_trajectories(LOGITS, t_1=0.5, n_steps=3, n=2.0)
    with pytest.raises(ValueError, match="which"):
        draw_trajectories(None, simplex_trajectories(LOGITS, t_1=0.5, n_steps=3), which="x")


@pytest.mark.parametrize("kind", LIVE_FIGURES)
def test_live_figure_carries_its_script_and_options_inline(kind):
    import json
    import re
    from importlib import resources

    html = live_figure(kind, logits=[2, 0, -1], t_1=0.4, n_steps=3, seed=5, note="</script>").data
    script = resources.files("redge_mini.book").joinpath("js/live.js").read_text()
    assert script in html  # inline: nothing to fetch, from a page or a notebook
    assert "src=" not in html.replace(script, "")
    element = re.search(r'<div id="(redge-live-[\w-]+)" class="redge-live">', html).group(1)
    mount = re.search(r"RedgeLive\.mount\(document\.getElementById\('([^']+)'\), '([^']+)', "
                      r"(\{.*\})\);", html)
    assert mount.group(1) == element and mount.group(2) == kind
    options = json.loads(mount.group(3))
    assert options["logits"] == [2.0, 0.0, -1.0] and options["seed"] == 5
    assert options["note"] == "</script>"  # JSON-escaped: cannot close the script early
    assert html.count("</script>") == 1
    assert element != re.search(r'<div id="([^"]+)"', live_figure(kind).data).group(1)


def test_live_figure_bad_input_is_named():
    with pytest.raises(ValueError, match="kind"):
        live_figure("histogram")
    with pytest.raises(ValueError, match="logits"):
        live_figure("sampler", logits=[1.0, 2.0])
    with pytest.raises(ValueError, match="t_1"):
        live_figure("sampler", t_1=1.5)
    with pytest.raises(ValueError, match="n_steps"):
        live_figure("sampler", n_steps=1)
