"""Typed config of the pretrain phase (the `with:` block of a `uses: pretrain` step)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.core.models import ModelConfig


class PretrainConfig(BaseModel):
    """Causal-LM pretraining with Ray Train. Defaults: the ~1M-parameter tiny model on 2 CPU workers."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Architecture and size of the model built from config.")
    strategy: Literal["fsdp", "ddp", "deepspeed"] = Field("fsdp", description="Data-parallel strategy: FSDP2 fully_shard, DDP or DeepSpeed ZeRO.")
    zero_stage: int = Field(3, ge=1, le=3, description="DeepSpeed ZeRO stage (1: optimizer states, 2: +gradients, 3: +weights sharded).")
    cpu_offload: bool = Field(False, description="DeepSpeed: keep optimizer states (and at stage 3 weights) in CPU memory.")
    max_steps: int = Field(400, ge=1, description="Optimizer steps.")
    micro_batch_size: int = Field(16, ge=1, description="Sequences per worker per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (AdamW, betas 0.9/0.95).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(30, ge=0, description="Linear warmup steps before the cosine decay.")
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient L2 norm to this value.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 mixed precision on a GPU, fp32 on CPU.")
    activation_checkpointing: Literal["auto", "on", "off"] = Field("auto", description="Recompute block activations in backward; auto: on a GPU only.")
    log_every: int = Field(20, ge=1, description="Report loss, learning rate and throughput every N steps.")
    eval_every: int = Field(100, ge=1, description="Compute validation loss every N steps.")
    checkpoint_every: int = Field(100, ge=1, description="Save a resumable Ray Train checkpoint every N steps.")
    max_failures: int = Field(3, ge=0, description="Worker-group restarts (from the last checkpoint) before the step fails.")
    eval_tokens: int = Field(20000, ge=100, description="Held-out tokens scored for perplexity before and after training.")
    seed: int = Field(0, description="Seed for initial weights and data order.")

    @model_validator(mode="after")
    def _check(self):
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.model.n_embd % self.model.n_head:
            raise ValueError(f"model.n_embd ({self.model.n_embd}) must be divisible by model.n_head ({self.model.n_head})")
        return self
