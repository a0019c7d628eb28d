#!/usr/bin/env bash
# One prepared command for a GPU machine (fits one 10-minute call): a Llama-3.2-1B-shaped reward
# model, bf16 compute, 4 packed rows x 4096 of HelpSteer2-shaped conversations. rm_jax's train step
# per attention kernel (auto = packed cuDNN on Hopper, cudnn_dense, xla) against transformers + torch
# on the same card (sdpa, bf16 autocast, gradient checkpointing, fused AdamW; 4 x 4096 dense rows, the
# same packed rows with flex attention and a per-conversation mask, and TRL-style padded batches), MFU
# against the higher of jnp.dot's and torch's measured bf16 matmul rates and against the card's
# data-sheet peak, and fp32 `rm-jax score` parity against transformers. See scripts/bench_gpu.py
# for the sections.
#
#   bash scripts/bench_gpu.sh                 # on the GPU machine (jax[cuda], flax, optax, orbax,
#                                             # transformers, torch; no internet, no datasets/grain)
#   bash scripts/bench_gpu.sh --smoke         # tiny shapes: runs anywhere, CPU included (~1 minute)
#   bash scripts/bench_gpu.sh --attention auto,xla --sections peak,torch_dense   # any bench_gpu.py option
#   bash scripts/bench_gpu.sh --sections memory    # rm-jax plan vs the measured peak (docs/plan.md)
#   bash scripts/bench_gpu.sh --sections full_ft --budget-s 580   # largest full fine-tune per optimizer option
#
# Output: the JSON on stdout and in $OUT/bench_gpu.json (OUT defaults to ./bench_gpu_out, which git
# ignores: measured figures belong in docs/performance.md), a short table on stderr last, and
# nvidia-smi's view of the card in $OUT/nvidia_smi.txt. Nothing here changes the card's settings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT="${OUT:-$PWD/bench_gpu_out}"
mkdir -p "$OUT"
# Each section runs in its own process; the rm_jax ones take most of the card (params + AdamW
# state of a 1.2B model are ~20 GB in fp32). torch sections are not affected by this variable.
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
