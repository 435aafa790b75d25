"""Open chapters in JupyterLab as a reader does, run them, and check what the reader sees.

Usage (``make lab-check``, part of ``make test``; after ``make lab-settings``)::

    python scripts/lab_check.py [chapters/04_diffusion_on_the_simplex.md ...] [--chromium PATH]

JupyterLab is started from this environment (``.venv``) on 127.0.0.1 with a random token, on a
copy of the chapters in a temporary folder (a save cannot touch the sources; the stored results
are found through the package, wherever the notebook is), with fresh user settings and the
project's defaults (``lab/overrides.json``, which ``make lab-settings`` installs). Headless
Chromium, driven by Playwright through ``executable_path`` (no browser download), opens the file
browser, double-clicks each chapter, which must open as a notebook (not as text), runs all cells,
and fails on:

* a cell that ends in an error;
* raw MyST in a rendered Markdown cell (a role such as ``{cite}``, a directive fence);
* a missing figure: a figure a cell outputs that is not drawn, or a figure the site pastes
  (``{glue:figure}``, ``{glue}``) that is not visible under the cell that glues it;
* a widget that does not render (ipywidgets), or a live figure (``live.js``) that does not;
* a live figure or an ipywidgets slider that does not redraw when moved with the keyboard
  (arrow keys, which must also leave the notebook's cell selection alone) and with the mouse.

The server runs at most ``--timeout`` seconds and is stopped by its PID. Screenshots go to
``_build/lab/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from browser_check import find_chromium  # noqa: E402

DEFAULT_CHAPTERS = ("chapters/03_relaxations.md", "chapters/04_diffusion_on_the_simplex.md")
#: MyST that a renderer would have turned into text: roles and directive fences.
RAW_MYST = re.compile(r"\{(cite|cite:[a-z]+|numref|ref|doc|eq|glue|glue:[a-z]+|term|download)\}"
                      r"|```\{|:::\{|^\(.+\)=$", re.M)
#: What jupyterlab-myst shows for a directive it does not know.
UNKNOWN = re.compile(r"(\S+) - Unknown Directive")
#: Names the site pastes as figures: ``{glue:figure} name`` and ``{glue} name`` directives.
GLUE_FIGURE = re.compile(r"^[`:]{3,}\{glue(?::figure)?\}\s+(\S+)", re.M)
# User settings of the check only: every cell in the page (no windowing), nothing saved.
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": '{"autosave": false}',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, state: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    """JupyterLab of this environment on 127.0.0.1:port, serving ``root``."""
    for rel, text in USER_SETTINGS.items():
        (state / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
        (state / "settings" / rel).write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDGE_", "JUPYTER"))}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(state / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTER_CONFIG_DIR=str(state / "config"), OMP_NUM_THREADS="1")
    lab = Path(sys.executable).with_name("jupyter-lab")
    command = [str(lab), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    return subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_server(base: str, token: str, process: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {limit:.0f} s")


def stop(process: subprocess.Popen, base: str = "", token: str = "") -> None:
    """Shut the kernels down through the server's API, then stop the server (its own process
    group, started by us) by its PID."""
    if process.poll() is None and base:
        try:
            with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as r:
                kernels = json.load(r)
            for kernel in kernels:
                request = urllib.request.Request(
                    f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
                urllib.request.urlopen(request, timeout=10).close()
        except OSError as error:
            print(f"lab check: could not shut the kernels down: {error}", file=sys.stderr)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# What the page reports about the open notebook (through window.jupyterapp).
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.map((cell, index) => {
    const model = cell.model;
    const outputs = model.type === 'code' ? model.outputs.toJSON() : [];
    const node = cell.node;
    return {
      index, type: model.type, source: model.sharedModel.getSource(), outputs,
      rendered: model.type === 'markdown'
        ? (node.querySelector('.jp-RenderedMarkdown') || {}).innerText || '' : '',
      images: [...node.querySelectorAll('.jp-OutputArea-output img, .jp-OutputArea-output svg')]
        .filter((e) => e.getBoundingClientRect().width > 20).length,
      widgets: node.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
      widgetErrors: /Error displaying widget|Loading widget/.test(
        (node.querySelector('.jp-OutputArea') || {}).innerText || ''),
      live: node.querySelectorAll('.redge-live svg').length,
    };
  });
  return {cells, active: panel.content.activeCellIndex};
}"""


