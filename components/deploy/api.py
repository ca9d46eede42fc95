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
