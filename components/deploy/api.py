"""The OpenAI HTTP API's request and response bodies (the subset this server speaks), as pydantic models.

Requests are validated by these models: a wrong type or an out-of-range value is a 422 with
an OpenAI-style error body. A field that would change the answer but that this server does not
implement (`best_of` above 1, `suffix`, a non-empty `logit_bias`, non-zero penalties, tools,
a JSON `response_format`, log-probabilities or echo with `stream`) is refused by the request's
`check()` (`Unsupported`, a 400 naming the field), never silently dropped. Fields that change
nothing in the answer (`user`, `logprobs: null`, `store`, ...) are accepted and ignored, so
OpenAI clients work unchanged.
Every number is bounded to what the code takes (a seed beyond 64 bits would make
`torch.manual_seed` raise inside a batch) and every string and list has a length cap; the
server adds the checks that depend on the model (characters and tokens against its context,
token ids against its vocabulary).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_TEXT_CHARS = 1 << 20  # one prompt, message or input; the server's own limit from the context is lower
MAX_PROMPTS = 16
MAX_PROMPT_IDS = 1 << 18  # token ids in one prompt; the server's own limit from the context is lower
MAX_MESSAGES = 1024
MAX_STOPS, MAX_STOP_CHARS = 4, 256
SEEDS = (-(2**63), 2**63 - 1)  # what torch.manual_seed takes (a 64-bit integer)

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


class Unsupported(ValueError):
    """A request the schema accepts but this server cannot answer as asked: a 400 naming `param`."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(max_length=256, description="A served model id from GET /v1/models.")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="New tokens at most (default: the server's).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=8, description="Completions per prompt.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings of up to 256 characters that end a "
                                         "completion (not included).")
    stream: bool = Field(False, description="Send server-sent events as tokens are generated.")
    seed: int | None = Field(None, ge=SEEDS[0], le=SEEDS[1],
                             description="Sampling seed (64-bit): the same seed and request give the same text.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                           description="Not implemented: only 0 or null (a 400 otherwise).")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False,
                                            description="Not implemented: only 0 or null (a 400 otherwise).")
    logit_bias: dict[str, float] | None = Field(None, max_length=300,
                                                description="Not implemented: only empty or null (a 400 otherwise).")

    def check(self) -> None:
        """Raise `Unsupported` for a field this server would otherwise ignore although it changes the answer."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise Unsupported(name, "penalties are not implemented by this server: send 0 or leave it out")
        if self.logit_bias:
            raise Unsupported("logit_bias", "not implemented by this server: send {} or leave it out")
        if self.stream and self.logprobs is not None and self.logprobs is not False:  # completions: 0 asks for them too
            raise Unsupported("logprobs", "log-probabilities are not streamed by this server: send stream: false")

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value if isinstance(value, list) else [] if value is None else None
        if stops is None or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop: a string or a list of strings")
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop: at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters")
        return stops


def _is_id(value) -> bool:
    return type(value) is int  # not a bool or a float: JSON true or 1.0 is no token id


class CompletionRequest(_Request):
    prompt: list[str | list[int]] = Field(
        description="A prompt or a list of up to 16: texts, or token ids (a list of ints, or a list of such lists) "
        "of the served model's vocabulary, as evaluation harnesses send them. Normalised to a list of prompts.")
    max_tokens: int | None = Field(None, ge=0, le=4096, description="New tokens at most (default: the server's); 0 "
                                   "(only with echo) generates nothing and scores the prompt.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Return each token's log-probability (natural log, of "
                                 "the model's raw distribution) and the k most likely tokens at its place (0..5).")
    echo: bool = Field(False, description="The text (and logprobs) start with the prompt's; causal models only.")
    best_of: int | None = Field(None, ge=1, le=20, description="Not implemented: only 1 or null (a 400 otherwise).")
    suffix: str | None = Field(None, max_length=MAX_TEXT_CHARS,
                               description="Not implemented (insertion): only empty or null (a 400 otherwise).")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value):
        # Here rather than by the union, whose errors would name its branches ("prompt.0.list[int]").
        if isinstance(value, str) or (isinstance(value, list) and value and all(_is_id(t) for t in value)):
            value = [value]  # one text, or one prompt of token ids
        if not isinstance(value, list):
            raise ValueError("prompt: a string, a list of strings, a list of token ids or a list of lists of token ids")
        # Before the items are looked at: a list of 100,000 prompts is refused by its length alone.
        if not 1 <= len(value) <= MAX_PROMPTS:
            raise ValueError(f"prompt: between 1 and {MAX_PROMPTS} prompts")
        for i, p in enumerate(value):
            if isinstance(p, str):
                if len(p) > MAX_TEXT_CHARS:
                    raise ValueError(f"prompt: prompt {i} is longer than {MAX_TEXT_CHARS} characters")
            elif not isinstance(p, list) or not p or len(p) > MAX_PROMPT_IDS or not all(_is_id(t) and t >= 0 for t in p):
                raise ValueError(f"prompt: prompt {i} is neither a string nor a non-empty list of at most "
                                 f"{MAX_PROMPT_IDS} token ids (integers >= 0)")
        return value

    def check(self) -> None:
        super().check()
        if self.max_tokens == 0 and not self.echo:
            raise Unsupported("max_tokens", "0 generates nothing: it is for scoring the prompt, with echo: true")
        if self.stream and self.echo:
            raise Unsupported("echo", "echo is not streamed by this server: send stream: false")
        if self.best_of not in (None, 1):
            raise Unsupported("best_of", "not implemented by this server: send 1 or leave it out (n gives several "
                              "completions)")
        if self.suffix:
            raise Unsupported("suffix", "insertion is not implemented by this server: leave it out")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(description="The conversation (up to 1024 messages); the last may not be "
                                        "the assistant's.")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096, description="Newer name of max_tokens.")
    logprobs: bool | None = Field(None, description="Return each answer token's log-probability (natural log, of "
                                  "the model's raw distribution).")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="With logprobs: true, also the k most likely "
                                     "tokens at each place (0..20).")
    tools: list[dict] | None = Field(None, max_length=128, description="Not implemented: only empty or null.")
    functions: list[dict] | None = Field(None, max_length=128, description="Not implemented: only empty or null.")
    tool_choice: str | dict | None = Field(None, description="Not implemented: only \"none\" or null.")
    function_call: str | dict | None = Field(None, description="Not implemented: only \"none\" or null.")
    response_format: dict | None = Field(None, description="Only {\"type\": \"text\"} or null: JSON modes are "
                                         "not implemented.")

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value):
        if isinstance(value, list) and not 1 <= len(value) <= MAX_MESSAGES:
            raise ValueError(f"messages: between 1 and {MAX_MESSAGES} messages")
        return value

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise Unsupported("top_logprobs", "needs logprobs: true")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise Unsupported(name, "tool and function calling are not implemented by this server")
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none"):
                raise Unsupported(name, "tool and function calling are not implemented by this server")
        if self.response_format not in (None, {"type": "text"}):
            raise Unsupported("response_format", "only {\"type\": \"text\"}: JSON output is not implemented by this server")

    def top_k(self) -> int | None:
        """How many most likely tokens to return at each place; None: no log-probabilities."""
        return (self.top_logprobs or 0) if self.logprobs else None


class TextPair(BaseModel):
    """Two texts classified together (natural language inference: premise and hypothesis)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The first text (e.g. the premise).")
    text_pair: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The second text (e.g. the hypothesis).")


