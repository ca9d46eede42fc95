"""The OpenAI HTTP API's request and response bodies (the subset this server speaks), as pydantic models.

Requests are validated by these models: a wrong type or an out-of-range value is a 422 with
an OpenAI-style error body. Fields clients send that this server does not use (`user`,
`logprobs: null`, ...) are accepted and ignored, so every OpenAI client works unchanged.
Every number is bounded to what the code takes (a seed beyond 64 bits would make
`torch.manual_seed` raise inside a batch) and every string and list has a length cap; the
server adds the checks that depend on the model (characters and tokens against its context).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_TEXT_CHARS = 1 << 20  # one prompt, message or input; the server's own limit from the context is lower
MAX_PROMPTS = 16
MAX_MESSAGES = 1024
MAX_STOPS, MAX_STOP_CHARS = 4, 256
SEEDS = (-(2**63), 2**63 - 1)  # what torch.manual_seed takes (a 64-bit integer)

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


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
    # Accepted for compatibility and ignored (no logprobs are returned), but bounded like OpenAI's.
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value if isinstance(value, list) else [] if value is None else None
        if stops is None or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop: a string or a list of strings")
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop: at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters")
        return stops


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(description="One prompt or a list of up to 16 prompts.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Accepted and ignored.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value):
        # Before the items are validated: a list of 100,000 prompts is refused by its length alone.
        prompts = [value] if isinstance(value, str) else value
        if isinstance(prompts, list) and not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"prompt: between 1 and {MAX_PROMPTS} prompts")
        # Here rather than by the union, whose errors would name its branches ("prompt.constrained-str").
        if isinstance(prompts, list) and any(isinstance(p, str) and len(p) > MAX_TEXT_CHARS for p in prompts):
            raise ValueError(f"prompt: a prompt is longer than {MAX_TEXT_CHARS} characters")
        return prompts


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(description="The conversation (up to 1024 messages); the last may not be "
                                        "the assistant's.")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096, description="Newer name of max_tokens.")
    logprobs: bool | None = Field(None, description="Accepted and ignored.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Accepted and ignored.")

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value):
        if isinstance(value, list) and not 1 <= len(value) <= MAX_MESSAGES:
            raise ValueError(f"messages: between 1 and {MAX_MESSAGES} messages")
        return value


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


def completion_body(model: str, texts: list[tuple[str, str]], usage: Usage, rid: str | None = None) -> dict:
    """A /v1/completions response; texts: (text, finish_reason) per choice."""
    return {"id": rid or new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": None} for i, (t, f) in enumerate(texts)],
            "usage": usage.model_dump()}


def chat_body(model: str, texts: list[tuple[str, str]], usage: Usage, rid: str | None = None) -> dict:
    """A /v1/chat/completions response."""
    return {"id": rid or new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f, "logprobs": None}
                        for i, (t, f) in enumerate(texts)],
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
