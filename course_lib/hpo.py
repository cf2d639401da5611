"""The objective of a hyperparameter search: data split for a search, fresh models for trials,
training with a trial's values, and the validation loss it returns.

A search needs five things (chapter 01): a **search space** (:mod:`course_lib.search_space`),
an **objective** (:class:`TaskObjective`: trains a *fresh* model with the trial's
hyperparameters and returns the validation loss, reporting intermediate losses so that a pruner
can stop bad trials early), a **fixed validation split** carved from the training data
(:func:`make_search_data`; the test split is kept for the final, single evaluation), a
**sampler** and optionally a **pruner**, run within a **budget** of trials
(:mod:`course_lib.hpo_studies`). Results are read against their noise in
:mod:`course_lib.study_analysis`; workers sharing one storage are in :mod:`course_lib.hpo_workers`,
the one-call ``Trainer.hyperparameter_search`` route in :mod:`course_lib.hpo_trainer`.

Hyperparameters the objective understands (:data:`HYPERPARAMETERS`): ``lr``, ``batch_size``,
``steps``, ``warmup_fraction`` (warm-up steps = round(fraction * steps)) and ``lora_rank``
(passed to the model factory). Each is either searched (in the space) or fixed.

Devices: models from :func:`lora_model_factory` stay on the base model's device (the chosen
device for the real model); :func:`tiny_model_factory` builds its stand-in on the CPU on
purpose (its trials are too small to gain from a GPU), so those sizes do not grow with the gpu
profile. Training and evaluation move every batch to the model's device.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from tqdm.auto import tqdm

from .metrics import answer_loss, exact_match
from .search_space import suggest, validate_space
from .tasks import Example, make_task
from .training import task_batches, train

__all__ = ["SIZES", "CPU_ONLY_SIZES", "HYPERPARAMETERS", "SearchData", "make_search_data", "lora_model_factory",
           "tiny_model_factory", "train_with_params", "TaskObjective", "UNTUNED_DEFAULTS", "fine_tune_and_score",
           "check_train_sizes", "accuracy_by_train_size"]

# Chapter sizes. Real-model trials are LoRA fine-tunings of SmolLM2-135M on the date task, on the
# chosen device; the strategy and pruning comparisons use a tiny stand-in model built on the CPU on
# purpose (``tiny_model_factory``), so their sizes (grid_points ... pruning_eval_every) are the
# same in the cpu and gpu profiles: a GPU would not make them faster.
#
# cpu (2 cores, estimate from the smoke/cpu step counts and FACTS.md's ~3-5 s per LoRA step of
# this size): 1 + 2 x 6 worker trials x 4 steps + 3 Trainer trials x 4 steps + 2 final runs x 12
# steps = 88 real steps (~5 min), the tiny studies ~2 min, evaluations and process start-up
# ~1.5 min: about 9 minutes, within the 10-minute target.
#
# gpu (Colab T4, assuming 4 TFLOP/s sustained fp32, the low end of 4-8): a training step is
# ~6 x 135e6 params x (16 x ~40 tokens) = 5.2e11 FLOPs = 0.13 s (LoRA's backward is cheaper; call
# it 0.2 s with overheads). Real steps: 1 x 60 + 2 x 20 trials x 60 + 10 Trainer trials x 60 +
# 2 final runs x 200 = 3,460 steps = ~8-12 min; per-trial validation with per-example losses
# (200 single-example forward passes, ~3 s) x 41 trials = ~2 min; test exact match (300 dates)
# x 4 = ~1 min; the tiny studies as on the cpu, ~2 min (Colab's 2 vCPUs). About 15-17 minutes in
# all. Memory: three processes (notebook + 2 workers) each hold the 0.54 GB fp32 model, LoRA
# adapters and their AdamW state (a few MB) and activations of 16 x ~40 tokens (well under 1 GB),
# plus a CUDA context each (~0.3-0.5 GB): under 5 GB of the T4's 15 GB.
SIZES = {
    "smoke": {
        "n_train": 32, "n_val": 8, "real_steps": 2, "real_batch_size": 2,
        "grid_points": {"lr": 2, "steps": 2, "warmup_fraction": 2}, "strategy_seeds": 2, "tiny_steps": (3, 6),
        "pruning_trials": 6, "pruning_seeds": 1, "pruning_steps": 6, "pruning_eval_every": 2,
        "trainer_trials": 2, "trainer_steps": 2,
        "parallel_trials": 2, "parallel_workers": 2,
        "final_steps": 2,
    },
    "cpu": {
        "n_train": 256, "n_val": 16, "real_steps": 4, "real_batch_size": 4,
        "grid_points": {"lr": 4, "steps": 2, "warmup_fraction": 2}, "strategy_seeds": 3, "tiny_steps": (10, 50),
        "pruning_trials": 16, "pruning_seeds": 2, "pruning_steps": 40, "pruning_eval_every": 8,
        "trainer_trials": 3, "trainer_steps": 4,
        "parallel_trials": 6, "parallel_workers": 2,
        "final_steps": 12,
    },
    "gpu": {
        "n_train": 2000, "n_val": 200, "real_steps": 60, "real_batch_size": 16,
        # the tiny stand-in runs on the CPU: the same sizes as the cpu profile
        "grid_points": {"lr": 4, "steps": 2, "warmup_fraction": 2}, "strategy_seeds": 3, "tiny_steps": (10, 50),
        "pruning_trials": 16, "pruning_seeds": 2, "pruning_steps": 40, "pruning_eval_every": 8,
        "trainer_trials": 10, "trainer_steps": 60,
        "parallel_trials": 20, "parallel_workers": 2,
        "final_steps": 200,
    },
}
CPU_ONLY_SIZES = ("grid_points", "strategy_seeds", "tiny_steps", "pruning_trials", "pruning_seeds",
                  "pruning_steps", "pruning_eval_every")

HYPERPARAMETERS = ("lr", "batch_size", "steps", "warmup_fraction", "lora_rank")
# What one would try without a search: the learning rate of the QLoRA paper's recipe (2e-4),
# rank 8, no warm-up. Chapter 01 trains it with the tuned configuration's budget, side by side.
UNTUNED_DEFAULTS = {"lr": 2e-4, "warmup_fraction": 0.0, "lora_rank": 8}
_REQUIRED = ("lr", "batch_size", "steps")
_DEFAULTS = {"warmup_fraction": 0.0}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SearchData:
    """Task examples for a search: ``train`` (to fit), ``validation`` (the search's objective,
    carved from the generated training examples) and ``test`` (the task's held-out split, used
    once at the end, never by the search)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]


