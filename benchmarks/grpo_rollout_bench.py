"""GRPO rollout throughput: G completions per prompt sampled in one batched generate (what a rollout
actor does, components/grpo/roles.py:sample) against one completion at a time.

    .venv/bin/python benchmarks/grpo_rollout_bench.py [MODEL_DIR] [--prompts 16] [--group 8] [--threads 1]

MODEL_DIR: a fine-tuned causal LM (e.g. the tiny workflow's finetune artifact); without it the
tiny workflow's GPT-2 shape is built untrained, with a tokenizer trained on the bundled tasks.
Tokens counted are the generated ones (eos included, padding after it not). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.grpo.roles import sample


def model_and_tokenizer(model_dir: str | None):
    if model_dir:
        return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    examples = generate_tasks(50, seed=0)
    tok = train_bpe([e.prompt + e.response for e in examples] * 2, TokenizerConfig(vocab_size=2048))
    lm = build_causal_lm(ModelConfig(), len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0)
    with tempfile.TemporaryDirectory() as d:
        lm.save_pretrained(d)
        return AutoModelForCausalLM.from_pretrained(d).eval(), tok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", nargs="?")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = model_and_tokenizer(args.model_dir)
    prompts = [tok(e.prompt, add_special_tokens=False)["input_ids"] for e in generate_tasks(args.prompts, seed=11)][: args.prompts]
    sample(model, tok, prompts[:2], 2, args.max_new_tokens, 1.0, 0)  # warm-up

    rows = {}
    start = time.perf_counter()
    out = sample(model, tok, prompts, args.group, args.max_new_tokens, 1.0, 0)
    rows["batched: one generate of prompts x G rows"] = (sum(map(len, out)), time.perf_counter() - start)
    start, tokens = time.perf_counter(), 0
    for i, p in enumerate(prompts):
        for j in range(args.group):
            tokens += len(sample(model, tok, [p], 1, args.max_new_tokens, 1.0, 1000 * i + j)[0])
    rows["one completion at a time"] = (tokens, time.perf_counter() - start)

    print(f"{args.prompts} prompts x G {args.group}, up to {args.max_new_tokens} new tokens, {args.threads} thread(s), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters\n")
    print("| rollout | tokens | seconds | tokens/s |\n|---|---:|---:|---:|")
    for name, (n, s) in rows.items():
        print(f"| {name} | {n} | {s:.2f} | {n / s:.0f} |")


if __name__ == "__main__":
    main()
