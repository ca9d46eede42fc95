"""How the finetune, rlhf and compress steps score a generative model on held-out instruction tasks: exact match
per task family, perplexity on pretraining text (forgetting), and for an encoder-decoder BLEU and ROUGE-L of the
same answers. (The evaluate phase has its own benchmarks: components/evaluate/.)"""

from __future__ import annotations

import torch

from components.core import metrics
from components.core.perplexity import perplexity
from components.core.sft import greedy_answers
from components.data.instructions import Example
from components.data.tokenizer import token_stream


def exact_match_by_family(model, tokenizer, examples: list[Example], max_new_tokens: int) -> dict[str, float]:
    """Share of exact answers per family, plus "all" over every example (fractions in [0, 1])."""
    answers = greedy_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens)
    hits: dict[str, list[bool]] = {}
    for example, answer in zip(examples, answers):
        hits.setdefault(example.family, []).append(metrics.exact_match(answer, example.response))
    scores = {family: sum(h) / len(h) for family, h in sorted(hits.items())}
    scores["all"] = sum(sum(h) for h in hits.values()) / max(len(examples), 1)
    return scores


def text_scores_by_family(model, tokenizer, examples: list[Example], max_new_tokens: int) -> dict[str, dict[str, float]]:
    """{"exact_match" (fraction), "bleu" (corpus BLEU, 0..100), "sentence_bleu" (mean sentence BLEU, 0..100),
    "rougeL" (mean ROUGE-L F1, 0..1)}, each {family: score, ..., "all": score over every example}, from one
    greedy answer per example.

    Corpus BLEU of answers under four words is 0 however right they are (no 4-gram to match: a 2-3 word
    translation); sentence BLEU leaves out the orders longer than each answer, so it scores those too.
    """
    answers = greedy_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens)
    groups: dict[str, list[tuple[str, str]]] = {}
    for example, answer in zip(examples, answers):
        groups.setdefault(example.family, []).append((answer, example.response))
    groups = {**dict(sorted(groups.items())), "all": list(zip(answers, [e.response for e in examples]))}
    scores: dict[str, dict[str, float]] = {"exact_match": {}, "bleu": {}, "sentence_bleu": {}, "rougeL": {}}
    for family, pairs in groups.items():
        predicted, references = map(list, zip(*pairs))
        scores["exact_match"][family] = metrics.exact_match_rate(predicted, references)
        scores["bleu"][family] = metrics.bleu(predicted, references)
        scores["sentence_bleu"][family] = sum(map(metrics.sentence_bleu, predicted, references)) / len(pairs)
        scores["rougeL"][family] = metrics.rouge(predicted, references)["rougeL_f1"]
    return scores


def corpus_perplexity(model, tokenizer, docs: list[str], context: int, max_tokens: int) -> float:
    """Perplexity of the model on pretraining text (documents joined by eos), sliding window of `context`."""
    return perplexity(model, torch.tensor(token_stream(docs, tokenizer, max_tokens)), context, max_tokens=max_tokens)
