"""Pictures and an interactive explorer of ReDGE's sampler for ``K = 3`` categories.

With three categories the probability simplex is a triangle, so the whole life of a sample can be
drawn: the sampler starts from Gaussian noise, each DDIM move calls the exact denoiser
``D_t(x) = softmax(θ + α_t x / σ_t²)`` (a point of the triangle), and the last denoiser output
is the soft sample ``S``; the hard sample is ``H ~ Cat(S)``, a corner.

* :func:`simplex_trajectories` runs the sampler for many noise draws and keeps every state;
* :func:`draw_trajectories` draws them on a triangle (denoiser outputs, or the noisy states
  projected onto the plane of the simplex);
* :func:`draw_hard_law` compares the law of ``H`` with ``π = softmax(θ)``;
* :func:`explorer` wraps both in ipywidgets sliders (logits, ``t_1``, ``n_steps``, seed);
* :func:`live_figure` is the same explorer (and two more live figures) computed in the browser by
  a small JavaScript port of the sampler (``js/live.js``): it responds on the static site, where
  no kernel runs, and in any notebook front end.

Every lesson of an explorer must also be carried by a static figure made with the same drawing
functions (a printed page shows only the first state of a live figure).
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import numpy as np
import torch

from ..diffusion import ddim_sample
from ..estimators import sample_categorical
from ..validation import check_int, check_logits, check_n_steps, check_t_1
from .plotting import PALETTE, draw_simplex, simplex_xy

CORNER_COLORS: tuple[str, str, str] = (PALETTE[1], PALETTE[5], PALETTE[3])
"""Colour of a trajectory by the corner (hard sample) it ends in: orange, blue, green."""


class Trajectories(NamedTuple):
    """Every state of ``n`` runs of ReDGE's sampler for one categorical variable with ``K = 3``.

    Attributes:
        states: ``(n, n_steps - 1, 3)`` sampler states ``x`` at grid indices
            ``n_steps - 1, ..., 1`` (first: the initial noise; last: the state at ``t_1``).
        denoised: ``(n, n_steps - 1, 3)`` denoiser outputs at the same indices (last: ``S``).
        hard: ``(n, 3)`` one-hot hard samples ``H ~ Cat(S)``.
        probs: ``(3,)`` the target law ``π = softmax(logits)``.
    """

    states: torch.Tensor
    denoised: torch.Tensor
    hard: torch.Tensor
    probs: torch.Tensor


def _check_logits3(logits: object) -> torch.Tensor:
    if isinstance(logits, (list, tuple)):
        logits = torch.tensor(logits, dtype=torch.float64)
    logits = check_logits(logits)
    if tuple(logits.shape) != (3,):
        raise ValueError(f"logits must have shape (3,), got {tuple(logits.shape)}")
    return logits.detach().double()


def simplex_trajectories(
    logits: torch.Tensor | Sequence[float],
    *,
    t_1: float,
    n_steps: int,
    n: int = 12,
    seed: int = 0,
) -> Trajectories:
    """Run ReDGE's sampler ``n`` times for ``Cat(softmax(logits))`` with ``K = 3``, in float64.

    Args:
        logits: three logits (tensor or sequence of floats).
        t_1: stopping time in ``(0, 1]``.
        n_steps: grid points (``>= 2``).
        n: number of independent noise draws (trajectories).
        seed: seeds a fresh generator for the Gaussian noise and the hard samples.

    Returns:
        A :class:`Trajectories`; ``len(result.states) == n``.
    """
    logits = _check_logits3(logits)
    t_1 = check_t_1(t_1)
    n_steps = check_n_steps(n_steps)
    n = check_int(n, "n", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    generator = torch.Generator().manual_seed(seed)
    batch = logits.expand(n, 3)
    noise = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    result = ddim_sample(batch, noise, n_steps=n_steps, t_1=t_1, trajectory=True)
    hard = sample_categorical(result.log_weights, generator)
    return Trajectories(
        states=torch.stack(result.states, dim=1),
        denoised=torch.stack(result.denoised, dim=1),
        hard=hard,
        probs=torch.softmax(logits, dim=-1),
    )


def project_to_plane(x: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of ``x`` ``(..., K)`` onto the plane ``{p : Σ p = 1}``."""
    return x - x.mean(dim=-1, keepdim=True) + 1.0 / x.shape[-1]


