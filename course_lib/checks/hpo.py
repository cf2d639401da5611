"""Checkers for chapter 01 (hyperparameter search with Optuna).

* :func:`check_search_space`: ``suggest_hyperparameters(trial) -> dict`` with a log-scaled
  learning rate in [1e-5, 1e-2], a batch size chosen from (4, 8) and a warm-up fraction in
  [0, 0.2] on a linear scale.
* :func:`check_objective`: ``objective(trial) -> float`` that trains a fresh model from
  :func:`exercise_setup` and returns its loss on the *validation* split.
* :func:`check_worker_seeds`: ``make_worker_sampler(base_seed, worker)`` that gives each worker of a
  shared study its own, reproducible random stream.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import SimpleNamespace

from . import Case, CheckResult, check_function

__all__ = ["SPACE_SPEC", "OBJECTIVE_SPEC", "OBJECTIVE_BATCH_SIZE", "reference_suggest_hyperparameters",
           "check_search_space", "exercise_setup", "reference_objective", "check_objective",
           "reference_make_worker_sampler", "check_worker_seeds"]

SPACE_SPEC = {"lr": ("float", 1e-5, 1e-2, True), "batch_size": ("categorical", (4, 8)),
              "warmup_fraction": ("float", 0.0, 0.2, False)}
OBJECTIVE_SPEC = {"lr": ("float", 1e-3, 1e-1, True), "steps": ("int", 5, 20, False)}
OBJECTIVE_BATCH_SIZE = 8


# --------------------------------------------------------------------------- exercise 1: the space


def reference_suggest_hyperparameters(trial) -> dict:
    """The reference search space (see the module docstring)."""
    return {"lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [4, 8]),
            "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.2)}


def _describe(dist) -> tuple:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return ("categorical", tuple(sorted(dist.choices, key=repr)))  # the order of options does not matter
    if isinstance(dist, FloatDistribution):
        return ("float", dist.low, dist.high, dist.log)
    if isinstance(dist, IntDistribution):
        return ("int", dist.low, dist.high, dist.log)
    return (type(dist).__name__,)


def _space_signature(fn, seed: int):
    """Run ``fn`` on a fresh random trial: (distributions it asked for, whether it returned them)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    returned = fn(trial)
    dists = {name: _describe(d) for name, d in sorted(trial.distributions.items())}
    ok = isinstance(returned, dict) and returned == trial.params
    return dists, ok


def _diagnose_space(got, expected, case: Case) -> str | None:
    dists, returned_ok = got
    want, _ = expected
    lr = dists.get("lr")
    if lr is None:
        names = ", ".join(dists) or "none"
        return f"suggest the learning rate under the name 'lr' (you suggested: {names})."
    if lr[0] == "float" and not lr[3]:
        return ("sample the learning rate on a log scale: trial.suggest_float('lr', 1e-5, 1e-2, log=True). "
                "On a linear scale 90% of the draws land above 1e-3, and 1e-5..1e-4 is almost never tried.")
    if lr[0] != "float":
        return "the learning rate is a continuous number: use trial.suggest_float with log=True."
    if lr[1:3] != want["lr"][1:3]:
        return f"the learning rate range should be [1e-5, 1e-2], you gave [{lr[1]:g}, {lr[2]:g}]."
    bs = dists.get("batch_size")
    if bs is not None and bs[0] != "categorical":
        return "choose the batch size from the options (4, 8) with trial.suggest_categorical."
    if bs is not None and sorted(bs[1]) != sorted(want["batch_size"][1]):
        return f"the batch size is one of 4 and 8, you offered {list(bs[1])}."
    wf = dists.get("warmup_fraction")
    if wf is not None and wf[0] != "float":
        return "the warm-up fraction is a continuous number: trial.suggest_float('warmup_fraction', 0.0, 0.2)."
    if wf is not None and wf[3]:
        return "a log scale cannot include 0: the warm-up fraction [0, 0.2] is sampled on a linear scale."
    if wf is not None and wf[1:3] != want["warmup_fraction"][1:3]:
        return f"the warm-up fraction range should be [0, 0.2], you gave [{wf[1]:g}, {wf[2]:g}]."
    missing = sorted(set(want) - set(dists))
    if missing:
        return f"also suggest {missing}."
    if not returned_ok:
        return "return a dict {name: suggested value} of everything you suggested."
    return None


