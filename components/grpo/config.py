"""Typed config of `uses: grpo`: group-relative RL with verifiable rewards (GRPO, Dr. GRPO, RLOO)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.core.peft_settings import LoraSettings
from components.core.verifiers import BUILTIN_TERMS, load_reward_function

REWARD_MODEL_TERM = "reward_model"


class GRPOConfig(BaseModel):
    """Sample G answers per training prompt, reward each by checkers (and optional user functions or the
    reward model), and push up the ones better than their group; no value model."""

    model_config = ConfigDict(extra="forbid")
    algorithm: Literal["grpo", "dr_grpo", "rloo"] = Field(
        "grpo", description="grpo: advantages centred and divided by the group's std, loss averaged per response; "
        "dr_grpo: centred only, token losses summed over a constant; rloo: leave-one-out baseline.",
    )
    iterations: int = Field(20, ge=1, description="Iterations: each samples a batch of groups, then updates the policy.")
    prompts_per_iteration: int = Field(16, ge=1, description="Training prompts drawn per iteration.")
    group_size: int = Field(8, ge=2, description="G: completions sampled per prompt (the group their rewards are compared in).")
    updates_per_batch: int = Field(2, ge=1, description="Passes over each batch of groups (the ratio is clipped after the first).")
    minibatch: int = Field(64, ge=1, description="Completions per gradient step.")
    max_new_tokens: int = Field(16, ge=1, description="Longest sampled completion in tokens (Dr. GRPO's constant normaliser).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    rewards: dict[str, float] = Field(
        default_factory=lambda: {"correct": 1.0},
        description="Reward terms and their weights: 'correct' (the family's checker), 'format' (the answer's shape), "
        "'reward_model' (the trained reward model's score; needs a reward_model input) or a user function "
        "'module:function' called as fn(prompts=, completions=, references=, families=) -> list[float].",
    )
    prompts: Literal["train", "fresh"] = Field(
        "train", description="train: the instruction step's training prompts; fresh: new prompts from the bundled task "
        "generators (another seed; none that is in any split), with their generated answers as references.",
    )
    fresh_per_family: int = Field(400, ge=1, description="prompts: fresh: prompts generated per family.")
    numeric_tolerance: float = Field(0.0, ge=0, description="Absolute tolerance of the numeric families' checker (add, count).")
    on_bad_reward: Literal["raise", "skip"] = Field(
        "raise", description="A user reward function that raises, returns NaN or the wrong length: raise names the "
        "prompt; skip drops that prompt's group from the update and counts it (skipped_groups).",
    )
    method: Literal["lora", "full"] = Field("lora", description="lora: train an adapter on the policy; full: all its weights.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA rank, alpha, dropout and target modules.")
    lr: float = Field(1e-3, gt=0, description="Learning rate (AdamW).")
    beta: float = Field(0.04, ge=0, description="Weight of the per-token KL to the reference in the loss (TRL's beta); 0: no reference actor.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator of the loss term (Schulman's k1, k2, k3).")
    clip_low: float = Field(0.2, gt=0, lt=1, description="Lower ratio clip: 1 - clip_low.")
    clip_high: float = Field(0.2, gt=0, description="Upper ratio clip: 1 + clip_high (DAPO's clip-higher raises it).")
    grad_clip: float = Field(1.0, gt=0, description="Clip the gradient's L2 norm to this value.")
    rollout_actors: int = Field(2, ge=1, description="Rollout actors sampling in parallel (fewer when the cluster has too few CPUs).")
    cpus_per_actor: float = Field(0.5, gt=0, description="CPUs reserved by each actor (rollout, reference, learner, reward model).")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs reserved by each actor (fractions share one GPU).")
    checkpoint_every: int = Field(5, ge=1, description="Save the learner's weights, optimiser and loop state every N iterations.")
    max_failures: int = Field(2, ge=0, description="Times the learner or reference may die (all restart from the last checkpoint); "
                              "a dead rollout actor is replaced on its own and does not count.")
    test_examples: int = Field(300, ge=1, description="Held-out test examples (from every family in turn) scored before and after.")
    eval_max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per held-out prompt.")
    seed: int = Field(0, description="Seed of prompt order, sampling and adapter initialisation.")

    @field_validator("rewards")
    @classmethod
    def _terms(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one reward term")
        for name in v:
            if name not in (*BUILTIN_TERMS, REWARD_MODEL_TERM) and ":" not in name:
                raise ValueError(f"unknown reward term {name!r}: use {', '.join(BUILTIN_TERMS)}, {REWARD_MODEL_TERM} or 'module:function'")
        return v

    @property
    def user_functions(self) -> list[str]:
        return [name for name in self.rewards if ":" in name]


def check(cfg: GRPOConfig, workdir: Path | None = None) -> GRPOConfig:
    """Before Ray starts: every `module:function` reward term imports and takes the reward arguments."""
    for name in cfg.user_functions:
        try:
            load_reward_function(name)
        except ValueError as e:
            raise ValueError(f"field 'rewards': {e}") from None
    return cfg
