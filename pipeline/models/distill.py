"""Knowledge distillation (Hinton et al. 2015): a small student learns from a bigger teacher."""

import torch.nn.functional as F


def distillation_loss(student_logits, teacher_logits, targets, alpha=0.5, temperature=2.0):
    """α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·CE(student, targets).

    The T² factor keeps the soft term's gradient magnitude independent of T. The teacher is
    detached: only the student learns. KL and CE are averaged over the batch.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    T = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=-1),
        F.log_softmax(teacher_logits.detach() / T, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, targets)
    return alpha * T * T * soft + (1.0 - alpha) * hard
