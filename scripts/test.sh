#!/usr/bin/env bash
# The test command (README, CI): installs everything into .venv, checks lint and format, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
ruff check rm_jax tests scripts
ruff format --check rm_jax tests scripts
exec python -m pytest -q "$@"
