"""Knowledge distillation: train a small student to match a large teacher's next-token distribution.

Soft targets at temperature ``T``: ``p_T = softmax(z / T)`` (``T > 1`` flattens the distribution,
``T < 1`` sharpens it). The loss of Hinton et al. (2015), per predicted token, averaged over the
tokens that have a label:

    L = alpha * CE(student, labels) + (1 - alpha) * T**2 * KL( p_teacher,T || p_student,T )

    KL(p || q) = sum_v p_v * (log p_v - log q_v)

The ``T**2`` keeps the soft term's gradients the same size whatever ``T`` (they scale as 1/T^2).
Forward KL (teacher first) is *mean-seeking*: the student must put mass wherever the teacher
does. Reverse KL, ``KL(p_student || p_teacher)`` (``reverse=True``), is *mode-seeking*: the
student may ignore some of the teacher's options but is punished for mass where the teacher has
none (used by MiniLLM, Gu et al. 2024).

Two ways to train with it, same loss:

* :func:`distillation_loss_fn` plugs into the course's plain loop ``course_lib.training.train``;
* :class:`DistillationTrainer` is a ``transformers.Trainer`` whose ``compute_loss`` runs the
  teacher and returns this loss.

Measurements: :func:`top1_predictions` and :func:`top1_agreement` (how often the student's most
likely next token is the teacher's), and :func:`teacher_samples` for sequence-level distillation
(train on text the teacher wrote).

The chapter's experiment, one configuration at a time: :func:`train_student` trains a student
with cross-entropy on the text (no teacher: the "CE" run) or with the distillation loss (the "KD"
run), and :func:`evaluate_student` measures, saves and prints it with the course scorecard plus the
top-1 agreement with the teacher and the next-token accuracy. :func:`most_common_share` tells a
student that predicts one token everywhere (a unigram fit) from one that learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .claims import INCONCLUSIVE, rate_comparison
from .device import model_device
from .inference import batches, eval_mode
from .scorecard import Record, record
from .training import TrainResult, block_batches, causal_lm_loss, train

__all__ = ["SIZES", "soft_targets", "kl_divergence", "distillation_loss", "check_same_vocabulary",
           "distillation_loss_fn", "DistillationTrainer", "top1_predictions", "top1_agreement",
           "most_common_share", "teacher_samples", "train_student", "evaluate_student", "trainer_loss_check",
           "agreement_verdict"]

SIZES = {
    # steps, batch size and learning rates (depth student; small fresh student) of every training
    # run; the loss settings of the experiment's KD run, fixed here before any measurement (the
    # claim is about this configuration, not the best of the ablation); the temperature/alpha
    # ablation of the depth student, same budget; layers removed for the depth student (half of
    # them, DistilBERT's cut; chapter 06 removes the same number from the same teacher, so both
    # chapters' depth students have one architecture); the small student's shape; Trainer demo
    # steps; sequence-level distillation: teacher samples, generation batch, prompt and new tokens;
    # temperatures of the soft-target plot.
    #
    # cpu estimate (2 cores, FACTS.md: full fine-tuning of the 135 M model 8.6 s a step at batch 8,
    # a forward pass 2.5 s): the depth student (~81 M) at batch 4 about 2.6 s a CE step and 3.9 s a
    # KD step (its teacher's forward pass included); 1 CE + 4 KD runs x 10 steps = 3.0 min; the
    # small students (~12 M), the Trainer demo and the teacher's samples about a minute; evaluation
    # (perplexity and top-1 on 48 validation blocks, two forward passes) about 18 s for each of six
    # depth students, 2 min; loading, Block Influence, the side-by-side timing and the reload check
    # about 1.5 min: about 8 min in all (the budget is 10). Not run here yet: measure it with
    # `make bench PROFILE=cpu` on an idle machine.
    # gpu estimate (Colab T4, assumed 5 TFLOP/s sustained in fp32; 6 x params x tokens a training
    # step, 2 x params x tokens a forward pass): batch 16 x 128 = 2,048 tokens, a CE step of the
    # depth student 6 x 81 M x 2,048 = 1.0 TFLOP = 0.2 s, a KD step 1.55 TFLOP = 0.31 s;
    # (0.2 + 4 x 0.31) s x 400 steps = 9.6 min; the small students (~12 M) 3 runs x 400 steps under
    # a minute; 512 teacher samples of 112 tokens in batches of 64, about 900 decoding steps, under
    # a minute; evaluation and speed a minute or two: about 13 min in all. Memory: the student's
    # weights, gradients and AdamW states 16 B x 81 M = 1.3 GB, the teacher 0.54 GB, logits
    # 16 x 128 x 49,152 x 4 B = 0.4 GB a copy: under 5 GB of the T4's 15 GB.
    "smoke": {"steps": 2, "batch_size": 2, "lr": 2e-4, "small_lr": 3e-3, "temperature": 2.0, "alpha": 0.5,
              "ablation": [[1.0, 0.0], [2.0, 0.5]],
              "remove_layers": 15, "small_layers": 2, "small_hidden": 192, "trainer_steps": 2,
              "seq_samples": 4, "seq_batch_size": 4, "seq_prompt_tokens": 8, "seq_new_tokens": 8,
              "temperatures": [0.5, 1.0, 2.0, 4.0]},
    "cpu": {"steps": 10, "batch_size": 4, "lr": 2e-4, "small_lr": 3e-3, "temperature": 2.0, "alpha": 0.5,
            "ablation": [[1.0, 0.0], [2.0, 0.0], [1.0, 0.5], [2.0, 0.5]],
            "remove_layers": 15, "small_layers": 4, "small_hidden": 192, "trainer_steps": 8,
            "seq_samples": 24, "seq_batch_size": 8, "seq_prompt_tokens": 16, "seq_new_tokens": 64,
            "temperatures": [0.5, 1.0, 2.0, 4.0]},
    "gpu": {"steps": 400, "batch_size": 16, "lr": 1e-4, "small_lr": 1e-3, "temperature": 2.0, "alpha": 0.5,
            "ablation": [[1.0, 0.0], [2.0, 0.0], [1.0, 0.5], [2.0, 0.5]],
            "remove_layers": 15, "small_layers": 6, "small_hidden": 192, "trainer_steps": 50,
            "seq_samples": 512, "seq_batch_size": 64, "seq_prompt_tokens": 16, "seq_new_tokens": 112,
            "temperatures": [0.5, 1.0, 2.0, 4.0]},
}


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (it divides the logits), got {temperature}. "
                         "Use 1 for the model's own distribution, > 1 for softer targets.")


def _check_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"Teacher and student vocabularies differ: the teacher's logits have "
            f"{teacher_logits.shape[-1]} entries per token, the student's {student_logits.shape[-1]}. "
            "Logit distillation needs one shared tokenizer: build the student with the teacher's "
            "vocab_size and tokenizer.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"Teacher and student logits must have the same shape [batch, seq, vocab], got "
                         f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}.")


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / T)`` over the last dimension, in float32. Raises ValueError if T <= 0."""
    _check_temperature(temperature)
    return F.softmax(logits.float() / temperature, dim=-1)


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
                  reverse: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positions of ``KL(p_teacher || p_student)`` at temperature T (``reverse``: the other way).

    ``KL(p || q) = sum_v p_v (log p_v - log q_v)``, summed over the vocabulary, then averaged over
    the positions where ``mask`` is True (all positions when None). Computed in float32.
    """
    _check_temperature(temperature)
    _check_vocab(student_logits, teacher_logits)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if reverse:
        log_p, log_q = log_s, log_t
    else:
        log_p, log_q = log_t, log_s
    per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    if mask is None:
        return per_position.mean()
    if mask.shape != per_position.shape:
        raise ValueError(f"mask must have shape {tuple(per_position.shape)}, got {tuple(mask.shape)}.")
    if not mask.any():
        raise ValueError("mask selects no position: nothing to distil.")
    return per_position[mask].mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 1.0, alpha: float = 0.0, reverse: bool = False) -> torch.Tensor:
    """``alpha * CE(student, labels) + (1 - alpha) * T**2 * KL(p_teacher,T || p_student,T)``.

    Causal LM convention: the logits at position t predict ``labels[t + 1]``, so both terms use
    ``logits[:, :-1]`` and ``labels[:, 1:]``; positions whose label is -100 are left out of both.
    Both terms are means over the same predicted tokens.

    Raises:
        ValueError: temperature <= 0, alpha outside [0, 1], different vocabularies or shapes,
            labels that do not match the logits' batch and sequence shape, or labels that leave
            no position to score (all -100 after the shift; the same error for every alpha).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha weighs cross-entropy against distillation and must be in [0, 1], got {alpha}.")
    _check_temperature(temperature)
    _check_vocab(student_logits, teacher_logits)
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(student_logits.shape[:2])} (batch, seq), "
                         f"got {tuple(labels.shape)}.")
    s, t, y = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    mask = y != -100
    if not mask.any():
        raise ValueError("Every predicted label is -100 (labels[:, 1:] masks every position): there is no "
                         "token to score, for any alpha. Give at least one real label, e.g. labels = input_ids.")
    loss = torch.zeros((), device=student_logits.device)
    if alpha > 0:
        loss = loss + alpha * F.cross_entropy(s.float().reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=-100)
    if alpha < 1:
        loss = loss + (1 - alpha) * temperature ** 2 * kl_divergence(t, s, temperature, reverse, mask)
    return loss


