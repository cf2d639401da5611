"""Hyperparameter search with Optuna: a search space, an objective that fine-tunes and validates,
samplers, pruners, and storage that several workers can share.

A search needs five things, and this module gives each one a name:

* a **search space**: ``{"lr": Range(1e-5, 1e-2, log=True), "lora_rank": Choice([4, 8]), ...}``
  (:class:`Range`, :class:`Choice`, checked by :func:`validate_space`);
* an **objective**: :class:`TaskObjective` trains a *fresh* model with the trial's hyperparameters
  on the training examples and returns the validation loss; it reports intermediate validation
  losses so that a pruner can stop bad trials early;
* a **fixed validation split** carved from the training data (:func:`make_search_data`), never
  the test split, which is kept for the final, single evaluation;
* a **sampler** (:func:`make_sampler`: grid, random or TPE) and optionally a **pruner**
  (:func:`make_pruner`: median or Hyperband);
* a **budget** of trials, run by :func:`run_study`, which checks everything (space, budget,
  storage) before the first trial trains.

Comparisons are read against their noise: :func:`sampler_summary` and :func:`sampler_verdict`
(a sampler's lead only counts if it is larger than the spread across seeds),
:func:`pruner_verdict` (decided seed by seed).

Hyperparameters the objective understands (:data:`HYPERPARAMETERS`): ``lr``, ``batch_size``,
``steps``, ``warmup_fraction`` (warm-up steps = round(fraction * steps)) and ``lora_rank``
(passed to the model factory). Each is either searched (in the space) or fixed.

Running several worker processes on one shared storage is in :mod:`course_lib.hpo_workers`; the
one-call ``transformers.Trainer.hyperparameter_search`` route in :mod:`course_lib.hpo_trainer`.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .metrics import answer_loss
from .tasks import Example, make_task
from .training import task_batches, train

# Chapter sizes. Real-model trials are LoRA fine-tunings of SmolLM2-135M on the date task;
# the strategy and pruning comparisons use a tiny stand-in model (see ``tiny_model_factory``).
# ``data_sizes``: every size is a multiple of ``real_batch_size`` and the largest is at most
# ``final_steps * real_batch_size``, so the final training sees every one of its examples
# (``accuracy_by_train_size`` checks it).
SIZES = {
    "smoke": {
        "n_train": 32, "n_val": 8, "real_steps": 2, "real_batch_size": 2,
        "grid_points": {"lr": 2, "steps": 2, "warmup_fraction": 2}, "strategy_seeds": 2, "tiny_steps": (3, 6),
        "pruning_trials": 6, "pruning_seeds": 1, "pruning_steps": 6, "pruning_eval_every": 2,
        "trainer_trials": 2, "trainer_steps": 2,
        "parallel_trials": 2, "parallel_workers": 2,
        "data_sizes": (0, 2, 4), "final_steps": 2,
    },
    "cpu": {
        "n_train": 256, "n_val": 16, "real_steps": 4, "real_batch_size": 4,
        "grid_points": {"lr": 4, "steps": 2, "warmup_fraction": 2}, "strategy_seeds": 3, "tiny_steps": (10, 50),
        "pruning_trials": 16, "pruning_seeds": 2, "pruning_steps": 40, "pruning_eval_every": 8,
        "trainer_trials": 3, "trainer_steps": 4,
        "parallel_trials": 6, "parallel_workers": 2,
        "data_sizes": (0, 16, 48), "final_steps": 12,
    },
    "gpu": {
        "n_train": 2000, "n_val": 200, "real_steps": 60, "real_batch_size": 16,
        "grid_points": {"lr": 3, "steps": 3, "warmup_fraction": 3}, "strategy_seeds": 5, "tiny_steps": (20, 120),
        "pruning_trials": 40, "pruning_seeds": 3, "pruning_steps": 120, "pruning_eval_every": 20,
        "trainer_trials": 10, "trainer_steps": 60,
        "parallel_trials": 20, "parallel_workers": 2,
        "data_sizes": (0, 32, 128, 512, 2000), "final_steps": 200,
    },
}

HYPERPARAMETERS = ("lr", "batch_size", "steps", "warmup_fraction", "lora_rank")
_REQUIRED = ("lr", "batch_size", "steps")
_DEFAULTS = {"warmup_fraction": 0.0}


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Range:
    """A numeric interval ``[low, high]`` for one hyperparameter.

    ``log=True`` samples ``log(x)`` uniformly (right for learning rates, which matter by factors
    of ten, not by additive steps); ``integer=True`` gives integers (``trial.suggest_int``).
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Choice:
    """A finite set of options (``trial.suggest_categorical``)."""

    options: tuple

    def __init__(self, options):
        object.__setattr__(self, "options", tuple(options))


