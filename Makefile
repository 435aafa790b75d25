# Two commands (see README.md):
#   make book   install into .venv, build the site into _build/html executing every chapter, with
#               the wheel and stored results that downloaded notebooks install, and the book's PDF
#   make test   install into .venv, then lint, unit tests, nbval, strict book build, browser
#               check, a downloaded notebook run in a fresh environment, the chapters in
#               JupyterLab, timing table
#   make lab    install into .venv, then open JupyterLab on the chapters (.md opens as a notebook)
# Needs only Python 3.11 and pip (and Chromium for the PDF and the browser check: .ci/run).
# PYTHON picks the interpreter that creates the venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# -W: warnings are errors; -n: nitpicky (broken references); --keep-going: report all of them;
# --all: rebuild every page, so every chapter is executed again (execute_notebooks: force).
JB_FLAGS := --all -W -n --keep-going
NBVAL_CELL_TIMEOUT ?= 300
export NBVAL_CELL_TIMEOUT

.PHONY: book test install lint unit nbval build-strict site-extras pdf browser-check \
	downloaded-notebook lab lab-settings lab-check exec-table clean

book: install
	$(BIN)/jupyter-book build $(JB_FLAGS) .
	$(MAKE) --no-print-directory site-extras
	@echo "Site built: $(CURDIR)/_build/html/index.html"

test: install
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory nbval
	$(MAKE) --no-print-directory build-strict
	$(MAKE) --no-print-directory browser-check
	$(MAKE) --no-print-directory downloaded-notebook
	$(MAKE) --no-print-directory lab-check
	$(MAKE) --no-print-directory exec-table

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q -e .
	$(PY) scripts/build_cpp_sampler.py
	touch $(STAMP)

lint:
	$(BIN)/ruff check .
	$(BIN)/codespell

unit:
	$(PY) -m pytest -q -p no:cacheprovider tests/

nbval:
	scripts/nbval_chapters.sh $(PY)

build-strict:
	$(BIN)/jupyter-book build $(JB_FLAGS) .
	$(MAKE) --no-print-directory site-extras

# What the site publishes beside its pages: the wheel of redge_mini and the stored results that a
# downloaded notebook's first cell installs (_build/html/_static/dist), and the book as one PDF
# (_build/html/_static/redge-book.pdf, linked from the teachers' page). Then: nothing remote.
site-extras:
	$(PY) scripts/book_tools.py publish _build/html
	$(PY) scripts/book_pdf.py _build/html
	$(PY) scripts/book_tools.py check-html _build/html

# The PDF alone, from the built site (builds the site first when there is none).
pdf: install
	if [ -f _build/html/index.html ]; then $(PY) scripts/book_pdf.py _build/html; \
	else $(MAKE) --no-print-directory book; fi

# Every built page in headless Chromium (Playwright), offline: raw TeX, MathJax errors, broken
# images and links, empty widgets, remote loads, console errors, sideways scrolling, live figures
# that do not respond to their sliders. Screenshots go to _build/screenshots/.
browser-check:
	$(PY) scripts/browser_check.py _build/html

# Chapter 0's notebook as the site offers it for download, run in a fresh virtual environment
# outside the repository: its first cell installs redge_mini from the site's wheel.
downloaded-notebook:
	$(PY) scripts/check_downloaded_notebook.py _build/html chapters/00_how_to_use

# JupyterLab on the chapters: double-clicking a chapter's .md opens it as a notebook (Jupytext),
# by the project's settings lab/overrides.json, copied into the environment's JupyterLab.
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.d/redge-book.json

lab-settings: install
	mkdir -p $(dir $(LAB_OVERRIDES))
	cp lab/overrides.json $(LAB_OVERRIDES)

lab: lab-settings
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/chapters \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Two chapters opened in JupyterLab (from .venv, on localhost) in headless Chromium: a double
# click opens each as a notebook, Run All, then it fails on a cell error, raw MyST, a missing
# figure, a widget that does not render, a slider (live figure or ipywidgets) that does not
# redraw from keyboard and mouse (scripts/lab_check.py; screenshots in _build/lab/).
lab-check: lab-settings
	$(PY) scripts/lab_check.py

exec-table:
	$(PY) scripts/exec_table.py

clean:
	rm -rf _build
