"""What fine-tuning is judged by: exact match on held-out tasks, and perplexity on pretraining text (forgetting)."""

from __future__ import annotations

import torch

from components.core.perplexity import perplexity
from components.core.sft import greedy_answers
from components.data.instructions import Example, exact_match
from components.data.tokenizer import token_stream


def exact_match_by_family(model, tokenizer, examples: list[Example], max_new_tokens: int) -> dict[str, float]:
    """Share of exact answers per family, plus "all" over every example (fractions in [0, 1])."""
    answers = greedy_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens)
    hits: dict[str, list[bool]] = {}
    for example, answer in zip(examples, answers):
        hits.setdefault(example.family, []).append(exact_match(answer, example.response))
    scores = {family: sum(h) / len(h) for family, h in sorted(hits.items())}
    scores["all"] = sum(sum(h) for h in hits.values()) / max(len(examples), 1)
    return scores


def corpus_perplexity(model, tokenizer, docs: list[str], context: int, max_tokens: int) -> float:
    """Perplexity of the model on pretraining text (documents joined by eos), sliding window of `context`."""
    return perplexity(model, torch.tensor(token_stream(docs, tokenizer, max_tokens)), context, max_tokens=max_tokens)
