#!/usr/bin/env bash
# One prepared command for a GPU machine: a Llama-3.2-1B-shaped reward model, bf16 compute, seq 4096,
# packed HelpSteer2-shaped batches; rm_jax's train step with cuDNN attention and with the XLA
# attention; step time, tokens/s and MFU against the card's measured bf16 matmul peak, as JSON.
#
#   bash scripts/bench_gpu.sh                 # on the GPU machine (needs jax[cuda], flax, optax,
#                                             # orbax-checkpoint, transformers; no internet, no datasets)
#   bash scripts/bench_gpu.sh --smoke         # tiny shapes: runs anywhere, CPU included
#   bash scripts/bench_gpu.sh --rows 2 --attention xla --remat full   # any bench_gpu.py option
#
# Output: the JSON on stdout and in $OUT/bench_gpu.json (OUT defaults to ./bench_gpu_out), plus
# nvidia-smi's view of the card in $OUT/nvidia_smi.txt. Nothing here changes the card's settings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT="${OUT:-$PWD/bench_gpu_out}"
mkdir -p "$OUT"
# Most of the card for the step (params + AdamW state of a 1.2B model are ~20 GB in fp32).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
    --format=csv > "$OUT/nvidia_smi.txt" 2>&1 || true
fi
PY="${PYTHON:-python}"
"$PY" -c "import jax; print('[bench_gpu.sh] jax', jax.__version__, jax.devices())" >&2
exec "$PY" scripts/bench_gpu.py "$@"
