"""The knowledge-distillation loss (Hinton et al., 2015): match the teacher's softened distribution.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))  +  (1 - alpha) * CE(student, labels)

T > 1 flattens both distributions so the student learns from the teacher's whole ranking of
tokens ("dark knowledge"), not only its top choice; the T^2 factor keeps the soft term's gradient
on the same scale as the hard term's when T changes. alpha = 0 is plain supervised training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.core.sft import IGNORE_INDEX


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, parts) for a causal LM batch.

    student_logits, teacher_logits: [B, T, V] over the same vocabulary.
    labels: [B, T] token ids, IGNORE_INDEX where no hard target (prompt, padding); the logits at t
        predict the token at t + 1, as in Hugging Face causal LMs.
    attention_mask: [B, T] 1 on real tokens. The soft term covers every real next-token position
        (the teacher has a distribution there even on the prompt); the hard term the labelled ones.
    Returns the scalar loss and its parts in nats per token: {"kl": ..., "ce": ...}.
    """
    _check(student_logits, teacher_logits, temperature, alpha)
    student, teacher = student_logits[:, :-1].float(), teacher_logits[:, :-1].float()
    targets = labels[:, 1:]
    positions = (attention_mask[:, 1:] > 0) & (attention_mask[:, :-1] > 0)
    kl = (_soft_kl(student, teacher, temperature) * positions).sum() / positions.sum().clamp(min=1)

    ce = F.cross_entropy(student.reshape(-1, student.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach())}


def classifier_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, parts) for a classifier batch, the same formula as `distillation_loss`.

    student_logits, teacher_logits: [B, C] (one label per example) or [B, T, C] (one per token).
    labels: [B] or [B, T] class ids, IGNORE_INDEX where nothing is scored (a token classifier's
        padding and non-first sub-tokens); both terms cover the scored positions only, since the
        teacher was trained, and is meaningful, there alone.
    Returns the scalar loss and its parts in nats per scored position: {"kl": ..., "ce": ...}.
    """
    _check(student_logits, teacher_logits, temperature, alpha)
    classes = student_logits.shape[-1]
    student, teacher, targets = student_logits.reshape(-1, classes).float(), teacher_logits.reshape(-1, classes).float(), labels.reshape(-1)
    scored = targets != IGNORE_INDEX
    kl = _soft_kl(student[scored], teacher[scored], temperature).mean()
    ce = F.cross_entropy(student[scored], targets[scored])
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach())}


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, alpha: float) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ")
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")


def _soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the distributions softened by `temperature`, per position: [..., C] -> [...] (nats)."""
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
