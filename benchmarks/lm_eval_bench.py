"""lm-evaluation-harness against the evaluate phase's own scorer on the bundled multiple-choice suites:
the same items, the same numbers, and the wall time of each, side by side in one process.

    .venv/bin/python benchmarks/lm_eval_bench.py [--threads 1] [--repeats 3]

For each model size an untrained GPT-2 is built from config (the tiny workflow's 4 x 128, and
8 x 512) with the project's BPE tokenizer and saved with save_pretrained. Each repeat then scores
the four bundled suites (sst2, mnli, boolq, mmlu: 160 items, 440 options) both ways, the order
alternating between repeats so a machine's drift hits both:

- lm-eval: `components.evaluate.harness.evaluate(model_dir, ["lifecycle"])`, what the evaluate
  step's lm_eval_tasks run (lm-eval's HFLM and simple_evaluate, the model loaded by load_trained);
- ours: what a replica does for the same items (load_trained, load_benchmark, option_logprobs).

Both times are end to end from the model folder (loading the model and the items included); the
first repeat also pays the imports. Agreement: per suite, items where both pick the same option,
and the largest difference of an option's log-likelihood. Writes benchmarks/results/lm_eval_bench.{json,md}.

    .venv/bin/python benchmarks/lm_eval_bench.py --endpoint [--repeats 3]

instead times lm-eval on the same suites through the endpoint: the tiny model served on a private
local Ray (Serve, as `lifecycle run` deploys it), scored by lm-eval's `local-completions` client over
HTTP (1 or 16 options per request, 1 to 8 requests at a time), against lm-eval in-process (HFLM) on the same
folder; the same choice per item is checked. Writes benchmarks/results/lm_eval_endpoint.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from report import table, write_result  # noqa: E402

from components.core.metrics import choose, option_logprobs  # noqa: E402
from components.core.models import ModelConfig, build_causal_lm, load_trained  # noqa: E402
from components.data.benchmarks import load_benchmark  # noqa: E402
from components.data.config import TokenizerConfig  # noqa: E402
from components.data.instructions import generate_tasks  # noqa: E402
from components.data.tokenizer import train_bpe  # noqa: E402
from components.evaluate import harness  # noqa: E402

SIZES = {"tiny 4x128": ModelConfig(), "27M 8x512": ModelConfig(n_layer=8, n_embd=512, n_head=8)}
BATCH = 16  # EvaluateConfig.batch_size's default: the replicas' batch and lm-eval's


def ours(model_dir: Path) -> dict[str, list[list[float]]]:
    """Option log-likelihoods per suite, as the evaluate phase's replicas compute them."""
    from transformers import AutoTokenizer

    model, tokenizer = load_trained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    out = {}
    for suite in harness.SUITES:
        items = load_benchmark(suite)
        out[suite] = option_logprobs(model, tokenizer, [i.context for i in items], [list(i.options) for i in items], BATCH)
    return out


def theirs(model_dir: Path) -> dict[str, list[list[float]]]:
    """Option log-likelihoods per suite, from lm-eval's per-item records."""
    samples = harness.evaluate(model_dir, [harness.TAG], batch_size=BATCH, log_samples=True)["samples"]
    return {s: [[ll for ll, _ in r["filtered_resps"]] for r in sorted(samples[f"lifecycle_{s}"], key=lambda r: r["doc_id"])]
            for s in harness.SUITES}


