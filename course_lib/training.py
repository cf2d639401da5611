"""A plain, readable training loop shared by every chapter that trains.

``train(model, batches, steps=..., lr=...)`` runs AdamW on the parameters that require
gradients, with linear warm-up then linear decay of the learning rate, gradient clipping and a
progress bar. What is minimised is ``loss_fn(model, batch)``: by default the model's own
causal-LM loss; distillation passes its own. Batches come from :func:`task_batches` (an
instruction task, loss on the answer tokens only) or :func:`block_batches` (plain text blocks).

The loop is deliberately short so that it can be read in one sitting; ``transformers.Trainer``
does the same with many more options (chapters 01 and 04 show it): :func:`trainer_arguments`
builds its ``TrainingArguments`` to match this loop, :func:`blocks_dataset` turns token blocks
into its examples, :func:`logged_losses` reads its loss curve back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .device import model_device, pick_device
from .tasks import Example, collate, encode_example

__all__ = ["task_batches", "block_batches", "causal_lm_loss", "lr_at", "TrainResult", "train",
           "optimizer_state_bytes", "smoothed", "blocks_dataset", "trainer_arguments", "logged_losses"]


def task_batches(tokenizer, examples: list[Example], batch_size: int, seed: int = 0) -> Iterator[dict]:
    """An endless stream of shuffled task batches (``input_ids``, ``attention_mask``, ``labels``).

    Each pass shuffles the examples (``random.Random(seed)``) and yields ``len(examples) //
    batch_size`` full batches; the last ``len(examples) % batch_size`` of a pass are left out.

    Raises:
        ValueError: no examples, or ``batch_size`` not between 1 and the number of examples (a
            batch larger than the data could never be filled).
    """
    if not examples:
        raise ValueError("task_batches needs at least one example.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(examples):
        raise ValueError(f"batch_size must be between 1 and the number of examples ({len(examples)}), "
                         f"got {batch_size!r}: use a smaller batch or more examples.")
    encoded = [encode_example(tokenizer, e) for e in examples]
    rng = random.Random(seed)
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([encoded[i] for i in order[start:start + batch_size]], tokenizer.pad_token_id)


def block_batches(blocks: torch.Tensor, batch_size: int, seed: int = 0) -> Iterator[dict]:
    """An endless stream of shuffled batches of token blocks, for language-model training."""
    if not isinstance(blocks, torch.Tensor) or blocks.ndim != 2:
        raise ValueError(f"blocks must be a [n_blocks, block_size] tensor (course_lib.data.token_blocks); got "
                         f"{tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__}.")
    if batch_size < 1 or batch_size > len(blocks):
        raise ValueError(f"batch_size must be between 1 and {len(blocks)} blocks, got {batch_size}.")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(blocks), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            ids = blocks[order[start:start + batch_size]]
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def causal_lm_loss(model, batch: dict) -> torch.Tensor:
    """The model's own next-token cross-entropy (labels of -100 are ignored)."""
    return model(**batch).loss


def lr_at(step: int, steps: int, lr: float, warmup_steps: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up to ``lr`` over ``warmup_steps``, then
    linear decay to 0 at ``steps``:

        lr_t = lr * (t + 1) / warmup            for t < warmup
        lr_t = lr * (steps - t) / (steps - warmup)  afterwards
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * max(0.0, (steps - step) / max(1, steps - warmup_steps))


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step, from one clock
    seconds: float = 0.0
    steps: int = 0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(1, self.steps)


def train(model, batches: Iterator[dict], steps: int, lr: float, warmup_steps: int = 0,
          weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
          loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = causal_lm_loss,
          callback: Callable[[int, float], bool | None] | None = None,
          progress: bool = True, desc: str = "training") -> TrainResult:
    """Train ``model`` in place for ``steps`` optimizer steps and return the loss history.

    Args:
        callback: called as ``callback(step, loss)`` after every step; returning True stops
            training early (used by hyperparameter-search pruners).

    Raises:
        ValueError: non-positive steps or learning rate, or no trainable parameters.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if not 0 <= warmup_steps <= steps:
        raise ValueError(f"warmup_steps must be between 0 and steps={steps}, got {warmup_steps}.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no parameters with requires_grad=True: nothing to train.")
    device = model_device(model)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    result = TrainResult()
    model.train()
    start = last = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup_steps)
        batch = {k: v.to(device) for k, v in next(batches).items()}
        loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Loss became {loss.item()} at step {step}; lower the learning rate.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        result.losses.append(loss.item())  # .item() waits for the device, so the clock below is honest
        now = time.perf_counter()
        result.step_seconds.append(now - last)
        last = now
        result.steps = step + 1
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
        if callback is not None and callback(step, result.losses[-1]):
            break
    result.seconds = time.perf_counter() - start  # >= sum(step_seconds): it also holds the last callback
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    return result


def optimizer_state_bytes(model) -> int:
    """Bytes AdamW keeps for the trainable parameters: two float32 moments each (2 x 4 bytes)."""
    return sum(2 * 4 * p.numel() for p in model.parameters() if p.requires_grad)


def smoothed(values: list[float], window: int = 10) -> list[float]:
    """Moving average for loss curves (window shrinks at the start)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


# --------------------------------------------------------------------------- the Trainer route


def blocks_dataset(blocks: torch.Tensor) -> list[dict]:
    """Token blocks as a list of examples (``input_ids``, ``attention_mask``, ``labels``) for a Trainer."""
    if blocks.ndim != 2 or len(blocks) == 0:
        raise ValueError(f"blocks must be a non-empty [n_blocks, block_size] tensor, got {tuple(blocks.shape)}.")
    return [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b.clone()} for b in blocks]


def trainer_arguments(output_dir: str, steps: int, lr: float, batch_size: int, warmup_steps: int = 0,
                      seed: int = 0, **overrides):
    """The course's one ``transformers.TrainingArguments`` builder, matching
    :func:`train`: AdamW (``adamw_torch``), linear warm-up and decay, gradient clipping at 1, no
    weight decay, a loss logged every step, nothing saved or reported, on the course device
    (``use_cpu`` follows :func:`course_lib.device.pick_device`). ``overrides`` replace any field
    (e.g. ``logging_strategy="no"`` or ``per_device_eval_batch_size``)."""
    from transformers import TrainingArguments

    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"Need steps >= 1, batch_size >= 1 and lr > 0; got {steps}, {batch_size}, {lr}.")
    settings = dict(output_dir=output_dir, max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch_size,
                    lr_scheduler_type="linear", warmup_steps=warmup_steps, weight_decay=0.0,
                    max_grad_norm=1.0, optim="adamw_torch", logging_steps=1, save_strategy="no",
                    report_to="none", seed=seed, data_seed=seed, dataloader_num_workers=0,
                    use_cpu=pick_device().type == "cpu", dataloader_pin_memory=pick_device().type == "cuda")
    settings.update(overrides)
    return TrainingArguments(**settings)


def logged_losses(trainer) -> list[float]:
    """The training losses a Trainer logged, in order (one per logging step)."""
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
