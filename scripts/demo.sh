#!/usr/bin/env bash
# The main job on the embedded default: installs into .venv, then runs the demo sweep
# (a tiny RM trained from scratch on the bundled sample; offline; minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
exec rm-jax sweep experiments/demo.yaml "$@"
