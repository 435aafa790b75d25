"""Run a chapter notebook as a reader who downloaded it runs it: in a fresh virtual environment,
outside the repository, with redge_mini installed by the notebook's own first cell.

Usage (after ``make book``; ``make downloaded-notebook`` runs it)::

    python scripts/check_downloaded_notebook.py _build/html chapters/00_how_to_use

The notebook is the one the site offers for download (``<build>/_sources/<page>.ipynb``). The
fresh environment has no redge_mini; its first cell installs the wheel that the site publishes
(``<build>/_static/dist``, given to the cell as a ``file://`` address through
``REDGE_BOOK_DIST``), with pip kept offline (``PIP_NO_INDEX``). To stay fast and offline, the
heavy dependencies (torch, numpy, matplotlib, jupyter ...) are not installed again: a ``.pth`` file
points the new environment at links to this environment's packages, redge_mini left out. The
check fails unless the notebook runs without error AND redge_mini was imported from the wheel
installed into the new environment, and it fails before running if the wheel's ``book`` extra
would pull Sphinx or the site's build (myst-nb, jupyter-book) or CUDA wheels.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Executes a notebook in the working folder with nbclient (what myst-nb executes with).
RUN_NOTEBOOK = """
import sys, nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                        resources={"metadata": {"path": "."}}).execute()
nbformat.write(nb, "executed.ipynb")
"""


#: What a downloaded notebook must not pull through redge_mini[book]: Sphinx and the site's build
#: (myst-nb was needed only for glue), CUDA wheels.
HEAVY = re.compile(r"^(sphinx|myst[-_]nb|myst[-_]parser|jupyter[-_]book|nvidia[-_])", re.I)


def heavy_requirements(dist: Path) -> list[str]:
    """The requirements of the published wheel, with its ``book`` extra, that match HEAVY."""
    wheel = next(dist.glob("redge_mini-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    needs = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    pulled = [r for r in needs if "extra ==" not in r or re.search(r"extra == .book.", r)]
    return [r for r in pulled if HEAVY.match(r)]


def shared_packages(dest: Path) -> Path:
    """Links to every package of this environment except redge_mini (and its editable hooks)."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir(parents=True)
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("redge_mini", "__editable__")) or name.endswith(".pth"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def fresh_venv(root: Path) -> Path:
    """A new virtual environment whose only packages are links to this one's (no redge_mini)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                   check=True)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig;"
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = shared_packages(root / "shared")
    Path(purelib, "book_deps.pth").write_text(f"{deps}\n", encoding="utf-8")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("page", nargs="?", default="chapters/00_how_to_use")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    build = args.build_dir.resolve()
    notebook = build / "_sources" / f"{args.page}.ipynb"
    dist = build / "_static" / "dist"
    for needed in (notebook, dist / "index.html"):
        if not needed.is_file():
            print(f"downloaded notebook: {needed} is missing (build the site first)",
                  file=sys.stderr)
            return 1
    heavy = heavy_requirements(dist)
    if heavy:
        print(f"downloaded notebook: redge_mini[book] would pull {heavy}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="downloaded-notebook-"))
    try:
        python = fresh_venv(root)
        missing = subprocess.run([str(python), "-c", "import redge_mini"], cwd=root,
                                 capture_output=True)
        if missing.returncode == 0:
            print("downloaded notebook: the fresh environment already has redge_mini",
                  file=sys.stderr)
            return 1
        work = root / "work"  # the reader's folder: no repository above it
        work.mkdir()
        shutil.copy(notebook, work / notebook.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDGE_", "PIP_"))}
        env.update(REDGE_BOOK_DIST=dist.as_uri(), PIP_NO_INDEX="1", OMP_NUM_THREADS="1",
                   PIP_DISABLE_PIP_VERSION_CHECK="1", JUPYTER_DATA_DIR=str(root / "jupyter"),
                   JUPYTER_PATH="", PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}")
        # the kernel must be the fresh environment's Python, whatever kernels are installed
        subprocess.run([str(python), "-m", "ipykernel", "install", "--user", "--name",
                        "python3"], env=env, check=True, capture_output=True)
        run = subprocess.run([str(python), "-c", RUN_NOTEBOOK, notebook.name], cwd=work,
                             env=env, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stdout[-4000:], run.stderr[-8000:], sep="\n", file=sys.stderr)
            print(f"downloaded notebook FAILED: {args.page}", file=sys.stderr)
            return 1
        where = subprocess.run(
            [str(python), "-c", "import redge_mini, importlib.metadata as m;"
             "print(redge_mini.__file__);print(m.version('redge_mini'))"],
            cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
        if not where or not Path(where[0]).is_relative_to(root / "venv"):
            print(f"downloaded notebook: redge_mini came from {where}, not from the wheel",
                  file=sys.stderr)
            return 1
        results = sorted(p.name for p in (work / "book" / "results").glob("*"))
        print(f"downloaded notebook passed: {args.page}.ipynb ran in a fresh environment with "
              f"redge_mini {where[1]} installed from the site's wheel; stored results "
              f"unpacked: {', '.join(results) or 'none'} ({time.perf_counter() - start:.0f} s)")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
