"""The OpenAI HTTP API's request and response bodies (the subset this server speaks), as pydantic models.

Requests are validated by these models: a wrong type or an out-of-range value is a 422 with
an OpenAI-style error body. Fields clients send that this server does not use (`user`,
`logprobs: null`, ...) are accepted and ignored, so every OpenAI client works unchanged.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(description="A served model id from GET /v1/models.")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="New tokens at most (default: the server's).")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, le=8, description="Completions per prompt.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end a completion (not included).")
    stream: bool = Field(False, description="Send server-sent events as tokens are generated.")
    seed: int | None = Field(None, description="Sampling seed: the same seed and request give the same text.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: at most 4 non-empty strings")
        return stops


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(description="One prompt or a list of prompts.")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if not prompts or len(prompts) > 16:
            raise ValueError("prompt: between 1 and 16 prompts")
        return prompts


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation; the last may not be the assistant's.")
    max_completion_tokens: int | None = Field(None, ge=1, le=4096, description="Newer name of max_tokens.")


class TextPair(BaseModel):
    """Two texts classified together (natural language inference: premise and hypothesis)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="The first text (e.g. the premise).")
    text_pair: str = Field(min_length=1, description="The second text (e.g. the hypothesis).")


class ClassifyRequest(BaseModel):
    """POST /v1/classify: label texts with a served sequence classifier, or each word with a token classifier."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="A served model id from GET /v1/models (default: the served model).")
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
