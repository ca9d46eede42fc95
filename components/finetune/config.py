"""Typed config of the finetune phase (the `with:` block of a `uses: finetune` step)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.core.peft_methods import LoraSettings, Method, PromptTuningSettings, SelectiveSettings


class SweepConfig(BaseModel):
    """A Ray Tune search over LoRA rank (and optionally alpha and learning rate); the best trial is the output."""

    model_config = ConfigDict(extra="forbid")
    ranks: list[int] = Field([2, 4, 8, 16, 32], min_length=1, description="LoRA ranks to try (grid).")
    alpha_per_rank: list[float] = Field(
        [2.0], min_length=1, description="alpha = this x rank, grid-searched (2.0 keeps the update scale constant)."
    )
    lrs: list[float] | None = Field(None, min_length=1, description="Learning rates to grid-search; None: the step's `lr`.")
    scheduler: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early; fifo runs every trial to max_steps.")
    grace_period: int = Field(2, ge=1, description="ASHA: evaluations (every eval_every steps) before a trial may be stopped.")
    reduction_factor: int = Field(2, ge=2, description="ASHA: keep the top 1/reduction_factor of trials at each rung.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials at once; each one is a Ray Train run with the step's workers.")

    @model_validator(mode="after")
    def _check(self):
        if any(r < 1 for r in self.ranks):
            raise ValueError(f"ranks must all be >= 1, got {self.ranks}")
        return self


class FinetuneConfig(BaseModel):
    """Instruction fine-tuning with Ray Train; loss on response tokens only. Defaults: LoRA on the tiny model."""

    model_config = ConfigDict(extra="forbid")
    method: Method = Field("lora", description="full | selective | lora | prompt_tuning | ia3.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA rank, alpha, dropout and target modules.")
    prompt_tuning: PromptTuningSettings = Field(default_factory=PromptTuningSettings, description="Soft-prompt length and init.")
    selective: SelectiveSettings = Field(default_factory=SelectiveSettings, description="Which parameters train in selective mode.")
    strategy: Literal["fsdp", "ddp", "deepspeed"] = Field("fsdp", description="Data-parallel strategy: FSDP2, DDP or DeepSpeed ZeRO.")
    zero_stage: int = Field(2, ge=1, le=3, description="DeepSpeed ZeRO stage.")
    max_steps: int = Field(600, ge=1, description="Optimizer steps.")
    micro_batch_size: int = Field(16, ge=1, description="Examples per worker per step.")
    lr: float = Field(1e-2, gt=0, description="Peak learning rate (AdamW); PEFT methods take larger ones than full fine-tuning.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps before the cosine decay.")
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient L2 norm to this value.")
    replay_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of each batch that is pretraining text (full-sequence loss), against forgetting."
    )
    log_every: int = Field(20, ge=1, description="Report training loss every N steps.")
    eval_every: int = Field(100, ge=1, description="Validation loss on held-out instructions every N steps (ASHA's rungs).")
    checkpoint_every: int = Field(200, ge=1, description="Save a resumable checkpoint every N steps.")
    max_failures: int = Field(3, ge=0, description="Worker-group restarts (from the last checkpoint) before the step fails.")
    max_new_tokens: int = Field(24, ge=1, description="Greedy tokens generated per test prompt for exact match.")
    test_examples: int = Field(400, ge=1, description="Held-out test prompts scored for exact match, before and after (fewer than the split: taken from every family in turn).")
    eval_tokens: int = Field(20000, ge=100, description="Pretraining validation tokens scored for perplexity before and after (forgetting).")
    seed: int = Field(0, description="Seed of data order and adapter initialisation.")
    sweep: SweepConfig | None = Field(None, description="Run a Ray Tune sweep over LoRA rank instead of one training run.")

    @model_validator(mode="after")
    def _check(self):
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        if self.sweep is not None and self.method != "lora":
            raise ValueError(f"sweep searches LoRA rank: it needs method 'lora', not {self.method!r}")
        return self
