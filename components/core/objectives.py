"""The pretraining objectives of the three families, as functions from token blocks to model inputs.

- causal (GPT-2, Llama): predict every next token; the labels are the inputs (the model shifts them).
- masked (BERT): 15% of the non-special tokens are chosen; of those 80% become the mask token, 10% a
  random token, 10% stay; the loss is on the chosen ones only. transformers' own
  `DataCollatorForLanguageModeling` does exactly this, with a seedable generator, so it is used as is.
- seq2seq (T5): span corruption. 15% of the tokens, in spans of mean length 3, are cut out of the
  input, each span replaced by one sentinel; the target lists the sentinels, each followed by the
  tokens it replaced, then eos (Raffel et al. 2020, section 3.1.4). transformers ships this only
  as an example script (Flax), so it is written here.

All functions take blocks as LongTensor [batch, block] and return the keyword arguments of the
model's forward (input_ids, labels[, attention_mask]); positions with label -100 carry no loss.
"""

from __future__ import annotations

import torch
from transformers import DataCollatorForLanguageModeling

from components.core.models import family_of


def causal_lm(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-token prediction: inputs and labels are the block itself."""
    return {"input_ids": blocks, "labels": blocks}


def mask_tokens(blocks: torch.Tensor, tokenizer, generator: torch.Generator, probability: float = 0.15) -> dict[str, torch.Tensor]:
    """BERT's masking of a batch of blocks [B, L]: labels are -100 except at the chosen positions.

    Special tokens (eos between packed documents, padding) are never chosen.
    """
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
    collator.generator = generator  # the collator's `seed` argument seeds a private one; this shares ours
    special = torch.isin(blocks, torch.tensor(tokenizer.all_special_ids))
    inputs, labels = collator.torch_mask_tokens(blocks.clone(), special_tokens_mask=special)
    return {"input_ids": inputs, "labels": labels}


def noise_mask(length: int, generator: torch.Generator, density: float = 0.15, mean_span: float = 3.0) -> torch.Tensor:
    """Which of `length` tokens to corrupt: BoolTensor [length] with round(length * density) True
    tokens (at least 1) in round(noise / mean_span) spans (at least 1), never at position 0.

    As T5's `random_spans_noise_mask`: the noise and the kept tokens are each cut into that many
    non-empty runs at random, and the runs alternate, kept first.
    """
    n_noise = min(max(1, round(length * density)), length - 1)
    n_spans = max(1, min(round(n_noise / mean_span), n_noise, length - n_noise))

    def segments(total: int) -> torch.Tensor:
        # `n_spans` positive parts summing to `total`: cut points drawn without replacement.
        cuts = torch.randperm(total - 1, generator=generator)[: n_spans - 1].sort().values + 1
        edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([total])])
        return edges.diff()

    noise, kept = segments(n_noise), segments(length - n_noise)
    runs = torch.stack([kept, noise], dim=1).reshape(-1)  # kept, noise, kept, noise, ...
    is_noise = torch.tensor([False, True]).repeat(n_spans)
    return is_noise.repeat_interleave(runs)


def span_corruption(
    blocks: torch.Tensor, sentinels: list[int], eos_id: int, generator: torch.Generator,
    density: float = 0.15, mean_span: float = 3.0,
) -> dict[str, torch.Tensor]:
    """T5 span corruption of a batch of blocks [B, L].

    input_ids [B, L - noise + spans + 1]: the kept tokens with each noise span replaced by the next
    sentinel, then eos. labels [B, noise + spans + 1]: each sentinel followed by its span, then eos.
    Every row has the same number of noise tokens and spans, so rows need no padding.
    """
    inputs, targets = [], []
    for row in blocks:
        mask = noise_mask(len(row), generator, density, mean_span)
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])  # first token of each span
        if int(starts.sum()) > len(sentinels):
            raise ValueError(f"{int(starts.sum())} spans need as many sentinel tokens; the tokenizer has {len(sentinels)}")
        span_index = starts.cumsum(0) - 1
        sentinel = torch.tensor(sentinels)[span_index.clamp(min=0)]
        # Input: kept tokens, and a sentinel where a span starts. Target: the sentinel, then the span.
        inputs.append(torch.cat([torch.where(starts, sentinel, row)[~mask | starts], torch.tensor([eos_id])]))
        target = torch.stack([sentinel, row], dim=1)[mask]  # [noise, 2]: (sentinel, token) per noise position
        keep = torch.stack([starts, torch.ones_like(starts)], dim=1)[mask]  # a sentinel only before its span
        targets.append(torch.cat([target[keep], torch.tensor([eos_id])]))
    return {"input_ids": torch.stack(inputs), "labels": torch.stack(targets)}


def objective(family: str, tokenizer, sentinels: list[int] | None = None):
    """The `blocks, generator -> forward kwargs` function of a family's pretraining objective."""
    if family == "causal":
        return lambda blocks, generator: causal_lm(blocks)
    if family == "masked":
        if tokenizer.mask_token_id is None:
            raise ValueError("masked-LM pretraining needs a tokenizer with a mask token (tokenizer step: mask_token: <mask>)")
        return lambda blocks, generator: mask_tokens(blocks, tokenizer, generator)
    if family == "seq2seq":
        if not sentinels:
            raise ValueError("span corruption needs sentinel tokens (tokenizer step: sentinel_tokens: 32)")
        return lambda blocks, generator: span_corruption(blocks, sentinels, tokenizer.eos_token_id, generator)
    raise ValueError(f"unknown family {family!r}: expected causal, masked or seq2seq")


@torch.no_grad()
def token_accuracy(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(correct, scored): argmax predictions equal to the labels at positions with a label.

    A masked LM predicts at its own positions; a causal LM's logits at t predict the label at t+1;
    an encoder-decoder's decoder is fed the shifted labels by the model itself.
    """
    logits = model(**batch).logits
    labels = batch["labels"]
    if family_of(model) == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    scored = labels != -100
    return int(((logits.argmax(-1) == labels) & scored).sum()), int(scored.sum())
