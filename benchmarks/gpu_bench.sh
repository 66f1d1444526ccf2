#!/usr/bin/env bash
# The whole GPU measurement in one call: SwiGLU and GeGLU-tanh FFNs at LLaMA sizes (dim 4096,
# hidden 11008 and 14336), 8k-32k tokens, bfloat16, forward and forward+backward, against eager
# PyTorch, Liger-Kernel (when its wheel is present) and the matmul-only floor; the elementwise
# kernels alone against the copy bandwidth; the GPU targets evaluated from the same run; then a
# mixture of experts at Qwen3-30B-A3B's shape (dim 2048, 128 experts of 768 units, top 8;
# Mixtral-like 8x2 at dim 4096, 14336 units with QUICK unset), fused against the reference loop.
#
# Installs nothing from the internet. Needs torch with CUDA, triton, rich, safetensors and numpy
# on the machine (matplotlib for the chart). To compare against Liger-Kernel, put its wheel in
# benchmarks/wheels/ (or point LIGER_WHEEL at it): wheels there are unpacked with
# `pip install --no-index --no-deps --target` into a temporary folder, nothing else changes.
#
#   benchmarks/gpu_bench.sh                    # -> $OUT/gpu-<date>.* if OUT is set, else benchmarks/results/
#   WITH_COMPILE=1 benchmarks/gpu_bench.sh     # also torch.compile of the reference (slow to build)
#   QUICK=1 benchmarks/gpu_bench.sh            # one hidden size, 8192 tokens: a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}  # the GPU machine's python with CUDA torch and triton
DATE=$(date -u +%Y-%m-%d)
DEST=${OUT:-benchmarks/results}
WORK=$(mktemp -d)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_bench.sh: no CUDA GPU visible to torch " + torch.__version__)
print("torch", torch.__version__, "on", torch.cuda.get_device_name())
PY

# Offline wheels: benchmarks/wheels/*.whl (e.g. liger_kernel, rich, matplotlib when the machine
# lacks them) and LIGER_WHEEL are unpacked into a temporary folder; nothing is downloaded.
wheels=()
for w in ${LIGER_WHEEL:-} benchmarks/wheels/*.whl; do
    if [[ -f "$w" ]]; then wheels+=("$w"); fi
done
if (( ${#wheels[@]} )); then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$WORK/site" "${wheels[@]}"
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
    echo "offline wheels: ${wheels[*]}"
fi
"$PY" - <<'PY'
import importlib.util, sys
missing = [m for m in ("rich", "safetensors", "numpy") if importlib.util.find_spec(m) is None]
if missing:  # the ffnlab command line needs these (rich also markdown-it-py, mdurl, pygments)
    sys.exit(f"gpu_bench.sh: missing {', '.join(missing)}; put their wheels in benchmarks/wheels/")
for name, why in (("liger_kernel", "liger rows will be skipped"), ("matplotlib", "no chart")):
    if importlib.util.find_spec(name) is None:
        print(f"{name} not installed: {why}")
PY

PROVIDERS=reference,fused,triton,liger,matmul
if [[ "${WITH_COMPILE:-0}" != 0 ]]; then PROVIDERS=$PROVIDERS,compile; fi
HIDDEN=11008,14336; TOKENS=8192,16384,32768; REPEATS=10
if [[ "${QUICK:-0}" != 0 ]]; then HIDDEN=11008; TOKENS=8192; REPEATS=3; fi

mkdir -p "$DEST"
"$PY" -m ffnlab bench \
    --device cuda --dtype bfloat16 --dim 4096 --hidden "$HIDDEN" --tokens "$TOKENS" \
    --variants swiglu,geglu_tanh --providers "$PROVIDERS" \
    --repeats "$REPEATS" --warmup 3 --out "$WORK/bench" "$@" | tee "$DEST/gpu-$DATE.txt"

for ext in json md png; do
    if [[ -f "$WORK/bench/bench.$ext" ]]; then cp "$WORK/bench/bench.$ext" "$DEST/gpu-$DATE.$ext"; fi
done

# Mixture of experts: one row per shape, fused (sorted tokens, grouped products) against the
# per-expert reference loop, each with its share of the matmul rate.
MOE_SHAPES=("2048 768 128x8 16384")
if [[ "${QUICK:-0}" == 0 ]]; then MOE_SHAPES+=("4096 14336 8x2 8192"); fi
for shape in "${MOE_SHAPES[@]}"; do
    read -r dim hidden moe tokens <<<"$shape"
    "$PY" -m ffnlab bench --variants "moe:swiglu:$moe" \
        --device cuda --dtype bfloat16 --dim "$dim" --hidden "$hidden" --tokens "$tokens" \
        --repeats "$REPEATS" --warmup 3 --out "$WORK/moe-$moe" | tee -a "$DEST/gpu-moe-$DATE.txt"
    for ext in json md; do
        if [[ -f "$WORK/moe-$moe/moe_bench.$ext" ]]; then
            cp "$WORK/moe-$moe/moe_bench.$ext" "$DEST/gpu-moe-$moe-$DATE.$ext"
        fi
    done
done
rm -rf "$WORK"
echo "results: $DEST/gpu-$DATE.{json,md,png,txt}, $DEST/gpu-moe-*-$DATE.{json,md}"