def draw_trajectories(
    ax: Any,
    traj: Trajectories,
    *,
    which: str = "denoised",
    title: str | None = None,
) -> list[Any]:
    """Draw each trajectory on a triangle, coloured by the corner its hard sample lands in.

    Args:
        ax: a matplotlib axis.
        traj: from :func:`simplex_trajectories`.
        which: ``"denoised"`` (the denoiser outputs, ending at ``S``, a circle) or ``"states"``
            (the sampler's noisy states projected onto the plane of the simplex; they start far
            outside the triangle). The target ``π`` is drawn as a black star.
        title: axis title.

    Returns:
        The list of line artists, one per trajectory.
    """
    if which not in ("denoised", "states"):
        raise ValueError(f"which must be 'denoised' or 'states', got {which!r}")
    points = traj.denoised if which == "denoised" else project_to_plane(traj.states)
    xy = simplex_xy(points)
    draw_simplex(ax)
    corner = traj.hard.argmax(-1).tolist()
    lines = []
    for path, k in zip(xy, corner, strict=True):
        (line,) = ax.plot(path[:, 0], path[:, 1], color=CORNER_COLORS[k], lw=1.0, alpha=0.8)
        ax.plot(path[-1, 0], path[-1, 1], "o", ms=4, color=CORNER_COLORS[k])
        lines.append(line)
    star = simplex_xy(traj.probs)
    ax.plot(star[0], star[1], "*", ms=12, color=PALETTE[0], label=r"$\pi$")
    if which == "states":
        ax.set_xlim(min(-0.1, xy[..., 0].min() - 0.05), max(1.1, xy[..., 0].max() + 0.05))
        ax.set_ylim(min(-0.1, xy[..., 1].min() - 0.05), max(0.95, xy[..., 1].max() + 0.05))
    if title is not None:
        ax.set_title(title, pad=12)
    return lines


def hard_law(logits: torch.Tensor | Sequence[float], *, t_1: float, n_steps: int,
             n: int = 4000, seed: int = 0) -> np.ndarray:
    """Empirical frequencies ``(3,)`` of ReDGE's hard sample over ``n`` draws."""
    traj = simplex_trajectories(logits, t_1=t_1, n_steps=n_steps, n=n, seed=seed)
    return traj.hard.mean(0).numpy()


def draw_hard_law(ax: Any, frequencies: np.ndarray, probs: torch.Tensor, n: int) -> None:
    """Bar chart: law of the hard sample (with ±2 standard errors) against ``π``."""
    probs = np.asarray(torch.as_tensor(probs, dtype=torch.float64))
    k = np.arange(3)
    se = np.sqrt(frequencies * (1 - frequencies) / n)
    ax.bar(k - 0.18, probs, width=0.36, color=PALETTE[0], alpha=0.35, label=r"$\pi$")
    ax.bar(k + 0.18, frequencies, width=0.36, color=list(CORNER_COLORS), yerr=2 * se,
           capsize=3, label="law of $H$")
    ax.set_xticks(k, ["$e_1$", "$e_2$", "$e_3$"])
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right")


def explorer_figure(
    logits: Sequence[float],
    t_1: float,
    n_steps: int,
    seed: int,
    *,
    n: int = 12,
    n_law: int = 4000,
) -> Any:
    """The explorer's three panels: noisy states, denoiser outputs, law of ``H`` vs ``π``."""
    import matplotlib.pyplot as plt

    traj = simplex_trajectories(logits, t_1=t_1, n_steps=n_steps, n=n, seed=seed)
    freq = hard_law(logits, t_1=t_1, n_steps=n_steps, n=n_law, seed=seed + 1)
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.6),
                             gridspec_kw={"width_ratios": [1.1, 1.0, 0.8]})
    draw_trajectories(axes[0], traj, which="states", title="states $x_t$ (projected)")
    draw_trajectories(axes[1], traj, which="denoised", title=r"denoiser outputs $D_t(x_t)$")
    draw_hard_law(axes[2], freq, traj.probs, n_law)
    tv = 0.5 * float(np.abs(freq - traj.probs.numpy()).sum())
    axes[2].set_title(f"law of $H$ ({n_law} draws), TV {tv:.3f}")
    fig.suptitle(f"$t_1$ = {t_1:g}, n_steps = {n_steps}, seed = {seed}", y=1.02)
    return fig