def validate_space(space: dict) -> None:
    """Raise a ValueError naming the first problem in a search space, before anything trains.

    A space maps names to :class:`Range` or :class:`Choice`. Problems: an empty space; a range
    with ``low >= high`` (empty or inverted: swap the bounds, or fix the value instead of
    searching it); a non-finite bound; ``log=True`` with ``low <= 0``; an integer range with
    non-integer bounds; a choice without options.
    """
    if not isinstance(space, dict) or not space:
        raise ValueError("The search space is empty: give at least one hyperparameter, "
                         "e.g. {'lr': Range(1e-5, 1e-2, log=True)}.")
    for name, dist in space.items():
        if isinstance(dist, Range):
            if not (math.isfinite(dist.low) and math.isfinite(dist.high)):
                raise ValueError(f"Search range {name!r} has a non-finite bound: [{dist.low}, {dist.high}].")
            if dist.low > dist.high:
                raise ValueError(f"Search range {name!r} is inverted: low={dist.low} > high={dist.high}. "
                                 f"Swap them: Range({dist.high}, {dist.low}).")
            if dist.low == dist.high:
                raise ValueError(f"Search range {name!r} is empty: low == high == {dist.low}. Widen it, or "
                                 "pass the value in `fixed` instead of searching it.")
            if dist.log and dist.low <= 0:
                raise ValueError(f"Search range {name!r} is log-scaled but low={dist.low} <= 0; "
                                 "a log scale needs positive bounds.")
            if dist.integer and (int(dist.low) != dist.low or int(dist.high) != dist.high):
                raise ValueError(f"Integer range {name!r} needs integer bounds, got [{dist.low}, {dist.high}].")
        elif isinstance(dist, Choice):
            if not dist.options:
                raise ValueError(f"Choice {name!r} has no options: give at least one.")
        else:
            raise ValueError(f"Search space entry {name!r} must be a Range or a Choice, got {type(dist).__name__}.")


def suggest(trial, space: dict) -> dict:
    """Ask ``trial`` for one value of every hyperparameter in ``space`` (Optuna's suggest API)."""
    params = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            params[name] = trial.suggest_categorical(name, list(dist.options))
        elif dist.integer:
            params[name] = trial.suggest_int(name, int(dist.low), int(dist.high), log=dist.log)
        else:
            params[name] = trial.suggest_float(name, float(dist.low), float(dist.high), log=dist.log)
    return params


def grid_values(space: dict, points: int | dict = 3) -> dict[str, list]:
    """The grid a ``GridSampler`` walks: ``points`` evenly spaced values per range (log-spaced when
    ``log=True``; integers rounded and deduplicated), every option of a choice.

    ``points`` is one count for all ranges or a ``{name: count}`` dict. The grid has
    ``grid_size(grid)`` = the product of the axis lengths points.
    """
    validate_space(space)
    grid = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            grid[name] = list(dist.options)
            continue
        n = points[name] if isinstance(points, dict) else points
        if n < 2:
            raise ValueError(f"A grid needs at least 2 points per range; {name!r} got {n}.")
        if dist.log:
            lo, hi = math.log(dist.low), math.log(dist.high)
            values = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
            values[0], values[-1] = dist.low, dist.high  # exactly, not exp(log(x)) rounded
        else:
            values = [dist.low + (dist.high - dist.low) * i / (n - 1) for i in range(n)]
        if dist.integer:
            values = sorted({int(round(v)) for v in values})
        grid[name] = values
    return grid


