"""The rules of the JupyterLab check (scripts/lab_check.py) on notebook states made by hand.

The check itself runs JupyterLab in Chromium (``make lab-check``); here its verdicts are checked
on states that must pass and states that must fail, without a browser.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import lab_check  # noqa: E402

PNG = {"image/png": "iVBOR", "text/plain": "<Figure>"}


def markdown(source: str, rendered: str) -> dict:
    return {"type": "markdown", "source": source, "rendered": rendered, "outputs": [],
            "images": 0, "widgets": 0, "widgetErrors": False, "live": 0}


def code(source: str, outputs: list[dict], **seen) -> dict:
    cell = {"type": "code", "source": source, "rendered": "", "outputs": outputs,
            "images": 0, "widgets": 0, "widgetErrors": False, "live": 0}
    return {**cell, **seen}


def state(*cells: dict) -> dict:
    return {"cells": [{**c, "index": i} for i, c in enumerate(cells)], "active": 0}


def display(data: dict) -> dict:
    return {"output_type": "display_data", "data": data, "metadata": {}}


def test_a_rendered_chapter_passes() -> None:
    good = state(
        markdown("# Title\nAs {cite}`key` shows, $x$.", "Title\nAs ⚠ key shows, x."),
        code('glue("fig-a", fig, display=False)', [display(PNG)], images=1),
        markdown(":::{glue:figure} fig-a\n:::", "glue:figure - Unknown Directive"),
        code("explorer()", [display({"application/vnd.jupyter.widget-view+json": {}})],
             widgets=3),
        code("live_figure('sampler')", [display({"text/html": "<script>RedgeLive.mount(x)"})],
             live=1),
    )
    assert lab_check.problems_of(good) == []


def test_every_failure_is_reported() -> None:
    bad = state(
        markdown("(label)=\n# T", "(label)=\nT"),
        markdown("See {numref}`fig`.", "See {numref}fig."),
        markdown("```{admonition} x\n```", "admonition - Unknown Directive"),
        code("1/0", [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "x"}]),
        code("plot()", [display(PNG)], images=0),
        code('glue("fig-b", fig, display=False)', []),
        markdown("```{glue:figure} fig-b\n```", ""),
        code("explorer()", [display({"application/vnd.jupyter.widget-view+json": {}})],
             widgets=0),
        code("live_figure('sampler')", [display({"text/html": "RedgeLive.mount(x)"})]),
    )
    report = "\n".join(lab_check.problems_of(bad))
    for expected in ("cell 0: raw MyST '(label)='", "cell 1: raw MyST '{numref}'",
                     "cannot render 'admonition'", "cell 3: ZeroDivisionError",
                     "cell 4: 1 figure(s) output, 0 drawn",
                     "cell 5: the site's figure 'fig-b' is not visible",
                     "cell 7: an ipywidgets output does not render",
                     "cell 8: a live figure does not render"):
        assert expected in report, report
