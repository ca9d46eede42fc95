#!/usr/bin/env bash
# Set up .venv if needed, then run the tiny lifecycle on a local Ray (extra args go to `lifecycle run`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/venv.sh
exec .venv/bin/lifecycle run workflows/tiny.yaml "$@"
