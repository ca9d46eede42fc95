"""Group-relative policy optimisation with verifiable rewards, as pure tensor functions.

For each prompt the policy samples a group of G completions; each completion's reward is
compared with the rest of its group, so no value model is needed:

- ``grpo`` (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean(r)) / (std(r) + eps), the
  per-response loss averaged over its tokens, then over responses.
- ``dr_grpo`` (Liu et al. 2025, "Understanding R1-Zero-like training"): A_i = r_i - mean(r)
  (dividing by the std up-weights groups that are nearly all right or all wrong), and the
  token losses summed and divided by a constant, B x max_new_tokens (dividing by each
  response's own length favours long wrong answers and short right ones).
- ``rloo`` (Ahmadian et al. 2024): A_i = r_i - mean of the other G - 1 rewards, the
  leave-one-out baseline (unbiased); = G / (G - 1) x (r_i - mean(r)).

The objective is PPO's clipped ratio over several updates per batch, with the KL to the
frozen reference added to every token's loss as ``beta x KL`` (TRL's `beta` term, not a
reward penalty). The KL estimator is named in config, from Schulman's note
(http://joschu.net/blog/kl-approx.html), with log r = log pi_ref - log pi on tokens sampled
from pi: k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r (TRL's, always >= 0).

Follows TRL's GRPOTrainer (`trl/trainer/grpo_trainer.py`: `_compute_advantages`
with `scale_rewards`, `_compute_loss` with `loss_type` grpo / bnpo / dr_grpo, `epsilon_low`
/ `epsilon_high`, the k3 `per_token_kl`) and TRL's RLOOTrainer for the leave-one-out
baseline. Written here rather than imported: TRL's trainers own the process (Accelerate,
their own generation and optimiser loop) and hold every model in it, while here rollout,
reference and learner are separate Ray actors, so only the loss can be shared, and TRL keeps
it inside a method; trl is also not a dependency of this project.

Shapes: N prompts, G completions each, B = N x G responses, R response positions
(right-padded); `mask` [B, R] is 1 on generated tokens (eos included). Rewards are unitless,
log-probabilities and KL in nats.
"""

from __future__ import annotations

from typing import Literal

import torch

Algorithm = Literal["grpo", "dr_grpo", "rloo"]
Estimator = Literal["k1", "k2", "k3"]
ALGORITHMS: tuple[str, ...] = ("grpo", "dr_grpo", "rloo")


def group_advantages(rewards: torch.Tensor, algorithm: Algorithm, eps: float = 1e-4) -> torch.Tensor:
    """Advantages [N, G] of rewards [N, G] relative to their group (row).

    grpo divides by the group's sample std (unbiased, as TRL's `rewards.view(-1, G).std(1)`)
    plus eps; a group whose rewards are all equal gets zero advantages under every algorithm.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [N, G] with G >= 2, got {tuple(rewards.shape)}")
    rewards = rewards.double()
    centred = rewards - rewards.mean(1, keepdim=True)
    if algorithm == "grpo":
        return (centred / (rewards.std(1, keepdim=True) + eps)).float()
    if algorithm == "dr_grpo":
        return centred.float()
    if algorithm == "rloo":
        g = rewards.shape[1]
        others = (rewards.sum(1, keepdim=True) - rewards) / (g - 1)
        return (rewards - others).float()
    raise ValueError(f"unknown algorithm {algorithm!r} (known: {ALGORITHMS})")


def equal_groups(rewards: torch.Tensor) -> float:
    """Share in [0, 1] of groups (rows of [N, G]) whose rewards are all equal: they carry no signal."""
    return float((rewards.max(1).values == rewards.min(1).values).float().mean())


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Estimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) [B, R] from tokens sampled from pi (nats).

    k1 = log pi - log pi_ref (unbiased, can be negative); k2 = (log pi - log pi_ref)^2 / 2
    (biased, low variance); k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1
    (unbiased, never negative; TRL's GRPO term).
    """
    log_ratio = ref_logprobs - logprobs  # log r, r = pi_ref / pi
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown KL estimator {estimator!r} (known: k1, k2, k3)")


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    algorithm: Algorithm,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    estimator: Estimator = "k3",
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, stats) of one update on B responses.

    logprobs [B, R] under the policy being trained (with grad); old_logprobs [B, R] under the
    policy that sampled them; ref_logprobs [B, R] under the frozen reference (None when
    beta is 0); advantages [B], one per response, spread over its tokens.

    Per token: -min(ratio x A, clip(ratio, 1 - clip_low, 1 + clip_high) x A) + beta x KL.
    Reduced by algorithm: grpo and rloo average each response over its own tokens, then the
    responses; dr_grpo sums every token and divides by B x max_new_tokens (a constant).
    stats (detached scalars): clip_fraction (tokens whose ratio was clipped in the direction
    that stops the gradient, as TRL counts them), kl (mean per token, the named estimator),
    ratio (mean per token).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.reshape(-1, 1).to(ratio.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs, estimator)
        if beta:
            per_token = per_token + beta * kl
    if algorithm == "dr_grpo":
        if max_new_tokens is None:
            raise ValueError("dr_grpo needs max_new_tokens (its constant normaliser)")
        loss = (per_token * mask).sum() / (per_token.shape[0] * max_new_tokens)
    elif algorithm in ("grpo", "rloo"):
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    else:
        raise ValueError(f"unknown algorithm {algorithm!r} (known: {ALGORITHMS})")
    tokens = mask.sum().clamp(min=1)
    was_clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
    stats = {
        "clip_fraction": ((was_clipped.float() * mask).sum() / tokens).detach(),
        "kl": ((kl * mask).sum() / tokens).detach(),
        "ratio": ((ratio * mask).sum() / tokens).detach(),
    }
    return loss, stats
