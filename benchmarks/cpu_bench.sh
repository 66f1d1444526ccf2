#!/usr/bin/env bash
# The CPU benchmark behind docs/benchmarks.md: every default variant at dim 512, 2048 tokens,
# float32: reference vs the fused op (three recompute modes) vs torch.compile vs the
# matmul-only floor, with the CPU targets evaluated from the same run. About 7 minutes on
# 2 cores (inductor's C++ build is ~40 s of it per variant).
#
#   benchmarks/cpu_bench.sh                 # writes benchmarks/results/cpu-<date>.{json,md,png}
#   NO_COMPILE=1 benchmarks/cpu_bench.sh    # without torch.compile
#   benchmarks/cpu_bench.sh --repeats 3     # extra arguments go to `ffnlab bench`
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DATE=$(date -u +%Y-%m-%d)
RESULTS=${RESULTS:-benchmarks/results}
WORK=${WORK:-runs/bench-cpu-$DATE}
PROVIDERS=reference,fused,compile,matmul
if [[ "${NO_COMPILE:-0}" != 0 ]]; then PROVIDERS=reference,fused,matmul; fi

mkdir -p "$RESULTS" "$(dirname "$WORK")"
"$PY" -m ffnlab bench \
    --device cpu --dtype float32 --dim 512 --tokens 2048 \
    --variants relu,gelu,swish,geglu,swiglu --providers "$PROVIDERS" \
    --repeats 15 --warmup 2 --out "$WORK" "$@" | tee "$WORK.txt"

for ext in json md png; do
    cp "$WORK/bench.$ext" "$RESULTS/cpu-$DATE.$ext"
done
echo "results: $RESULTS/cpu-$DATE.{json,md,png}"
