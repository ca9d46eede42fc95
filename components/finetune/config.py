"""Typed config of the finetune phase (the `with:` block of a `uses: finetune` step)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.core.peft_settings import LoraSettings, Method, PromptTuningSettings, SelectiveSettings
from components.train_args import DeepSpeedTrainArgs


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


def check_sweep(sweep: SweepConfig | None, method: str) -> None:
    """A sweep searches LoRA rank: refuse one with another method (finetune's and classify's configs)."""
    if sweep is not None and method != "lora":
        raise ValueError(f"sweep searches LoRA rank: it needs method 'lora', not {method!r}")


class FinetuneConfig(DeepSpeedTrainArgs):
    """Instruction fine-tuning with Ray Train; loss on response tokens only. Defaults: LoRA on the tiny model."""

    method: Method = Field("lora", description="full | selective | lora | prompt_tuning | ia3.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA rank, alpha, dropout and target modules.")
    prompt_tuning: PromptTuningSettings = Field(default_factory=PromptTuningSettings, description="Soft-prompt length and init.")
    selective: SelectiveSettings = Field(default_factory=SelectiveSettings, description="Which parameters train in selective mode.")
    max_steps: int = DeepSpeedTrainArgs.default("max_steps", 600)
    lr: float = DeepSpeedTrainArgs.default(
        "lr", 1e-2, "Peak learning rate (AdamW, betas 0.9/0.95); PEFT methods take larger ones than full fine-tuning."
    )
    warmup_steps: int = DeepSpeedTrainArgs.default("warmup_steps", 20)
    replay_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of each batch that is pretraining text (full-sequence loss), against forgetting."
    )
    eval_every: int = DeepSpeedTrainArgs.default(
        "eval_every", 100, "Validation loss on held-out instructions every N steps (and at the end; ASHA's rungs)."
    )
    checkpoint_every: int = DeepSpeedTrainArgs.default("checkpoint_every", 200)
    max_length: int | None = Field(
        None, ge=8, description="Longest prompt + response in tokens: a longer example is an error naming its line; "
        "None: the model's context. `lifecycle plan` sizes activations at it (a 32k-context base tunes on short examples).",
    )
    max_new_tokens: int = Field(24, ge=1, description="Greedy tokens generated per test prompt for exact match.")
    test_examples: int = Field(400, ge=1, description="Held-out test prompts scored for exact match, before and after "
                               "(fewer than the split: taken from every family in turn).")
    eval_tokens: int = Field(20000, ge=100, description="Pretraining validation tokens scored for perplexity before and after (forgetting).")
    sweep: SweepConfig | None = Field(None, description="Run a Ray Tune sweep over LoRA rank instead of one training run.")

    @model_validator(mode="after")
    def _check(self):
        check_sweep(self.sweep, self.method)
        return self