def grid_size(grid: dict[str, list]) -> int:
    """Number of points of a grid: the product of its axis lengths."""
    return math.prod(len(v) for v in grid.values())


def space_to_dict(space: dict) -> dict:
    """A JSON-ready description of a space (for worker processes); :func:`space_from_dict` inverts it."""
    out = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            out[name] = {"options": list(dist.options)}
        else:
            out[name] = {"low": dist.low, "high": dist.high, "log": dist.log, "integer": dist.integer}
    return out


def space_from_dict(data: dict) -> dict:
    """Rebuild a space written by :func:`space_to_dict` (and validate it)."""
    space = {name: Choice(d["options"]) if "options" in d else Range(d["low"], d["high"], d["log"], d["integer"])
             for name, d in data.items()}
    validate_space(space)
    return space


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
    attention projections, ``c_attn`` on GPT-2, or a list of names, checked against the model);
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
    ``pid``. A diverging run (non-finite loss) raises ``FloatingPointError``; :func:`run_study`
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
        if self.eval_every:
            trial.report(value, steps)
        return value

    def with_seed(self, seed: int) -> "TaskObjective":
        """The same objective with another seed: batch order, and the initialisation of models
        whose factory does not seed itself (the course factories do, unless built with ``seed=None``)."""
        return replace(self, seed=seed)


# --------------------------------------------------------------------------- samplers, pruners, studies

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = (None, "median", "hyperband")


def make_sampler(name: str, seed: int = 0, grid: dict | None = None, n_startup_trials: int = 4):
    """An Optuna sampler: ``"grid"`` (needs ``grid``, e.g. from :func:`grid_values`),
    ``"random"``, or ``"tpe"`` (Tree-structured Parzen Estimator; its first ``n_startup_trials``
    trials are random, Optuna's default of 10 would make a short study purely random)."""
    import optuna

    if name == "grid":
        if not grid:
            raise ValueError("The grid sampler needs a grid: make_sampler('grid', grid=grid_values(space, 3)).")
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    raise ValueError(f"Unknown sampler {name!r}; use one of {SAMPLERS}.")


def make_pruner(name: str | None, max_steps: int | None = None, eval_every: int = 1, n_startup_trials: int = 4):
    """An Optuna pruner: None (never prune), ``"median"`` (stop a trial whose intermediate value
    is worse than the median of earlier trials at the same step, after ``n_startup_trials``
    trials) or ``"hyperband"`` (successive halving over budgets from ``eval_every`` to ``max_steps``
    steps, reduction factor 3)."""
    import optuna

    if name is None:
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=0)
    if name == "hyperband":
        if not max_steps:
            raise ValueError("The Hyperband pruner needs max_steps, the most steps a trial can run.")
        return optuna.pruners.HyperbandPruner(min_resource=eval_every, max_resource=max_steps, reduction_factor=3)
    raise ValueError(f"Unknown pruner {name!r}; use one of {PRUNERS}.")


