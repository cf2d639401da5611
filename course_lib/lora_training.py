"""Fine-tune and compare: LoRA, full fine-tuning and QLoRA on the same task and budget.

* :func:`fine_tune` trains a model in place on task examples with the course's loop and
  reports what the comparison needs: loss curve, seconds per step, trainable parameters, the
  exact bytes of weights, gradients and optimizer state, and (as context) peak memory.
* Sweeps score runs by :func:`course_lib.metrics.answer_loss`, the held-out loss
  on answer tokens (teacher-forced): cheap and smooth.
* :func:`step_time_claim`: is one run faster per step than another, beyond the step times' spread?
* :func:`lora_sweep`, :func:`best_per_rank`, :func:`sweep_effects` and :func:`sweep_verdict`:
  which matters more, rank or learning rate, with ``alpha`` fixed, ``alpha`` proportional to ``r``
  or rsLoRA's ``alpha / sqrt(r)``?

QLoRA's 4-bit base is in :mod:`course_lib.qlora`.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .claims import INCONCLUSIVE, lower_is_better, rate_comparison, speedup_verdict
from .device import model_device, release_memory
from .lora import add_lora_, lora_config, trainable_parameters
from .metrics import PeakMemory, answer_loss, relative_spread
from .footprint import footprint_bytes
from .tasks import Example
from .training import optimizer_state_bytes, task_batches, train

__all__ = ["ALPHA_RULES", "FineTuneResult", "fine_tune", "step_time_claim", "forgetting_claim", "lora_sweep",
           "best_per_rank", "sweep_effects", "sweep_verdict"]

# How alpha follows the rank r in a sweep (scaling = alpha / r, or alpha / sqrt(r) for rsLoRA):
ALPHA_RULES = ("fixed", "proportional", "rslora")

@dataclass
class FineTuneResult:
    """What one training run cost. Memory in bytes, time in seconds."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step
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

    def cost_row(self, method: str, accuracy: float, disk_bytes: int) -> dict:
        """One row of a fine-tuning cost table: what this run trained and held (MB = 1e6 bytes,
        GB = 1e9), its seconds per step, the task accuracy and the size saved on disk, all as
        given or measured; ``method`` names the row."""
        return {"method": method, "trainable params": f"{self.trainable_params:,}",
                "trainable %": round(self.trainable_percent, 3),
                "optimizer state MB": self.optimizer_state_bytes / 1e6, "gradients MB": self.gradient_bytes / 1e6,
                "weights + gradients + AdamW state MB": self.training_state_bytes / 1e6,
                "RSS added by training MB": self.memory_increase_bytes / 1e6,
                "RSS peak GB": self.peak_memory_bytes / 1e9, "s / step": self.seconds_per_step,
                "exact match": accuracy, "size on disk MB": disk_bytes / 1e6}


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
        losses=run.losses, step_seconds=run.step_seconds, seconds=run.seconds, seconds_per_step=run.seconds_per_step,
        trainable_params=counts["trainable"], total_params=counts["total"],
        optimizer_state_bytes=optimizer_state_bytes(model), gradient_bytes=gradients, weights_bytes=weights,
        peak_memory_bytes=peak.peak_bytes, memory_increase_bytes=peak.increase_bytes,
    )


def step_time_claim(fast: FineTuneResult, slow: FineTuneResult, threshold: float = 1.0):
    """Is run ``fast`` faster per step than run ``slow``, beyond the noise of the step times?

    ``ratio = median(slow step seconds) / median(fast step seconds)`` and ``spread`` = the larger
    :func:`course_lib.metrics.relative_spread` ((max - min) / median) of the two runs' step times,
    the first step (warm-up: allocation of optimizer state) left out. The verdict is
    :func:`course_lib.claims.speedup_verdict` (``ratio``, ``spread``, ``threshold``): INCONCLUSIVE when
    the gap is within the spread or a run has fewer than three steps. Returns ``(verdict, ratio, spread)``.
    """
    times = [run.step_seconds[1:] for run in (fast, slow)]
    if min(len(t) for t in times) < 2:
        return INCONCLUSIVE, float("nan"), float("nan")
    ratio = statistics.median(times[1]) / statistics.median(times[0])
    spread = max(relative_spread(t) for t in times)
    return speedup_verdict(ratio, spread, threshold), ratio, spread


def forgetting_claim(lora_ppl: float, full_ppl: float, lora_acc: float, full_acc: float, n_test: int,
                     margin: float = 0.02):
    """"LoRA forgets less than full fine-tuning", judged only at matched task accuracy.

    Forgetting is the validation perplexity on general text after fine-tuning (lower: less
    forgotten). A method that learned the task less has less reason to have moved, so when
    :func:`course_lib.claims.rate_comparison` (``lora_acc``, ``full_acc``, ``n_test``) finds one
    accuracy clearly higher the comparison is INCONCLUSIVE. At matched accuracy the verdict is
    :func:`course_lib.claims.lower_is_better` on ``{"LoRA": lora_ppl, "full": full_ppl}``: True if the
    full fine-tune's perplexity exceeds LoRA's by more than ``margin`` (relative), False if LoRA's
    exceeds the full one's, INCONCLUSIVE within the margin.
    """
    if rate_comparison(lora_acc, full_acc, n_test) != INCONCLUSIVE:
        return INCONCLUSIVE
    return lower_is_better({"LoRA": lora_ppl, "full": full_ppl}, ["LoRA", "full"], margin)


