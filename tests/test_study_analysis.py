"""The bootstrap of validation noise (chapter 01: is the chosen trial really the best?)."""

import optuna
import pytest

from course_lib.claims import INCONCLUSIVE
from course_lib.hpo import UNTUNED_DEFAULTS, TaskObjective, fine_tune_and_score, make_search_data, tiny_model_factory
from course_lib.device import torch_threads
from course_lib.hpo_studies import run_study
from course_lib.models import load_tokenizer
from course_lib.search_space import Range
from course_lib.study_analysis import best_trial_verdict, bootstrap_best_share, example_losses_by_trial


def test_bootstrap_separates_a_clear_winner_and_not_a_tie():
    clear = {"a": [1.0, 1.1, 0.9, 1.0] * 4, "b": [2.0, 2.1, 1.9, 2.0] * 4}
    shares = bootstrap_best_share(clear, n_resamples=500)
    assert shares == {"a": 1.0, "b": 0.0}
    assert best_trial_verdict(shares, "a") is True and best_trial_verdict(shares, "b") is False
    # the same losses, shuffled between two candidates: each is best about half of the time
    tie = {"a": [1.0, 3.0] * 8, "b": [3.0, 1.0] * 8}
    shares = bootstrap_best_share(tie, n_resamples=2000, seed=1)
    assert 0.4 < shares["a"] < 0.6 and abs(shares["a"] + shares["b"] - 1) < 1e-12
    assert best_trial_verdict({"a": 0.7, "b": 0.3}, "a") == INCONCLUSIVE


def test_bootstrap_and_verdict_refuse_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        bootstrap_best_share({"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="same validation examples"):
        bootstrap_best_share({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(ValueError, match="not among"):
        best_trial_verdict({"a": 1.0}, "c")
    with pytest.raises(ValueError, match="doubtful"):
        best_trial_verdict({"a": 1.0}, "a", confident=0.4, doubtful=0.5)


def test_objective_records_per_example_losses_and_the_default_trains_with_the_same_budget():
    data = make_search_data("date-iso", n_train=16, n_validation=4, n_test=4)
    tokenizer = load_tokenizer()  # exact match generates text: the real tokenizer, a tiny model
    factory = tiny_model_factory(len(tokenizer))
    objective = TaskObjective(factory, tokenizer, data.train, data.validation, {"lr": Range(1e-3, 1e-1, log=True)},
                              fixed={"steps": 2, "batch_size": 4}, record_example_losses=True)
    with torch_threads(1):
        study = run_study(objective, 3, sampler=optuna.samplers.RandomSampler(seed=0), progress=False)
        with pytest.raises(ValueError, match="record_example_losses"):
            plain = TaskObjective(factory, tokenizer, data.train, data.validation, {"lr": Range(1e-3, 1e-1, log=True)},
                                  fixed={"steps": 2, "batch_size": 4})
            example_losses_by_trial(run_study(plain, 1, progress=False))
        losses = example_losses_by_trial(study)
        assert sorted(losses) == [0, 1, 2] and all(len(v) == 4 for v in losses.values())
        params = {**UNTUNED_DEFAULTS, "steps": 2, "batch_size": 4}
        first, model = fine_tune_and_score(factory, params, tokenizer, data, progress=False)
        again, _ = fine_tune_and_score(factory, params, tokenizer, data, progress=False)
    assert 0.0 <= first <= 1.0 and first == again
    untrained = factory({})
    assert any(not (a == b).all() for a, b in zip(model.parameters(), untrained.parameters()))  # it trained