def timed(fn, model_dir: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    result = fn(model_dir)
    return result, time.perf_counter() - start


def served(base_url: str, model_dir: Path, concurrent: int, per_request: int) -> dict[str, list[list[float]]]:
    """Option log-likelihoods per suite from lm-eval's local-completions client against the endpoint
    (as an evaluate step with an endpoint input runs it)."""
    out = harness.evaluate_endpoint(base_url, "bench", model_dir, [harness.TAG], concurrent=concurrent, per_request=per_request,
                                    log_samples=True)
    return {s: [[ll for ll, _ in r["filtered_resps"]] for r in sorted(out["samples"][f"lifecycle_{s}"], key=lambda r: r["doc_id"])]
            for s in harness.SUITES}


def endpoint(model_dir: Path, repeats: int, port: int = 8124) -> int:
    """lm-eval in-process against lm-eval through the served model: wall seconds and agreement (see the docstring)."""
    import os
    import shutil

    from report import private_ray_env, start_private_ray

    from components.deploy.ingress import local_ingress_env

    own_tmp = private_ray_env("lmevalbench")  # token auth on, set before Ray is imported
    os.environ.update(local_ingress_env(dict(os.environ)))  # Serve's ingress as `lifecycle run` starts it
    import ray
    from ray import serve
    from serve_bench import deploy

    start_private_ray()
    try:
        url = deploy(model_dir, port, max_batch_size=16, max_ongoing_requests=32)
        ways = {"in-process": lambda: theirs(model_dir),
                "endpoint, 1 option per request, 1 at a time": lambda: served(url, model_dir, 1, 1),
                "endpoint, 1 option per request, 8 at a time": lambda: served(url, model_dir, 8, 1),
                "endpoint, 16 options per request, 1 at a time (the evaluate step's default)": lambda: served(url, model_dir, 1, 16),
                "endpoint, 16 options per request, 2 at a time": lambda: served(url, model_dir, 2, 16)}
        times, scores = {k: [] for k in ways}, {}
        for repeat in range(repeats):  # in turns, so that drift weighs on every way alike
            for name, fn in ways.items():
                start = time.perf_counter()
                scores[name] = fn()
                times[name].append(time.perf_counter() - start)
                print(f"repeat {repeat} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    finally:
        serve.shutdown()
        ray.shutdown()
        if own_tmp:
            shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    local = scores["in-process"]
    rows, data = [], {"seconds": times, "agreement": {}}
    for name, got in scores.items():
        same = sum(choose(a) == choose(b) for s in harness.SUITES for a, b in zip(got[s], local[s]))
        diff = max(abs(x - y) for s in harness.SUITES for a, b in zip(got[s], local[s]) for x, y in zip(a, b))
        data["agreement"][name] = {"same_choice": same, "max_abs_diff": diff}
        median = statistics.median(times[name][1:] or times[name])
        rows.append([name, f"{same}/{sum(len(v) for v in local.values())}", f"{diff:.1e}", f"{median:.2f} s",
                     f"x{median / statistics.median(times['in-process'][1:] or times['in-process']):.2f}"])
    caption = (f"lm-eval on the four bundled suites (the `lifecycle` tag: 160 items) on the tiny 4 x 128 GPT-2: in-process (HFLM, "
               f"batch {BATCH}) and through the endpoint (local-completions over HTTP to Serve on a private local Ray, 2 CPUs, "
               f"one replica batching up to 16 prompts); "
               f"{repeats} repeats in turns, median of the repeats after the first.")
    write_result("lm_eval_endpoint", data, caption + "\n\n" + table(
        ["way", "same choice as in-process", "max log-likelihood diff", "wall", "vs in-process"], rows, "lrrrr"), "")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the evaluate step gives a replica 1 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--endpoint", action="store_true", help="lm-eval in-process against through the served model (see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = generate_tasks(200, seed=0)
    tokenizer = train_bpe([e.prompt + e.response for e in examples], TokenizerConfig(vocab_size=2048))
    if args.endpoint:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "tiny"
            cfg = SIZES["tiny 4x128"]
            build_causal_lm(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                            seed=0).save_pretrained(model_dir, safe_serialization=True)
            tokenizer.save_pretrained(model_dir)
            return endpoint(model_dir, args.repeats)
    items = {s: load_benchmark(s) for s in harness.SUITES}
    # lm-eval scores options that share their context up to the last token in one row (its logits cache).
    options = sum(len(i.options) for suite in items.values() for i in suite)
    rows_lm_eval = sum(len({tuple(tokenizer(i.context + o, add_special_tokens=False)["input_ids"][:-1]) for o in i.options})
                       for suite in items.values() for i in suite)
    rows, data = [], {"sizes": {}, "options": options, "lm_eval_rows": rows_lm_eval, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        for size, cfg in SIZES.items():
            model_dir = Path(tmp) / size.split()[0]
            model = build_causal_lm(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, seed=0)
            model.save_pretrained(model_dir, safe_serialization=True)
            tokenizer.save_pretrained(model_dir)
            times = {"lm-eval": [], "ours": []}
            for repeat in range(args.repeats):
                order = [("lm-eval", theirs), ("ours", ours)][:: 1 if repeat % 2 == 0 else -1]
                for name, fn in order:
                    result, seconds = timed(fn, model_dir)
                    times[name].append(seconds)
                    if name == "lm-eval":
                        lm = result
                    else:
                        own = result
                    print(f"{size} repeat {repeat} {name}: {seconds:.2f} s", file=sys.stderr)
            agree = {s: {"items": len(items[s]), "same_choice": sum(choose(a) == choose(b) for a, b in zip(lm[s], own[s])),
                         "max_abs_diff": max(abs(x - y) for a, b in zip(lm[s], own[s]) for x, y in zip(a, b)),
                         "accuracy": sum(choose(a) == i.label for a, i in zip(own[s], items[s])) / len(items[s])}
                     for s in harness.SUITES}
            steady = {k: statistics.median(v[1:] or v) for k, v in times.items()}
            data["sizes"][size] = {"seconds": times, "agreement": agree}
            rows.append([size, " ".join(f"{s} {a['same_choice']}/{a['items']}" for s, a in agree.items()),
                         f"{max(a['max_abs_diff'] for a in agree.values()):.1e}", f"{times['lm-eval'][0]:.2f} s",
                         f"{steady['lm-eval']:.2f} s", f"{steady['ours']:.2f} s", f"x{steady['lm-eval'] / steady['ours']:.2f}"])
    caption = (f"The four bundled suites (160 items, {options} options), batch {BATCH}, {args.threads} thread(s), "
               f"{args.repeats} repeats alternating; times end to end from the model folder, median of the repeats after the first.")
    main_table = table(["model", "same choice (lm-eval vs ours)", "max log-likelihood diff", "lm-eval first call",
                        "lm-eval", "ours", "lm-eval / ours"], rows, "llrrrrr")
    notes = (f"lm-eval runs {rows_lm_eval} model rows for the {options} options: its logits cache scores the options of an "
             "item that differ only in their last token in one row; ours runs one row per option. Its first call "
             "also pays lm_eval's import and task indexing.")
    write_result("lm_eval_bench", data, caption + "\n\n" + main_table, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