def make_search_data(task: str = "date-iso", n_train: int = 256, n_validation: int = 32,
                     n_test: int = 100, seed: int = 0) -> SearchData:
    """Generate ``n_train + n_validation`` training examples of ``task`` and split them, with a
    fixed shuffle (``random.Random(seed)``), into train and validation; ``test`` is the task's own
    test split (the same as in every chapter for the same ``n_test``)."""
    if n_train < 1 or n_validation < 1:
        raise ValueError(f"Need n_train >= 1 and n_validation >= 1, got {n_train} and {n_validation}.")
    data = make_task(task, n_train=n_train + n_validation, n_test=n_test, seed=seed)
    examples = list(data.train)
    random.Random(seed).shuffle(examples)
    return SearchData(train=examples[n_validation:], validation=examples[:n_validation], test=list(data.test))


# --------------------------------------------------------------------------- models for trials


def lora_model_factory(base_model, target_modules="attention", alpha_per_rank: float = 2.0, default_rank: int = 8,
                       seed: int | None = 0) -> Callable[[dict], torch.nn.Module]:
    """A function ``params -> fresh LoRA model`` for trials (:func:`course_lib.lora.add_lora_`).

    Every call deep-copies ``base_model`` (which is never modified) and adds adapters of rank
    ``params.get("lora_rank", default_rank)`` with ``lora_alpha = alpha_per_rank * rank`` on
    ``target_modules`` (a preset of :func:`course_lib.lora.resolve_targets`, default all four
    attention projections, ``attn.c_attn`` and ``attn.c_proj`` on GPT-2, or a list of names, checked against the model);
    only the adapters train. ``seed`` seeds the random initialisation of the adapters' ``A``
    matrices, so the same ``params`` give the same initial model on every call (``None``: use
    torch's current random state, e.g. seeded by the caller). Chapter 05 explains LoRA itself.

    Raises:
        ValueError: ``lora_rank`` below 1, or a target name that matches no linear layer.
    """
    from .lora import add_lora_, lora_config

    def make(params: dict):
        rank = int(params.get("lora_rank", default_rank))
        if rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {rank}.")
        model = copy.deepcopy(base_model)
        config = lora_config(model, r=rank, alpha=alpha_per_rank * rank,
                             targets=target_modules if isinstance(target_modules, str) else list(target_modules))
        return add_lora_(model, config, seed=seed)

    return make


