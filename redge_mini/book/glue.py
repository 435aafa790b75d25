"""Glue a computed value into the book's text, and show it where nothing pastes it.

The chapters put computed numbers and figures into their prose with myst-nb's ``{glue}`` roles
and directives: a code cell calls ``glue(name, value, display=False)`` and the site's build pastes
the value where the text names it. Outside the build (JupyterLab, a downloaded notebook, Colab),
no front end reads glued values, so a chapter would lose its figures and numbers. :func:`glue`
therefore does both:

* when myst-nb is installed it calls :func:`myst_nb.glue` (what the build reads);
* outside the book's build it also displays the value under the cell that computed it: a figure
  as itself, anything else as one line ``name = value``, so that every figure the site shows is
  visible after Run All and every number the prose pastes can be read next to its name.

The book's build is recognised by the environment variable ``REDGE_BOOK_BUILD=1``, which the
book's Sphinx extension (``scripts/book_tools.py``) sets before any notebook is executed; the
kernels that myst-nb starts inherit it. myst-nb (and with it Sphinx) is not needed to run a
chapter: without it nothing is glued, and the values are only displayed.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["BUILD_ENV", "glue", "in_book_build"]

#: Set to ``1`` by the book's Sphinx extension for the notebooks it executes.
BUILD_ENV = "REDGE_BOOK_BUILD"


def in_book_build() -> bool:
    """Whether this kernel runs inside the book's build (``REDGE_BOOK_BUILD=1``)."""
    return os.environ.get(BUILD_ENV, "").strip() == "1"


def _as_text(value: Any) -> str:
    """The Markdown text of a glued value that is not a figure."""
    markdown = getattr(value, "_repr_markdown_", None)
    if callable(markdown):
        text = markdown()
        if isinstance(text, tuple):  # (data, metadata)
            text = text[0]
        if isinstance(text, str):
            return text.strip()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def glue(name: str, variable: Any, display: bool = True) -> None:
    """Glue ``variable`` under ``name`` for the book's text, as :func:`myst_nb.glue` does.

    Parameters
    ----------
    name : str
        The key the chapter's ``{glue}`` roles and directives use (unique on a page).
    variable : object
        The value: a float, a :class:`IPython.display.Markdown`, a matplotlib figure ...
    display : bool
        Also show the value in the cell's output (in every front end, the site included).
        With ``False`` the site shows it only where the text pastes it, and a notebook outside
        the build shows it under the cell.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    # a NumPy scalar's repr (np.float64(0.5)) is what myst-nb stores as text/plain, which the
    # roles' format specs ({glue:text}`x:.2f`) cannot read: glue the Python number instead
    item = getattr(variable, "item", None)
    if callable(item) and type(variable).__module__ == "numpy" and getattr(
            variable, "ndim", None) == 0:
        variable = item()
    from IPython.display import Markdown
    from IPython.display import display as show

    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # a notebook outside the book's build: no Sphinx needed
        myst_glue = None
    if myst_glue is not None:
        myst_glue(name, variable, display=display)
    elif display:
        show(variable)
    if display or in_book_build():
        return
    if hasattr(variable, "savefig"):  # a matplotlib figure: the figure itself
        show(variable)
    else:
        show(Markdown(f"`{name}` = {_as_text(variable)}"))
