"""Running Optuna studies: samplers, pruners, storage, the budget, and what a study cost.

* :func:`make_sampler` (grid, random, TPE) and :func:`make_pruner` (none, median, Hyperband);
* :func:`open_storage`: memory, a journal file, or a database URL, checked before anything
  trains (:func:`driver_package` names a missing database driver);
* :func:`run_study`: a minimising study of ``n_trials`` trials (:func:`check_budget`);
* :func:`best_so_far` and :func:`study_cost`: reading one study;
* :func:`compare_samplers` and :func:`compare_pruners`: the same search at an equal budget with
  each sampler or pruner, over several seeds (their verdicts are in
  :mod:`course_lib.study_analysis`).

Introduced in chapter 01 (hyperparameter search).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from .search_space import grid_size

__all__ = ["SAMPLERS", "PRUNERS", "make_sampler", "make_pruner", "open_storage", "DRIVER_PACKAGES",
           "driver_package", "check_budget", "run_study", "best_so_far", "study_cost", "compare_samplers",
           "compare_pruners"]

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


def compare_samplers(objective, n_trials: int, seeds: list[int], grid: dict,
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


def compare_pruners(objective, n_trials: int, seeds: list[int], pruners=PRUNERS,
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
