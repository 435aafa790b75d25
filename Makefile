# Two commands (see README.md):
#   make book   install into .venv, build the site into _build/html executing every chapter
#   make test   install into .venv, then lint, unit tests, nbval, strict book build, timing table
# Needs only Python 3.11 and pip. PYTHON picks the interpreter that creates the venv.

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

.PHONY: book test install lint unit nbval build-strict browser-check check-html exec-table clean

book: install
	$(BIN)/jupyter-book build $(JB_FLAGS) .
	$(PY) scripts/book_tools.py check-html _build/html
	@echo "Site built: $(CURDIR)/_build/html/index.html"

test: install
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory nbval
	$(MAKE) --no-print-directory build-strict
	$(MAKE) --no-print-directory browser-check
	$(MAKE) --no-print-directory exec-table

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q -e .
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
	$(PY) scripts/book_tools.py check-html _build/html

# Every built page in headless Chromium: raw TeX, broken images/links, empty widgets, remote
# scripts/styles, sideways scrolling. Screenshots go to _build/screenshots/.
browser-check:
	$(PY) scripts/browser_check.py _build/html

exec-table:
	$(PY) scripts/exec_table.py

clean:
	rm -rf _build
