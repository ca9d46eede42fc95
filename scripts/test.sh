#!/usr/bin/env bash
# Set up .venv if needed, then lint (ruff) and run the test suite: unit (no Ray), integration on a local Ray, e2e.
#   ./scripts/test.sh                      lint and every test but those marked `full` (CI runs exactly this)
#   ./scripts/test.sh --full               the same with the `full` tests too (more architectures and shipped specs)
#   ./scripts/test.sh tests/unit -k lora   any pytest arguments instead
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/venv.sh
PYTEST=(.venv/bin/python -m pytest -q -ra --timeout=1800)
# CI's default leaves out the `full` tests: on 2 cores the whole suite takes about an hour, and a
# slower CI machine takes up to 1.8 times as long. The main path stays in CI end to end.
select=(-m "not full")
if [ "${1:-}" = "--full" ]; then
  select=()
  shift
fi
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi

# Lint first: seconds, and a failure names the file and line (rules in pyproject.toml).
.venv/bin/ruff check .

# The unit tests start no Ray, so a second pytest runs them beside the Ray tests: those leave the
# CPUs partly idle while processes start, connect and poll (on 2 cores this saves minutes).
unit_log=$(mktemp)
"${PYTEST[@]}" -p no:cacheprovider --basetemp="$(mktemp -d)/unit" tests/unit >"$unit_log" 2>&1 &
unit_pid=$!
status=0
"${PYTEST[@]}" "${select[@]}" --durations=15 tests/integration tests/e2e || status=$?
unit_status=0
wait "$unit_pid" || unit_status=$?
echo "== unit tests (run beside the above) =="
cat "$unit_log"
rm -f "$unit_log"
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$unit_status"
