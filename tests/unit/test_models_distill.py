"""Knowledge-distillation loss."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.distill import distillation_loss


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(8, 4, generator=g),
        torch.randn(8, 4, generator=g),
        torch.randint(0, 4, (8,), generator=g),
    )


def test_alpha_zero_is_plain_cross_entropy():
    student, teacher, y = _batch()
    loss = distillation_loss(student, teacher, y, alpha=0.0, temperature=3.0)
    torch.testing.assert_close(loss, F.cross_entropy(student, y))


def test_matches_the_formula():
    student, teacher, y = _batch()
    T, alpha = 2.5, 0.7
    p_t = torch.softmax(teacher / T, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(student / T, -1))).sum(-1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student, y)
    torch.testing.assert_close(distillation_loss(student, teacher, y, alpha, T), expected)


def test_alpha_one_is_minimised_by_matching_the_teacher():
    student, teacher, y = _batch()
    T = 2.0
    assert distillation_loss(teacher, teacher, y, 1.0, T).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(student, teacher, y, 1.0, T).item() > 0.01

    # gradient descent on free student logits converges to the teacher's distribution
    s = student.clone().requires_grad_(True)
    opt = torch.optim.SGD([s], lr=1.0)
    for _ in range(500):
        loss = distillation_loss(s, teacher, y, 1.0, T)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(torch.softmax(s, -1), torch.softmax(teacher, -1), atol=1e-3, rtol=0)


def test_teacher_gets_no_gradient_and_bad_arguments_raise():
    student, teacher, y = _batch()
    teacher.requires_grad_(True)
    distillation_loss(student.requires_grad_(True), teacher, y, 0.5, 2.0).backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, teacher, y, 1.5, 2.0)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, y, 0.5, 0.0)