def problems_of(state: dict) -> list[str]:
    """Cell errors, raw MyST, missing figures and widgets of a notebook after Run All."""
    problems = []
    cells = state["cells"]
    glued_figures = set()
    for cell in cells:
        if cell["type"] == "markdown":
            glued_figures.update(GLUE_FIGURE.findall(cell["source"]))
    for cell in cells:
        where = f"cell {cell['index']}"
        if cell["type"] == "markdown":
            raw = RAW_MYST.search(cell["rendered"])
            if raw:
                problems.append(f"{where}: raw MyST {raw.group(0)!r} in the rendered text")
            for unknown in UNKNOWN.findall(cell["rendered"]):
                if not unknown.startswith("glue"):  # glued values: shown under their cell
                    problems.append(f"{where}: jupyterlab-myst cannot render {unknown!r}")
            continue
        if cell["type"] != "code":
            continue
        for out in cell["outputs"]:
            if out.get("output_type") == "error":
                problems.append(f"{where}: {out.get('ename')}: {out.get('evalue')}")
        shown = [out.get("data", {}) for out in cell["outputs"]
                 if out.get("output_type") in ("display_data", "execute_result")]
        n_images = sum(any(k.startswith("image/") for k in d) for d in shown)
        if cell["images"] < n_images:
            problems.append(f"{where}: {n_images} figure(s) output, {cell['images']} drawn")
        for name in sorted(glued_figures):
            if re.search(rf"""glue\(\s*["']{re.escape(name)}["']""", cell["source"]) \
                    and n_images == 0:
                problems.append(f"{where}: the site's figure {name!r} is not visible here")
        if any("application/vnd.jupyter.widget-view+json" in d for d in shown):
            if cell["widgets"] == 0 or cell["widgetErrors"]:
                problems.append(f"{where}: an ipywidgets output does not render")
        if any("RedgeLive.mount" in str(d.get("text/html", "")) for d in shown) \
                and cell["live"] == 0:
            problems.append(f"{where}: a live figure does not render")
    return problems


def redraws(page, area, slider, move) -> str | None:
    """Move ``slider`` with ``move``; None if the picture in ``area`` changed, else a reason."""
    def picture() -> str:
        return area.evaluate("(e) => [...e.querySelectorAll('svg, img')]"
                             ".map((x) => x.outerHTML.length + (x.src || x.innerHTML)).join()")

    before = picture()
    move()
    for _ in range(40):  # up to 10 s: an ipywidgets redraw goes through the kernel
        page.wait_for_timeout(250)
        if picture() != before:
            return None
    return "the figure did not change"


def check_sliders(page, name: str) -> list[str]:
    """Each live figure and ipywidgets explorer of the open notebook, by keyboard and mouse."""
    problems = []
    notebook = page.locator(".jp-NotebookPanel:visible .jp-Notebook")
    active = "() => window.jupyterapp.shell.currentWidget.content.activeCellIndex"
    kinds = {
        "live figure": (notebook.locator(".redge-live"), "input[type=range]"),
        "ipywidgets slider": (notebook.locator(".jp-OutputArea-output:has(.widget-slider)"),
                              ".widget-slider .noUi-handle"),
    }
    for kind, (areas, handle) in kinds.items():
        for i in range(areas.count()):
            area = areas.nth(i)
            slider = area.locator(handle).first
            slider.scroll_into_view_if_needed()
            slider.focus()  # focus in an output makes its cell the active one
            cell_before = page.evaluate(active)
            reason = redraws(page, area, slider,
                             lambda s=slider: [s.press(k) for k in ("ArrowRight",) * 3])
            if reason:
                problems.append(f"{name}: {kind} {i + 1} (keyboard): {reason}")
            if page.evaluate(active) != cell_before:
                problems.append(f"{name}: {kind} {i + 1}: the arrow keys moved the notebook's "
                                "cell selection")
            box = slider.bounding_box() if kind == "ipywidgets slider" else None

            def drag(s=slider, box=box, area=area):
                if box is None:  # a range input: click a quarter of the way along
                    b = s.bounding_box()
                    page.mouse.click(b["x"] + 0.25 * b["width"], b["y"] + b["height"] / 2)
                else:  # noUiSlider: drag the handle to the left
                    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                    page.mouse.down()
                    page.mouse.move(box["x"] - 60, box["y"] + box["height"] / 2, steps=5)
                    page.mouse.up()

            reason = redraws(page, area, slider, drag)
            if reason:
                problems.append(f"{name}: {kind} {i + 1} (mouse): {reason}")
    return problems