def open_storage(storage: str | None, heartbeat_s: int | None = None):
    """Open (and so check) an Optuna storage before anything trains.

    * None: in memory (one process only);
    * a file path (no ``://``): a journal file, ``JournalStorage(JournalFileBackend(path))``,
      safe for several processes on one machine or a shared file system;
    * ``sqlite:///path.db``, ``postgresql://user:pw@host/db``, ``mysql+pymysql://...``: a
      relational database (``RDBStorage``), the way to share a study across machines.

    ``heartbeat_s`` (databases only): each running trial writes a heartbeat every ``heartbeat_s``
    seconds; a trial silent for ``2 * heartbeat_s`` (its worker died) is marked failed and
    re-queued once (``RetryHeartbeatStaleTrialCallback(max_retry=1)``), so a lost machine loses no trial.

    Raises:
        ValueError: the folder does not exist, the database driver is not installed, or the
            server cannot be reached (5-second connection timeout), with what to do.
    """
    import optuna

    if storage is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(storage, str) or not storage.strip():
        raise ValueError(f"storage must be None, a journal file path or a database URL, got {storage!r}.")
    if heartbeat_s is not None and ("://" not in storage or heartbeat_s < 1):
        raise ValueError("heartbeat_s is a positive number of seconds, for database storage URLs only.")
    if "://" not in storage:
        path = Path(storage).expanduser()
        if not path.parent.is_dir():
            raise ValueError(f"Cannot create the journal file {path}: folder {path.parent} does not exist.")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:
            raise ValueError(f"Cannot open the journal file {path}: {err}.") from None
    scheme = storage.split("://", 1)[0]
    if scheme.startswith("sqlite"):
        target = storage.split("://", 1)[1].lstrip("/") if storage.startswith("sqlite:///") else ""
        folder = Path("/" + target if storage.startswith("sqlite:////") else target).expanduser().parent
        if target and not folder.is_dir():
            raise ValueError(f"Cannot open {storage}: folder {folder} does not exist.")
    kwargs = {}
    if scheme.startswith(("postgresql", "mysql")):
        kwargs = {"connect_args": {"connect_timeout": 5}}
    heartbeat = {}
    if heartbeat_s is not None:
        heartbeat = dict(heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                         heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    try:
        return optuna.storages.RDBStorage(storage, engine_kwargs=kwargs or None, **heartbeat)
    except ImportError as err:  # optuna re-raises a missing driver as ImportError
        cause = err.__cause__ if isinstance(err.__cause__, ImportError) else err
        driver = getattr(cause, "name", None) or "its database driver"
        package = driver_package(storage)
        advice = f"pip install '{package}'" if package else "install the database driver the URL names"
        raise ValueError(f"Storage {storage!r} needs {driver!r}, which is not installed: {advice}.") from None
    except Exception as err:  # sqlalchemy's OperationalError and friends
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Cannot reach the Optuna storage {storage!r}: {first}. Check the host, port, "
                         "credentials and that the database exists.") from None


# SQLAlchemy's name of a database driver -> the pip package that provides it.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000", "asyncpg": "asyncpg",
    "pymysql": "pymysql", "mysqldb": "mysqlclient", "mysqlconnector": "mysql-connector-python",
    "mariadbconnector": "mariadb", "pysqlite": None,
}


def driver_package(url: str) -> str | None:
    """The pip package of the database driver a storage URL uses, as SQLAlchemy resolves it.

    ``postgresql+psycopg2://`` needs ``psycopg2-binary``; with SQLAlchemy 2.1 a plain
    ``postgresql://`` (like ``postgresql+psycopg://``) uses psycopg 3, ``psycopg[binary]``;
    ``mysql+pymysql://`` needs ``pymysql``, a plain ``mysql://`` ``mysqlclient``. None for
    SQLite (built into Python) and for anything that is not a database URL.
    """
    if "://" not in url:
        return None
    scheme = url.split("://", 1)[0]
    try:
        from sqlalchemy.engine import make_url

        driver = make_url(url).get_dialect().driver
    except Exception:  # an unknown dialect: fall back to the name after "+"
        driver = scheme.split("+", 1)[1] if "+" in scheme else None
    if driver is None:
        return None
    return DRIVER_PACKAGES.get(driver, driver)


def check_budget(n_trials) -> int:
    """``n_trials`` as a positive int, else a ValueError (a study of zero trials learns nothing)."""
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"The budget must be a positive number of trials, got {n_trials!r}.")
    return n_trials


