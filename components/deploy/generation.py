"""Text generation for the server: batched `model.generate` per sampling setting, stop strings, token usage.

Pure torch + transformers (no Ray): the Serve deployment groups the requests of a dynamic batch
by `Params` and makes one `generate` call per group. An answer ends at the first stop token: the
tokenizer's eos or any eos of the model's generation config (`core.chat.stop_token_ids`), so a
pretrained chat model stops at its end of turn (Llama-3-Instruct's <|eot_id|>, Gemma's <end_of_turn>).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from components.core.chat import cut_at_first, stop_token_ids


@dataclass(frozen=True)
class Params:
    """Sampling settings shared by every prompt of one generate call."""

    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (eos or a stop string) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _sampling(params: Params, tokenizer, stops: list[int]) -> dict:
    # A single stop id goes as an int, as before (the project's models): the same generate call.
    kwargs = {"max_new_tokens": params.max_tokens, "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": stops[0] if len(stops) == 1 else stops}
    if params.temperature == 0:
        return {**kwargs, "do_sample": False}
    return {**kwargs, "do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}


def batch_wait_s(last_batch_size: int, since_last_s: float, wait_s: float, busy_window_s: float = 1.0) -> float:
    """How long the next dynamic batch waits to fill, in seconds.

    Under concurrent load, clients whose answers just came back send their next requests a few
    milliseconds apart, and a batch that started with the first of them would run nearly alone
    (16 clients settle into batches of 1 and 15). So the batch waits `wait_s` for them when the
    last batch held more than one request and ended under `busy_window_s` ago; otherwise (an
    idle server, or one client at a time) it starts at once and adds no latency.
    """
    return wait_s if last_batch_size > 1 and since_last_s < busy_window_s else 0.0


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def is_seq2seq(model) -> bool:
    """An encoder-decoder (T5): the prompt goes to the encoder and the output does not echo it."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def prompt_ids(tokenizer, prompt: str, seq2seq: bool = False) -> list[int]:
    """The token ids a prompt is fed as; an encoder's input ends with eos, as T5 is pretrained
    (components/core/objectives.py span_corruption) and fine-tuned."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if seq2seq else ids


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], params: Params) -> list[Completion]:
    """One completion per prompt, from a single left-padded batched `generate` call.

    With a seed, sampling restarts from it for this call, so the same request (alone in its
    group, which the server ensures) gives the same text. An encoder-decoder's prompts are
    right-padded (the encoder attends both ways) and its output starts with the decoder's start
    token, not the prompt.
    """
    seq2seq = is_seq2seq(model)
    stops = stop_token_ids(model, tokenizer)
    encoded = [prompt_ids(tokenizer, p, seq2seq) for p in prompts]
    width = max(map(len, encoded))
    device = next(model.parameters()).device

    def padded(row, fill):
        return row + [fill] * (width - len(row)) if seq2seq else [fill] * (width - len(row)) + row

    ids = torch.tensor([padded(e, tokenizer.pad_token_id) for e in encoded], device=device)
    mask = torch.tensor([padded([1] * len(e), 0) for e in encoded], device=device)
    if params.seed is not None:
        torch.manual_seed(params.seed)
    out = model.generate(input_ids=ids, attention_mask=mask, **_sampling(params, tokenizer, stops))
    completions = []
    for fed, row in zip(encoded, out[:, 1 if seq2seq else width:].tolist()):
        row, ended = cut_at_first(row, stops)
        finish = "stop" if ended else "length"
        text = tokenizer.decode(row, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        if stopped:
            finish, generated = "stop", count_tokens(tokenizer, text)
        else:
            generated = len(row) + (finish == "stop")  # the stop token counts as generated
        completions.append(Completion(text, finish, len(fed), generated))
    return completions


def stream(model, tokenizer, prompt: str, params: Params) -> Iterator[tuple[str, str | None]]:
    """(new text, None) pieces as tokens are generated, then ("", finish_reason)."""
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class Cancelled(StoppingCriteria):  # ends generate early: a stop string was seen or the client left
        def __call__(self, input_ids, scores, **kwargs):
            return cancel.is_set()

    class UntilStop(TextIteratorStreamer):
        """Decodes the answer's tokens before the first stop id: a stop token that is not a special token
        (skip_special_tokens would drop those) never reaches the text. `stopped`: one was generated."""

        stopped = False

        def put(self, value):
            if self.next_tokens_are_prompt:  # the prompt's ids may hold stop ids of earlier turns
                return super().put(value)
            if self.stopped:
                return
            kept, self.stopped = cut_at_first(value.reshape(-1).tolist(), stops)
            if kept:
                super().put(torch.tensor(kept))

    cancel = threading.Event()
    stops = stop_token_ids(model, tokenizer)
    ids = torch.tensor([prompt_ids(tokenizer, prompt, is_seq2seq(model))], device=next(model.parameters()).device)
    # skip_prompt skips generate's first output: the prompt, or an encoder-decoder's start token.
    streamer = UntilStop(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    if params.seed is not None:
        torch.manual_seed(params.seed)
    worker = threading.Thread(
        target=model.generate, daemon=True,
        kwargs={"input_ids": ids, "attention_mask": torch.ones_like(ids), "streamer": streamer,
                "stopping_criteria": StoppingCriteriaList([Cancelled()]), **_sampling(params, tokenizer, stops)},
    )
    worker.start()
    sent, text, exhausted = 0, "", False
    try:
        for piece in streamer:
            text += piece
            kept, stopped = cut_at_stop(text, params.stop)
            # Hold back a tail that could still grow into a stop string.
            safe = len(kept) if stopped else max(sent, len(kept) - max((len(s) - 1 for s in params.stop), default=0))
            if safe > sent:
                yield kept[sent:safe], None
                sent = safe
            if stopped:
                yield "", "stop"
                return
        exhausted = True
        if len(text) > sent:
            yield text[sent:], None
        yield "", "stop" if streamer.stopped or count_tokens(tokenizer, text) < params.max_tokens else "length"
    finally:
        cancel.set()
        if not exhausted:  # let generate finish its step and end the stream
            for _ in streamer:
                pass
        worker.join()
