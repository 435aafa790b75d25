#!/usr/bin/env bash
# Run every full-scale experiment and the estimator benchmark on a CUDA machine, in one go.
# Usage: OUT=<folder> bash scripts/gpu_full_scale.sh   (results land in $OUT/results/<experiment>/)
# The experiments run one after another (never side by side, so no timing is made under
# contention) through redge_mini.book.experiments.run_all, which is resumable: rerunning this
# script keeps every finished stage and starts where it stopped. $OUT/results/manifest.json
# records the device and each experiment's duration. Copy $OUT/results/* into book/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to an output folder}"
MINUTES="${MINUTES:-8}"   # overall budget: no new stage starts after it (rerun to resume)
export PYTHONUNBUFFERED=1 REDGE_SCALE=full PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/results"
log="$OUT/experiments.log"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } >"$log" 2>&1
start=$(date +%s)
python3 -m redge_mini.book.experiments.run_all --scale full --device cuda \
  --max-minutes "$MINUTES" --out "$OUT/results" >>"$log" 2>&1
echo "run_all: exit $? after $(( $(date +%s) - start )) s" >>"$log"
python3 benchmarks/bench_estimators.py --device cuda >"$OUT/bench_cuda.txt" 2>&1
python3 benchmarks/bench_estimators.py --device cpu --threads 1 >"$OUT/bench_cpu.txt" 2>&1
tar czf "$OUT/results.tgz" -C "$OUT" results
echo "total $(( $(date +%s) - start )) s" >>"$log"
cat "$log"
