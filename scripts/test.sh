#!/usr/bin/env bash
# The test command (README, CI): installs everything into .venv, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
