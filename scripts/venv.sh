#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv; prints nothing when up to date.
# Where no NVIDIA GPU is present, torch's CPU build is installed first so that nothing
# pulls a multi-GB CUDA build; on a GPU machine pip picks the CUDA build as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${LIFECYCLE_VENV:-.venv}
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
[ -f "$stamp" ] && exit 0

echo "setting up $VENV (first time takes a few minutes)..." >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install -U pip "setuptools>=68" wheel
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # 2.13.0 is the CPU wheel this project is tested with; the index serves the CPU build too.
  pip install "torch==2.13.0" || pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
# No build isolation: deepspeed builds against the torch installed above instead of
# fetching another (CUDA) torch into a throwaway build environment.
DS_BUILD_OPS=0 pip install --no-build-isolation -e ".[dev]"
rm -f "$VENV"/.installed-*
touch "$stamp"
