"""Typed config of the pretrain phase (the `with:` block of a `uses: pretrain` step)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.core.model_config import ModelConfig
from components.train_args import DeepSpeedTrainArgs


class PretrainConfig(DeepSpeedTrainArgs):
    """Causal-LM pretraining with Ray Train. Defaults: the ~1M-parameter tiny model on 2 CPU workers."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture and size of the model built from config.")
    zero_stage: int = DeepSpeedTrainArgs.default("zero_stage", 3)
    cpu_offload: bool = Field(False, description="DeepSpeed: keep optimizer states (and at stage 3 weights) in CPU memory.")
    max_steps: int = DeepSpeedTrainArgs.default("max_steps", 400)
    micro_batch_size: int = DeepSpeedTrainArgs.default("micro_batch_size", 16, "Sequences per worker per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = DeepSpeedTrainArgs.default("lr", 3e-3)
    weight_decay: float = DeepSpeedTrainArgs.default("weight_decay", 0.01)
    warmup_steps: int = DeepSpeedTrainArgs.default("warmup_steps", 30)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 mixed precision on a GPU, fp32 on CPU.")
    activation_checkpointing: Literal["auto", "on", "off"] = Field("auto", description="Recompute block activations in backward; auto: on a GPU only.")
    log_every: int = DeepSpeedTrainArgs.default("log_every", 20, "Report loss, learning rate and throughput every N steps.")
    eval_every: int = DeepSpeedTrainArgs.default("eval_every", 100, "Compute validation loss every N steps (and at the end).")
    eval_tokens: int = Field(20000, ge=100, description="Held-out tokens scored for perplexity before and after training.")

    @model_validator(mode="after")
    def _check(self):
        if self.model.n_embd % self.model.n_head:
            raise ValueError(f"model.n_embd ({self.model.n_embd}) must be divisible by model.n_head ({self.model.n_head})")
        return self
