"""redge_mini.book.glue: the site's glue, and the values shown where nothing pastes them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from IPython.core.pylabtools import select_figure_formats  # noqa: E402
from IPython.display import Markdown  # noqa: E402

from redge_mini.book import glue as glue_module  # noqa: E402

GLUE_PREFIX = "application/papermill.record/"


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict, dict]]:
    """Every display call's (data, metadata), as a kernel would send them."""
    shell = InteractiveShell.instance()
    select_figure_formats(shell, {"png"})  # as matplotlib's inline backend does in a kernel
    calls: list[tuple[dict, dict]] = []
    monkeypatch.setattr(shell.display_pub, "publish",
                        lambda data, metadata=None, **k: calls.append((data, metadata or {})))
    return calls


def test_outside_the_build_the_value_is_glued_and_shown(monkeypatch, shown) -> None:
    monkeypatch.delenv(glue_module.BUILD_ENV, raising=False)
    glue_module.glue("ratio", 0.123456, display=False)
    glue_module.glue("verdict", Markdown("**better**"), display=False)
    fig, _ = plt.subplots()
    glue_module.glue("fig_a", fig, display=False)
    plt.close(fig)
    glued = [m["scrapbook"]["name"] for d, m in shown if "scrapbook" in m]
    assert glued == ["ratio", "verdict", "fig_a"]  # what myst-nb's build reads
    assert all(all(k.startswith(GLUE_PREFIX) for k in d) for d, m in shown if "scrapbook" in m)
    visible = [d for d, m in shown if "scrapbook" not in m]
    assert visible[0]["text/markdown"] == "`ratio` = 0.1235"
    assert visible[1]["text/markdown"] == "`verdict` = **better**"
    assert "image/png" in visible[2]  # the figure itself


def test_in_the_build_only_the_glue(monkeypatch, shown) -> None:
    monkeypatch.setenv(glue_module.BUILD_ENV, "1")
    glue_module.glue("ratio", 0.5, display=False)
    assert len(shown) == 1 and "scrapbook" in shown[0][1]
    glue_module.glue("shown", 0.5)  # display=True: myst-nb shows it, once
    assert len(shown) == 2 and "text/plain" in shown[1][0]


def test_bad_name() -> None:
    with pytest.raises(ValueError, match="name"):
        glue_module.glue("", 1.0)


def test_numpy_scalars_are_glued_as_python_numbers(monkeypatch, shown) -> None:
    """myst-nb stores a value's repr as text/plain and the roles' format specs parse it: the
    repr of a NumPy scalar (``np.float64(0.5)``) fails that parse and breaks a strict build."""
    import numpy as np

    monkeypatch.setenv(glue_module.BUILD_ENV, "1")
    glue_module.glue("mean", np.float64(0.143138), display=False)
    glue_module.glue("count", np.int64(7), display=False)
    glue_module.glue("array", np.array([1.0, 2.0]), display=False)
    plain = {m["scrapbook"]["name"]: d[GLUE_PREFIX + "text/plain"]
             for d, m in shown if "scrapbook" in m}
    assert plain["mean"] == "0.143138" and float(plain["mean"]) == 0.143138
    assert plain["count"] == "7"
    assert plain["array"].startswith("array(")  # arrays stay what they are
