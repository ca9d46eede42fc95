#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (unit, integration on a local Ray, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/venv.sh
exec .venv/bin/python -m pytest -q -ra --durations=15 --timeout=1800 tests "$@"