class ClassifyRequest(BaseModel):
    """POST /v1/classify: label texts with a served sequence classifier, or each word with a token classifier."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, max_length=256, description="A served model id from GET /v1/models (default: the served model).")
    input: str | TextPair | list[str | TextPair] = Field(
        description="One text, a text pair, or a list of up to 64 of them (pairs: sequence classifiers only).")
    aggregation: Literal["word", "entity"] = Field(
        "word", description="Token classifiers: one entry per labelled word, or consecutive B-X/I-X words merged into "
        "one entity X. Words labelled O are left out.")

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value):
        # Checked here rather than by the union, whose errors would name its branches ("input.str").
        items = value if isinstance(value, list) else [value]
        if not items or len(items) > 64:
            raise ValueError("between 1 and 64 inputs")
        for i, item in enumerate(items):
            if isinstance(item, str):
                if not item.strip():
                    raise ValueError(f"input {i} is empty")
                if len(item) > MAX_TEXT_CHARS:
                    raise ValueError(f"input {i} is longer than {MAX_TEXT_CHARS} characters")
            elif not (isinstance(item, dict) and set(item) == {"text", "text_pair"}
                      and all(isinstance(v, str) and v.strip() for v in item.values())):
                raise ValueError(f"input {i}: expected a text or {{\"text\": ..., \"text_pair\": ...}} with two non-empty texts")
        return items

    def items(self) -> list[tuple[str, str | None]]:
        """The inputs as (text, text_pair or None)."""
        return [(i, None) if isinstance(i, str) else (i.text, i.text_pair) for i in self.input]


class LabelScore(BaseModel):
    """One input's label from a sequence classifier."""

    index: int = Field(description="Position of the input in the request.")
    label: str = Field(description="The most probable label (the model's config.id2label).")
    score: float = Field(description="Its probability.")
    scores: dict[str, float] = Field(description="Every label's probability; they sum to 1.")


