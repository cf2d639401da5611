"""Checkers for chapter 04 (distillation): soft targets and the distillation loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import Case, CheckResult, check_function

__all__ = ["reference_soft_targets", "check_soft_targets", "reference_distillation_loss", "check_distillation_loss"]


def reference_soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) over the vocabulary (last) dimension."""
    from ..distillation import soft_targets

    return soft_targets(logits, temperature)


def _soft_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    return [Case((torch.randn(2, 3, 10, generator=gen) * 3, t), label=f"logits [2, 3, 10], T = {t}")
            for t in (1.0, 2.0, 0.5, 5.0)]


def _diagnose_soft(got, expected, case: Case) -> str | None:
    logits, t = case.args
    if not isinstance(got, torch.Tensor):
        return None
    if got.shape == expected.shape and torch.allclose(got.float(), F.softmax(logits * t, -1), atol=1e-5):
        return "divide the logits by the temperature; you multiplied."
    if got.shape == expected.shape and torch.allclose(got.float(), F.softmax(logits, -1) ** (1 / t), atol=1e-5):
        return "raising probabilities to 1/T needs renormalising; simpler: softmax(logits / T)."
    if got.shape == expected.shape and torch.allclose(got.float(), logits / t, atol=1e-5):
        return "apply softmax to logits / T so that each row sums to 1."
    if got.shape == expected.shape and torch.allclose(got.float(), F.softmax(logits / t, 0), atol=1e-5):
        return "softmax over the vocabulary, the last dimension (dim=-1)."
    return None


def check_soft_targets(fn) -> CheckResult:
    """Check ``fn(logits, temperature) -> probabilities``."""
    return check_function(fn, reference_soft_targets, _soft_cases(), name="soft_targets", diagnose=_diagnose_soft)


def reference_distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float):
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher || student), shifted, -100 labels left out."""
    from ..distillation import distillation_loss

    return distillation_loss(student_logits, teacher_logits, labels, temperature, alpha)


def _variant(student, teacher, labels, t, alpha, *, t2=True, reverse=False, shift=True, mask=True,
             swap_alpha=False, batchmean=False, student_t=True):
    """The loss computed with one common mistake (used to recognise it): no T**2, reverse KL, no
    shift, -100 labels kept in the KL, alpha and 1 - alpha swapped, the KL summed over positions
    and divided by the batch size (``F.kl_div(..., reduction="batchmean")`` on [batch, seq, vocab]),
    or the student's logits not divided by T."""
    s, te, y = (student[:, :-1], teacher[:, :-1], labels[:, 1:]) if shift else (student, teacher, labels)
    keep = (y != -100) if mask else torch.ones_like(y, dtype=torch.bool)
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]).double(), y.reshape(-1), ignore_index=-100)
    log_t, log_s = F.log_softmax(te.double() / t, -1), F.log_softmax(s.double() / (t if student_t else 1.0), -1)
    log_p, log_q = (log_s, log_t) if reverse else (log_t, log_s)
    per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    kl = per_position[keep].sum() / s.shape[0] if batchmean else per_position[keep].mean()
    a = 1 - alpha if swap_alpha else alpha
    return (a * ce + (1 - a) * (t ** 2 if t2 else 1.0) * kl).item()


def _loss_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    cases = []
    for (b, n, v, t, alpha, label) in [(2, 6, 11, 2.0, 0.5, "T = 2, alpha = 0.5"),
                                       (1, 8, 7, 4.0, 0.2, "T = 4, alpha = 0.2"),
                                       (3, 5, 13, 1.0, 0.0, "T = 1, alpha = 0 (pure distillation)"),
                                       (2, 7, 9, 3.0, 0.7, "T = 3, alpha = 0.7, first tokens unlabelled (-100)")]:
        student = torch.randn(b, n, v, generator=gen) * 2
        teacher = torch.randn(b, n, v, generator=gen) * 2
        labels = torch.randint(0, v, (b, n), generator=gen)
        if "-100" in label:
            labels[:, :3] = -100
        cases.append(Case((student, teacher, labels, t, alpha), label=label))
    return cases


def _diagnose_loss(got, expected, case: Case) -> str | None:
    got = float(got)
    args = case.args
    hints = [
        (dict(t2=False), "multiply the KL term by T**2: softening by T shrinks its gradients by 1/T^2."),
        (dict(reverse=True), "KL(teacher || student) weighs by the teacher's probabilities: "
                             "sum p_teacher * (log p_teacher - log p_student). You computed the reverse KL."),
        (dict(shift=False), "the logits at position t predict token t+1: use logits[:, :-1] and labels[:, 1:]."),
        (dict(mask=False), "leave out positions whose label is -100 in the KL term too."),
        (dict(swap_alpha=True), "alpha weighs the cross-entropy with the labels; (1 - alpha) the distillation term."),
        (dict(batchmean=True), "average the KL over the predicted tokens, not over the batch: "
                               "F.kl_div(..., reduction='batchmean') on [batch, seq, vocab] divides by the batch size only."),
        (dict(student_t=False), "soften the student's logits with the same temperature: log_softmax(student_logits / T)."),
    ]
    for flags, hint in hints:
        if math.isclose(got, _variant(*args, **flags), rel_tol=1e-4, abs_tol=1e-6):
            return hint
    return None


def check_distillation_loss(fn) -> CheckResult:
    """Check ``fn(student_logits, teacher_logits, labels, temperature, alpha) -> scalar loss``."""
    return check_function(fn, reference_distillation_loss, _loss_cases(), name="distillation_loss",
                          diagnose=_diagnose_loss)
