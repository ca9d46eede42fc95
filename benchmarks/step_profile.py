"""Step profile: what each step of a workflow costs on its own, and the run's critical path.

    .venv/bin/python benchmarks/workflow_bench.py --spec workflows/tiny.yaml --workdir W   # a cold run, kept
    .venv/bin/python benchmarks/step_profile.py --spec workflows/tiny.yaml --workdir W [--steps a,b]

In a cold run the steps after fine-tuning share 2 CPUs (eight at once on the tiny workflow), so
their wall times say little about their cost. This re-runs each step alone on the cold run's
working folder, every input a cache hit: the step's output and checkpoints are removed (a cache miss), the spec
cut down to the step and its ancestors, and `lifecycle run` times it on an idle machine. Then:

- alone s: the step's own time (its MLflow run), of which the training loop's report windows
  and "other" (Ray Train start and stop, model loading, scoring, export, speed measurements);
- parts: the seconds the step timed itself (`ctx.timed`, logged as `seconds_<part>`): ray_train
  (its Ray Train run: start, loop, stop), score_before / score_after, measure (compression's size
  and speed), scoring (evaluation), waiting_for_resources, start_actors, iterations (RL), export;
- the critical path: the longest chain of `needs` weighed by those times, the shortest a cold
  run could take with unlimited CPUs; and the sum over all steps / the CPUs, the shortest on
  this machine if nothing else waited.

The cold run's code must be the code here (a code change misses every cache). Pretrain and fine-
tuning run alone in a cold run already; their cold times are used unless --steps names them.
Prints Markdown; writes benchmarks/results/<name>.json and .md (see report.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import table, write_result  # noqa: E402
from workflow_bench import ROOT, cli_env, client_for, loop_seconds, private_overrides, status  # noqa: E402
from workflow_bench import lifecycle as run_cli  # noqa: E402

SKIPPED = ("deploy",)  # always runs; its cost is in workflow_bench's cached re-run


def ancestors(steps: dict, name: str) -> set[str]:
    """The step and every step it needs, transitively."""
    seen, todo = set(), [name]
    while todo:
        step = todo.pop()
        if step not in seen:
            seen.add(step)
            todo.extend(steps[step].get("needs", []))
    return seen


def alone(spec: dict, name: str, workdir: Path, env: dict, overrides: list[str]) -> dict:
    """Re-run `name` alone (its inputs cached); its row of `lifecycle status` (seconds, run_id)."""
    # Its output and its checkpoints (a training run would resume from its last one and skip training).
    for moved in [*(workdir / "artifacts").glob(f"{name}-*"), *(workdir / "ray_storage").glob(f"{name}-*")]:
        shutil.rmtree(moved)
    keep = ancestors(spec["steps"], name)
    cut = {**spec, "steps": {k: v for k, v in spec["steps"].items() if k in keep}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=ROOT / "workflows", delete=False) as f:
        yaml.safe_dump(cut, f)
    try:
        mine = [o for o in overrides if o.split(".")[0] in keep]
        run_cli(["run", f.name, *mine, "--workdir", str(workdir), "--no-wait"], env)
    finally:
        os.unlink(f.name)
    row = next(s for s in status(workdir, env, limit=1)[0]["steps"] if s["step"] == name)
    assert row["state"] == "done", row
    return row


def critical_path(steps: dict, seconds: dict[str, float]) -> tuple[float, list[str]]:
    """Longest chain through `needs` weighed by seconds: (seconds, the chain)."""
    best: dict[str, tuple[float, list[str]]] = {}

    def finish(name: str) -> tuple[float, list[str]]:
        if name not in best:
            before = max((finish(n) for n in steps[name].get("needs", [])), default=(0.0, []))
            best[name] = (before[0] + seconds.get(name, 0.0), [*before[1], name])
        return best[name]

    return max(finish(n) for n in steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="workflows/tiny.yaml")
    parser.add_argument("--workdir", type=Path, required=True, help="the working folder of a cold run of the same spec and code")
    parser.add_argument("--steps", help="comma-separated steps to re-run (default: all but the data steps, pretrain, finetune, deploy)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--name", default="step_profile")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE, as given to the cold run")
    args = parser.parse_args()
    env = cli_env()
    spec_path = ROOT / args.spec
    spec = yaml.safe_load(spec_path.read_text())
    overrides = private_overrides(str(spec_path), args.overrides)
    cold = {s["step"]: s for s in status(args.workdir, env, limit=50)[-1]["steps"]}  # the oldest run: the cold one
    client = client_for(args.workdir)
    kept_cold = {"data", "instructions", "preferences", "tokenizer", "pretrain", "finetune", *SKIPPED}  # phases timed by the cold run
    names = args.steps.split(",") if args.steps else [n for n in spec["steps"] if spec["steps"][n]["uses"] not in kept_cold]

    rows, seconds = [], {}
    for name in spec["steps"]:
        if name in names:
            print(f"{name} alone ...", flush=True)
        phase = spec["steps"][name]["uses"]
        row = alone(spec, name, args.workdir, env, overrides) if name in names else cold.get(name, {})
        took, run_id = row.get("seconds", 0.0), row.get("run_id")
        run = client.get_run(run_id) if run_id else None
        in_loop = loop_seconds(client, run, 2) if run else 0.0
        parts = {k.removeprefix("seconds_"): v for k, v in (run.data.metrics if run else {}).items()
                 if k.startswith("seconds_") and k != "seconds_step"}
        seconds[name] = took
        rows.append([name, phase, f"{cold.get(name, {}).get('seconds', 0.0):.1f}", f"{took:.1f}", f"{in_loop:.1f}",
                     f"{took - in_loop:.1f}", ", ".join(f"{k} {v:.1f}" for k, v in sorted(parts.items())), "alone" if name in names else "cold run"])
    path_s, chain = critical_path(spec["steps"], seconds)
    total = sum(seconds.values())
    head = f"{args.spec}: every step's cost on an idle machine, its inputs cached.\n\n"
    grid = table(["step", "phase", "cold run s", "alone s", "in training loop s", "other s", "parts s", "timed"], rows, "llrrrrll")
    lines = [
        f"- Critical path (unlimited CPUs): {path_s:.0f} s: {' -> '.join(chain)}.",
        f"- Sum of steps: {total:.0f} s; over {args.cpus} CPUs at best {total / args.cpus:.0f} s, if no step waited on another.",
    ]
    write_result(args.name, {"spec": args.spec, "seconds": seconds, "critical_path": chain, "critical_path_s": path_s, "sum_s": total},
                 head + grid, "\n".join(lines), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