def tiny_model_factory(vocab_size: int, hidden_size: int = 32, num_layers: int = 2,
                       seed: int = 0) -> Callable[[dict], torch.nn.Module]:
    """A function ``params -> fresh tiny Llama`` (all weights train, initialised with ``seed``, so
    every call gives the same initial weights), a stand-in model whose trials are cheap enough to
    compare search strategies many times over.

    ``params["lora_rank"]``, if present, is ignored: there is no adapter here.
    """
    from .tiny_models import tiny_llama

    def make(params: dict):
        return tiny_llama(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                          num_heads=4, num_kv_heads=2, intermediate_size=2 * hidden_size, seed=seed)

    return make


# --------------------------------------------------------------------------- the objective


def train_with_params(model, params: dict, tokenizer, examples: list[Example], seed: int = 0,
                      callback=None, progress: bool = False, desc: str = "training"):
    """Train ``model`` **in place** with a trial's hyperparameters and return the ``TrainResult``:
    ``params["steps"]`` AdamW steps on ``task_batches(examples, params["batch_size"], seed)`` at
    peak learning rate ``params["lr"]``, linear warm-up over
    ``round(params.get("warmup_fraction", 0) * steps)`` steps, then linear decay
    (``course_lib.training.train``; ``callback(step, loss) -> True`` stops early).
    """
    missing = [k for k in _REQUIRED if k not in params]
    if missing:
        raise ValueError(f"params lacks {missing}; it needs {list(_REQUIRED)}.")
    if len(examples) < int(params["batch_size"]):  # task_batches would never yield a batch
        raise ValueError(f"{len(examples)} training examples cannot fill a batch of {params['batch_size']}; "
                         "use more examples or a smaller batch size.")
    steps = int(params["steps"])
    torch.manual_seed(seed)
    return train(model, task_batches(tokenizer, examples, int(params["batch_size"]), seed=seed), steps=steps,
                 lr=params["lr"], warmup_steps=round(params.get("warmup_fraction", 0.0) * steps),
                 callback=callback, progress=progress, desc=desc)


