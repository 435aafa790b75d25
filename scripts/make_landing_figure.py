"""Draw the landing page's figure: ReDGE's sampler on the probability simplex (K = 3).

Left: trajectories of the exact denoiser's prediction ``D_t(x)`` along deterministic DDIM runs, from
pure noise (where the prediction is ``pi``) to the stopping time ``t_1`` (the soft sample ``S``).
Right: the law of ReDGE's hard sample ``H ~ Cat(S)`` at the default knobs, measured by Monte Carlo,
next to the target ``pi``.

Usage (from the repository root): ``python scripts/make_landing_figure.py`` writes
``book/assets/landing.png``. Deterministic: fixed seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from redge_mini import redge  # noqa: E402
from redge_mini.book.plotting import PALETTE, draw_simplex, simplex_xy, use_style  # noqa: E402
from redge_mini.diffusion import ddim_sample  # noqa: E402

PROBS = (0.6, 0.3, 0.1)
N_PATHS = 30
N_STEPS_PATH, T_1_PATH = 25, 0.25
N_STEPS_LAW, T_1_LAW = 5, 0.5
N_DRAWS = 40_000
SEED = 0


def main(output: Path) -> tuple[np.ndarray, np.ndarray]:
    """Compute both panels, save the figure to ``output``.

    Returns the measured frequencies of the hard samples and their standard errors (right panel),
    so that a test can check the caption's claim that they follow ``PROBS``.
    """
    use_style()
    logits = torch.tensor(PROBS, dtype=torch.float64).log()
    generator = torch.Generator().manual_seed(SEED)

    noise = torch.randn(N_PATHS, 3, generator=generator, dtype=torch.float64)
    result = ddim_sample(
        logits.expand(N_PATHS, 3), noise, n_steps=N_STEPS_PATH, t_1=T_1_PATH, trajectory=True
    )
    paths = torch.stack(result.denoised, dim=1)  # (paths, steps, 3)
    corner_colors = [PALETTE[5], PALETTE[6], PALETTE[3]]

    draws = redge(logits.expand(N_DRAWS, 3), N_STEPS_LAW, T_1_LAW, hard=True, generator=generator)
    freq = draws.mean(0).numpy()
    stderr = np.sqrt(freq * (1 - freq) / N_DRAWS)

    fig, (ax_paths, ax_law) = plt.subplots(
        1, 2, figsize=(10.0, 4.2), gridspec_kw={"width_ratios": [1.15, 1.0]}
    )
    draw_simplex(ax_paths)
    for path in paths:
        xy = simplex_xy(path)
        color = corner_colors[int(path[-1].argmax())]
        ax_paths.plot(xy[:, 0], xy[:, 1], color=color, lw=1.0, alpha=0.7)
        ax_paths.plot(xy[-1, 0], xy[-1, 1], "o", color=color, ms=5)
    start = simplex_xy(torch.tensor(PROBS))
    ax_paths.plot(start[0], start[1], "*", color=PALETTE[0], ms=14, zorder=5)
    ax_paths.annotate(
        r"$\pi_\theta$", start, xytext=(12, 6), textcoords="offset points", fontsize=12
    )
    ax_paths.set_title(
        f"Denoiser predictions along DDIM runs\n(noise to $t_1 = {T_1_PATH}$, "
        f"{N_STEPS_PATH} grid points; dots: soft samples $S$)"
    )

    positions = np.arange(3)
    width = 0.38
    ax_law.bar(positions - width / 2, PROBS, width, color=PALETTE[0], label=r"target $\pi_\theta$")
    ax_law.bar(
        positions + width / 2,
        freq,
        width,
        yerr=2 * stderr,
        color=PALETTE[6],
        label=f"ReDGE hard samples ({N_DRAWS:,} draws)",
    )
    ax_law.set_xticks(positions, [f"$e_{k + 1}$" for k in range(3)])
    ax_law.set_xlabel("category")
    ax_law.set_ylabel("probability")
    ax_law.set_title(f"Law of the hard sample $H$\n(n_steps = {N_STEPS_LAW}, $t_1 = {T_1_LAW}$)")
    ax_law.legend(loc="upper right")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return freq, stderr


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent.parent / "book" / "assets" / "landing.png"
    parser.add_argument("--output", type=Path, default=default)
    main(parser.parse_args().output)
