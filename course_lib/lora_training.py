"""Fine-tune and compare: LoRA, full fine-tuning and QLoRA on the same task and budget.

* :func:`fine_tune` trains a model in place on task examples with the course's loop and
  reports what the comparison needs: loss curve, seconds per step, trainable parameters, the
  exact bytes of weights, gradients and optimizer state, and (as context) peak memory.
* Sweeps score runs by :func:`course_lib.metrics.answer_loss`, the held-out loss
  on answer tokens (teacher-forced): cheap and smooth.
* :func:`load_qlora_base` loads the model in NF4 (bitsandbytes) ready for LoRA: QLoRA.
* :func:`lora_sweep` and :func:`sweep_effects`: which matters more, rank or learning rate?
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .device import model_device, pick_device, release_memory
from .lora import add_lora_, lora_config, trainable_parameters
from .metrics import PeakMemory, answer_loss
from .footprint import footprint_bytes
from .tasks import Example
from .training import optimizer_state_bytes, task_batches, train


@dataclass
class FineTuneResult:
    """What one training run cost. Memory in bytes, time in seconds."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    optimizer_state_bytes: int = 0  # AdamW: two float32 moments per trainable parameter
    gradient_bytes: int = 0  # one gradient per trainable parameter, in the parameter's dtype
    weights_bytes: int = 0  # footprint_bytes of the model trained (frozen and trainable tensors)
    peak_memory_bytes: int = 0  # CPU: process RSS; CUDA: allocated bytes
    memory_increase_bytes: int = 0  # peak during training - memory before it

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def training_state_bytes(self) -> int:
        """``weights_bytes + gradient_bytes + optimizer_state_bytes``: the tensors training must
        hold whatever the batch, counted exactly (activations come on top and depend on the
        batch). Deterministic, unlike ``memory_increase_bytes``, so runs can be compared by it."""
        return self.weights_bytes + self.gradient_bytes + self.optimizer_state_bytes


def fine_tune(model, tokenizer, examples: list[Example], *, steps: int, lr: float, batch_size: int,
              warmup_steps: int | None = None, seed: int = 0, desc: str = "fine-tuning",
              progress: bool = True) -> FineTuneResult:
    """Train ``model`` **in place** on ``examples`` (loss on answer tokens only) and measure it.

    Uses :func:`course_lib.training.train` (AdamW, linear warm-up then decay, clipping at 1)
    on whatever has ``requires_grad``: a peft model trains its adapter, a plain model everything.
    ``warmup_steps`` defaults to 10 % of ``steps``. ``weights_bytes``, ``gradient_bytes`` and
    ``optimizer_state_bytes`` are exact tensor sizes (see ``training_state_bytes``). Freed memory
    is returned to the OS before :class:`~course_lib.metrics.PeakMemory` starts, so
    ``memory_increase_bytes`` is roughly what training added (gradients, optimizer state,
    activations); on the CPU it is the process's resident memory, which depends on what the
    process did before, so use it as context, not to compare runs made at different times.
    """
    if warmup_steps is None:
        warmup_steps = steps // 10
    counts = trainable_parameters(model)
    weights = footprint_bytes(model)
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    release_memory()
    torch.manual_seed(seed)
    batches = task_batches(tokenizer, examples, batch_size, seed=seed)
    with PeakMemory(model_device(model)) as peak:
        run = train(model, batches, steps=steps, lr=lr, warmup_steps=warmup_steps, progress=progress, desc=desc)
    return FineTuneResult(
        losses=run.losses, seconds=run.seconds, seconds_per_step=run.seconds_per_step,
        trainable_params=counts["trainable"], total_params=counts["total"],
        optimizer_state_bytes=optimizer_state_bytes(model), gradient_bytes=gradients, weights_bytes=weights,
        peak_memory_bytes=peak.peak_bytes, memory_increase_bytes=peak.increase_bytes,
    )


