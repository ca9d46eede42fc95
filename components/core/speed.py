"""Measured CPU generation speed of models side by side: fixed prompts, a warm-up, the median of repeats."""

from __future__ import annotations

import statistics
import time

import torch


@torch.no_grad()
def generation_speed(models: list, tokenizer, prompts: list[str], new_tokens: int = 32, repeats: int = 5) -> list[dict[str, float]]:
    """Per model, {"latency_ms": median time to generate `new_tokens` for one prompt alone (batch 1),
    "tokens_per_s": median throughput generating for all prompts as one batch}.

    The models take turns within every repeat, so a machine that slows down or speeds up during
    the measurement affects them alike. Every run generates exactly `new_tokens` tokens (eos
    ignored), so a model that stops early is not rewarded; one untimed warm-up run comes first.
    """
    def generate(model, batch: list[str]) -> float:
        device = next(model.parameters()).device
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in batch]
        width = max(map(len, encoded))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        mask = (torch.arange(width) >= torch.tensor([width - len(e) for e in encoded])[:, None]).long().to(device)
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return time.perf_counter() - start

    singles = prompts[: min(4, len(prompts))]
    latency: list[list[float]] = [[] for _ in models]
    batched: list[list[float]] = [[] for _ in models]
    for model in models:
        model.eval()
        generate(model, prompts)  # warm-up
    for _ in range(repeats):
        for i, model in enumerate(models):
            latency[i].append(statistics.median(generate(model, [p]) for p in singles))
            batched[i].append(generate(model, prompts))
    return [{"latency_ms": 1000 * statistics.median(lat), "tokens_per_s": len(prompts) * new_tokens / statistics.median(bat)}
            for lat, bat in zip(latency, batched)]
