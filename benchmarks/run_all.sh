#!/usr/bin/env bash
# Run the CPU benchmarks one after another, then refresh docs/benchmarks.md from their results.
#
#   benchmarks/run_all.sh                  # all five, about 20 minutes on 2 quiet cores
#   benchmarks/run_all.sh train workflow   # only these: train sweep workflow serve compress lm_eval
#
# Each benchmark writes benchmarks/results/NAME.json and NAME.md (its table, with the exact command,
# the machine and the date); its log goes to benchmarks/results/logs/NAME.log. At the end
# benchmarks/report.py copies every NAME.md between the `<!-- bench:NAME -->` markers of
# docs/benchmarks.md (the text around them stays as written). Run it on an otherwise idle machine:
# the benchmarks measure ratios side by side, and anything else running skews them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RESULTS=benchmarks/results
mkdir -p "$RESULTS/logs"
# serve_bench.py and compress_bench.py start a local Ray of their own: give them a private temp
# folder (the other scripts make their own), so no other local Ray on the machine is ever touched.
RAY_TMPDIR=$(mktemp -d /tmp/rb-XXXXXX)
export RAY_TMPDIR
trap 'rm -rf "$RAY_TMPDIR"' EXIT

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(train lora sweep workflow serve compress lm_eval)
start=$SECONDS
times=()
for name in "${names[@]}"; do
  t=$SECONDS
  echo "== $name ($(date +%H:%M:%S))"
  case $name in
    train)    cmd=("$PY" benchmarks/train_bench.py) ;;
    sweep)    cmd=("$PY" benchmarks/sweep_bench.py) ;;
    lora)     cmd=("$PY" benchmarks/lora_bench.py) ;;
    workflow) cmd=("$PY" benchmarks/workflow_bench.py) ;;
    serve)    cmd=("$PY" benchmarks/report.py capture serve_bench -- "$PY" benchmarks/serve_bench.py) ;;
    compress) cmd=("$PY" benchmarks/report.py capture compress_bench -- "$PY" benchmarks/compress_bench.py --repeats 3
                   --out "$RESULTS/compress_bench.json") ;;
    lm_eval)  cmd=("$PY" benchmarks/lm_eval_bench.py) ;;
    *) echo "unknown benchmark '$name' (train lora sweep workflow serve compress lm_eval)" >&2; exit 2 ;;
  esac
  if ! "${cmd[@]}" > "$RESULTS/logs/$name.out" 2> "$RESULTS/logs/$name.log"; then
    echo "$name failed; the end of its log ($RESULTS/logs/$name.log):" >&2
    tail -n 30 "$RESULTS/logs/$name.log" >&2
    exit 1
  fi
  cat "$RESULTS/logs/$name.out"
  times+=("$name $((SECONDS - t)) s")
  echo "== $name: $((SECONDS - t)) s"
done
"$PY" benchmarks/report.py
echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s: ${times[*]}"
