"""Fine-tuning methods: which weights train. Full, selective, and the PEFT families through `peft`.

- full: every weight trains.
- selective: only parameters whose names match chosen patterns train (blocks, layers, biases).
- lora (reparameterization): W + (alpha / r) * B @ A with A [r, in], B [out, r]; W stays frozen.
  A 512 x 64 weight at r = 8 trains 8 * (512 + 64) = 4,608 parameters instead of 32,768.
- prompt_tuning (additive): trainable soft-prompt embeddings prepended to the input.
- ia3 (additive): learned vectors that rescale keys, values and feed-forward activations.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

Method = Literal["full", "selective", "lora", "prompt_tuning", "ia3"]

# Projection names per architecture, for defaults and for error messages.
# T5 names its attention projections q, k, v, o and its feed-forward wi, wo (encoder and decoder alike).
ATTENTION = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "t5": ["q", "v"]}
IA3_TARGETS = {"gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]), "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
               "t5": (["k", "v", "wo"], ["wo"])}


class LoraSettings(BaseModel):
    """LoRA: rank-r update B @ A on the target projections, scaled by alpha / r."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1, description="Rank of the update; trainable parameters grow linearly with it.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input path during training.")
    target_modules: list[str] | None = Field(
        None, min_length=1,
        description="Module names (or name suffixes) that get LoRA; None: the attention projections "
        "(gpt2: c_attn; llama: q_proj, v_proj; t5: q, v).",
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
        description="fnmatch patterns over parameter names, e.g. '*.h.3.*' (block 3), '*.bias' (biases), '*ln_f*'.",
    )


def apply_method(model, method: Method, lora: LoraSettings, prompt_tuning: PromptTuningSettings,
                 selective: SelectiveSettings, tokenizer=None, task_type: str | None = None,
                 modules_to_save: list[str] | None = None):
    """Return the model to train with `method`; base weights not trained have requires_grad False.

    For the peft methods the result is a `PeftModel` wrapping `model` (whose weights it shares).
    task_type: peft's task type; None: CAUSAL_LM or SEQ_2_SEQ_LM by the model. A task head's type
    (SEQ_CLS, TOKEN_CLS) makes peft train the new classifier too; modules_to_save (lora) adds more
    modules trained whole (e.g. a new pooler).
    Raises ValueError naming the field when a target module or pattern matches nothing.
    """
    import peft

    arch = model.config.model_type
    # peft's task type picks the wrapper (PeftModelForCausalLM / ForSeq2SeqLM / ...) and how it generates.
    task_type = task_type or ("SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else "CAUSAL_LM")
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "selective":
        names = [n for n, _ in model.named_parameters()]
        for pattern in selective.trainable:
            if not any(fnmatch.fnmatch(n, pattern) for n in names):
                raise ValueError(f"selective.trainable: pattern {pattern!r} matches no parameter (e.g. {names[:3]})")
        for name, p in model.named_parameters():
            p.requires_grad_(any(fnmatch.fnmatch(name, pat) for pat in selective.trainable))
        return model
    if method == "lora":
        targets = lora.target_modules or ATTENTION.get(arch)  # None: peft's default for the architecture (bert: query, value)
        if targets:
            _check_targets(model, targets, "lora.target_modules")
        config = peft.LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
            fan_in_fan_out=arch == "gpt2",  # GPT-2's Conv1D stores weights as [in, out]
            task_type=task_type, modules_to_save=modules_to_save,
        )
        return peft.get_peft_model(model, config)
    if method == "ia3":
        targets, feedforward = IA3_TARGETS[arch]
        config = peft.IA3Config(target_modules=targets, feedforward_modules=feedforward,
                                fan_in_fan_out=arch == "gpt2", task_type=task_type)
        return peft.get_peft_model(model, config)
    if method == "prompt_tuning":
        init = dict(prompt_tuning_init="RANDOM")
        if prompt_tuning.init_text:
            if tokenizer is None:
                raise ValueError("prompt_tuning.init_text needs the tokenizer")
            init = dict(prompt_tuning_init="TEXT", prompt_tuning_init_text=prompt_tuning.init_text,
                        tokenizer_name_or_path=tokenizer.name_or_path)
        config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=prompt_tuning.num_virtual_tokens, **init)
        return peft.get_peft_model(model, config)
    raise ValueError(f"method: unknown {method!r}")


def _check_targets(model: torch.nn.Module, targets: list[str], field: str) -> None:
    names = [n for n, _ in model.named_modules()]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 2})
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise ValueError(f"{field}: no module named {t!r} in this {model.config.model_type} model (weight-bearing modules: {linear})")


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied weights counted once."""
    seen = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values())