def load_qlora_base(name: str = "smollm2-135m", device=None, quant_type: str = "nf4"):
    """QLoRA's base: the model with its linear layers in 4 bits (bitsandbytes ``nf4`` or ``fp4``,
    compute in float32), prepared with peft's ``prepare_model_for_kbit_training`` (no gradient
    checkpointing: the model is small). Returns ``(model, tokenizer)``; add LoRA with
    :func:`course_lib.lora.add_lora_`.

    Raises:
        ValueError: a device bitsandbytes does not support (the message says to use the CPU or
            a CUDA GPU), or bitsandbytes is not installed (the message gives the pip command).
    """
    from peft import prepare_model_for_kbit_training

    from .models import check_quantization_supported, load_model

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"QLoRA stores the base in 4 bits: quant_type is 'nf4' or 'fp4', got {quant_type!r}.")
    device = pick_device(device)
    check_quantization_supported(quant_type, device)
    model, tokenizer = load_model(name, quantization=quant_type, device=device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer


def lora_sweep(base_model, tokenizer, train_examples: list[Example], eval_examples: list[Example], *,
               ranks, lrs, steps: int, batch_size: int, alpha: float = 16, targets="q,v",
               seed: int = 0):
    """Train a fresh LoRA adapter for every (rank, learning rate) pair and score it.

    Each run copies ``base_model`` (which is not modified), keeps ``alpha`` fixed (so the
    scaling ``alpha / r`` shrinks as ``r`` grows, as in the LoRA paper), trains ``steps`` steps on
    the same batches, and records the final training loss (mean of the last 3 steps) and
    :func:`~course_lib.metrics.answer_loss` on ``eval_examples``. A run whose loss becomes infinite or NaN is kept
    with ``diverged=True`` and infinite losses. Returns a pandas DataFrame, one row per run.
    """
    import pandas as pd

    if not ranks or not lrs:
        raise ValueError("lora_sweep needs at least one rank and one learning rate.")
    rows = []
    for r, lr in tqdm([(r, lr) for r in ranks for lr in lrs], desc="sweep"):
        model = add_lora_(copy.deepcopy(base_model), lora_config(base_model, r=r, alpha=alpha, targets=targets))
        row = {"rank": r, "lr": lr, "trainable": trainable_parameters(model)["trainable"]}
        try:
            run = fine_tune(model, tokenizer, train_examples, steps=steps, lr=lr, batch_size=batch_size,
                            seed=seed, progress=False)
            row.update({"final train loss": sum(run.losses[-3:]) / len(run.losses[-3:]),
                        "held-out answer loss": answer_loss(model, tokenizer, eval_examples), "diverged": False})
        except FloatingPointError:
            row.update({"final train loss": float("inf"), "held-out answer loss": float("inf"), "diverged": True})
        rows.append(row)
        del model
        release_memory()
    return pd.DataFrame(rows)


def sweep_effects(results, score: str = "held-out answer loss") -> dict:
    """How much the score moves with each knob, from a :func:`lora_sweep` table:

        lr effect   = mean over ranks of (max - min of log(score) across learning rates)
        rank effect = mean over learning rates of (max - min of log(score) across ranks)

    On a log scale, so that "from 0.02 to 0.04" counts as much as "from 0.2 to 0.4". Diverged
    runs (infinite score) are left out; the table must keep at least two ranks and two rates.
    """
    import numpy as np

    finite = results[np.isfinite(results[score])].assign(log_score=lambda d: np.log(d[score]))
    if finite["rank"].nunique() < 2 or finite["lr"].nunique() < 2:
        raise ValueError("sweep_effects needs at least two ranks and two learning rates (not diverged).")
    spread = lambda s: s.max() - s.min()  # noqa: E731
    return {"lr effect": float(finite.groupby("rank")["log_score"].agg(spread).mean()),
            "rank effect": float(finite.groupby("lr")["log_score"].agg(spread).mean())}
