"""Supervised fine-tuning data: prompt/response pairs as token ids with the loss on the response only.

Labels use -100 (PyTorch's cross-entropy `ignore_index`, which Hugging Face causal LMs
use too) on prompt and padding positions, so the model is trained to produce the answer,
not to reproduce the instruction.

A causal model's prompt goes through `chat.render_prompt`: the Alpaca prompt as it is for the
project's tokenizers, the model's own chat template for a pretrained checkpoint that ships one.
Encoding and generation both render here, so every phase that calls them (fine-tuning, DPO, the
reward model, scoring, evaluation, distillation) sees the same text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from components.core.chat import answer_end_id, cut_at_first, prompt_ids, stop_token_ids

IGNORE_INDEX = -100


def encode_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one example: rendered prompt tokens, response tokens, eos.

    The prompt and the response are tokenized separately, as at generation time, where the
    model continues from the prompt's last token. Labels are -100 over the prompt (with a chat
    template: everything up to and including the assistant header), so the loss is on the
    assistant's tokens only. The answer ends with `chat.answer_end_id`: the eos, or the
    template's own end of turn where that differs (Gemma's <end_of_turn>).
    """
    p = prompt_ids(tokenizer, prompt)
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [answer_end_id(tokenizer)]
    return p + r, [IGNORE_INDEX] * len(p) + r


def encode_seq2seq_pair(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for an encoder-decoder: the encoder reads the prompt + eos (as it read
    span-corrupted text + eos in pretraining), the decoder is trained on response + eos.

    The prompt is not rendered through a chat template: encoder-decoders (T5, Flan-T5) ship none,
    and a template's generation prompt (the assistant header) belongs to a decoder's input, not
    to an encoder's. Nothing needs masking: the decoder never sees the prompt, so every label is a response token.
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
    """Greedy completions of `prompts` (Alpaca prompts, rendered as in `encode_pair`), decoded, cut at the first stop token."""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in greedy_answer_ids(model, tokenizer, prompts, max_new_tokens, batch_size)]


def greedy_answer_ids(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[list[int]]:
    """Token ids of the greedy completions of `prompts`, cut before the first stop token (at most max_new_tokens each).

    A causal model reads each prompt rendered as in `encode_pair` (`chat.prompt_ids`). The stop
    tokens are the tokenizer's eos and the model's generation-config eos (`chat.stop_token_ids`;
    both are the eos for the project's models), so a pretrained chat model's baseline stops at its
    end of turn. Greedy decoding is a prefix property: the answer to a budget of n tokens is the
    first n tokens of the answer to any larger budget, and an answer shorter than its budget ended
    at a stop token. Prompts are left-padded into batches so every row's next token sits in the last
    column. An encoder-decoder reads the prompt + eos (as in `encode_seq2seq_pair`) and its output
    holds only the answer, after the decoder's start token.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    stops = stop_token_ids(model, tokenizer)
    answers = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        encoded = ([tokenizer(p, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p in chunk] if seq2seq
                   else [prompt_ids(tokenizer, p) for p in chunk])
        width = max(map(len, encoded))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            # One id is passed as an int, as before (the project's models): the same generate call.
            eos_token_id=stops[0] if len(stops) == 1 else stops, pad_token_id=tokenizer.pad_token_id,
        )
        answers += [cut_at_first(row, stops)[0] for row in out[:, 1 if seq2seq else width :].tolist()]
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