def check_search_space(fn) -> CheckResult:
    """Check ``fn(trial) -> dict`` against the reference search space on three random trials."""
    cases = [Case((seed,), label=f"a random trial (seed {seed})") for seed in (0, 1, 2)]
    return check_function(lambda seed: _space_signature(fn, seed),
                          lambda seed: _space_signature(reference_suggest_hyperparameters, seed),
                          cases, name=getattr(fn, "__name__", "suggest_hyperparameters"), diagnose=_diagnose_space)


# --------------------------------------------------------------------------- exercise 2: the objective


@lru_cache(maxsize=1)
def exercise_setup() -> SimpleNamespace:
    """Everything the objective exercise needs, small enough for a trial to take a second.

    Attributes: ``tokenizer`` (the course tokenizer restricted to the date task's tokens),
    ``train``, ``validation`` (carved from the training examples) and ``test`` examples, and
    ``make_model()``, which returns a fresh tiny Llama (always the same initial weights).
    """
    from ..hpo import make_search_data, tiny_model_factory
    from ..tasks import CompactTokenizer
    from ..models import load_tokenizer

    data = make_search_data("date-iso", n_train=64, n_validation=16, n_test=16)
    tokenizer = CompactTokenizer.for_examples(load_tokenizer(), data.train + data.validation + data.test)
    factory = tiny_model_factory(len(tokenizer))
    return SimpleNamespace(tokenizer=tokenizer, train=data.train, validation=data.validation, test=data.test,
                           make_model=lambda: factory({}))


def reference_objective(trial) -> float:
    """Train a fresh model of :func:`exercise_setup` with the trial's ``lr`` (log-uniform in
    [1e-3, 1e-1]) for ``steps`` (integer in [5, 20]) steps at batch size 8 (``task_batches``
    seed 0), and return its :func:`~course_lib.metrics.answer_loss` on the validation split."""
    from ..metrics import answer_loss
    from ..training import task_batches, train

    ex = exercise_setup()
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    steps = trial.suggest_int("steps", 5, 20)
    model = ex.make_model()
    train(model, task_batches(ex.tokenizer, ex.train, OBJECTIVE_BATCH_SIZE, seed=0), steps=steps, lr=lr,
          progress=False)
    return answer_loss(model, ex.tokenizer, ex.validation)


def _objective_cases() -> list[Case]:
    return [Case(({"lr": 0.03, "steps": 10},), label="lr=0.03, steps=10"),
            Case(({"lr": 0.03, "steps": 10},), label="lr=0.03, steps=10 again (a second trial, same values)"),
            Case(({"lr": 0.002, "steps": 6},), label="lr=0.002, steps=6")]


def _fixed(fn):
    """Run ``fn`` on a FixedTrial: (its return value, the distributions it asked for). A FixedTrial
    returns the fixed values whatever the range, so the distributions are what shows a wrong scale,
    bounds or type."""
    import optuna

    def run(params):
        trial = optuna.trial.FixedTrial(params)
        value = fn(trial)
        return value, {name: _describe(d) for name, d in sorted(trial.distributions.items())}

    return run


def _diagnose_distributions(dists: dict) -> str | None:
    for name, want in OBJECTIVE_SPEC.items():
        got = dists.get(name)
        if got is None:
            return f"suggest {name!r} with the trial (you suggested: {', '.join(dists) or 'nothing'})."
        if got[0] != want[0]:
            kind = "suggest_float" if want[0] == "float" else "suggest_int"
            return f"{name!r} needs trial.{kind}, you asked for a {got[0]} value."
        if got[1] > got[2]:
            return f"the bounds of {name!r} are swapped: low must come first, [{want[1]:g}, {want[2]:g}]."
        if got[3] != want[3]:
            return (f"sample {name!r} on a {'log' if want[3] else 'linear'} scale "
                    f"(log={want[3]}): the distribution decides which values a sampler tries.")
        if tuple(got[1:3]) != want[1:3]:
            return f"{name!r} ranges over [{want[1]:g}, {want[2]:g}], you gave [{got[1]:g}, {got[2]:g}]."
    return None


