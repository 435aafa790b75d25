"""One figure style for the book: colour-blind-safe palette, estimator colours, simplex plots."""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import torch

from ..registry import label

PALETTE: list[str] = [
    "#000000",  # black
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
]
"""The Okabe–Ito palette, distinguishable under the common forms of colour blindness."""


def use_style() -> None:
    """Apply the book's matplotlib style (legible at 1280 px, light grid, no top/right axes)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "savefig.bbox": "tight",
        "font.size": 11,
        "axes.titlesize": 12,
        "axes.labelsize": 11,
        "legend.fontsize": 9,
        "legend.frameon": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=PALETTE[1:] + PALETTE[:1]),
        "image.cmap": "viridis",
    })


ESTIMATOR_STYLES: dict[str, tuple[str, str]] = {
    "st": (PALETTE[0], "o"),
    "gumbel": (PALETTE[1], "s"),
    "reinmax": (PALETTE[2], "^"),
    "redge": (PALETTE[6], "D"),
    "redge_cov": (PALETTE[7], "X"),
    "reindge": (PALETTE[3], "v"),
    "reinforce": (PALETTE[5], "P"),
    "exact": ("#7f7f7f", "*"),  # the enumerated reference
}
"""Estimator name -> (colour, marker) in every figure: one Okabe–Ito colour and one marker each, so
that lines differ beyond colour. An estimator without an entry (one added with
:func:`redge_mini.register`) is drawn in yellow with circles."""

_OTHER_STYLE = (PALETTE[4], "o")


def estimator_color(name: str) -> str:
    """The colour of estimator ``name`` in every figure (:data:`ESTIMATOR_STYLES`)."""
    return ESTIMATOR_STYLES.get(name, _OTHER_STYLE)[0]


def estimator_marker(name: str) -> str:
    """The marker of estimator ``name`` in every figure (so lines differ beyond colour)."""
    return ESTIMATOR_STYLES.get(name, _OTHER_STYLE)[1]


def estimator_label(name: str) -> str:
    """The display label of estimator ``name`` (taken from the registry)."""
    return label(name)


_VERTICES = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def simplex_xy(p: np.ndarray | torch.Tensor) -> np.ndarray:
    """Map points ``(..., 3)`` of the plane ``sum = 1`` to 2-D triangle coordinates.

    The corners ``e_1, e_2, e_3`` go to ``(0, 0)``, ``(1, 0)`` and ``(1/2, sqrt(3)/2)``. Points off
    the simplex (e.g. noisy states of the sampler, projected) land outside the triangle.
    """
    if isinstance(p, torch.Tensor):
        p = p.detach().cpu().double().numpy()
    p = np.asarray(p, dtype=float)
    if p.shape[-1] != 3:
        raise ValueError(f"p must have 3 components in its last dimension, got shape {p.shape}")
    return p @ _VERTICES


def draw_simplex(ax, labels: tuple[str, str, str] = ("$e_1$", "$e_2$", "$e_3$")) -> None:
    """Draw the probability triangle with labelled corners on ``ax`` (equal aspect, no axes)."""
    closed = np.vstack([_VERTICES, _VERTICES[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color="0.3", lw=1.0)
    offsets = [(-0.06, -0.05), (0.02, -0.05), (-0.02, 0.03)]
    for (x, y), (dx, dy), text in zip(_VERTICES, offsets, labels, strict=True):
        ax.text(x + dx, y + dy, text, fontsize=11)
    ax.set_aspect("equal")
    ax.axis("off")
