#!/usr/bin/env bash
# Creates .venv (once) and installs rm_jax with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import rm_jax, torch, pytest, jax, flax, orbax.checkpoint, datasets, transformers, peft, ruff" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  python -m pip install -q --upgrade pip
  # CPU build of torch (the test-only reference implementation); pip takes it from local disk here.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[test]"
  touch .venv/.installed
fi
