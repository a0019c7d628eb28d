#!/usr/bin/env bash
# One prepared command for a GPU machine (fits one 10-minute call): the tests whose outcome can depend on
# the backend (kernels, precision, parity with transformers, decoding, log-probs, the train step, memory,
# scoring, training), with the log under $OUT. Tests that assume another backend skip with the reason
# (tests/helpers.py requires_cpu / requires_devices); see docs/testing.md, "GPU".
#
#   bash scripts/gpu_suite.sh                      # on the GPU machine, repo root or anywhere
#   bash scripts/gpu_suite.sh tests/models -k cudnn   # other paths / pytest options replace the default set
#   GPU_SUITE_ALLOW_CPU=1 bash scripts/gpu_suite.sh tests/models/test_precision.py   # dry run off a GPU
#
# Output in $OUT (default ./gpu_suite_out, git-ignored): pytest.log (the whole log, skip reasons and the
# 25 slowest tests included), junit.xml, env.txt (card, driver, versions). pytest is stopped with SIGINT
# at GPU_SUITE_BUDGET_S (default 540 s), so a cut run still prints its summary of failures.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT="${OUT:-$PWD/gpu_suite_out}"
mkdir -p "$OUT"
# Several pytest workers share the card: allocate on demand instead of 75% each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's rm_jax, installed or not
PY="${PYTHON:-python}"
BUDGET_S="${GPU_SUITE_BUDGET_S:-540}"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" - <<'PY'
import importlib
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
for m in ("jaxlib", "flax", "optax", "orbax.checkpoint", "transformers", "torch", "pytest", "xdist",
          "datasets", "tensorboardX", "fastapi", "uvicorn", "prometheus_client"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except ImportError:
        print(m, "absent")
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

backend=$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null)
if [ "$backend" != "gpu" ] && [ -z "${GPU_SUITE_ALLOW_CPU:-}" ]; then
  echo "gpu_suite.sh: jax's backend is '$backend', not gpu; this checks a GPU (GPU_SUITE_ALLOW_CPU=1 to dry-run)" >&2
  exit 2
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(tests/models tests/policy tests/engine tests/steer tests/training)
fi
workers=()
if "$PY" -c "import xdist" 2>/dev/null; then
  workers=(-n "${GPU_SUITE_WORKERS:-4}")  # compile-bound tests on 16 cores; each worker its own process
fi

timeout -s INT "$BUDGET_S" "$PY" -m pytest -q -p no:cacheprovider -m "not slow" -rfEs --durations=25 \
  "${workers[@]}" --junitxml="$OUT/junit.xml" "${targets[@]}" 2>&1 | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
echo "gpu_suite.sh: pytest exit $rc (124 or 130: cut at ${BUDGET_S} s); log $OUT/pytest.log" | tee -a "$OUT/pytest.log"
exit "$rc"
