"""Text generation for the server: batched `model.generate` per sampling setting, stop strings, token usage,
prompt echo and token log-probabilities.

Pure torch + transformers (no Ray): the Serve deployment groups the requests of a dynamic batch
by `Params` and makes one `generate` call per group. An answer ends at the first stop token: the
tokenizer's eos or any eos of the model's generation config (`core.chat.stop_token_ids`), so a
pretrained chat model stops at its end of turn (Llama-3-Instruct's <|eot_id|>, Gemma's <end_of_turn>).

Log-probabilities (`Params.logprobs`) are natural logs of the served weights' own distribution:
log_softmax of the raw logits, before temperature and top_p reshape them for sampling, so a
score does not depend on how the answer was sampled (what evaluation harnesses assume). Those
of generated tokens come from the same batched `generate` call (`output_logits`); those of an
echoed prompt from one forward pass over the group's prompts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields

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
    logprobs: int | None = None  # None: no log-probabilities; k: each token's, and the k most likely at its place
    echo: bool = False  # the completion's text (and log-probabilities) start with the prompt's


@dataclass(frozen=True)
class Logprobs:
    """Per-token log-probabilities of a completion (natural logs), one entry per token in text order.

    With echo the prompt's tokens come first; the first prompt token has no logprob and no top
    list (nothing precedes it). `text_offset[i]` is where token i starts in the completion's text
    (characters); a special token (eos) adds no characters to the text.
    """

    tokens: list[str]  # each token's text in context (special tokens as their text, e.g. "</s>")
    token_ids: list[int]
    token_logprobs: list[float | None]
    top_logprobs: list[list[tuple[str, float]] | None]  # the k most likely (token text, logprob), most likely first
    text_offset: list[int]

    def head(self, n: int) -> Logprobs:
        """The first n tokens' entries."""
        return Logprobs(*(getattr(self, f.name)[:n] for f in fields(self)))

    def __add__(self, other: Logprobs) -> Logprobs:
        """These tokens' entries, then `other`'s."""
        return Logprobs(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Completion:
    text: str  # with echo, the prompt's text then the answer
    finish_reason: str  # "stop" (eos or a stop string) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int
    logprobs: Logprobs | None = None


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


def prompt_ids(tokenizer, prompt: str | list[int], seq2seq: bool = False) -> list[int]:
    """The token ids a prompt is fed as; an encoder's input ends with eos, as T5 is pretrained
    (components/core/objectives.py span_corruption) and fine-tuned. A prompt given as token ids
    is fed exactly as given (a client that tokenizes chose every token)."""
    if not isinstance(prompt, str):
        return list(prompt)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if seq2seq else ids


def prompt_text(tokenizer, prompt: str | list[int]) -> str:
    """What an echoed prompt shows: the prompt itself, or a token-id prompt's decoded text."""
    return prompt if isinstance(prompt, str) else tokenizer.decode(prompt, skip_special_tokens=True)


def logprobs_of(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of `chosen` tokens and the `k` most likely ones, from raw `logits`.

    logits: [..., vocab], any float dtype (computed in float32); chosen: [...] token ids.
    Returns (chosen's logprob [...], top-k logprobs [..., k] in descending order, their ids [..., k]),
    as natural-log probabilities of softmax(logits): the model's own distribution, no temperature.
    A token the model rules out (a -inf logit) gets -9999, as vLLM gives it: JSON has no -inf.
    """
    logp = torch.log_softmax(logits.float(), dim=-1).clamp_min(-9999.0)
    top = logp.topk(k, dim=-1) if k else (logp[..., :0], chosen.new_zeros((*chosen.shape, 0)))
    return logp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1), top[0], top[1]


def score_prompts(model, prompts: list[list[int]], k: int, pad_id: int) -> list[tuple[list[float], list, list]]:
    """The log-probability of each prompt token given the ones before it, in one forward pass.

    prompts: token ids, of different lengths, right-padded into one [batch, longest] batch (a
    causal model's tokens see only earlier ones, so padding after them changes nothing and
    positions need no shifting). Per prompt of T tokens: (logprob of tokens 1..T-1 [T-1],
    top-k logprobs [T-1][k], their ids [T-1][k]) as natural logs of softmax(logits); token 0
    has none. Causal models only.
    """
    width = max(map(len, prompts))
    device = next(model.parameters()).device
    ids = torch.tensor([p + [pad_id] * (width - len(p)) for p in prompts], device=device)
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts], device=device)
    logits = model(input_ids=ids, attention_mask=mask).logits
    logits = logits[:, logits.shape[1] - width:]  # a prompt-tuned model's virtual tokens come first
    scored = []
    for row, p in zip(logits, prompts):  # row by row: log_softmax over [T, vocab] at a time, not the batch's
        chosen, values, indices = logprobs_of(row[: max(len(p) - 1, 0)], torch.tensor(p[1:], device=device, dtype=torch.long), k)
        scored.append((chosen.tolist(), values.tolist(), indices.tolist()))
    return scored


def token_texts(tokenizer, ids: list[int], candidates: list[list[int]], window: int = 4) -> list[list[str]]:
    """The text each of `candidates[i]` would add in place of token i of `ids`, special tokens shown.

    Decoding a token alone loses what depends on its neighbours (a SentencePiece word's leading
    space, bytes of a character split over tokens), so a token's text is what it adds to decoding
    the `window` tokens before it (as vLLM detokenizes). With candidates [[t] for t in ids], the
    texts of a sequence add up to its decoded text in length (a split character counts at its
    first token); with the top-k ids, the alternatives read as the chosen token does.
    """
    prefixes = [ids[max(0, i - window): i] for i in range(len(ids))]
    spans = [prefix + [c] for prefix, row in zip(prefixes, candidates) for c in row]
    texts = iter(tokenizer.batch_decode(spans, skip_special_tokens=False))
    before = tokenizer.batch_decode(prefixes, skip_special_tokens=False)
    return [[next(texts)[len(b):] for _ in row] for b, row in zip(before, candidates)]


def _logprobs(tokenizer, ids: list[int], chosen: list[float | None], top: list, start: int) -> Logprobs:
    """A Logprobs for tokens `ids` whose text begins at character `start`; top: per token None or
    (logprobs [k], ids [k])."""
    alternatives = [list(entry[1]) if entry else [] for entry in top]
    texts = token_texts(tokenizer, ids, [[t] + alts for t, alts in zip(ids, alternatives)])
    special, offsets = set(tokenizer.all_special_ids), []
    for t, (text, *_) in zip(ids, texts):
        offsets.append(start)
        start += 0 if t in special else len(text)
    tops = []
    for entry, (_, *names) in zip(top, texts):
        if entry is None:
            tops.append(None)
            continue
        # Tokens that read alike (bytes of one character, each alone a U+FFFD) would share one key of the
        # {token: logprob} shape: a repeat is named by its vocabulary entry instead, unique to its id.
        seen, named = set(), []
        for name, value, i in zip(names, *entry):
            name = tokenizer.convert_ids_to_tokens(i) if name in seen else name
            seen.add(name)
            named.append((name, value))
        tops.append(named)
    return Logprobs([t[0] for t in texts], list(ids), chosen, tops, offsets)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str | list[int]], params: Params) -> list[Completion]:
    """One completion per prompt (a text or its token ids), from a single left-padded batched `generate` call.

    With a seed, sampling restarts from it for this call, so the same request (alone in its
    group, which the server ensures) gives the same text. An encoder-decoder's prompts are
    right-padded (the encoder attends both ways) and its output starts with the decoder's start
    token, not the prompt.

    `params.logprobs` k: each completion carries `Logprobs` of its generated tokens (the stop token
    included when one ended it), read from `generate`'s raw logits (`output_logits`): log_softmax
    before temperature and top_p, so greedy and sampled answers are scored by the same
    distribution. `params.echo`: the text starts with the prompt's, and with k set one forward pass
    over the prompts scores their tokens too. `params.max_tokens` 0 (with echo) generates nothing:
    the prompt is only scored. Echo needs a causal model (ValueError on an encoder-decoder).
    """
    seq2seq = is_seq2seq(model)
    if params.echo and seq2seq:
        raise ValueError("echo: an encoder-decoder's prompt goes to its encoder, so there is no prompt to echo or score")
    stops = stop_token_ids(model, tokenizer)
    encoded = [prompt_ids(tokenizer, p, seq2seq) for p in prompts]
    width = max(map(len, encoded))
    device = next(model.parameters()).device
    k = params.logprobs

    def padded(row, fill):
        return row + [fill] * (width - len(row)) if seq2seq else [fill] * (width - len(row)) + row

    rows: list[list[int]] = [[] for _ in prompts]
    chosen = top_values = top_ids = None
    if params.max_tokens > 0:
        ids = torch.tensor([padded(e, tokenizer.pad_token_id) for e in encoded], device=device)
        mask = torch.tensor([padded([1] * len(e), 0) for e in encoded], device=device)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        scored = {"output_logits": True, "return_dict_in_generate": True} if k is not None else {}
        out = model.generate(input_ids=ids, attention_mask=mask, **_sampling(params, tokenizer, stops), **scored)
        sequences = out.sequences if k is not None else out
        new = sequences[:, 1 if seq2seq else width:]
        rows = new.tolist()
        if k is not None:
            # out.logits: one [batch, vocab] per step, the raw logits (output_scores would give them after temperature
            # and top_p); step by step, so no [batch, steps, vocab] float32 copy is made.
            steps = [logprobs_of(step, new[:, t], k) for t, step in enumerate(out.logits)]
            chosen, top_values, top_ids = ([s[j].tolist() for s in steps] for j in range(3))
    echoed = score_prompts(model, encoded, k, tokenizer.pad_token_id) if params.echo and k is not None else None
    completions = []
    for b, (prompt, fed, row) in enumerate(zip(prompts, encoded, rows)):
        kept, ended = cut_at_first(row, stops)
        finish = "stop" if ended else "length"
        text = tokenizer.decode(kept, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        if stopped:
            finish, generated = "stop", count_tokens(tokenizer, text)
        else:
            generated = len(kept) + (finish == "stop")  # the stop token counts as generated
        shown = prompt_text(tokenizer, prompt) if params.echo else ""
        logprobs = None
        if k is not None:
            scored_ids = kept + row[len(kept): len(kept) + 1]  # the stop token that ended it, if one did
            lp = [chosen[t][b] for t in range(len(scored_ids))] if scored_ids else []
            top = [(top_values[t][b], top_ids[t][b]) for t in range(len(scored_ids))] if scored_ids else []
            logprobs = _logprobs(tokenizer, scored_ids, lp, top, len(shown))
            if stopped:  # tokens from the stop string on are not in the text
                logprobs = logprobs.head(sum(o < len(shown) + len(text) for o in logprobs.text_offset))
            if echoed is not None:
                first = [None] * min(1, len(fed))  # the first prompt token: nothing before it to condition on
                values, ids = echoed[b][1:]
                logprobs = _logprobs(tokenizer, fed, first + echoed[b][0], first + list(zip(values, ids)), 0) + logprobs
        completions.append(Completion(shown + text, finish, len(fed), generated, logprobs))
    return completions


def stream(model, tokenizer, prompt: str | list[int], params: Params) -> Iterator[tuple[str, str | None]]:
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