def check_chapter(page, base: str, token: str, chapter: str, shots: Path,
                  timeout: float) -> list[str]:
    name = Path(chapter).name
    opened = time.monotonic()
    page.goto(f"{base}/lab/tree/chapters?token={token}")
    item = page.locator(".jp-DirListing-item", has_text=name).first
    item.wait_for(timeout=60_000)
    item.dblclick()
    page.wait_for_selector(".jp-NotebookPanel:visible, .jp-FileEditor:visible",
                           timeout=60_000)
    if page.locator(".jp-FileEditor:visible").count():
        return [f"{name}: a double click opened the text editor, not a notebook"]
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel; return k && k.status === 'idle'; }",
        timeout=120_000)
    start = time.monotonic()
    opened = start - opened
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " const busy = w.content.widgets.some((c) => c.model.type === 'code'"
        "   && c.promptNode && /\\*/.test(c.promptNode.textContent));"
        " return !busy && w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=timeout * 1000, polling=500)
    ran = time.monotonic() - start
    page.wait_for_timeout(1500)  # late widget views and live figures
    state = page.evaluate(NOTEBOOK_STATE)
    problems = [f"{name}: {p}" for p in problems_of(state)]
    sliders = time.monotonic()
    problems += check_sliders(page, name)
    sliders = time.monotonic() - sliders
    page.screenshot(path=str(shots / f"{Path(name).stem}.png"), full_page=False)
    n_code = sum(c["type"] == "code" for c in state["cells"])
    print(f"lab check: {name}: opened with its kernel in {opened:.0f} s, {n_code} code cells "
          f"ran in {ran:.0f} s, sliders checked in {sliders:.0f} s; "
          f"{sum(c['images'] for c in state['cells'])} figures, "
          f"{sum(c['live'] > 0 for c in state['cells'])} live figure(s), "
          f"{sum(c['widgets'] > 0 for c in state['cells'])} widget output(s)")
    # the kernel down, the tab closed without the save dialog (the copy is thrown away)
    page.evaluate("async () => { const w = window.jupyterapp.shell.currentWidget;"
                  " await w.sessionContext.shutdown(); w.dispose(); }")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", default=list(DEFAULT_CHAPTERS))
    parser.add_argument("--chromium", default=None, help="Chromium executable")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds the whole check (and the server) may run")
    parser.add_argument("--shots", type=Path, default=REPO_ROOT / "_build" / "lab")
    args = parser.parse_args(argv)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = find_chromium(args.chromium)
    args.shots.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="lab-check-"))
    root = state / "reader"
    (root / "chapters").mkdir(parents=True)
    for chapter in args.chapters:
        shutil.copy(REPO_ROOT / chapter, root / "chapters")
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    server = start_lab(root, state, port, token, args.shots / "jupyterlab.log")

    def watchdog() -> None:  # a hung page cannot keep the server (or the test) running
        print(f"lab check FAILED: still running after {args.timeout + 30:.0f} s", file=sys.stderr)
        stop(server, base, token)
        os._exit(1)

    timer = threading.Timer(args.timeout + 30, watchdog)
    timer.daemon = True
    timer.start()
    problems: list[str] = []
    try:
        wait_for_server(base, token, server, 60)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            remote: list[str] = []  # offline: nothing may leave the server

            def local_only(route) -> None:
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    remote.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            try:
                for chapter in args.chapters:
                    left = args.timeout - (time.monotonic() - start)
                    problems += check_chapter(page, base, token, chapter, args.shots,
                                              max(left, 10))
            except PlaywrightError as error:
                page.screenshot(path=str(args.shots / "failure.png"))
                problems.append(f"the page did not do what a reader expects: {error}")
            finally:
                browser.close()
            problems += [f"page error: {e}" for e in errors]
            problems += [f"request leaves the server (blocked): {u}" for u in remote]
    finally:
        timer.cancel()
        stop(server, base, token)
        shutil.rmtree(state, ignore_errors=True)
    for line in problems:
        print(line, file=sys.stderr)
    took = time.monotonic() - start
    if problems:
        print(f"lab check FAILED: {len(problems)} problem(s) ({took:.0f} s); screenshots and the "
              f"server's log in {args.shots}", file=sys.stderr)
        return 1
    print(f"lab check passed: {len(args.chapters)} chapter(s) opened by a double click, run and "
          f"checked in JupyterLab ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
