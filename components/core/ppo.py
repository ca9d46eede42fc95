"""PPO for language models, as pure tensor functions (Ziegler et al. 2019; Ouyang et al. 2022).

The RL framing of the source document: the agent is the instruction-tuned LLM, an action is
the next token, the action space is the vocabulary, an episode is one response, and the
reward model scores the finished response. Each response token t gets the reward

    r_t = -kl_coef * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))     (+ the reward-model score at the last token)

so the policy is paid for the score and charged for drifting from the frozen reference.

Shapes: B responses, R response positions (right-padded); `mask` [B, R] is 1 on generated
tokens (the eos included) and 0 on padding after it. Rewards and KL are in nats.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under `logits`: logits [B, R, V] predicting tokens [B, R] -> [B, R]."""
    return torch.gather(logits.float().log_softmax(-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: [B, R, V] -> [B, R] nats."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (a scalar)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x shifted and scaled to zero mean, unit variance over the masked positions (0 elsewhere)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [B, R], kl [B, R]): the per-token KL penalty, plus each score [B] on its last token.

    kl is the sampled estimate log pi - log pi_ref per token; its sum over a response
    estimates KL(pi || pi_ref) of that response.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """(advantages, returns), each [B, R]: generalized advantage estimation over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, with
    V = 0 after the last token; returns = A + V are the value targets.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, clip_fraction): the clipped surrogate -min(ratio * A, clip(ratio, 1 +- clip) * A), masked mean."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    loss = masked_mean(-torch.minimum(unclipped, clipped), mask)
    clip_fraction = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return loss, clip_fraction.detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """0.5 * max((V - G)^2, (V_clipped - G)^2), masked mean; V_clipped stays within clip of the old value."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n_responses: int) -> float:
    """Ziegler et al.'s proportional controller: raise the coefficient when KL is above target, lower it below.

    kl: the mean per-response KL just measured (nats); the error is clipped to +-20%.
    """
    error = max(-0.2, min(0.2, kl / target - 1))
    return coef * (1 + error * n_responses / horizon)


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rollouts as one right-padded batch, and where each response sits in it.

    input_ids, attention_mask: [B, T] (prompt + response, then padding);
    tokens, mask: [B, R] the response tokens (pad_id after the end) and 1 where there is one;
    index: [B, R] the position whose output predicts response token j, len(prompt) - 1 + j
    (clamped inside the row), for gathering logits or values with `at_response`.
    """
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    reach = max(1, max(map(len, responses)))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    tokens = torch.full((len(prompts), reach), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), reach))
    index = torch.zeros((len(prompts), reach), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        row = p + r
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
        index[i] = torch.clamp(torch.arange(reach) + len(p) - 1, max=width - 1)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "tokens": tokens, "mask": mask, "index": index}


def at_response(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of x [B, T, ...] at index [B, R] -> [B, R, ...] (logits or values at the response positions)."""
    shape = index.shape + x.shape[2:]
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, expanded)