def explorer(
    logits: Sequence[float] = (1.0, 0.0, -0.5),
    *,
    t_1: float = 0.5,
    n_steps: int = 5,
    seed: int = 0,
    n: int = 12,
) -> Any:
    """An ipywidgets explorer of ReDGE's sampler for ``K = 3``.

    Sliders for the three logits, ``t_1``, ``n_steps`` and the seed; every change redraws
    :func:`explorer_figure` (``n`` trajectories from noise onto the simplex and the law of the hard
    sample). Display the returned widget in a notebook; in a static page it shows its initial
    state only.

    Returns:
        An ``ipywidgets.VBox``.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    logits = _check_logits3(logits).tolist()
    check_t_1(t_1)
    check_n_steps(n_steps)
    style = {"description_width": "60px"}
    sliders = {
        f"theta{k + 1}": w.FloatSlider(value=v, min=-3.0, max=3.0, step=0.1, style=style,
                                       description=f"θ{k + 1}", continuous_update=False)
        for k, v in enumerate(logits)
    }
    sliders["t_1"] = w.FloatSlider(value=t_1, min=0.05, max=1.0, step=0.05, style=style,
                                   description="t_1", continuous_update=False)
    sliders["n_steps"] = w.IntSlider(value=n_steps, min=2, max=12, style=style,
                                     description="n_steps", continuous_update=False)
    sliders["seed"] = w.IntSlider(value=seed, min=0, max=50, style=style,
                                  description="seed", continuous_update=False)

    def redraw(theta1: float, theta2: float, theta3: float, t_1: float, n_steps: int,
               seed: int) -> None:
        explorer_figure([theta1, theta2, theta3], t_1, n_steps, seed, n=n)
        plt.show()

    output = w.interactive_output(redraw, sliders)
    controls = w.HBox([w.VBox(list(sliders.values())[:3]), w.VBox(list(sliders.values())[3:])])
    return w.VBox([controls, output])


_LIVE_DEFAULTS: dict[str, dict[str, Any]] = {
    "sampler": {"logits": [1.0, 0.0, -0.5], "t_1": 0.5, "n_steps": 5, "seed": 0, "n": 12,
                "n_law": 4000},
    "gumbel_softmax": {"logits": [1.0, 0.0, -0.5], "tau": 0.5, "seed": 0, "n": 500},
    "bias_map": {"logits": [1.0, 0.0, -0.5], "t1s": [0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0],
                 "n_steps": [2, 3, 4, 5, 7, 9], "draws": 2000, "seed": 0,
                 "box": [0.3, 0.9, 3, 9]},
}
LIVE_FIGURES: tuple[str, ...] = tuple(_LIVE_DEFAULTS)
"""The kinds of :func:`live_figure`."""

_LIVE_IDS = itertools.count()


def live_figure(kind: str, **options: Any) -> Any:
    """A figure recomputed in the reader's browser, as ``IPython.display.HTML``.

    The HTML holds the JavaScript of ``redge_mini/book/js/live.js`` inline (no file to serve, no
    network), so the figure responds on the static site and in Jupyter, JupyterLab or Colab.
    Its noise comes from a seeded JavaScript generator: a seed gives other draws than torch.

    Args:
        kind: ``"sampler"`` (chapter 4: options ``logits`` (3 floats), ``t_1``, ``n_steps``,
            ``seed``, ``n``, ``n_law``), ``"gumbel_softmax"`` (chapter 3: ``logits``, ``tau``,
            ``seed``, ``n``) or ``"bias_map"`` (chapter 6: ``logits``, ``t1s``, ``n_steps``
            (a list), ``draws``, ``seed``, ``box`` = ``(t_lo, t_hi, n_lo, n_hi)``).
        **options: the initial state (defaults: ``_LIVE_DEFAULTS``); each becomes a slider or
            a fixed setting.

    Returns:
        An ``IPython.display.HTML`` object (display it, or make it a cell's last expression).
    """
    from IPython.display import HTML

    if kind not in LIVE_FIGURES:
        raise ValueError(f"kind must be one of {LIVE_FIGURES}, got {kind!r}")
    options = {**_LIVE_DEFAULTS[kind], **options}
    options["logits"] = _check_logits3(options["logits"]).tolist()
    if kind == "sampler":
        check_t_1(options["t_1"])
        check_n_steps(options["n_steps"])
    script = resources.files(__package__).joinpath("js/live.js").read_text(encoding="utf-8")
    # unique in a page that shows several notebooks' outputs (JupyterLab), whose counters collide
    element = f"redge-live-{kind}-{next(_LIVE_IDS)}-{secrets.token_hex(4)}"
    payload = json.dumps(options).replace("</", "<\\/")
    return HTML(
        f'<div id="{element}" class="redge-live"></div>\n<script>\n{script}\n'
        f"RedgeLive.mount(document.getElementById({element!r}), {kind!r}, {payload});\n"
        "</script>"
    )
