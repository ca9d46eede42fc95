"""Typed config of the base phase (the `with:` block of a `uses: base` step)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ResolvedSource(BaseModel):
    """What validation found at the source, before Ray starts: pins the cache key and tells the
    validator the model's family. Set by validation; a value written in the spec is replaced."""

    model_config = ConfigDict(extra="forbid")
    family: Literal["causal", "masked", "seq2seq"] = Field(description="Model family, from config.json (components/core/models.family_of).")
    model_type: str = Field(description="config.json's model_type, e.g. llama, qwen2, bert, t5.")
    architecture: str = Field(description="config.json's first architecture (head class), e.g. LlamaForCausalLM; '' if none.")
    revision: str = Field(description="hf: the commit the revision resolved to; models:/: NAME/VERSION; a folder: ''.")
    fingerprint: str = Field(description="A folder's file names, sizes and modification times hashed: a changed folder is a new cache key.")
    config: str = Field(description="config.json's text: `lifecycle plan` sizes the model from it without loading weights.")


class BaseConfig(BaseModel):
    """A pretrained checkpoint as the lifecycle's model: the same `model` artifact pretrain makes."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(
        description="Where the checkpoint is: a local folder in Hugging Face format (config.json, tokenizer, "
        "safetensors weights); 'hf:ORG/NAME[@REVISION]' from the Hugging Face hub (the revision, default main, is "
        "resolved to a commit and recorded; the download is cached in the working folder's hub/); or a registered "
        "model of an earlier run, 'models:/NAME/VERSION' or 'models:/NAME@ALIAS'.",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32",
        description="Dtype of the weights the step saves: float32 (what the training phases train in; under "
        "precision bf16 they cast on the fly); bfloat16 or float16 halve the copy; auto keeps the checkpoint's own.",
    )
    trust_remote_code: bool = Field(
        False, description="Run the checkpoint's own Python modelling code (a model transformers does not ship). "
        "Off: only architectures transformers ships load; turn on only for a source you trust.",
    )
    resolved: ResolvedSource | None = Field(None, description="Set by validation (see ResolvedSource); leave it out.")
