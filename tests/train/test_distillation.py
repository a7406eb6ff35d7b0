import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autocompress.train import DistillConfig, distillation_loss


def _logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(64, generator=g) * 2
    teacher = torch.randn(64, generator=g) * 3
    labels = (torch.rand(64, generator=g) < 0.4).float()
    return student, teacher, labels


def _bce(p: np.ndarray, q: np.ndarray) -> float:
    """Mean BCE of probabilities p against targets q, in float64."""
    return float(np.mean(-(q * np.log(p) + (1 - q) * np.log(1 - p))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_alpha_one_is_plain_bce_on_labels(temperature: float) -> None:
    student, teacher, labels = _logits()
    loss = distillation_loss(student, teacher, labels, DistillConfig(temperature=temperature, alpha=1.0))
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(student, labels).item(), rel=1e-6)


def test_mixed_loss_matches_the_formula() -> None:
    student, teacher, labels = _logits()
    s, t, y = (x.double().numpy() for x in (student, teacher, labels))
    temperature, alpha = 2.0, 0.3
    expected = alpha * _bce(_sigmoid(s), y) + (1 - alpha) * temperature**2 * _bce(
        _sigmoid(s / temperature), _sigmoid(t / temperature)
    )
    loss = distillation_loss(student, teacher, labels, DistillConfig(temperature=temperature, alpha=alpha))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_ignores_labels_and_is_stationary_at_the_teacher() -> None:
    _, teacher, labels = _logits()
    config = DistillConfig(temperature=3.0, alpha=0.0)
    student = teacher.clone().requires_grad_(True)
    loss = distillation_loss(student, teacher, labels, config)
    loss.backward()
    assert student.grad is not None
    assert student.grad.abs().max().item() < 1e-7
    flipped = distillation_loss(teacher, teacher, 1 - labels, config)
    assert flipped.item() == pytest.approx(loss.item())


def test_teacher_receives_no_gradient() -> None:
    student, teacher, labels = _logits()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    distillation_loss(student, teacher, labels, DistillConfig(alpha=0.5)).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum().item() > 0