def run_study(objective: Callable, n_trials: int, sampler=None, pruner=None, storage: str | None = None,
              study_name: str | None = None, progress: bool = True, desc: str = "trials"):
    """Create a study (minimising), run ``n_trials`` trials of ``objective``, return the study.

    Checks the budget and opens the storage first, so bad input fails before any training.
    Diverging trials (``FloatingPointError``) are recorded as failed and the study goes on.
    Each trial's wall time is in ``trial.duration``.
    """
    import optuna

    check_budget(n_trials)
    store = open_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner, storage=store,
                                study_name=study_name, load_if_exists=study_name is not None)
    bar = tqdm(total=n_trials, desc=desc, disable=not progress)

    def tick(study, trial):
        bar.update(1)
        if study.best_trials:
            bar.set_postfix(best=f"{study.best_value:.4f}")

    try:
        study.optimize(objective, n_trials=n_trials, catch=(FloatingPointError,), callbacks=[tick])
    finally:
        bar.close()
    return study


# --------------------------------------------------------------------------- reading studies


def best_so_far(study) -> list[float]:
    """For trial 1..n (in order), the best value among completed trials so far (NaN before the first)."""
    from optuna.trial import TrialState

    best, out = math.inf, []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.value < best:
            best = t.value
        out.append(best if best < math.inf else math.nan)
    return out


