#!/usr/bin/env bash
# Execute every notebook page listed in _toc.yml with nbval.
# Each page is converted with jupytext into _build/nbval/ and run with
# `pytest --nbval-lax --nbval-current-env`; per-cell times go to _build/nbval/junit.xml
# (scripts/exec_table.py sums them per chapter). Usage: scripts/nbval_chapters.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${1:-.venv/bin/python}"
BIN="$(dirname "$PY")"
OUT=_build/nbval
CELL_TIMEOUT="${NBVAL_CELL_TIMEOUT:-300}"

rm -rf "$OUT"
mkdir -p "$OUT"
mapfile -t sources < <("$PY" scripts/book_tools.py notebooks)
if [ "${#sources[@]}" -eq 0 ]; then
  echo "nbval: _toc.yml lists no notebook" >&2
  exit 1
fi
for src in "${sources[@]}"; do
  name="$(basename "${src%.*}")"
  if [ -e "$OUT/$name.ipynb" ]; then
    echo "nbval: two pages named $name" >&2
    exit 1
  fi
  "$BIN/jupytext" --quiet --to ipynb -o "$OUT/$name.ipynb" "$src"
done
echo "nbval: executing ${#sources[@]} notebook(s) (cell timeout ${CELL_TIMEOUT}s)"
"$PY" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
  --nbval-cell-timeout="$CELL_TIMEOUT" --junitxml="$OUT/junit.xml" -o junit_family=xunit1 "$OUT"