@dataclass
class TaskObjective:
    """An Optuna objective: ``objective(trial) -> validation loss`` (lower is better).

    For each trial: take the hyperparameters (``fixed`` merged with those suggested from
    ``space``), seed torch with ``seed`` and build a **fresh** model with ``make_model(params)``
    (so random initial weights are reproducible too), train it with
    ``course_lib.training.train`` on ``task_batches(train_examples, batch_size, seed)`` for
    ``steps`` steps at peak learning rate ``lr`` with ``round(warmup_fraction * steps)`` warm-up
    steps, and return :func:`course_lib.metrics.answer_loss` on ``val_examples``.

    With ``eval_every > 0`` it also reports the validation loss every ``eval_every`` steps
    (``trial.report``) and, when the study's pruner says so (``trial.should_prune()``), stops
    training (the callback returns True) and raises ``optuna.TrialPruned``.

    Each trial records user attributes: ``steps_planned``, ``steps_run``, ``train_seconds``,
    ``pid``, and with ``record_example_losses=True`` also ``val_losses``, the answer loss of each
    validation example alone (for a bootstrap of the validation noise,
    :func:`course_lib.study_analysis.bootstrap_best_share`). A diverging run (non-finite loss) raises ``FloatingPointError``; :func:`run_study`
    records it as a failed trial and goes on.
    """

    make_model: Callable[[dict], torch.nn.Module]
    tokenizer: object
    train_examples: list[Example]
    val_examples: list[Example]
    space: dict
    fixed: dict = field(default_factory=dict)
    eval_every: int = 0
    eval_batch_size: int = 16
    seed: int = 0
    progress: bool = False
    record_example_losses: bool = False

    def __post_init__(self):
        validate_space(self.space)
        unknown = [k for k in list(self.space) + list(self.fixed) if k not in HYPERPARAMETERS]
        if unknown:
            raise ValueError(f"Unknown hyperparameter(s) {unknown}; the objective understands {HYPERPARAMETERS}.")
        both = sorted(set(self.space) & set(self.fixed))
        if both:
            raise ValueError(f"{both} are both searched and fixed; keep each in one place.")
        missing = [k for k in _REQUIRED if k not in self.space and k not in self.fixed]
        if missing:
            raise ValueError(f"Hyperparameter(s) {missing} are neither searched nor fixed; add them to "
                             "`space` or `fixed`.")
        if not self.train_examples or not self.val_examples:
            raise ValueError("The objective needs training and validation examples.")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: evaluate only at the end), got {self.eval_every}.")

    def params_for(self, trial) -> dict:
        """The trial's full hyperparameters: defaults, then ``fixed``, then suggested values."""
        params = {**_DEFAULTS, **self.fixed, **suggest(trial, self.space)}
        params["steps"], params["batch_size"] = int(params["steps"]), int(params["batch_size"])
        return params

    def __call__(self, trial) -> float:
        import optuna

        params = self.params_for(trial)
        steps = params["steps"]
        trial.set_user_attr("steps_planned", steps)
        trial.set_user_attr("pid", os.getpid())
        torch.manual_seed(self.seed)  # a factory that draws random weights draws the same ones every time
        model = self.make_model(params)
        pruned_at = []

        def report(step: int, loss: float) -> bool:
            done = step + 1
            if self.eval_every and done % self.eval_every == 0 and done < steps:
                trial.report(answer_loss(model, self.tokenizer, self.val_examples, self.eval_batch_size), done)
                if trial.should_prune():
                    pruned_at.append(done)
                    return True
            return False

        try:
            result = train_with_params(model, params, self.tokenizer, self.train_examples, seed=self.seed,
                                       callback=report, progress=self.progress, desc=f"trial {trial.number}")
        except FloatingPointError:
            trial.set_user_attr("steps_run", steps)
            raise
        trial.set_user_attr("steps_run", result.steps)
        trial.set_user_attr("train_seconds", result.seconds)
        if pruned_at:
            raise optuna.TrialPruned(f"pruned at step {pruned_at[0]} of {steps}")
        value = answer_loss(model, self.tokenizer, self.val_examples, self.eval_batch_size)
        if self.record_example_losses:
            trial.set_user_attr("val_losses", [answer_loss(model, self.tokenizer, [e], 1) for e in self.val_examples])
        if self.eval_every:
            trial.report(value, steps)
        return value

    def with_seed(self, seed: int) -> "TaskObjective":
        """The same objective with another seed: batch order, and the initialisation of models
        whose factory does not seed itself (the course factories do, unless built with ``seed=None``)."""
        return replace(self, seed=seed)


