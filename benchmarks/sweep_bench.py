"""Sweep benchmark: the LoRA-rank sweep with ASHA early stopping against FIFO (every trial to the
end), through the real command line, side by side in one run.

    .venv/bin/python benchmarks/sweep_bench.py [--spec workflows/lora-sweep.yaml] [KEY=VALUE ...]

`lifecycle run workflows/lora-sweep.yaml SMALL... sweep.sweep.scheduler=S --workdir W --no-wait`
for S = asha, then fifo, in one working folder: the second run reuses the first's data, tokenizer
and pretrained model (cache hits) and runs only its sweep step. SMALL (below) shrinks the spec to
fit a few minutes on 2 cores: a 60-step pretraining, three ranks (16, 4, 2, largest first as in the
spec), 60 fine-tuning steps per trial with an evaluation every 20 and ASHA's rungs at steps 20 and 40
(grace period 1). KEY=VALUE arguments come after SMALL and win over it.

For each scheduler, from the sweep step's MLflow run (its sweep/results.json) and `lifecycle status
--json`: trials, trial-steps (the steps all trials ran together), the sweep step's wall time, the
trials' own time (Tune's time_total_s, summed), the best trial's rank and validation loss; then the
ratios ASHA / FIFO. Trials run one at a time (each is a 2-worker Ray Train run), so a trial's fixed
cost (its Ray Train start, its export) is paid by every trial, stopped early or not.
Prints Markdown tables; writes benchmarks/results/sweep_bench.json and .md (see report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import clean_up, table, write_result  # noqa: E402
from workflow_bench import cli_env, client_for, lifecycle, status  # noqa: E402

# STEP is the spec's sweep step (a finetune step with a `sweep:` block).
SMALL = [
    "pretrain.max_steps=60", "pretrain.eval_tokens=2000",
    "STEP.max_steps=60", "STEP.eval_every=20", "STEP.log_every=20", "STEP.checkpoint_every=60",
    "STEP.test_examples=30", "STEP.eval_tokens=1000", "STEP.sweep.ranks=[16,4,2]", "STEP.sweep.grace_period=1",
]


def sweep_step(spec: str) -> str:
    from workflows.spec import load_spec

    resolved = load_spec(spec)
    names = [n for n, s in resolved.spec.steps.items() if s.uses == "finetune" and getattr(resolved.configs[n], "sweep", None)]
    if not names:
        raise SystemExit(f"{spec}: no finetune step with a sweep block")
    return names[0]


def sweep_results(workdir: Path, run_id: str) -> dict:
    """The sweep step's sweep/results.json: {"summary": ..., "trials": [...]}."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    with tempfile.TemporaryDirectory(prefix="sweep-results-") as directory:
        return json.loads(Path(client_for(workdir).download_artifacts(run_id, "sweep/results.json", directory)).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="workflows/lora-sweep.yaml")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE after the small settings (they win)")
    parser.add_argument("--schedulers", default="asha,fifo", help="in this order, in one working folder")
    parser.add_argument("--workdir", type=Path, help="a new, empty working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (always kept when --workdir is given)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    step = sweep_step(args.spec)
    small = [o.replace("STEP.", f"{step}.") for o in SMALL]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = cli_env()

    runs = {}
    for scheduler in args.schedulers.split(","):
        overrides = [*small, *args.overrides, f"{step}.sweep.scheduler={scheduler}"]
        print(f"{scheduler}: lifecycle run {args.spec} ... in {workdir}", file=sys.stderr)
        wall, _ = lifecycle(["run", args.spec, *overrides, "--workdir", str(workdir), "--no-wait"], env, workdir / f"{scheduler}.log")
        latest = status(workdir, env, 1)[0]
        row = next(s for s in latest["steps"] if s["step"] == step)
        if row["state"] != "done":
            raise SystemExit(f"{scheduler}: the sweep step is {row['state']}, not done (a cached sweep measures nothing)")
        results = sweep_results(workdir, row["run_id"])
        summary, trials = results["summary"], results["trials"]
        runs[scheduler] = {
            "command_wall_s": wall, "sweep_step_s": row["seconds"], "run_id": row["run_id"], "trials": trials, "summary": summary,
            "trial_steps": summary["trial_steps"], "trial_steps_without_early_stopping": summary["trial_steps_without_early_stopping"],
            "trial_wall_s": sum(t["wall_s"] for t in trials), "stopped_early": sum(bool(t["stopped_early"]) for t in trials),
            "best_r": summary["r"], "best_val_loss": summary["val_loss"],
        }
        r = runs[scheduler]
        print(f"{scheduler}: {r['trial_steps']} trial-steps, sweep step {r['sweep_step_s']:.0f}s, best r={r['best_r']} "
              f"val loss {r['best_val_loss']:.4f}", file=sys.stderr)

    names = list(runs)
    header = ["measure", *names] + (["ratio " + " / ".join(names)] if len(names) == 2 else [])

    def line(label: str, key: str, fmt: str, ratio: bool = True) -> list[str]:
        cells = [label, *(format(runs[n][key], fmt) for n in names)]
        if len(names) == 2:
            a, b = runs[names[0]][key], runs[names[1]][key]
            cells.append(f"x{a / b:.2f}" if ratio and b else (f"{a - b:+.4f}" if key == "best_val_loss" else ""))
        return cells

    rows = [
        ["trials (stopped early)", *(f"{len(runs[n]['trials'])} ({runs[n]['stopped_early']})" for n in names)] + ([""] if len(names) == 2 else []),
        line("trial-steps", "trial_steps", "d"),
        line("sweep step wall (s)", "sweep_step_s", ".1f"),
        line("trials' own time, summed (s)", "trial_wall_s", ".1f"),
        line("best rank", "best_r", "d", ratio=False),
        line("best validation loss", "best_val_loss", ".4f", ratio=False),
    ]
    main_table = table(header, rows, "l" + "r" * (len(header) - 1))
    per_trial = table(
        ["scheduler", "rank", "steps", "val loss", "trial s", "stopped early"],
        [[n, t["r"], t["steps"], f"{t['val_loss']:.4f}", f"{t['wall_s']:.1f}", "yes" if t["stopped_early"] else ""]
         for n in names for t in runs[n]["trials"]],
        "lrrrrl",
    )
    caption = (f"{args.spec} with {' '.join(small + args.overrides)}; schedulers in the order {', '.join(names)}, one working "
               f"folder (the second run's upstream steps are cache hits; the sweep step's time is compared). "
               f"Best validation loss difference: {names[0]} less {names[-1]}.")
    notes = f"Trials:\n\n{per_trial}"
    write_result("sweep_bench", {"spec": args.spec, "overrides": small + args.overrides, "workdir": str(workdir), "runs": runs},
                 caption + "\n\n" + main_table, notes, args.results)
    clean_up(env["RAY_TMPDIR"], workdir, keep=bool(args.keep or args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
