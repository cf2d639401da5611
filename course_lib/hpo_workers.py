"""One Optuna study, several worker processes: the same code scales from one laptop to a cluster.

Workers share nothing but the study's **storage**: each one loads the study, asks the storage for
a new trial, trains, and writes the result back. On one machine the storage can be a journal
file (``JournalFileBackend``, file-locked appends) or SQLite; across machines it is a database
server every worker can reach (``postgresql://...``, ``mysql+pymysql://...``).

* :func:`worker_main` is one worker (``python -m course_lib.hpo_workers --storage ... --study ...``).
* :func:`run_workers` creates the study, starts ``n_workers`` worker processes, shows progress,
  waits, and returns the wall time and an integrity check of the trials.
* :func:`check_study_integrity`: every planned trial finished exactly once, no trial number or
  parameter set appears twice, none left running.

A worker's objective is described by a JSON-ready *spec* (:func:`objective_from_spec`), so that a
process on another machine can rebuild it. Each worker's sampler gets its own seed
(``seed + worker``): two samplers with one seed would propose the same parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .claims import INCONCLUSIVE, within_tolerance
from .hpo import TaskObjective, lora_model_factory, make_search_data, tiny_model_factory
from .hpo_studies import check_budget, make_sampler, open_storage
from .metrics import relative_spread
from .search_space import space_from_dict
from .tasks import CompactTokenizer

__all__ = ["SPEC_KEYS", "objective_from_spec", "worker_main", "ParallelRun", "run_workers", "step_time_spread",
           "check_study_integrity", "wall_time_ratio", "wall_time_verdict"]

SPEC_KEYS = {"model", "task", "n_train", "n_validation", "space", "fixed", "sampler", "seed"}


def _check_spec_keys(spec: dict) -> None:
    missing = sorted(SPEC_KEYS - set(spec))
    if missing:
        raise ValueError(f"The objective spec lacks {missing}; it needs {sorted(SPEC_KEYS)}.")


def objective_from_spec(spec: dict) -> TaskObjective:
    """Build a :class:`~course_lib.hpo.TaskObjective` from a JSON-ready spec:

    ``{"model": "smollm2-135m" | "tiny", "task": "date-iso", "n_train": 256, "n_validation": 32,
    "space": space_to_dict(space), "fixed": {...}, "sampler": "tpe", "seed": 0}``;
    optional ``"n_test"`` (the test size the caller used: it decides which generated examples
    are held out, so give it to get the caller's exact train/validation split),
    ``"eval_batch_size"``, ``"target_modules"`` (LoRA), ``"n_startup_trials"`` (TPE) and
    ``"record_example_losses"`` (each trial keeps its per-example validation losses).
    ``"smollm2-135m"`` trains LoRA adapters on the real model; ``"tiny"`` a tiny stand-in model
    over the task's compact vocabulary.
    """
    _check_spec_keys(spec)
    from .models import load_model, load_tokenizer

    data = make_search_data(spec["task"], spec["n_train"], spec["n_validation"], n_test=spec.get("n_test", 0))
    if spec["model"] == "tiny":
        tokenizer = CompactTokenizer.for_examples(load_tokenizer(), data.train + data.validation)
        make_model = tiny_model_factory(len(tokenizer))
    else:
        base, tokenizer = load_model(spec["model"], verbose=False)
        kwargs = {"target_modules": spec["target_modules"]} if "target_modules" in spec else {}
        make_model = lora_model_factory(base, **kwargs)
    return TaskObjective(make_model, tokenizer, data.train, data.validation, space_from_dict(spec["space"]),
                         fixed=dict(spec["fixed"]), eval_batch_size=spec.get("eval_batch_size", 16),
                         seed=spec["seed"], record_example_losses=bool(spec.get("record_example_losses", False)))


def worker_main(argv: list[str] | None = None) -> int:
    """One worker: load the shared study, run ``--trials`` trials of the spec's objective, exit.

    ``--spec`` is a JSON string or the path of a JSON file. ``--threads`` sets torch's thread
    count (1 when several workers share a machine's cores). Returns the exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m course_lib.hpo_workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="journal file path or database URL")
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--spec", required=True, help="objective spec: JSON text or a .json file")
    parser.add_argument("--trials", type=int, required=True, help="trials this worker runs")
    parser.add_argument("--worker", type=int, default=0, help="worker index (sampler seed = seed + index)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--heartbeat", type=int, default=None,
                        help="database storage only: seconds between heartbeats; a dead worker's trial is retried")
    args = parser.parse_args(argv)

    import optuna
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    spec_text = Path(args.spec).read_text() if args.spec.endswith(".json") else args.spec
    spec = json.loads(spec_text)
    check_budget(args.trials)
    storage = open_storage(args.storage, heartbeat_s=args.heartbeat)
    objective = objective_from_spec(spec)
    sampler = make_sampler(spec["sampler"], seed=spec["seed"] + args.worker,
                           n_startup_trials=spec.get("n_startup_trials", 4))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=args.study, storage=storage, sampler=sampler,
                                direction="minimize", load_if_exists=True)

    def tagged(trial):
        trial.set_user_attr("worker", args.worker)
        return objective(trial)

    study.optimize(tagged, n_trials=args.trials, catch=(FloatingPointError,))
    return 0


@dataclass
class ParallelRun:
    """What :func:`run_workers` measured. ``step_spread`` is the trial-to-trial spread of the
    seconds per training step (:func:`step_time_spread`), this run's timing noise."""

    study_name: str
    storage: str
    n_workers: int
    threads_per_worker: int
    n_trials: int
    wall_s: float
    integrity: dict = field(default_factory=dict)
    step_spread: float = math.nan


def _split(n_trials: int, n_workers: int) -> list[int]:
    base, extra = divmod(n_trials, n_workers)
    return [base + (i < extra) for i in range(n_workers)]


def run_workers(storage: str, study_name: str, spec: dict, n_trials: int, n_workers: int = 2,
                threads_per_worker: int = 1, timeout: float | None = None, progress: bool = True) -> ParallelRun:
    """Run one study of ``n_trials`` trials with ``n_workers`` worker processes sharing ``storage``.

    The study is created here (it must be new); the trials are split between the workers as
    evenly as possible (``n_trials // n_workers``, the first ones take the remainder), so the
    total is exact. The wall time runs from starting the processes to the last one exiting, so
    it includes each worker's start-up (imports, loading the model), as a real deployment would.

    Raises:
        ValueError: bad budget or worker count, unreachable storage, or a study of that name
            that already has trials, all before any process starts.
        RuntimeError: a worker failed (its error output is included) or ``timeout`` passed.
    """
    import optuna

    check_budget(n_trials)
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or not 1 <= n_workers <= n_trials:
        raise ValueError(f"n_workers must be between 1 and n_trials={n_trials}, got {n_workers!r}.")
    _check_spec_keys(spec)
    space_from_dict(spec["space"])  # validates the search space
    store = open_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=store, direction="minimize", load_if_exists=True)
    if study.trials:
        raise ValueError(f"Study {study_name!r} in {storage} already has {len(study.trials)} trials; "
                         "use a new study name (or a new storage file).")

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads_per_worker), MKL_NUM_THREADS=str(threads_per_worker),
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               TQDM_DISABLE="1")
    spec_text = json.dumps(spec)
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "course_lib.hpo_workers", "--storage", storage,
                               "--study", study_name, "--spec", spec_text, "--trials", str(quota),
                               "--worker", str(i), "--threads", str(threads_per_worker)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, quota in enumerate(_split(n_trials, n_workers))]
    bar = tqdm(total=n_trials, desc=f"{n_workers} worker(s)", disable=not progress)
    try:
        while any(p.poll() is None for p in procs):
            if timeout is not None and time.perf_counter() - start > timeout:
                raise RuntimeError(f"The workers did not finish within {timeout} s.")
            done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            bar.update(done - bar.n)
            time.sleep(0.5)
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        outputs = [p.communicate() for p in procs]
        bar.update(sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)) - bar.n)
        bar.close()
    failed = [(i, p.returncode, err) for i, (p, (_, err)) in enumerate(zip(procs, outputs)) if p.returncode != 0]
    if failed:
        i, code, err = failed[0]
        raise RuntimeError(f"Worker {i} exited with code {code}:\n{err[-2000:]}")
    finished = optuna.load_study(study_name=study_name, storage=store)
    return ParallelRun(study_name, storage, n_workers, threads_per_worker, n_trials, wall,
                       check_study_integrity(finished, n_trials), step_time_spread(finished))