def _alpha_for(rule: str, alpha: float, r: int, reference_rank: int) -> tuple[float, bool]:
    """``(lora_alpha, use_rslora)`` for a rule of :data:`ALPHA_RULES`."""
    if rule == "fixed":
        return alpha, False
    if rule == "proportional":  # alpha / r stays alpha / reference_rank at every rank
        return alpha * r / reference_rank, False
    return alpha, True


def lora_sweep(base_model, tokenizer, train_examples: list[Example], eval_examples: list[Example], *,
               ranks, lrs, steps: int, batch_size: int, alpha: float = 16, targets="q,v",
               seed: int = 0, alpha_rule: str = "fixed"):
    """Train a fresh LoRA adapter for every (rank, learning rate) pair and score it.

    Each run copies ``base_model`` (which is not modified) and sets the adapter's scaling by
    ``alpha_rule``: ``"fixed"`` keeps ``alpha`` (scaling ``alpha / r`` shrinks as ``r`` grows, as in
    the LoRA paper), ``"proportional"`` uses ``alpha * r / min(ranks)`` (scaling the same at every
    rank), ``"rslora"`` keeps ``alpha`` with rsLoRA's scaling ``alpha / sqrt(r)``. It trains
    ``steps`` steps on the same batches, and records the final training loss (mean of the last 3 steps) and
    :func:`~course_lib.metrics.answer_loss` on ``eval_examples``. A run whose loss becomes infinite or NaN is kept
    with ``diverged=True`` and infinite losses. Returns a pandas DataFrame, one row per run.
    """
    import pandas as pd

    if not ranks or not lrs:
        raise ValueError("lora_sweep needs at least one rank and one learning rate.")
    if alpha_rule not in ALPHA_RULES:
        raise ValueError(f"alpha_rule must be one of {ALPHA_RULES}, got {alpha_rule!r}.")
    rows = []
    for r, lr in tqdm([(r, lr) for r in ranks for lr in lrs], desc=f"sweep (alpha {alpha_rule})"):
        run_alpha, rslora = _alpha_for(alpha_rule, alpha, r, min(ranks))
        model = add_lora_(copy.deepcopy(base_model),
                          lora_config(base_model, r=r, alpha=run_alpha, targets=targets, rslora=rslora))
        row = {"alpha rule": alpha_rule, "rank": r, "lr": lr, "alpha": run_alpha,
               "scaling": run_alpha / (r ** 0.5 if rslora else r),
               "trainable": trainable_parameters(model)["trainable"]}
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


def best_per_rank(results, score: str = "held-out answer loss"):
    """The best run of each rank in a :func:`lora_sweep` table (lowest ``score`` over the learning
    rates, diverged runs left out): one row per rank, so ranks are compared each at its own best
    learning rate."""
    import numpy as np

    finite = results[np.isfinite(results[score])]
    if finite.empty:
        raise ValueError("Every run of the sweep diverged: lower the learning rates.")
    return finite.loc[finite.groupby("rank")[score].idxmin()].reset_index(drop=True)


def sweep_effects(results, score: str = "held-out answer loss") -> dict:
    """How much the score moves with each knob, on a log scale, from a :func:`lora_sweep` table:

        rank effect = max - min over ranks of log(score of the rank at its best learning rate)
        lr effect   = mean over ranks of the mean |log(score at a neighbouring learning rate of the
                      grid) - log(score at the best one)|

    so the learning rate's effect is "one grid step away from the best rate", not "the worst rate
    of the grid against the best", and each rank is judged at its own best rate. Diverged runs
    (infinite score) are left out; at least two ranks and two learning rates must remain.
    """
    import numpy as np

    finite = results[np.isfinite(results[score])].assign(log_score=lambda d: np.log(d[score]))
    if finite["rank"].nunique() < 2 or finite["lr"].nunique() < 2:
        raise ValueError("sweep_effects needs at least two ranks and two learning rates (not diverged).")
    best = finite.loc[finite.groupby("rank")["log_score"].idxmin()]
    off_best = []
    for _, group in finite.sort_values("lr").groupby("rank"):
        logs = group["log_score"].tolist()
        i = logs.index(min(logs))
        neighbours = [logs[j] for j in (i - 1, i + 1) if 0 <= j < len(logs)]
        if neighbours:
            off_best.append(sum(abs(v - logs[i]) for v in neighbours) / len(neighbours))
    return {"lr effect": float(np.mean(off_best)),
            "rank effect": float(best["log_score"].max() - best["log_score"].min())}


def sweep_verdict(effects: dict, factor: float = 2.0):
    """"The learning rate matters far more than the rank": True if ``lr effect >= factor * rank
    effect``, False if ``lr effect <= rank effect`` (the rank matters as much or more), otherwise
    INCONCLUSIVE. Effects from :func:`sweep_effects`."""
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}.")
    lr, rank = effects["lr effect"], effects["rank effect"]
    if lr >= factor * rank:
        return True
    if lr <= rank:
        return False
    return INCONCLUSIVE