class Entity(BaseModel):
    """A labelled word (or, with aggregation=entity, a span of words) of the input text."""

    word: str = Field(description="The text of the word or span, as in the input.")
    entity: str = Field(description="Its label (aggregation=entity: the type X of its B-X/I-X labels).")
    start: int = Field(description="Character offset of its first character in the input text.")
    end: int = Field(description="Character offset just past its last character.")
    score: float = Field(description="The label's probability (aggregation=entity: the mean over its words).")


class Tagged(BaseModel):
    """One input's entities from a token classifier."""

    index: int = Field(description="Position of the input in the request.")
    entities: list[Entity] = Field(description="Its labelled words in text order.")


def classify_body(model: str, data: list[LabelScore] | list[Tagged]) -> dict:
    """A /v1/classify response: {"object": "list", "data": [...], "model"}."""
    return {"object": "list", "data": [d.model_dump() for d in data], "model": model}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion_logprobs(tokens: list[str], token_logprobs: list[float | None],
                        top_logprobs: list[list[tuple[str, float]] | None], text_offset: list[int]) -> dict:
    """A completion choice's `logprobs` (OpenAI's legacy shape), one entry per token: its text, its
    logprob (natural log; None for an echoed prompt's first token), {token text: logprob} of the k
    most likely (most likely first; None for that first token) and its character offset in the text."""
    return {"tokens": tokens, "token_logprobs": token_logprobs,
            "top_logprobs": [None if top is None else dict(top) for top in top_logprobs], "text_offset": text_offset}


def chat_logprobs(tokens: list[str], token_logprobs: list[float], top_logprobs: list[list[tuple[str, float]]]) -> dict:
    """A chat choice's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]},
    one entry per answer token; bytes: the token text's UTF-8 bytes (natural-log probabilities)."""
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(*alt) for alt in top]}
                        for t, lp, top in zip(tokens, token_logprobs, top_logprobs)]}


def completion_body(model: str, texts: list[tuple[str, str]], usage: Usage, rid: str | None = None,
                    logprobs: list[dict | None] | None = None) -> dict:
    """A /v1/completions response; texts: (text, finish_reason) per choice; logprobs: each choice's
    (`completion_logprobs`) or None."""
    logprobs = logprobs or [None] * len(texts)
    return {"id": rid or new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": lp}
                        for i, ((t, f), lp) in enumerate(zip(texts, logprobs))],
            "usage": usage.model_dump()}


def chat_body(model: str, texts: list[tuple[str, str]], usage: Usage, rid: str | None = None,
              logprobs: list[dict | None] | None = None) -> dict:
    """A /v1/chat/completions response; logprobs: each choice's (`chat_logprobs`) or None."""
    logprobs = logprobs or [None] * len(texts)
    return {"id": rid or new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f, "logprobs": lp}
                        for i, ((t, f), lp) in enumerate(zip(texts, logprobs))],
            "usage": usage.model_dump()}


def completion_chunk(rid: str, model: str, index: int, text: str, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def chat_chunk(rid: str, model: str, index: int, delta: dict, finish_reason: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape, which its clients turn into typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