def check_same_vocabulary(teacher, student) -> None:
    """Raise ValueError unless teacher and student score the same vocabulary (same output size)."""
    sizes = [m.get_output_embeddings().weight.shape[0] for m in (teacher, student)]
    if sizes[0] != sizes[1]:
        raise ValueError(f"Teacher and student vocabularies differ ({sizes[0]} vs {sizes[1]} output "
                         "tokens). Logit distillation needs one shared tokenizer: build the student "
                         "from the teacher's config (same vocab_size) and use the teacher's tokenizer.")


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _teacher_logits(teacher, batch: dict) -> torch.Tensor:
    """The teacher's logits on the batch, in eval mode without gradients (its mode restored after);
    the batch must already be on the teacher's device."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    device, where = model_device(teacher), inputs["input_ids"].device
    if not _same_device(device, where):
        raise ValueError(f"The teacher is on {device} but the batch is on {where}: put the teacher on the "
                         f"student's device first, e.g. teacher.to(model_device(student)).")
    with eval_mode(teacher):
        return teacher(**inputs).logits


def distillation_loss_fn(teacher, temperature: float = 1.0, alpha: float = 0.0, reverse: bool = False):
    """A ``loss_fn(student, batch)`` for ``course_lib.training.train`` that distils ``teacher``.

    The teacher runs in eval mode without gradients on the same batch (its train/eval mode is
    restored after each call, its weights never change, and it is never moved: a teacher on
    another device than the batch raises ValueError). Bad settings raise ValueError now, not at
    the first step.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    _check_temperature(temperature)

    def loss_fn(student, batch: dict) -> torch.Tensor:
        student_logits = student(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return distillation_loss(student_logits, _teacher_logits(teacher, batch), batch["labels"],
                                 temperature, alpha, reverse)

    return loss_fn


def _trainer_base():
    from transformers import Trainer

    return Trainer


class DistillationTrainer(_trainer_base()):
    """A ``transformers.Trainer`` that trains ``model`` (the student) with :func:`distillation_loss`.

    ``DistillationTrainer(model=student, args=..., train_dataset=..., teacher_model=teacher,
    temperature=1.0, alpha=0.0)``. The batches need ``input_ids`` and ``labels``.

    What it does to the caller's models: the *student* is the Trainer's model, which
    ``transformers.Trainer`` itself moves to ``args.device`` and trains. The *teacher* is neither
    moved nor switched to another mode: it must already be on the Trainer's device (ValueError
    otherwise, saying how to move it), and each step runs it in eval mode without gradients and
    then restores the mode it had.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, teacher_model=None, temperature: float = 1.0, alpha: float = 0.0,
                 reverse: bool = False, **kwargs):
        if teacher_model is None:
            raise ValueError("DistillationTrainer needs teacher_model=<the teacher model>.")
        super().__init__(*args, **kwargs)
        check_same_vocabulary(teacher_model, self.model)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        _check_temperature(temperature)
        if not _same_device(model_device(teacher_model), self.args.device):
            raise ValueError(f"The teacher is on {model_device(teacher_model)} but this Trainer trains on "
                             f"{self.args.device}: move it first, teacher.to({str(self.args.device)!r}) (the "
                             "Trainer does not move the caller's teacher).")
        self.teacher = teacher_model
        self.temperature, self.alpha, self.reverse = temperature, alpha, reverse

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The distillation loss of one batch (``num_items_in_batch`` unused: the loss is a mean)."""
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = distillation_loss(outputs.logits, _teacher_logits(self.teacher, inputs), labels,
                                 self.temperature, self.alpha, self.reverse)
        return (loss, outputs) if return_outputs else loss


def top1_predictions(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """The model's most likely next token at every position but the last: ``[n_blocks, block_size - 1]``
    token ids, on the CPU (the blocks run on the model's device in eval mode, without gradients)."""
    if not isinstance(blocks, torch.Tensor) or blocks.ndim != 2 or blocks.shape[1] < 2:
        shape = tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__
        raise ValueError(f"blocks must be a [n_blocks, block_size >= 2] tensor, got {shape}.")
    with eval_mode(model):
        return torch.cat([model(input_ids=batch).logits[:, :-1].argmax(-1).cpu()
                          for batch in batches(blocks, batch_size, model_device(model), desc="top-1",
                                               progress=progress)])


def top1_agreement(predictions: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of positions where two token-id tensors agree, e.g. student vs teacher top-1.

    With ``reference = blocks[:, 1:]`` it is the next-token accuracy.
    """
    if predictions.shape != reference.shape:
        raise ValueError(f"Shapes differ: {tuple(predictions.shape)} vs {tuple(reference.shape)}.")
    return (predictions == reference).float().mean().item()


def most_common_share(predictions: torch.Tensor) -> float:
    """Share of positions taken by the single most frequent token id in ``predictions``.

    A degenerate student that predicts one token everywhere scores 1.0; comparing two such
    students' agreement with a teacher only compares unigram fits. Raises ValueError when empty.
    """
    if not isinstance(predictions, torch.Tensor) or predictions.numel() == 0:
        raise ValueError("predictions must be a non-empty tensor of token ids (e.g. from top1_predictions).")
    return torch.bincount(predictions.reshape(-1).cpu().long()).max().item() / predictions.numel()


def teacher_samples(teacher, prompts: torch.Tensor, new_tokens: int, batch_size: int = 8,
                    temperature: float = 1.0, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Sequence-level distillation data: each prompt continued by ``new_tokens`` tokens *sampled*
    from the teacher at ``temperature`` (``[n, prompt_len + new_tokens]`` token ids, on the CPU;
    the prompts run on the teacher's device).

    Training a student with cross-entropy on these samples minimises, in expectation, the forward
    KL from the teacher's sequence distribution. Kim and Rush (2016) used beam search instead (the
    teacher's most likely sequences); the course samples, which keeps the teacher's diversity.
    """
    _check_temperature(temperature)
    if new_tokens < 1 or prompts.ndim != 2:
        raise ValueError(f"Need new_tokens >= 1 and prompts of shape [n, prompt_len]; got {new_tokens}, "
                         f"{tuple(prompts.shape)}.")
    torch.manual_seed(seed)
    out = []
    with eval_mode(teacher):
        for batch in batches(prompts, batch_size, model_device(teacher), desc="teacher samples", progress=progress):
            generated = teacher.generate(input_ids=batch, attention_mask=torch.ones_like(batch),
                                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                         pad_token_id=teacher.config.eos_token_id)
            out.append(generated.cpu())
    return torch.cat(out)


def train_student(student, blocks: torch.Tensor, *, steps: int, lr: float, batch_size: int, teacher=None,
                  temperature: float = 1.0, alpha: float = 0.0, reverse: bool = False, seed: int = 0,
                  progress: bool = True, desc: str = "student") -> TrainResult:
    """Train ``student`` in place on token ``blocks``: one configuration of the chapter's experiment.

    Without a ``teacher`` the loss is the ordinary next-token cross-entropy on the blocks (the
    "CE" run); with one it is :func:`distillation_loss` from the teacher at ``temperature`` and
    ``alpha`` (the "KD" run). Everything else is shared, so two runs differ only in the loss:
    the same shuffled batches (``seed``), ``course_lib.training.train`` (AdamW, ``steps // 10``
    warm-up steps then linear decay, gradient clipping at 1). Returns the loop's ``TrainResult``.
    """
    loss_fn = causal_lm_loss if teacher is None else distillation_loss_fn(teacher, temperature, alpha, reverse)
    return train(student, block_batches(blocks, batch_size, seed=seed), steps=steps, lr=lr,
                 warmup_steps=steps // 10, loss_fn=loss_fn, progress=progress, desc=desc)


def evaluate_student(model, tokenizer, val_blocks: torch.Tensor, teacher_top1: torch.Tensor, chapter: str,
                     name: str, notes: str = "", *, speeds=None, speed: bool = True, batch_size: int = 8,
                     profile=None, progress: bool = True, quiet: bool = False) -> Record:
    """Measure, save and print a student with :func:`course_lib.scorecard.record`, adding its
    agreement with the teacher.

    ``val_blocks`` are the scorecard's validation blocks and ``teacher_top1`` the teacher's
    :func:`top1_predictions` on them; ``speeds`` (a ``compare_speeds`` table with a row ``name``)
    ``speed`` and ``quiet`` go to ``record``. The record gets three extra entries:

    * ``top1_agreement``: fraction of positions where the student's most likely next token is
      the teacher's;
    * ``next_token_accuracy``: fraction where it is the real next token ``val_blocks[:, 1:]``;
    * ``most_common_share``: :func:`most_common_share` of its predictions (1.0: one token everywhere).
    """
    if teacher_top1.shape != (val_blocks.shape[0], val_blocks.shape[1] - 1):
        raise ValueError(f"teacher_top1 must be the teacher's top-1 predictions on val_blocks, shape "
                         f"{(val_blocks.shape[0], val_blocks.shape[1] - 1)}; got {tuple(teacher_top1.shape)}.")
    top1 = top1_predictions(model, val_blocks, batch_size=batch_size, progress=progress)
    extra = {"top1_agreement": top1_agreement(top1, teacher_top1.cpu()),
             "next_token_accuracy": top1_agreement(top1, val_blocks[:, 1:].cpu()),
             "most_common_share": most_common_share(top1)}
    return record(model, tokenizer, chapter=chapter, name=name, speeds=speeds, notes=notes, extra=extra,
                  speed=speed, profile=profile, progress=progress, quiet=quiet)


def trainer_loss_check(trainer, batch: dict, rel: float = 1e-4) -> dict:
    """Does a trainer's ``compute_loss`` return the distillation loss, and not plain cross-entropy?

    On ``batch`` (moved to the student's device) it computes, without gradients, ``loss`` =
    ``trainer.compute_loss(student, batch)``, ``kd`` = :func:`distillation_loss` of the student
    and ``trainer.teacher`` at the trainer's temperature and alpha, and ``ce`` = the student's
    cross-entropy on the labels. ``holds`` is True if ``|loss - kd| <= rel |kd|`` and
    ``|loss - ce| > rel |ce|``, False if the loss is not the KD loss (a dummy trainer returning CE
    fails here), and INCONCLUSIVE if KD and CE coincide on this batch (e.g. alpha = 1).
    """
    student = trainer.model
    batch = {k: v.to(model_device(student)) for k, v in batch.items()}
    with eval_mode(student):
        loss = float(trainer.compute_loss(student, batch))
        logits = student(input_ids=batch["input_ids"]).logits
        kd = float(distillation_loss(logits, _teacher_logits(trainer.teacher, batch), batch["labels"],
                                     trainer.temperature, trainer.alpha, trainer.reverse))
        ce = float(distillation_loss(logits, logits, batch["labels"], 1.0, 1.0))
    if abs(kd - ce) <= rel * abs(ce):
        holds = INCONCLUSIVE
    else:
        holds = abs(loss - kd) <= rel * abs(kd) and abs(loss - ce) > rel * abs(ce)
    return {"loss": loss, "kd": kd, "ce": ce, "holds": holds}


def agreement_verdict(a: Record, b: Record, n: int, max_share: float = 0.5):
    """Does student ``a`` agree with the teacher (top-1) more often than student ``b``, over ``n``
    positions? :func:`course_lib.claims.rate_comparison` of their ``top1_agreement``, except that
    it is INCONCLUSIVE when either student is degenerate: its most frequent prediction takes more
    than ``max_share`` of the positions (``most_common_share``), so the comparison would only
    compare two unigram fits."""
    if any(r.extra["most_common_share"] > max_share for r in (a, b)):
        return INCONCLUSIVE
    return rate_comparison(a.extra["top1_agreement"], b.extra["top1_agreement"], n)
