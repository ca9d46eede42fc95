"""Supervised fine-tuning data: prompt/response pairs as token ids with the loss on the response only.

Labels use -100 (PyTorch's cross-entropy `ignore_index`, which Hugging Face causal LMs
use too) on prompt and padding positions, so the model is trained to produce the answer,
not to reproduce the instruction.
"""

from __future__ import annotations

from pathlib import Path

import torch

IGNORE_INDEX = -100


def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one example: prompt tokens, response tokens, eos.

    The prompt and the response are tokenized separately, as at generation time, where the
    model continues from the prompt's last token. Labels are -100 over the prompt.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p + r, [IGNORE_INDEX] * len(p) + r


def encode_seq2seq_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for an encoder-decoder: the encoder reads the prompt + eos (as it read
    span-corrupted text + eos in pretraining), the decoder is trained on response + eos.

    Nothing needs masking: the decoder never sees the prompt, so every label is a response token.
    The two lists differ in length.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p, r


def pad_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of (input_ids, labels) to the longest: input_ids, attention_mask [B, T] and
    labels [B, T'] int64. T' == T for causal pairs; an encoder-decoder's labels have their own length."""
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), max(len(lab) for _, lab in pairs)), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy completions of `prompts`, decoded, cut at the first eos."""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in greedy_answer_ids(model, tokenizer, prompts, max_new_tokens, batch_size)]


def greedy_answer_ids(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[list[int]]:
    """Token ids of the greedy completions of `prompts`, cut before the first eos (at most max_new_tokens each).

    Greedy decoding is a prefix property: the answer to a budget of n tokens is the first n tokens
    of the answer to any larger budget, and an answer shorter than its budget ended at eos.
    Prompts are left-padded into batches so every row's next token sits in the last column.
    An encoder-decoder reads the prompt + eos (as in `encode_seq2seq_pair`) and its output holds
    only the answer, after the decoder's start token.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    answers = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * seq2seq
                   for p in prompts[start : start + batch_size]]
        width = max(map(len, encoded))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, 1 if seq2seq else width :].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            answers.append(row)
    model.train(was_training)
    return answers


def encode_split(path: Path, examples, tokenizer, context: int, seq2seq: bool = False) -> list[tuple[list[int], list[int]]]:
    """Token pairs (input_ids, labels) of a split; an example longer than the context is an error naming its line.

    seq2seq: the prompt is the encoder's input and the response the decoder's labels, each held to the context.
    """
    pairs = []
    for line, e in enumerate(examples, start=1):
        if seq2seq:
            ids, labels = encode_seq2seq_pair(tokenizer, e.prompt, e.response)
            if max(len(ids), len(labels)) > context:
                raise ValueError(f"{path}:{line}: prompt ({len(ids)} tokens) or response ({len(labels)} tokens) is longer "
                                 f"than the model's context of {context} (shorten it or drop it)")
        else:
            ids, labels = encode_pair(tokenizer, e.prompt, e.response)
            if len(ids) > context:
                raise ValueError(f"{path}:{line}: prompt + response is {len(ids)} tokens, more than the model's "
                                 f"context of {context} (shorten it or drop it)")
        pairs.append((ids, labels))
    return pairs
