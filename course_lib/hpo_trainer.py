"""The one-call route: ``transformers.Trainer.hyperparameter_search`` with the Optuna backend.

``Trainer`` re-creates the model for every trial with ``model_init`` (so it needs one), sets the
``TrainingArguments`` fields named by the keys of ``hp_space(trial)``, trains, evaluates, and
minimises ``eval_loss`` by default. :func:`task_trainer` builds such a Trainer for a course task
with the same data, loss and validation split as :class:`course_lib.hpo.TaskObjective`;
:func:`lora_model_init` gives a ``model_init(trial)`` that searches the LoRA rank too.

Two things to know (checked in transformers 5.23): ``model_init(trial)`` is called *before*
``hp_space(trial)``, so a model hyperparameter such as the LoRA rank is suggested inside
``model_init``; and each value from ``hp_space`` is cast to the type of the field's default,
so ``warmup_steps`` (default ``0``, an int) must be given as a number of steps: a fraction
such as 0.1 would be cast to ``int(0.1) == 0``.
"""

from __future__ import annotations

import tempfile

from .hpo import lora_model_factory
from .search_space import Choice
from .tasks import Example, collate, encode_example
from .training import trainer_arguments

__all__ = ["lora_model_init", "task_trainer"]


def lora_model_init(base_model, ranks=(4, 8, 16), default_rank: int = 8, **lora_kwargs):
    """A ``model_init(trial)`` for ``Trainer``: a fresh LoRA copy of ``base_model`` (never
    modified) whose rank the trial chooses from ``ranks`` (``default_rank`` when ``trial`` is None,
    as when the Trainer is built)."""
    ranks = Choice(ranks)
    if not ranks.options:
        raise ValueError("lora_model_init needs at least one rank.")
    make = lora_model_factory(base_model, default_rank=default_rank, **lora_kwargs)

    def model_init(trial=None):
        if trial is None:
            return make({"lora_rank": default_rank})
        return make({"lora_rank": trial.suggest_categorical("lora_rank", list(ranks.options))})

    return model_init


def task_trainer(model_init, tokenizer, train_examples: list[Example], val_examples: list[Example],
                 max_steps: int, batch_size: int = 4, learning_rate: float = 1e-4, seed: int = 0,
                 output_dir: str | None = None):
    """A ``transformers.Trainer`` that fine-tunes on a course task and evaluates the validation loss.

    Same examples, encoding (loss on the answer tokens) and padding as the course loop; the whole
    validation split is one evaluation batch, so ``eval_loss`` is the token-weighted mean over
    its answer tokens, as :func:`course_lib.metrics.answer_loss` computes it. No checkpoints,
    no logging integrations, AdamW (``adamw_torch``) with linear decay.
    """
    from transformers import PrinterCallback, Trainer

    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
    if not train_examples or not val_examples:
        raise ValueError("task_trainer needs training and validation examples.")
    args = trainer_arguments(output_dir or tempfile.mkdtemp(prefix="hpo-trainer-"), max_steps, learning_rate,
                             batch_size, seed=seed, per_device_eval_batch_size=len(val_examples),
                             eval_strategy="no", logging_strategy="no", disable_tqdm=True,
                             dataloader_pin_memory=False, remove_unused_columns=False)
    train_set = [encode_example(tokenizer, e) for e in train_examples]
    val_set = [encode_example(tokenizer, e) for e in val_examples]
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train_set, eval_dataset=val_set,
                      data_collator=lambda features: collate(features, tokenizer.pad_token_id))
    trainer.remove_callback(PrinterCallback)  # the study keeps every trial's result
    return trainer
