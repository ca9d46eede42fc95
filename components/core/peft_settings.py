"""The settings of the fine-tuning methods (components/core/peft_methods.py applies them): pydantic only,
so the spec validator imports them without torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["full", "selective", "lora", "prompt_tuning", "ia3"]


class LoraSettings(BaseModel):
    """LoRA: rank-r update B @ A on the target projections, scaled by alpha / r."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1, description="Rank of the update; trainable parameters grow linearly with it.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input path during training.")
    target_modules: list[str] | None = Field(
        None, min_length=1,
        description="Module names (or name suffixes) that get LoRA; ['all-linear']: every linear layer of the blocks, "
        "attention and MLP, not the output head (more parameters, closer to full fine-tuning). None: peft's default for the "
        "architecture, its attention projections (gpt2: c_attn; llama, qwen2, mistral: q_proj, v_proj; t5: q, v; bert: "
        "query, value); an architecture peft has no default for must name them.",
    )


class PromptTuningSettings(BaseModel):
    """Prompt tuning: trainable virtual-token embeddings in front of every input."""

    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: int = Field(16, ge=1, description="Soft-prompt length in tokens (takes that much context).")
    init_text: str | None = Field(
        "Answer the instruction exactly.", description="Initialise the soft prompt from this text's embeddings; None: random."
    )


class SelectiveSettings(BaseModel):
    """Selective fine-tuning: train only the parameters whose names match a pattern."""

    model_config = ConfigDict(extra="forbid")
    trainable: list[str] = Field(
        ["*.h.3.*", "*layers.3.*"], min_length=1,
        description="fnmatch patterns over parameter names, any of which trains a parameter, e.g. '*.h.3.*' (GPT-2's "
        "block 3), '*layers.3.*' (Llama-style), '*.bias' (biases), '*ln_f*'; refused when none matches.",
    )
