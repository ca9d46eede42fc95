"""Compression benchmark: CPU generation speed and weight size of each quantization method against
the float model, at two model sizes, side by side in one run.

    .venv/bin/python benchmarks/compress_bench.py [--threads 1] [--repeats 5]

For each size, untrained GPT-2s are built from config (the tiny workflow's 4 x 128, ~1M
parameters, and 8 x 512, ~27M), quantized with every method this CPU runs, and timed with
`components/core/speed.py`: batch-1 latency and batched throughput (8 prompts, 32 new tokens),
the models taking turns within each repeat. Quality is not measured here (the weights are
untrained): the tiny workflow's quantize, distill and prune steps log it on the trained model.
Prints a Markdown table (paste it into docs/benchmarks.md) and writes compress_bench.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from components.core.models import ModelConfig, build_causal_lm  # noqa: E402
from components.core.quantize import linear_weight_bytes, quantize  # noqa: E402
from components.core.speed import generation_speed  # noqa: E402
from components.data.config import TokenizerConfig  # noqa: E402
from components.data.instructions import generate_tasks  # noqa: E402
from components.data.tokenizer import train_bpe  # noqa: E402

SIZES = {"tiny 4x128": ModelConfig(), "27M 8x512": ModelConfig(n_layer=8, n_embd=512, n_head=8)}
METHODS = ["fp32", "bf16", "int8_dynamic", "int8_weight_only"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the workflow gives a step 1 CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="compress_bench.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = generate_tasks(200, seed=0)
    tokenizer = train_bpe([e.prompt + e.response for e in examples], TokenizerConfig(vocab_size=2048))
    prompts = [e.prompt for e in examples[:8]]
    rows = []
    for size, cfg in SIZES.items():
        base = build_causal_lm(cfg, 2048, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id).eval()
        models = [base] + [quantize(copy.deepcopy(base), m) for m in METHODS[1:]]
        speeds = generation_speed(models, tokenizer, prompts, new_tokens=32, repeats=args.repeats)
        for method, model, speed in zip(METHODS, models, speeds):
            rows.append({"size": size, "method": method, "linear_weight_bytes": linear_weight_bytes(model), **speed,
                         "speedup": speeds[0]["latency_ms"] / speed["latency_ms"],
                         "throughput_ratio": speed["tokens_per_s"] / speeds[0]["tokens_per_s"],
                         "linear_ratio": linear_weight_bytes(model) / linear_weight_bytes(base)})
            print(f"{size} {method}: {speed['latency_ms']:.0f} ms, {speed['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"torch {torch.__version__}, {args.threads} thread(s), 32 new tokens, batch-1 latency over 4 prompts, throughput over 8\n")
    print("| model | method | linear weights | latency (batch 1) | vs fp32 | throughput (batch 8) | vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['method']} | {r['linear_weight_bytes'] / 1e6:.2f} MB (x{r['linear_ratio']:.2f}) | "
              f"{r['latency_ms']:.0f} ms | x{r['speedup']:.2f} | {r['tokens_per_s']:.0f} tok/s | x{r['throughput_ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