def study_cost(study) -> dict:
    """What a study spent: trials by state, training steps run vs planned, and seconds.

    ``compute_saved = 1 - steps_run / steps_planned``: the share of the training steps that
    pruning (or divergence) did not run. ``seconds`` sums the trials' wall times (evaluations
    for pruning included).
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    planned = sum(t.user_attrs.get("steps_planned", 0) for t in trials)
    run = sum(t.user_attrs.get("steps_run", 0) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "trials": len(trials),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "steps_planned": planned,
        "steps_run": run,
        "compute_saved": 1 - run / planned if planned else 0.0,
        "seconds": sum(t.duration.total_seconds() for t in trials if t.duration is not None),
        "best": min((t.value for t in complete), default=math.nan),
    }


def compare_samplers(objective: TaskObjective, n_trials: int, seeds: list[int], grid: dict,
                     samplers=SAMPLERS, n_startup_trials: int = 4, progress: bool = True):
    """Run every sampler with every seed at the same budget of ``n_trials`` trials.

    The seed sets both the sampler and the objective's training seed, so the spread across
    seeds includes training noise. Returns a pandas DataFrame with one row per trial:
    ``sampler, seed, trial, value, best_so_far, steps, params``.
    """
    import pandas as pd

    check_budget(n_trials)
    if not seeds:
        raise ValueError("compare_samplers needs at least one seed.")
    if "grid" in samplers and grid_size(grid) != n_trials:
        raise ValueError(f"The grid has {grid_size(grid)} points but the budget is {n_trials} trials; "
                         "choose grid points whose product equals the budget, for a fair comparison.")
    rows = []
    runs = [(s, seed) for s in samplers for seed in seeds]
    for name, seed in tqdm(runs, desc="studies", disable=not progress):
        sampler = make_sampler(name, seed=seed, grid=grid, n_startup_trials=n_startup_trials)
        study = run_study(objective.with_seed(seed), n_trials, sampler=sampler, progress=False)
        curve = best_so_far(study)
        for t, best in zip(sorted(study.get_trials(deepcopy=False), key=lambda t: t.number), curve):
            rows.append({"sampler": name, "seed": seed, "trial": t.number + 1, "value": t.value,
                         "best_so_far": best, "steps": t.user_attrs.get("steps_run", 0),
                         "params": dict(t.params)})
    return pd.DataFrame(rows)


def compare_pruners(objective: TaskObjective, n_trials: int, seeds: list[int], pruners=PRUNERS,
                    sampler: str = "tpe", n_startup_trials: int = 4, progress: bool = True):
    """Run the same search (sampler, seed, budget) with each pruner.

    Returns ``(table, studies)``: a DataFrame with one row per study, :func:`study_cost`'s columns
    plus ``pruner``, ``seed`` and ``time_saved`` = 1 - this study's trial seconds / the unpruned
    study's (same seed); and the studies themselves, keyed ``(pruner, seed)``. Without a pruner the
    objective makes no intermediate evaluations (``eval_every=0``), so the baseline pays only for
    training. Each study has a fixed name (``"hyperband-seed-0"``...), because Hyperband assigns
    trials to brackets by a hash of the study name: an unnamed study gets a random name, and its
    pruning decisions would change from run to run.
    """
    import pandas as pd

    check_budget(n_trials)
    if not objective.eval_every:
        raise ValueError("Pruners need intermediate values: give the objective eval_every > 0.")
    steps = objective.fixed.get("steps")
    if steps is None:
        raise ValueError("Fix the number of steps (fixed={'steps': ...}) so that every trial has the same budget.")
    rows, studies = [], {}
    for seed in seeds:
        for name in tqdm(list(pruners), desc=f"pruners, seed {seed}", disable=not progress):
            obj = replace(objective, seed=seed, eval_every=objective.eval_every if name else 0)
            study = run_study(obj, n_trials, sampler=make_sampler(sampler, seed=seed, n_startup_trials=n_startup_trials),
                              pruner=make_pruner(name, max_steps=steps, eval_every=objective.eval_every,
                                                 n_startup_trials=n_startup_trials), progress=False,
                              study_name=f"{name or 'none'}-seed-{seed}")
            rows.append({"pruner": name or "none", "seed": seed, **study_cost(study)})
            studies[(name or "none", seed)] = study
    df = pd.DataFrame(rows)
    base = df[df.pruner == "none"].set_index("seed")["seconds"] if "none" in set(df.pruner) else None
    df["time_saved"] = [1 - r.seconds / base[r.seed] if base is not None else math.nan for r in df.itertuples()]
    return df, studies


def sampler_summary(df):
    """The final best value of every study of :func:`compare_samplers`, one row per sampler: a
    column per seed, then ``mean`` over seeds and ``spread`` = max - min over seeds (how much
    the result of one study moves with the seed alone)."""
    if df.empty:
        raise ValueError("sampler_summary needs the rows of compare_samplers, got an empty table.")
    table = df.sort_values("trial").groupby(["sampler", "seed"], sort=False)["best_so_far"].last().unstack()
    table.columns = [f"seed {c}" for c in table.columns]
    values = table.copy()
    table["mean"] = values.mean(axis=1)
    table["spread"] = values.max(axis=1) - values.min(axis=1)
    return table


def lead_verdict(summary, better: str, worse: str):
    """Does sampler ``better`` reach a lower mean best value than ``worse``, by more than the noise?

    The noise is the larger of the two samplers' spreads across seeds (:func:`sampler_summary`):
    a lead only counts if it is larger. True if ``mean[worse] - mean[better]`` exceeds it, False
    if ``mean[better] - mean[worse]`` does, else ``claims.INCONCLUSIVE`` (also with fewer than
    two seeds, when there is no spread to compare with).
    """
    from .claims import INCONCLUSIVE

    for name in (better, worse):
        if name not in summary.index:
            raise ValueError(f"No sampler {name!r} in the summary; it has {list(summary.index)}.")
    seeds = [c for c in summary.columns if str(c).startswith("seed ")]
    if len(seeds) < 2:
        return INCONCLUSIVE
    lead = summary.loc[worse, "mean"] - summary.loc[better, "mean"]
    noise = max(summary.loc[better, "spread"], summary.loc[worse, "spread"])
    if lead > noise:
        return True
    if -lead > noise:
        return False
    return INCONCLUSIVE


def sampler_verdict(summary, sampler: str = "tpe", rivals=("random", "grid")):
    """Does ``sampler`` beat every one of ``rivals`` beyond the noise? :func:`lead_verdict` for each
    rival, combined with ``claims.all_hold`` (False if it loses to one, INCONCLUSIVE if any lead
    is within the noise)."""
    from .claims import all_hold

    if not rivals:
        raise ValueError("sampler_verdict needs at least one rival sampler.")
    return all_hold(*(lead_verdict(summary, sampler, rival) for rival in rivals))


def best_change_by_seed(df, pruner: str = "hyperband"):
    """Per seed, the relative change of the best value that ``pruner``'s study found against the
    unpruned study of the same seed (rows of :func:`compare_pruners`): ``best / best_none - 1``
    (positive: the pruned search ended worse). A pandas Series indexed by seed."""
    for name in (pruner, "none"):
        if name not in set(df.pruner):
            raise ValueError(f"No {name!r} studies in the table; it has {sorted(set(df.pruner))}.")
    best = df.pivot_table(index="seed", columns="pruner", values="best")
    return best[pruner] / best["none"] - 1


def pruner_verdict(df, pruner: str = "hyperband", tolerance: float = 0.05, min_saved: float = 0.2):
    """Does ``pruner`` save more than ``min_saved`` of the training steps without losing the best
    result (a best value at most ``tolerance`` worse than the unpruned search's)? Decided per seed,
    because one seed can lose while another wins:

    * saving: True if every seed saved more than ``min_saved``, False if none did;
    * best result: True if no seed lost more than ``tolerance`` (:func:`best_change_by_seed`),
      False if every seed did;
    * anything mixed is ``claims.INCONCLUSIVE``; the two parts combine with ``claims.all_hold``.
    """
    from .claims import INCONCLUSIVE, all_hold

    def every_seed(flags):
        flags = [bool(f) for f in flags]
        return True if all(flags) else False if not any(flags) else INCONCLUSIVE

    saved = df[df.pruner == pruner]["compute_saved"]
    if saved.empty:
        raise ValueError(f"No {pruner!r} studies in the table; it has {sorted(set(df.pruner))}.")
    change = best_change_by_seed(df, pruner)
    kept = every_seed(change <= tolerance)
    return all_hold(every_seed(saved > min_saved), kept)


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
    from .metrics import exact_match

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


def plot_best_so_far(df, ax=None, ylabel: str = "best validation loss so far"):
    """Best-so-far curves per sampler: the mean over seeds as a line, min-max over seeds shaded."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for name, group in df.groupby("sampler", sort=False):
        by_trial = group.groupby("trial")["best_so_far"]
        mean, low, high = by_trial.mean(), by_trial.min(), by_trial.max()
        line, = ax.plot(mean.index, mean.values, label=f"{name} (mean of {group['seed'].nunique()} seeds)")
        ax.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax.figure


def article_grid_search_errors(param_grid: dict) -> list[tuple[str, str]]:
    """Run the source article's ``GridSearchCV(Trainer, param_grid, cv=3).fit(X, y)`` and what it
    relies on, and return ``(attempt, error)`` pairs, each error caught and shown as raised.

    When scikit-learn is installed the call itself is made. Either way, the two facts that make
    it fail are checked: ``Trainer`` is a class without the estimator interface
    (``get_params``/``set_params``/``fit``), and the grid's keys are ``TrainingArguments``
    fields, not ``Trainer`` constructor arguments.
    """
    from transformers import Trainer

    attempts = []

    def attempt(label, fn):
        try:
            fn()
            attempts.append((label, "no error"))
        except Exception as err:
            attempts.append((label, f"{type(err).__name__}: {err}"))

    def article():
        from sklearn.model_selection import GridSearchCV

        GridSearchCV(Trainer, param_grid, cv=3).fit([[0.0]] * 6, [0, 1] * 3)

    attempt("GridSearchCV(Trainer, param_grid, cv=3).fit(X_train, y_train)", article)
    attempt("Trainer.get_params()  # what GridSearchCV calls to clone an estimator",
            lambda: Trainer.get_params())
    attempt("Trainer.fit  # what GridSearchCV calls to train", lambda: Trainer.fit)
    attempt(f"Trainer(**{{{next(iter(param_grid))!r}: ...}})  # setting a grid point",
            lambda: Trainer(**{next(iter(param_grid)): next(iter(param_grid.values()))[0]}))
    return attempts