def fine_tune_and_score(make_model, params: dict, tokenizer, data: SearchData, seed: int = 0,
                        eval_batch_size: int = 16, progress: bool = True) -> tuple[float, torch.nn.Module]:
    """Build a model with ``make_model(params)`` after ``torch.manual_seed(seed)``, train it on
    ``data.train`` with :func:`train_with_params` (same batches for the same ``seed`` and batch
    size), and return ``(exact match on data.test, the trained model)``. Two configurations run
    with the same ``steps``, ``batch_size`` and ``seed`` get the same budget and the same data."""
    torch.manual_seed(seed)
    model = make_model(params)
    train_with_params(model, params, tokenizer, data.train, seed=seed, progress=progress, desc="fine-tuning")
    return exact_match(model, tokenizer, data.test, batch_size=eval_batch_size, progress=False), model


def check_train_sizes(train_sizes, n_available: int, steps: int, batch_size: int) -> list[int]:
    """The sorted, distinct training-set sizes of :func:`accuracy_by_train_size`, after checking
    that a run of ``steps`` batches of ``batch_size`` sees every example of each size at least once.

    ``task_batches`` shuffles the examples once per pass and drops the last ``n % batch_size`` of
    each pass, so each non-zero size must be a multiple of ``batch_size``, and the largest at most
    ``steps * batch_size`` (one full pass). Otherwise the label "trained on n examples" would be
    false: a ValueError says which size to change.
    """
    sizes = sorted(set(int(n) for n in train_sizes))
    if not sizes or sizes[0] < 0 or sizes[-1] > n_available:
        raise ValueError(f"train_sizes must be between 0 and {n_available} (the training examples), got {train_sizes}.")
    ragged = [n for n in sizes if n % batch_size]
    if ragged:
        raise ValueError(f"train_sizes {ragged} are not multiples of the batch size {batch_size}: each pass over "
                         f"the examples would drop {[n % batch_size for n in ragged]} of them.")
    if sizes[-1] > steps * batch_size:
        raise ValueError(f"{steps} steps of batch {batch_size} see only {steps * batch_size} examples, fewer than the "
                         f"largest training-set size {sizes[-1]}: use at most {steps * batch_size} examples, or at "
                         f"least {math.ceil(sizes[-1] / batch_size)} steps.")
    return sizes


def accuracy_by_train_size(make_model, params: dict, tokenizer, data: SearchData, train_sizes, eval_batch_size: int = 16,
                           seed: int = 0, progress: bool = True) -> tuple[dict[int, float], torch.nn.Module]:
    """Exact match on ``data.test`` after training with ``params`` on the first ``n`` training
    examples, for each ``n`` in ``train_sizes`` (``n = 0`` evaluates the untrained model).

    Every run makes the same ``params["steps"]`` steps of ``params["batch_size"]`` examples, so
    only the number of *distinct* examples changes; a smaller set is seen more times. Each model
    is built after ``torch.manual_seed(seed)``, so all start from the same weights. The sizes are
    checked first (:func:`check_train_sizes`): every example of every set is seen at least once,
    so "trained on n examples" is true.

    Returns ``({n: accuracy}, the model trained on the largest n)``.

    Raises:
        ValueError: a size outside ``[0, len(data.train)]``, not a multiple of the batch size, or
            larger than ``steps * batch_size``; or ``params`` lacks ``steps`` or ``batch_size``.
    """
    missing = [k for k in _REQUIRED if k not in params]
    if missing:
        raise ValueError(f"params lacks {missing}; it needs {list(_REQUIRED)}.")
    sizes = check_train_sizes(train_sizes, len(data.train), int(params["steps"]), int(params["batch_size"]))
    accuracy, model = {}, None
    for n in tqdm(sizes, desc="training-set sizes", disable=not progress):
        torch.manual_seed(seed)
        model = make_model(params)
        if n > 0:
            train_with_params(model, params, tokenizer, data.train[:n], seed=seed)
        accuracy[n] = exact_match(model, tokenizer, data.test, batch_size=eval_batch_size, progress=False)
    return accuracy, model
