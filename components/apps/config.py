"""Typed config of the applications on the deployed model, and the `/v1/rag` request body."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUNDLED = Path(__file__).resolve().parent / "bundled"


class RagConfig(BaseModel):
    """Retrieval-augmented generation served at `/v1/rag` beside the model's OpenAI API."""

    model_config = ConfigDict(extra="forbid")
    collection: str = Field(str(BUNDLED / "collection"), description="Folder of documents to index; nothing outside it "
                            "is read (a symbolic link inside it is refused). Default: 30 bundled CPython docs topics.")
    patterns: list[str] = Field(["**/*.txt", "**/*.md"], min_length=1, description="Glob patterns of files to index, "
                                "relative to the collection.")
    chunk_chars: int = Field(800, ge=100, le=8000, description="Most characters per chunk (cut at paragraphs).")
    chunk_overlap: int = Field(100, ge=0, description="Characters shared by neighbouring windows of a long paragraph.")
    index: Literal["flat", "hnsw"] = Field("flat", description="FAISS index: exact inner product, or an HNSW graph "
                                           "for large collections.")
    top_k: int = Field(4, ge=1, le=20, description="Chunks retrieved per question when the request sets no k.")
    context_tokens: int | None = Field(None, ge=16, description="Most prompt tokens spent on retrieved text; None: what "
                                       "the model's context leaves after the question and max_tokens.")
    max_tokens: int = Field(64, ge=1, description="Default answer length in tokens.")
    max_tokens_limit: int = Field(256, ge=1, description="Largest max_tokens a request may ask for (400 above), as the "
                                  "endpoint's own limit: the route calls the model deployment directly, past its checks.")
    app_name: str = Field("lifecycle-rag", pattern=r"^[A-Za-z0-9_-]+$", description="Serve application of the route.")
    route_prefix: str = Field("/v1/rag", pattern=r"^/[A-Za-z0-9_/-]*$", description="HTTP path of the route.")
    model_app: str = Field("lifecycle", description="Serve application of the model deployment (DeployConfig.app_name) "
                           "the route calls through a deployment handle.")
    cpus: float = Field(0.25, ge=0, description="CPUs the route's replica reserves (retrieval is light; generation "
                        "happens in the model's replicas).")

    @model_validator(mode="after")
    def _check(self):
        if self.max_tokens > self.max_tokens_limit:
            raise ValueError(f"max_tokens ({self.max_tokens}) must not exceed max_tokens_limit ({self.max_tokens_limit})")
        if self.chunk_overlap >= self.chunk_chars:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be below chunk_chars ({self.chunk_chars})")
        return self


class RagRequest(BaseModel):
    """Body of POST /v1/rag (and of POST /v1/rag/search, which uses only question, k and sources)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="Served model id that writes the answer; None: the deployment's model.")
    question: str = Field(min_length=1, max_length=2000, description="The question.")
    k: int | None = Field(None, ge=1, le=20, description="Chunks to retrieve; None: the route's top_k.")
    sources: list[str] | None = Field(None, min_length=1, max_length=100, description="Only retrieve from these "
                                      "documents (paths relative to the collection).")
    max_tokens: int | None = Field(None, ge=1, le=4096, description="Answer length in tokens at most.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy decoding.")


class SandboxLimits(BaseModel):
    """Limits of the locked-down interpreter that runs model-written programs."""

    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Wall-clock seconds before the program is killed.")
    cpu_s: int = Field(2, ge=1, le=60, description="CPU seconds (RLIMIT_CPU).")
    memory_mb: int = Field(256, ge=64, le=4096, description="Address space of the interpreter process, MiB (RLIMIT_AS).")
    output_chars: int = Field(10_000, ge=100, le=1_000_000, description="Printed characters kept before the program is stopped.")


class ReactConfig(BaseModel):
    """The ReAct loop: the model, its step limit and its tools."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="Served model id.")
    max_steps: int = Field(4, ge=1, le=20, description="Model turns at most before giving up.")
    max_tokens: int = Field(48, ge=1, le=1024, description="Tokens per turn.")
    search_k: int = Field(2, ge=1, le=10, description="Passages the search tool returns.")
    passage_chars: int = Field(300, ge=20, description="Characters of each passage shown as an observation.")
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits, description="Limits of the calculate tool.")