def _diagnose_objective(got, expected, case: Case) -> str | None:
    from ..metrics import answer_loss
    from ..training import task_batches, train

    got, dists = got
    hint = _diagnose_distributions(dists)
    if hint:
        return hint
    ex = exercise_setup()
    params = case.args[0]
    model = ex.make_model()
    result = train(model, task_batches(ex.tokenizer, ex.train, OBJECTIVE_BATCH_SIZE, seed=0), steps=params["steps"],
                   lr=params["lr"], progress=False)
    got = float(got)
    if math.isclose(got, answer_loss(model, ex.tokenizer, ex.test), rel_tol=1e-4):
        return ("you scored the test split. The search must never see it: return the loss on ex.validation, "
                "and keep ex.test for one final evaluation of the chosen configuration.")
    if math.isclose(got, answer_loss(model, ex.tokenizer, ex.train), rel_tol=1e-4) or math.isclose(
            got, result.losses[-1], rel_tol=1e-4):
        return "you returned a loss on the training data; the objective is the validation loss (ex.validation)."
    if "again" in case.label:
        return ("the same hyperparameters gave a different result the second time: build a fresh model inside "
                "the objective (ex.make_model()), or each trial keeps training the previous one.")
    return (f"use trial.suggest_float('lr', 1e-3, 1e-1, log=True), trial.suggest_int('steps', 5, 20), batch size "
            f"{OBJECTIVE_BATCH_SIZE} from task_batches(ex.tokenizer, ex.train, {OBJECTIVE_BATCH_SIZE}, seed=0), "
            "and train(..., progress=False).")


def check_objective(fn) -> CheckResult:
    """Check ``fn(trial) -> float`` against :func:`reference_objective` on fixed trials."""
    return check_function(_fixed(fn), _fixed(reference_objective), _objective_cases(),
                          name=getattr(fn, "__name__", "objective"), diagnose=_diagnose_objective)


# --------------------------------------------------------------------------- exercise 3: worker seeds


def reference_make_worker_sampler(base_seed: int, worker: int):
    """A random sampler whose seed is ``base_seed + worker``: different per worker, reproducible."""
    import optuna

    return optuna.samplers.RandomSampler(seed=base_seed + worker)


def _worker_properties(make_sampler, base_seed: int, n_workers: int = 2, trials_each: int = 4) -> tuple:
    """(no parameter set proposed twice, a rerun proposes the same sets) for workers that take
    turns on one shared in-memory study."""
    import optuna

    def run():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(study_name="shared", storage=storage)
        workers = [optuna.load_study(study_name="shared", storage=storage, sampler=make_sampler(base_seed, w))
                   for w in range(n_workers)]
        proposed = []
        for _ in range(trials_each):
            for study in workers:
                trial = study.ask()
                x = trial.suggest_float("lr", 1e-5, 1e-2, log=True)
                study.tell(trial, x)
                proposed.append(round(x, 15))
        return proposed

    first, second = run(), run()
    return (len(set(first)) == len(first), first == second)


def _seed_properties(make_sampler, base_seed: int) -> tuple:
    """(distinct, reproducible, another base seed gives another search) for ``base_seed``."""
    distinct, reproducible = _worker_properties(make_sampler, base_seed)

    def first_values(seed):
        import optuna

        study = optuna.create_study(sampler=make_sampler(seed, 0))
        return [round(study.ask().suggest_float("lr", 1e-5, 1e-2, log=True), 15) for _ in range(3)]

    return distinct, reproducible, first_values(base_seed) != first_values(base_seed + 100)


def _diagnose_seeds(got, expected, case: Case) -> str | None:
    distinct, reproducible, follows_base = got
    if not distinct:
        return ("two workers proposed the same values: they were seeded alike. Give each worker its own seed, "
                "e.g. base_seed + worker.")
    if not reproducible:
        return "a rerun proposed different values: derive the seed from base_seed and worker, not seed=None."
    if not follows_base:
        return ("another base_seed gave the same search: use base_seed too (e.g. base_seed + worker), so that a "
                "new study can be started with a new seed.")
    return None


def check_worker_seeds(fn) -> CheckResult:
    """Check ``fn(base_seed, worker) -> sampler``: distinct streams per worker, reproducible reruns."""
    cases = [Case((seed,), label=f"two workers, base seed {seed}") for seed in (0, 7)]
    return check_function(lambda seed: _seed_properties(fn, seed),
                          lambda seed: _seed_properties(reference_make_worker_sampler, seed),
                          cases, name=getattr(fn, "__name__", "make_worker_sampler"), diagnose=_diagnose_seeds)