def step_time_spread(study) -> float:
    """Relative spread ``(max - min) / median`` of the seconds per training step
    (``train_seconds / steps_run``) over a study's completed trials: how much the time of the same
    kind of work moves from trial to trial on this machine. NaN with fewer than two such trials."""
    from optuna.trial import TrialState

    per_step = [t.user_attrs["train_seconds"] / t.user_attrs["steps_run"] for t in study.get_trials(deepcopy=False)
                if t.state == TrialState.COMPLETE and t.user_attrs.get("steps_run") and "train_seconds" in t.user_attrs]
    return relative_spread(per_step) if len(per_step) >= 2 else math.nan


def check_study_integrity(study, expected_trials: int) -> dict:
    """Did every planned trial run exactly once?

    Returns counts: ``trials``, ``finished`` (complete, pruned or failed), ``running``,
    ``lost = expected - finished``, ``duplicate_numbers`` (trial numbers seen twice),
    ``duplicate_params`` (completed trials with the same parameters as an earlier one),
    ``per_worker`` (trials per worker index), and ``ok`` (nothing lost, duplicated or left over).
    """
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    numbers = Counter(t.number for t in trials)
    seen, dup_params = set(), 0
    for t in sorted(finished, key=lambda t: t.number):
        key = tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in t.params.items()))
        dup_params += key in seen
        seen.add(key)
    report = {
        "trials": len(trials),
        "finished": len(finished),
        "running": sum(not t.state.is_finished() for t in trials),
        "lost": expected_trials - len(finished),
        "duplicate_numbers": sum(c - 1 for c in numbers.values()),
        "duplicate_params": dup_params,
        "per_worker": dict(sorted(Counter(t.user_attrs.get("worker", -1) for t in trials).items())),
    }
    report["ok"] = (report["lost"] == 0 and report["running"] == 0 and report["duplicate_numbers"] == 0
                    and report["duplicate_params"] == 0 and len(trials) == expected_trials)
    return report


