"""Learning against forgetting on the tiny default: for each fine-tuning setting, held-out exact match and
the pretraining-text perplexity ratio (after / before fine-tuning), same steps and data, through the CLI.

    .venv/bin/python benchmarks/forgetting_bench.py --workdir /tmp/fb [--settings full,full+replay0.25,...] [--name NAME]

Each setting is tiny.yaml's corpus, tokenizer, pretrain, instructions and finetune steps with the
setting's overrides on full fine-tuning without replay (800 steps at lr 2e-3, whatever tiny.yaml ships),
all in one working folder: the steps before fine-tuning run once and are cached for the rest. The
fine-tune step logs exact match before and after and `forgetting_ppl_ratio`. Each setting's exact match
is compared with the first setting's over the same held-out prompts (their greedy answers, kept by the
steps' AnswerMemo), with the paired standard error.
Writes benchmarks/results/NAME.json and .md, and the frontier as NAME.png (NAME: forgetting_bench).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import RESULTS, clean_up, table, write_result  # noqa: E402
from workflow_bench import cli_env  # noqa: E402

from components import tracking  # noqa: E402
from components.core.metrics import exact_match  # noqa: E402
from components.data.instructions import read_examples_jsonl  # noqa: E402
from components.grpo.step import paired  # noqa: E402

# What every setting starts from: the tiny model fine-tuned as tiny.yaml did before replay became its default.
FULL = ["finetune.method=full", "finetune.replay_fraction=0", "finetune.max_steps=800", "finetune.lr=2e-3"]
PEFT = ["finetune.lr=1e-2"]  # 2e-3 is full fine-tuning's; PEFT takes the phase's default
SETTINGS = {
    "full": [],
    # Replay rows per batch are round(fraction x 16): 0.05 is one 64-token block of pretraining text beside 15
    # instruction examples, the least replay there is at this batch size; yet half the loss's tokens (the answers
    # average 4.4 tokens, end token included; the block 63 labels).
    "full+replay0.05": ["finetune.replay_fraction=0.05"],
    "full+replay0.1": ["finetune.replay_fraction=0.1"],
    "full+replay0.25": ["finetune.replay_fraction=0.25"],
    "full+replay0.5": ["finetune.replay_fraction=0.5"],
    # As many instruction examples as "full" sees, half of each batch being pretraining text.
    "full+replay0.5 x2 steps": ["finetune.replay_fraction=0.5", "finetune.max_steps=1600"],
    "full+replay0.05 x2 steps": ["finetune.replay_fraction=0.05", "finetune.max_steps=1600"],
    "full+replay0.05 x1.5 steps": ["finetune.replay_fraction=0.05", "finetune.max_steps=1200"],
    # Adam's step does not grow with the loss's scale, so a larger lr is the other way to learn faster.
    "full+replay0.05 lr3e-3": ["finetune.replay_fraction=0.05", "finetune.lr=3e-3"],
    "lora r8": ["finetune.method=lora", "finetune.lora.r=8", *PEFT],
    "lora r64": ["finetune.method=lora", "finetune.lora.r=64", "finetune.lora.alpha=128", *PEFT],
    "ia3": ["finetune.method=ia3", *PEFT],
    "prompt tuning": ["finetune.method=prompt_tuning", *PEFT],
    "selective": ["finetune.method=selective", *PEFT],
}
STEPS = ("corpus", "tokenizer", "pretrain", "instructions", "finetune")


def subset_spec(folder: Path) -> Path:
    """tiny.yaml cut down to the steps up to fine-tuning."""
    spec = yaml.safe_load((ROOT / "workflows" / "tiny.yaml").read_text())
    spec["steps"] = {k: v for k, v in spec["steps"].items() if k in STEPS}
    path = folder / "tiny-finetune.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def finetune_run(workdir: Path, uri: str, env: dict):
    """The fine-tune step's MLflow run in the workflow run just finished (its own, or the one it was a cache hit of)."""
    status = subprocess.run([str(ROOT / ".venv" / "bin" / "lifecycle"), "status", "--workdir", str(workdir), "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    latest = json.loads(status.stdout)[0]  # newest first
    run_id = next(s["run_id"] for s in latest["steps"] if s["step"] == "finetune")
    return tracking.client(uri).get_run(run_id)


def hits(workdir: Path, run, tokenizer) -> dict[str, bool]:
    """Exact or not, by held-out prompt, from the answers the step kept (ray_storage/answers/<its key>/)."""
    artifact = tracking.step_artifact(tracking.tracking_uri_for(workdir), run.info.run_id)
    reference = {e.prompt: e.response for e in read_examples_jsonl(next(workdir.glob("artifacts/instructions-*/test.jsonl")))}
    out = {}
    for path in (workdir / "ray_storage" / "answers" / artifact.cache_key).glob("*.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            out[row["prompt"]] = exact_match(tokenizer.decode(row["ids"], skip_special_tokens=True), reference[row["prompt"]])
    return out


def gap(a: dict[str, bool], b: dict[str, bool]) -> tuple[float, float, int]:
    """b's exact match less a's over the prompts both answered, its paired standard error, and how many prompts."""
    common = sorted(set(a) & set(b))
    scores = paired([a[p] for p in common], [b[p] for p in common])  # GRPO's before/after comparison, the same statistic
    return scores["exact_match_gain"], scores["exact_match_gain_se"], len(common)


def plot(rows: list[dict]):
    """Exact match against the forgetting ratio, a point per setting (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for r in rows:
        ax.errorbar(r["forgetting_ppl_ratio"], 100 * r["exact_match"], yerr=100 * r["exact_match_se"], fmt="o", capsize=3)
        ax.annotate(r["setting"], (r["forgetting_ppl_ratio"], 100 * r["exact_match"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.axvline(2, color="grey", ls=":", lw=1)
    ax.axhline(60, color="grey", ls=":", lw=1)
    ax.set_xlabel("pretraining-text perplexity after / before fine-tuning (log)")
    ax.set_ylabel("held-out exact match (%)")
    ax.set_title("tiny: learning the tasks against forgetting the text")
    fig.tight_layout()
    return fig


def report(rows: list[dict], first: str, uri: str, name: str) -> None:
    """The table (benchmarks/results/NAME.md and .json) and the frontier plot (NAME.png), also logged to MLflow."""
    fig = plot(rows)
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    tracking.log_figure(uri, rows[-1]["run_id"], fig, f"{name}.png")  # beside the latest setting's step
    md = table(["setting", "held-out exact match", f"vs {first} (paired SE)", "corpus ppl before -> after", "forgetting ratio"],
               [[r["setting"], f"{r['exact_match']:.1%} ± {r['exact_match_se']:.1%}", f"{r['gap_vs_first']:+.1%} ± {r['gap_se']:.1%}",
                 f"{r['corpus_ppl_before']:.1f} -> {r['corpus_ppl_after']:.0f}", f"x{r['forgetting_ppl_ratio']:.1f}"] for r in rows],
               "llrrr")
    write_result(name, {"rows": rows}, md,
                 "Same data, steps (800 unless the setting says otherwise) and held-out prompts for each setting; "
                 f"goal (issue 31): exact match >= 60% with the ratio <= 2. Frontier: benchmarks/results/{name}.png.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="working folder (kept: its MLflow has every run)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--name", default="forgetting_bench", help="the results' file names under benchmarks/results/")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for every setting (e.g. finetune.max_steps=400)")
    args = parser.parse_args()
    names = [s.strip() for s in args.settings.split(",")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec, env = subset_spec(args.workdir), cli_env()
    uri = tracking.tracking_uri_for(args.workdir)
    from transformers import AutoTokenizer

    rows, first_hits, tokenizer = [], None, None
    for name in names:
        started = time.time()
        cmd = [str(ROOT / ".venv" / "bin" / "lifecycle"), "run", str(spec), *FULL, *SETTINGS[name], *args.overrides,
               "--workdir", str(args.workdir), "--no-wait"]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[3:])}", flush=True)
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        run = finetune_run(args.workdir, uri, env)
        m = run.data.metrics
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(next(args.workdir.glob("artifacts/tokenizer-*")))
        mine = hits(args.workdir, run, tokenizer)
        first_hits = first_hits or mine
        gain, gain_se, n = gap(first_hits, mine)
        p = m["exact_match_after"]
        rows.append({"setting": name, "overrides": SETTINGS[name], "exact_match": p,
                     "exact_match_se": math.sqrt(p * (1 - p) / max(len(mine), 1)), "gap_vs_first": gain, "gap_se": gain_se,
                     "paired_prompts": n, "corpus_ppl_before": m["corpus_ppl_before"], "corpus_ppl_after": m["corpus_ppl_after"],
                     "forgetting_ppl_ratio": m["forgetting_ppl_ratio"], "trainable_share": m.get("trainable_share"),
                     "seconds": time.time() - started, "run_id": run.info.run_id})
        print(f"  exact match {p:.1%} ({gain:+.1%} ± {gain_se:.1%} vs {names[0]}), forgetting x{m['forgetting_ppl_ratio']:.1f}",
              flush=True)
        report(rows, names[0], uri, args.name)  # after every setting: a stopped run keeps what it measured

    clean_up(env["RAY_TMPDIR"], args.workdir, keep=True)


if __name__ == "__main__":
    main()
