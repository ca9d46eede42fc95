"""Preference losses: the reward model's Bradley-Terry loss and DPO (with its IPO variant).

Both learn from pairs (prompt, chosen y_w, rejected y_l). Shapes: one value per pair, [B].

- Bradley-Terry (Ouyang et al. 2022): P(y_w > y_l) = sigmoid(r_w - r_l) for a scalar reward
  r; the loss is -log sigmoid(r_w - r_l), so only reward differences matter.
- DPO (Rafailov et al. 2023): the policy's implicit reward is beta * log(pi(y|x) / pi_ref(y|x));
  putting it in Bradley-Terry gives -log sigmoid(beta * (h_w - h_l)) with
  h = log pi(y|x) - log pi_ref(y|x), a sequence log-ratio (sum over response tokens).
- IPO (Azar et al. 2023): (h_w - h_l - 1 / (2 beta))^2, a squared loss that keeps the margin
  finite where DPO would push it to infinity on deterministic preferences.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from components.core.sft import IGNORE_INDEX


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(chosen - rejected) over pairs; chosen, rejected: [B] scalar rewards."""
    return -F.logsigmoid(chosen - rejected).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
    kind: Literal["sigmoid", "ipo"] = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen_rewards, rejected_rewards) from sequence log-probabilities, each [B] in nats.

    The implicit rewards beta * (log pi - log pi_ref) are returned detached, for logging
    (reward accuracy = share of pairs with chosen_rewards > rejected_rewards).
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    margin = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
    elif kind == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}: expected sigmoid or ipo")
    return losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def per_token_nll(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -logprobs / (labelled tokens): logprobs [B] from `sequence_logprobs`, labels [B, T]."""
    tokens = (labels[:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)
    return (-logprobs / tokens).mean()


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(label) over the labelled positions of each row: [B] nats.

    logits: [B, T, V] from a causal LM; labels: [B, T] with IGNORE_INDEX on prompt and padding.
    The logits at position t predict the token at t + 1, as in the LM loss.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)
