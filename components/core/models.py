"""Causal language models built from a config: no hub download, ever."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel


class ModelConfig(BaseModel):
    """Size of a decoder-only transformer. The defaults give ~1M parameters at vocab 2048."""

    model_config = ConfigDict(extra="forbid")
    architecture: Literal["gpt2", "llama"] = Field("gpt2", description="Transformers architecture to build.")
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_embd: int = Field(128, ge=8, description="Hidden size.")
    n_head: int = Field(4, ge=1, description="Attention heads; must divide n_embd.")
    n_positions: int = Field(128, ge=8, description="Context length in tokens.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on residuals, embeddings and attention.")


def build_causal_lm(cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised causal LM; the same seed gives the same weights."""
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"model.n_embd ({cfg.n_embd}) must be divisible by model.n_head ({cfg.n_head})")
    ids = dict(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if cfg.architecture == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **ids,
        )
        model_cls = GPT2LMHeadModel
    else:
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=4 * cfg.n_embd, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.n_positions,
            attention_dropout=cfg.dropout, tie_word_embeddings=True, **ids,
        )
        model_cls = LlamaForCausalLM
    torch.manual_seed(seed)
    return model_cls(config)


def transformer_blocks(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The repeated blocks of a GPT-2 or Llama model (the units FSDP shards and checkpoints)."""
    if hasattr(model, "transformer"):
        return list(model.transformer.h)
    return list(model.model.layers)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters (tied weights counted once)."""
    seen = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())


def context_length(model) -> int:
    """The context window in tokens of a model or its config (GPT-2's n_positions, Llama's max_position_embeddings)."""
    config = getattr(model, "config", model)
    return getattr(config, "n_positions", None) or config.max_position_embeddings


def load_trained(model_dir) -> PreTrainedModel:
    """A lifecycle model as a user loads it, in eval mode: merged weights (safetensors), the base
    plus its soft prompt when it was prompt-tuned (a soft prompt does not fold into weights), or
    a quantized model rebuilt from its integer weights (components/core/quantize.py)."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    from components.core.quantize import INTEGER, RECIPE, load_quantized

    recipe = model_dir / RECIPE
    if recipe.exists() and json.loads(recipe.read_text())["method"] in INTEGER:  # integer weights: rebuilt, not from_pretrained
        return load_quantized(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    adapter = model_dir / "adapter" / "adapter_config.json"
    if adapter.exists() and json.loads(adapter.read_text()).get("peft_type") == "PROMPT_TUNING":
        import peft

        model = peft.PeftModel.from_pretrained(model, model_dir / "adapter")
    return model.eval()


def weights_bytes(model_dir) -> int:
    """Bytes of a model directory's weight files (its top-level safetensors; not an adapter beside them)."""
    from pathlib import Path

    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
