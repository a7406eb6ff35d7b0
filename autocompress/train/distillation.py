"""Binary knowledge-distillation loss: hard labels plus a teacher's temperature-softened click probability."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autocompress.train.config import DistillConfig


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    config: DistillConfig,
) -> torch.Tensor:
    """Mean KD loss ``alpha * BCE(student, labels) + (1 - alpha) * T^2 * BCE(sigmoid(s/T), sigmoid(t/T))``.

    The soft term is computed from logits (numerically stable); the teacher gets no gradient.
    ``T^2`` keeps the soft term's gradient on the same scale as the hard one for any temperature.
    """
    student = student_logits.float()
    hard = F.binary_cross_entropy_with_logits(student, labels.float())
    if config.alpha >= 1.0:
        return hard
    t = config.temperature
    soft_targets = torch.sigmoid(teacher_logits.detach().float() / t)
    soft = F.binary_cross_entropy_with_logits(student / t, soft_targets)
    return config.alpha * hard + (1.0 - config.alpha) * (t * t) * soft
