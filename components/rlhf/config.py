"""Typed configs of the RLHF phases: `uses: reward`, `uses: ppo`, `uses: dpo`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.core.peft_settings import LoraSettings
from components.train_args import DeepSpeedTrainArgs


class PairwiseTraining(DeepSpeedTrainArgs):
    """What the reward model and DPO share: a Ray Train run over preference pairs."""

    micro_batch_size: int = DeepSpeedTrainArgs.default("micro_batch_size", 16, "Pairs per worker per step.")
    log_every: int = DeepSpeedTrainArgs.default("log_every", 20, "Report training loss and pair accuracy every N steps.")
    eval_every: int = DeepSpeedTrainArgs.default("eval_every", 100, "Held-out pair accuracy every N steps (and at the end).")
    test_pairs: int = Field(400, ge=1, description="Held-out pairs scored before and after training.")
    max_length: int | None = Field(
        None, ge=8, description="Longest prompt + answer in tokens: a longer pair is an error naming its line; None: the "
        "model's context. `lifecycle plan` sizes activations at it.",
    )


class RewardConfig(PairwiseTraining):
    """A reward model: the fine-tuned model with a scalar scoring head, trained with the Bradley-Terry loss."""


class DPOConfig(PairwiseTraining):
    """Direct preference optimization of the fine-tuned model against its frozen self (no reward model, no sampling)."""

    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO's loss; ipo: IPO's squared loss on the log-ratio margin.")
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (DPO's beta; IPO's margin is 1 / (2 beta)).")
    nll_weight: float = Field(
        0.0, ge=0, description="Add this times the chosen answer's per-token NLL to the loss (RPO, Pang et al. 2024): "
        "plain DPO can lower the chosen answer's likelihood along with the rejected one's; this keeps it up.",
    )
    method: Literal["lora", "full"] = Field("lora", description="lora: train an adapter (the reference is the model with it off); full: all weights.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA rank, alpha, dropout and target modules.")
    lr: float = PairwiseTraining.default("lr", 2e-3)
    max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per held-out prompt for exact match, before and after.")


class PPOConfig(BaseModel):
    """PPO with a KL penalty: policy, reference, reward and value models as Ray actors."""

    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(30, ge=1, description="PPO iterations (each: one batch of rollouts, then ppo_epochs of updates).")
    rollout_batch: int = Field(64, ge=2, description="Prompts sampled per iteration (one response each).")
    minibatch: int = Field(32, ge=1, description="Responses per gradient step.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    max_new_tokens: int = Field(16, ge=1, description="Longest sampled response in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA on the policy (the reference is the frozen input model).")
    lr: float = Field(1e-3, gt=0, description="Policy learning rate (AdamW, adapter weights).")
    value_lr: float = Field(5e-4, gt=0, description="Value model learning rate (AdamW, all its weights).")
    kl_coef: float = Field(0.1, ge=0, description="Initial weight of the per-token KL penalty (nats of reward per nat of KL).")
    target_kl: float | None = Field(
        6.0, gt=0, description="Adaptive control: steer the mean per-response KL to this many nats; None keeps kl_coef fixed."
    )
    kl_horizon: int = Field(640, ge=1, description="Adaptive control: responses over which the coefficient may change by about e^0.2.")
    ptx_coef: float = Field(
        0.0, ge=0,
        description="PPO-ptx (InstructGPT): weight of the chosen answers' negative log-likelihood (nats per token), added "
        "to every policy step on as many training prompts as the minibatch has rollouts; it keeps what fine-tuning "
        "taught while the reward pulls. 0 is plain PPO.",
    )
    gamma: float = Field(1.0, gt=0, le=1, description="Discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip: float = Field(0.2, gt=0, description="Policy ratio clip range.")
    value_clip: float = Field(0.2, gt=0, description="Value update clip range.")
    grad_clip: float = Field(1.0, gt=0, description="Clip each model's gradient L2 norm to this value.")
    cpus_per_role: float = Field(0.5, gt=0, description="CPUs reserved by each of the four role actors.")
    gpus_per_role: float = Field(0.0, ge=0, description="GPUs reserved by each role actor (fractions share one GPU).")
    checkpoint_every: int = Field(5, ge=1, description="Save policy, value model and controller state every N iterations.")
    max_failures: int = Field(2, ge=0, description="Times a dead actor is replaced (all roles reload the last checkpoint) before the step fails.")
    test_prompts: int = Field(400, ge=1, description="Held-out prompts scored (reward, exact match, KL) before and after.")
    eval_max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per held-out prompt.")
    seed: int = Field(0, description="Seed of prompt order, sampling and adapter initialisation.")

    @model_validator(mode="after")
    def _check(self):
        if self.minibatch > self.rollout_batch:
            raise ValueError(f"minibatch ({self.minibatch}) must not exceed rollout_batch ({self.rollout_batch})")
        return self
