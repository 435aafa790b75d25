#!/usr/bin/env bash
# Run every full-scale experiment and the estimator benchmark on a CUDA machine, in one go.
# Usage: OUT=<folder> bash scripts/gpu_full_scale.sh   (results land in $OUT/results/<experiment>/)
# The experiments run side by side on the one GPU; each is resumable and bounded by a timeout,
# so an interrupted run keeps the files it finished. Copy $OUT/results/* into book/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to an output folder}"
LIMIT="${LIMIT:-330}"
export PYTHONUNBUFFERED=1 REDGE_SCALE=full PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/results"
log="$OUT/experiments.log"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } >"$log" 2>&1
start=$(date +%s)
# experiment:minutes (each script stops starting new runs after its --max-minutes)
for item in polyprog:4 vae:4.5 sudoku:2 mdm_guidance:2.5 image_guidance:2.5; do
  exp="${item%%:*}" minutes="${item##*:}"
  (
    timeout "$LIMIT" python3 -m redge_mini.book.experiments."$exp" --scale full --device cuda \
      --max-minutes "$minutes" --out "$OUT/results/$exp" --no-progress \
      >"$OUT/results/$exp.log" 2>&1
    echo "$exp: exit $? after $(( $(date +%s) - start )) s" >>"$log"
  ) &
done
wait
for f in "$OUT"/results/*.log; do { echo "=== $f"; tail -n 30 "$f"; } >>"$log"; rm -f "$f"; done
python3 benchmarks/bench_estimators.py --device cuda >"$OUT/bench_cuda.txt" 2>&1
python3 benchmarks/bench_estimators.py --device cpu --threads 1 >"$OUT/bench_cpu.txt" 2>&1
tar czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
echo "total $(( $(date +%s) - start )) s" >>"$log"
cat "$log"