def wall_time_ratio(single: ParallelRun, parallel: ParallelRun) -> float:
    """``parallel.wall_s / single.wall_s``: the fraction of the single-worker time the parallel
    study needed (0.5 would be a perfect 2x); a ValueError if they ran different numbers of trials."""
    if single.n_trials != parallel.n_trials:
        raise ValueError(f"Compare studies of the same size: {single.n_trials} vs {parallel.n_trials} trials.")
    return parallel.wall_s / single.wall_s if single.wall_s > 0 else math.nan


def wall_time_verdict(single: ParallelRun, parallel: ParallelRun, target: float = 0.65):
    """Did ``parallel`` finish the same trials in at most ``target`` x ``single``'s wall time,
    with no trial lost or duplicated, beyond the timing noise?

    The noise on the ratio is ``ratio * max(single.step_spread, parallel.step_spread)`` (the
    larger of the two runs' trial-to-trial timing spreads); the ratio part is
    ``claims.within_tolerance(ratio, target, noise)``: True if even ``ratio + noise`` meets the
    target, False if ``ratio - noise`` misses it, else INCONCLUSIVE (also when a run has no
    spread, e.g. one trial). A failed integrity check of either run makes the claim False.
    """
    ratio = wall_time_ratio(single, parallel)
    if not (single.integrity.get("ok") and parallel.integrity.get("ok")):
        return False
    spreads = (single.step_spread, parallel.step_spread)
    if math.isnan(ratio) or any(math.isnan(s) for s in spreads):
        return INCONCLUSIVE
    return within_tolerance(ratio, target, ratio * max(spreads))


if __name__ == "__main__":
    sys.exit(worker_main())
