import dataclasses
import json
import math
import re

import optuna
import pytest
import sqlalchemy
import torch

from course_lib.checks import hpo as checks
import pandas as pd

from course_lib.claims import INCONCLUSIVE
from course_lib.hpo import (CPU_ONLY_SIZES, HYPERPARAMETERS, SIZES, SearchData, TaskObjective, accuracy_by_train_size,
                            check_train_sizes, lora_model_factory, make_search_data, tiny_model_factory,
                            train_with_params)
from course_lib.hpo_article import NOT_RUN, any_attempt_ran_cleanly, article_grid_search_errors
from course_lib.hpo_studies import (DRIVER_PACKAGES, PRUNERS, SAMPLERS, best_so_far, check_budget, compare_pruners,
                                    compare_samplers, driver_package, make_pruner, make_sampler, open_storage,
                                    run_study, study_cost)
from course_lib.search_space import (Choice, Range, grid_size, grid_values, space_from_dict, space_to_dict, suggest,
                                     validate_space)
from course_lib.study_analysis import (best_change_by_seed, lead_verdict, plot_best_so_far, pruner_verdict,
                                       sampler_summary, sampler_verdict)
from course_lib.device import torch_threads
from course_lib.tasks import CompactTokenizer
from course_lib.metrics import answer_loss
from course_lib.hpo_trainer import lora_model_init, task_trainer
from course_lib.hpo_workers import (SPEC_KEYS, ParallelRun, check_study_integrity, objective_from_spec, run_workers,
                                    step_time_spread, wall_time_ratio, wall_time_verdict, worker_main)
from course_lib.metrics import exact_match
from course_lib.tiny_models import tiny_gpt2, tiny_llama

# A plain postgresql:// URL means psycopg 3 from SQLAlchemy 2.1 on, psycopg2 before (Colab has SQLAlchemy 2.0).
PLAIN_POSTGRES = ("psycopg[binary]" if tuple(map(int, sqlalchemy.__version__.split(".")[:2])) >= (2, 1)
                  else "psycopg2-binary")

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"lr": Range(1e-3, 1e-1, log=True), "steps": Range(4, 12, integer=True), "batch_size": Choice([4, 8])}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the cores."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def setup():
    return checks.exercise_setup()


@pytest.fixture(scope="module")
def tiny_objective(setup):
    return TaskObjective(tiny_model_factory(len(setup.tokenizer)), setup.tokenizer, setup.train, setup.validation,
                         SPACE)


# --------------------------------------------------------------------------- search space


def test_bad_search_ranges_raise_before_training():
    for space, match in [({}, "empty"), ({"lr": Range(1e-2, 1e-5, log=True)}, "inverted"),
                         ({"lr": Range(1e-3, 1e-3)}, "empty"), ({"lr": Range(0.0, 1e-2, log=True)}, "log"),
                         ({"steps": Range(1.5, 4, integer=True)}, "integer"), ({"batch_size": Choice([])}, "no options"),
                         ({"lr": (1e-5, 1e-2)}, "Range or a Choice"), ({"lr": Range(-math.inf, 1)}, "non-finite")]:
        with pytest.raises(ValueError, match=match):
            validate_space(space)
    validate_space(SPACE)


def test_suggest_and_grid_follow_the_space():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = suggest(trial, SPACE)
        assert 1e-3 <= params["lr"] <= 1e-1 and isinstance(params["steps"], int) and params["batch_size"] in (4, 8)
        assert trial.distributions["lr"].log
        study.tell(trial, 0.0)
    grid = grid_values(SPACE, {"lr": 3, "steps": 2})
    assert grid["lr"] == pytest.approx([1e-3, 1e-2, 1e-1])  # log-spaced
    assert grid["steps"] == [4, 12] and grid["batch_size"] == [4, 8]
    assert grid_size(grid) == 12
    assert grid_values({"x": Range(0, 1)}, 3)["x"] == [0, 0.5, 1]
    with pytest.raises(ValueError, match="2 points"):
        grid_values(SPACE, 1)


def test_space_round_trips_through_json():
    assert space_from_dict(json.loads(json.dumps(space_to_dict(SPACE)))) == SPACE
    with pytest.raises(ValueError, match="inverted"):
        space_from_dict({"lr": {"low": 1, "high": 0, "log": False, "integer": False}})


# --------------------------------------------------------------------------- data, loss, models


def test_search_data_keeps_validation_apart_from_train_and_test():
    data = make_search_data(n_train=40, n_validation=10, n_test=12)
    assert isinstance(data, SearchData)
    assert len(data.train) == 40 and len(data.validation) == 10 and len(data.test) == 12
    prompts = [{e.prompt for e in part} for part in (data.train, data.validation, data.test)]
    assert not (prompts[0] & prompts[1]) and not (prompts[2] & (prompts[0] | prompts[1]))
    assert make_search_data(n_train=40, n_validation=10, n_test=12) == data  # deterministic
    with pytest.raises(ValueError):
        make_search_data(n_train=0)


def test_answer_loss_scores_answer_tokens_only(tokenizer):
    from course_lib.tasks import collate, encode_example

    model = tiny_llama(vocab_size=len(tokenizer))
    examples = make_search_data(n_train=4, n_validation=3, n_test=0).validation
    batch = collate([encode_example(tokenizer, e) for e in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model(**batch).loss.item()  # the model's own token-weighted loss on answer tokens
    assert answer_loss(model, tokenizer, examples, batch_size=2) == pytest.approx(expected, rel=1e-5)
    model.train()
    answer_loss(model, tokenizer, examples)
    assert model.training  # mode restored
    with pytest.raises(ValueError):
        answer_loss(model, tokenizer, [])


def test_compact_tokenizer_renumbers_and_refuses_unknown_tokens(tokenizer):
    examples = make_search_data(n_train=8, n_validation=2, n_test=0).train
    compact = CompactTokenizer.for_examples(tokenizer, examples)
    assert len(compact) < 200 and compact.eos_token_id < len(compact)
    ids = compact(examples[0].prompt)["input_ids"]
    assert max(ids) < len(compact)
    assert [compact.old_ids[i] for i in ids] == tokenizer(examples[0].prompt, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="compact vocabulary"):
        compact("Zebra quantum xylophone")


def test_lora_factory_copies_the_base_and_uses_the_rank():
    base = tiny_llama(vocab_size=64)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = lora_model_factory(base, target_modules=("q_proj", "v_proj"))({"lora_rank": 2})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.shape[0] == 2
    assert not any("lora" in n for n, _ in base.named_parameters())  # the base is untouched
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    with pytest.raises(ValueError, match="lora_rank"):
        lora_model_factory(base)({"lora_rank": 0})
    with pytest.raises(ValueError, match="matches no linear layer"):  # the lora library's target check
        lora_model_factory(base, target_modules=("c_attn",))({"lora_rank": 2})
    gpt2 = lora_model_factory(tiny_gpt2(vocab_size=64))({"lora_rank": 2})  # default preset: attn.c_attn and attn.c_proj on GPT-2
    assert gpt2.peft_config["default"].fan_in_fan_out and set(gpt2.peft_config["default"].target_modules) == {"attn.c_attn", "attn.c_proj"}
    tiny = tiny_model_factory(64)({})
    assert sum(p.numel() for p in tiny.parameters()) < 100_000


def test_lora_factory_and_objective_are_reproducible(setup):
    base = tiny_llama(vocab_size=len(setup.tokenizer), hidden_size=32, intermediate_size=64)
    make = lora_model_factory(base, target_modules=("q_proj", "v_proj"))

    def lora_a(model):
        return model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.detach().clone()

    first = make({"lora_rank": 4})
    torch.rand(100)  # moving the global random state must not change the next model
    assert torch.equal(lora_a(first), lora_a(make({"lora_rank": 4})))
    assert not torch.equal(lora_a(first), lora_a(lora_model_factory(base, ("q_proj", "v_proj"), seed=1)({"lora_rank": 4})))
    # seed=None draws from torch's state, which the objective seeds before building the model
    unseeded = lora_model_factory(base, target_modules=("q_proj", "v_proj"), seed=None)
    objective = TaskObjective(unseeded, setup.tokenizer, setup.train, setup.validation, {"lr": Range(1e-3, 1e-1, log=True)},
                              fixed={"steps": 3, "batch_size": 4, "lora_rank": 4})
    losses = []
    for _ in range(2):
        torch.rand(100)
        losses.append(objective(optuna.trial.FixedTrial({"lr": 0.05})))
    assert losses[0] == losses[1]
    assert losses[0] != objective.with_seed(1)(optuna.trial.FixedTrial({"lr": 0.05}))


# --------------------------------------------------------------------------- the objective and studies


def test_objective_is_reproducible_and_trains_a_fresh_model(tiny_objective):
    trial = optuna.trial.FixedTrial({"lr": 0.03, "steps": 6, "batch_size": 4})
    first = tiny_objective(trial)
    assert first == tiny_objective(optuna.trial.FixedTrial({"lr": 0.03, "steps": 6, "batch_size": 4}))
    untrained = answer_loss(tiny_objective.make_model({}), tiny_objective.tokenizer, tiny_objective.val_examples)
    assert first < untrained
    assert tiny_objective.with_seed(1).seed == 1 and tiny_objective.seed == 0


def test_train_with_params_is_reproducible(setup):
    make = tiny_model_factory(len(setup.tokenizer))
    params = {"lr": 0.03, "steps": 5, "batch_size": 4, "warmup_fraction": 0.4}
    model, again = make({}), make({})
    result = train_with_params(model, params, setup.tokenizer, setup.train)
    train_with_params(again, params, setup.tokenizer, setup.train)
    assert result.steps == 5 and all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), make({}).parameters()))  # trained in place
    with pytest.raises(ValueError, match="lacks"):
        train_with_params(model, {"lr": 0.1}, setup.tokenizer, setup.train)
    with pytest.raises(ValueError, match="cannot fill a batch"):
        train_with_params(model, params, setup.tokenizer, setup.train[:3])


def test_accuracy_by_train_size(tokenizer):
    data = make_search_data(n_train=8, n_validation=2, n_test=3)
    make = lora_model_factory(tiny_llama(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64),
                              target_modules=("q_proj",))
    params = {"lr": 1e-2, "steps": 2, "batch_size": 2, "lora_rank": 2}
    accuracy, model = accuracy_by_train_size(make, params, tokenizer, data, (4, 0, 2), eval_batch_size=3, progress=False)
    assert list(accuracy) == [0, 2, 4] and all(0 <= a <= 1 for a in accuracy.values())
    assert accuracy[0] == exact_match(make(params), tokenizer, data.test, batch_size=3, progress=False)
    assert any("lora_" in n for n, _ in model.named_parameters())
    lora_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert lora_b.abs().sum() > 0  # the largest set's model was trained (B starts at zero)
    with pytest.raises(ValueError, match="train_sizes"):
        accuracy_by_train_size(make, params, tokenizer, data, (10,))
    with pytest.raises(ValueError, match="see only 4 examples"):  # 2 steps x batch 2 cannot cover 6 examples
        accuracy_by_train_size(make, params, tokenizer, data, (0, 6))
    with pytest.raises(ValueError, match="not multiples"):
        accuracy_by_train_size(make, params, tokenizer, data, (3,))
    assert check_train_sizes((16, 0, 48, 16), 100, steps=12, batch_size=4) == [0, 16, 48]
    with pytest.raises(ValueError, match="at least 64 steps"):  # the old cpu table: 12 steps x 4 < 256
        check_train_sizes((0, 16, 256), 256, steps=12, batch_size=4)


def test_objective_rejects_bad_configuration(setup):
    make = tiny_model_factory(len(setup.tokenizer))
    args = (make, setup.tokenizer, setup.train, setup.validation)
    with pytest.raises(ValueError, match="neither searched nor fixed"):
        TaskObjective(*args, {"lr": Range(1e-3, 1e-1, log=True)})
    with pytest.raises(ValueError, match="Unknown hyperparameter"):
        TaskObjective(*args, SPACE, fixed={"momentum": 0.9})
    with pytest.raises(ValueError, match="both searched and fixed"):
        TaskObjective(*args, SPACE, fixed={"lr": 0.1})
    with pytest.raises(ValueError, match="inverted"):
        TaskObjective(*args, {**SPACE, "lr": Range(1e-1, 1e-3)})


def test_run_study_checks_budget_and_storage_before_training(tiny_objective, tmp_path):
    calls = []

    def objective(trial):
        calls.append(trial)
        return 0.0

    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="positive number of trials"):
            run_study(objective, bad)
    assert check_budget(3) == 3
    for url, match in [(str(tmp_path / "missing" / "journal.log"), "does not exist"),
                       ("sqlite:////nonexistent-folder-xyz/optuna.db", "does not exist"),
                       ("postgresql://user:pw@127.0.0.1:1/optuna", re.escape(PLAIN_POSTGRES) + "|reach"),
                       ("", "storage must be")]:
        with pytest.raises(ValueError, match=match):
            run_study(objective, 2, storage=url)
    assert not calls  # nothing ran
    assert isinstance(open_storage(None), optuna.storages.InMemoryStorage)
    assert isinstance(open_storage(str(tmp_path / "j.log")), optuna.storages.JournalStorage)
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 's.db'}"), optuna.storages.RDBStorage)
    with_heartbeat = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_s=30)
    assert with_heartbeat.get_heartbeat_interval() == 30
    with pytest.raises(ValueError, match="heartbeat"):
        open_storage(str(tmp_path / "j2.log"), heartbeat_s=30)


def test_driver_advice_matches_the_url():
    assert driver_package("postgresql://u:p@h/db") == PLAIN_POSTGRES  # SQLAlchemy's default driver
    assert driver_package("postgresql+psycopg://u:p@h/db") == "psycopg[binary]"
    assert driver_package("postgresql+psycopg2://u:p@h/db") == "psycopg2-binary"
    assert driver_package("mysql+pymysql://u:p@h/db") == "pymysql"
    assert driver_package("mysql://u:p@h/db") == "mysqlclient"
    assert driver_package("sqlite:///x.db") is None and driver_package("journal.log") is None
    for url, package in [("postgresql+psycopg2://u:p@127.0.0.1:1/db", "psycopg2-binary"),
                         ("postgresql+psycopg://u:p@127.0.0.1:1/db", r"psycopg\[binary\]")]:
        with pytest.raises(ValueError, match=package):
            open_storage(url)


def test_study_records_cost_and_best_so_far(tiny_objective, tmp_path):
    with torch_threads(1):
        study = run_study(tiny_objective, 4, sampler=make_sampler("random", seed=0), progress=False,
                          storage=str(tmp_path / "study.log"), study_name="s")
    curve = best_so_far(study)
    assert len(curve) == 4 and curve == sorted(curve, reverse=True) and curve[-1] == study.best_value
    cost = study_cost(study)
    assert cost["complete"] == 4 and cost["compute_saved"] == 0 and cost["steps_run"] == cost["steps_planned"] > 0
    assert cost["seconds"] > 0 and cost["best"] == study.best_value


def test_diverging_trial_is_recorded_as_failed(setup):
    objective = TaskObjective(tiny_model_factory(len(setup.tokenizer)), setup.tokenizer, setup.train,
                              setup.validation, {"lr": Range(1e6, 1e7, log=True)}, fixed={"steps": 6, "batch_size": 4})
    study = run_study(objective, 1, progress=False)
    cost = study_cost(study)
    assert cost["failed"] == 1 and math.isnan(best_so_far(study)[0])


def test_pruners_stop_bad_trials_and_save_compute(setup):
    objective = TaskObjective(tiny_model_factory(len(setup.tokenizer)), setup.tokenizer, setup.train, setup.validation,
                              {"lr": Range(1e-4, 1e-1, log=True)}, fixed={"steps": 12, "batch_size": 4}, eval_every=3)
    with torch_threads(1):
        study = run_study(objective, 8, sampler=make_sampler("random", seed=1),
                          pruner=make_pruner("median", n_startup_trials=2), progress=False)
    cost = study_cost(study)
    assert cost["pruned"] >= 1 and 0 < cost["compute_saved"] < 1 and cost["steps_run"] < cost["steps_planned"]
    assert all(t.intermediate_values for t in study.trials)
    with torch_threads(1):
        df, studies = compare_pruners(objective, 6, [0], pruners=(None, "hyperband"), progress=False)
    assert set(studies) == {("none", 0), ("hyperband", 0)} and len(studies[("none", 0)].trials) == 6
    assert list(df.pruner) == ["none", "hyperband"] and df.time_saved.iloc[0] == 0
    assert df.steps_run.iloc[0] == 6 * 12
    # Hyperband's brackets hash the study name, which compare_pruners fixes, so this is reproducible:
    # 3 of the 6 trials pruned, 57 of the 72 planned steps run (measured once, identical on reruns)
    assert df.pruned.iloc[1] == 3 and df.steps_run.iloc[1] == 57
    again, _ = compare_pruners(objective, 6, [0], pruners=("hyperband",), progress=False)
    assert again.steps_run.iloc[0] == 57
    with pytest.raises(ValueError, match="eval_every"):
        compare_pruners(dataclasses.replace(objective, eval_every=0), 2, [0])
    assert isinstance(make_pruner("hyperband", max_steps=12, eval_every=3), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(None), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="max_steps"):
        make_pruner("hyperband")
    with pytest.raises(ValueError):
        make_pruner("asha")
    with pytest.raises(ValueError, match="grid"):
        make_sampler("grid")
    with pytest.raises(ValueError):
        make_sampler("cmaes")


def test_compare_samplers_gives_equal_budgets(tiny_objective):
    grid = grid_values(SPACE, {"lr": 2, "steps": 2})  # 2 x 2 x 2 = 8... too many for 4 trials
    with pytest.raises(ValueError, match="budget"):
        compare_samplers(tiny_objective, 4, [0], grid)
    grid = grid_values({k: SPACE[k] for k in ("lr", "steps")}, 2)
    objective = TaskObjective(tiny_objective.make_model, tiny_objective.tokenizer, tiny_objective.train_examples,
                              tiny_objective.val_examples, {k: SPACE[k] for k in ("lr", "steps")},
                              fixed={"batch_size": 4})
    with torch_threads(1):
        df = compare_samplers(objective, 4, [0, 1], grid, progress=False)
    assert set(df["sampler"]) == {"grid", "random", "tpe"} and len(df) == 3 * 2 * 4
    points = [sorted(map(str, g["params"])) for _, g in df[df.sampler == "grid"].groupby("seed")]
    assert points[0] == points[1] and len(set(points[0])) == 4  # the same 4 grid points, in another order
    fig = plot_best_so_far(df)
    assert len(fig.axes[0].lines) == 3


def _sampler_rows(finals: dict) -> pd.DataFrame:
    """compare_samplers-like rows: two trials per study, the second reaching the given final best."""
    rows = []
    for (sampler, seed), final in finals.items():
        rows += [{"sampler": sampler, "seed": seed, "trial": 1, "best_so_far": final + 1.0},
                 {"sampler": sampler, "seed": seed, "trial": 2, "best_so_far": final}]
    return pd.DataFrame(rows)


def test_sampler_summary_and_verdicts_respect_the_spread_across_seeds():
    clear = sampler_summary(_sampler_rows({("tpe", 0): 1.0, ("tpe", 1): 1.2, ("random", 0): 2.0, ("random", 1): 2.1,
                                           ("grid", 0): 1.5, ("grid", 1): 1.7}))
    assert list(clear.columns) == ["seed 0", "seed 1", "mean", "spread"]
    assert clear.loc["tpe", "mean"] == pytest.approx(1.1) and clear.loc["tpe", "spread"] == pytest.approx(0.2)
    assert lead_verdict(clear, "tpe", "random") is True  # lead 0.95 > spread 0.2
    assert lead_verdict(clear, "tpe", "grid") is True  # lead 0.5 > spread 0.2
    assert lead_verdict(clear, "random", "tpe") is False
    assert sampler_verdict(clear) is True
    # TPE's mean is lower than grid's by 0.1, but the seeds spread by 0.4: within the noise
    noisy = sampler_summary(_sampler_rows({("tpe", 0): 1.0, ("tpe", 1): 1.4, ("random", 0): 2.0, ("random", 1): 2.1,
                                           ("grid", 0): 1.25, ("grid", 1): 1.35}))
    assert lead_verdict(noisy, "tpe", "random") is True and lead_verdict(noisy, "tpe", "grid") == INCONCLUSIVE
    assert sampler_verdict(noisy) == INCONCLUSIVE
    assert sampler_verdict(noisy, rivals=("random",)) is True
    one_seed = sampler_summary(_sampler_rows({("tpe", 0): 1.0, ("random", 0): 5.0}))
    assert lead_verdict(one_seed, "tpe", "random") == INCONCLUSIVE  # no spread to compare with
    with pytest.raises(ValueError, match="No sampler"):
        lead_verdict(clear, "tpe", "cmaes")
    with pytest.raises(ValueError):
        sampler_summary(pd.DataFrame(columns=["sampler", "seed", "trial", "best_so_far"]))


def test_pruner_verdict_is_decided_per_seed():
    def table(best_hb, saved=(0.5, 0.5)):
        return pd.DataFrame([{"pruner": "none", "seed": 0, "best": 1.0, "compute_saved": 0.0},
                             {"pruner": "none", "seed": 1, "best": 2.0, "compute_saved": 0.0},
                             {"pruner": "hyperband", "seed": 0, "best": best_hb[0], "compute_saved": saved[0]},
                             {"pruner": "hyperband", "seed": 1, "best": best_hb[1], "compute_saved": saved[1]}])

    change = best_change_by_seed(table((1.075, 1.9)))
    assert change.loc[0] == pytest.approx(0.075) and change.loc[1] == pytest.approx(-0.05)
    assert pruner_verdict(table((1.04, 1.9))) is True  # no seed loses more than 5 %
    assert pruner_verdict(table((1.075, 1.9))) == INCONCLUSIVE  # one seed lost 7.5 %, the other won
    assert pruner_verdict(table((1.1, 2.2))) is False  # both seeds lost 10 %
    assert pruner_verdict(table((1.0, 2.0), saved=(0.1, 0.15))) is False  # saved too little
    assert pruner_verdict(table((1.0, 2.0), saved=(0.1, 0.5))) == INCONCLUSIVE
    with pytest.raises(ValueError, match="median"):
        pruner_verdict(table((1.0, 2.0)), pruner="median")


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with torch_threads(0):
            pass


def test_article_code_fails_and_the_reasons_are_shown_without_scikit_learn():
    grid = {"learning_rate": [1e-5, 1e-4], "num_train_epochs": [1, 2]}
    attempts = article_grid_search_errors(grid, with_sklearn=False)
    assert len(attempts) == 4
    assert "get_params" in attempts[0][1] and attempts[0][1].startswith("AttributeError")
    assert "set_params" in attempts[1][1]
    assert "learning_rate" in attempts[2][1] and attempts[2][1].startswith("TypeError")
    assert attempts[3][1].startswith(NOT_RUN) and "scikit-learn" in attempts[3][1]
    assert any_attempt_ran_cleanly(attempts) is False
    assert any_attempt_ran_cleanly([("a", "no error"), ("b", f"{NOT_RUN}: skipped")]) is True
    with pytest.raises(ValueError, match="nothing to judge"):
        any_attempt_ran_cleanly([("b", f"{NOT_RUN}: skipped")])
    with pytest.raises(ValueError, match="param_grid"):
        article_grid_search_errors({})


def test_chapter_constants_name_what_the_code_accepts():
    assert set(HYPERPARAMETERS) >= {"lr", "batch_size", "steps"}
    for name in SAMPLERS:
        make_sampler(name, grid={"lr": [1e-3, 1e-2]})
    for name in PRUNERS:
        make_pruner(name, max_steps=10)
    assert driver_package("postgresql+psycopg2://u@h/db") == DRIVER_PACKAGES["psycopg2"]
    assert sorted(SIZES) == ["cpu", "gpu", "smoke"]
    # the tiny stand-in's trials run on the CPU: they must not grow with the gpu profile
    assert all(SIZES["gpu"][key] == SIZES["cpu"][key] for key in CPU_ONLY_SIZES)
    assert "final_steps" in SIZES["gpu"] and SIZES["gpu"]["real_steps"] > SIZES["cpu"]["real_steps"]


# --------------------------------------------------------------------------- workers


def test_two_workers_share_one_study_without_losing_or_duplicating_trials(tmp_path):
    space = {"lr": Range(1e-3, 1e-1, log=True)}
    spec = {"model": "tiny", "task": "date-iso", "n_train": 16, "n_validation": 4, "space": space_to_dict(space),
            "fixed": {"steps": 2, "batch_size": 4}, "sampler": "random", "seed": 0}
    run = run_workers(str(tmp_path / "shared.log"), "shared", spec, n_trials=3, n_workers=2, progress=False)
    assert isinstance(run, ParallelRun) and run.integrity["ok"], run.integrity
    assert run.integrity["per_worker"] == {0: 2, 1: 1} and run.wall_s > 0
    with pytest.raises(ValueError, match="already has"):
        run_workers(str(tmp_path / "shared.log"), "shared", spec, n_trials=3, n_workers=1)
    with pytest.raises(ValueError, match="n_workers"):
        run_workers(str(tmp_path / "other.log"), "x", spec, n_trials=2, n_workers=3)
    with pytest.raises(ValueError, match="spec lacks"):
        run_workers(str(tmp_path / "other.log"), "x", {"model": "tiny"}, n_trials=2)
    with pytest.raises(ValueError, match="does not exist"):
        run_workers(str(tmp_path / "no" / "j.log"), "x", spec, n_trials=2)
    assert 0 <= run.step_spread and run.step_spread == step_time_spread(
        optuna.load_study(study_name="shared", storage=open_storage(str(tmp_path / "shared.log"))))
    single = ParallelRun("a", "s", 1, 2, 3, wall_s=10.0)
    assert wall_time_ratio(single, ParallelRun("b", "s", 2, 1, 3, wall_s=6.0)) == 0.6
    with pytest.raises(ValueError, match="same size"):
        wall_time_ratio(single, ParallelRun("b", "s", 2, 1, 4, wall_s=6.0))


def test_wall_time_verdict_respects_timing_noise_and_integrity():
    ok = {"ok": True}

    def runs(parallel_wall, spread, integrity=ok):
        return (ParallelRun("a", "s", 1, 2, 6, wall_s=100.0, integrity=ok, step_spread=spread),
                ParallelRun("b", "s", 2, 1, 6, wall_s=parallel_wall, integrity=integrity, step_spread=spread / 2))

    assert wall_time_verdict(*runs(50.0, 0.1)) is True  # 0.5 + 0.05 <= 0.65
    assert wall_time_verdict(*runs(60.0, 0.1)) == INCONCLUSIVE  # 0.6 + 0.06 > 0.65 > 0.6 - 0.06
    assert wall_time_verdict(*runs(80.0, 0.1)) is False  # 0.8 - 0.08 > 0.65
    assert wall_time_verdict(*runs(50.0, math.nan)) == INCONCLUSIVE  # no noise estimate
    assert wall_time_verdict(*runs(50.0, 0.1, integrity={"ok": False})) is False  # a lost trial fails the claim


def test_worker_main_in_process_and_integrity_report(tmp_path):
    space = {"lr": Range(1e-3, 1e-1, log=True)}
    spec = {"model": "tiny", "task": "date-iso", "n_train": 16, "n_validation": 4, "space": space_to_dict(space),
            "fixed": {"steps": 2, "batch_size": 4}, "sampler": "random", "seed": 3}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    storage = str(tmp_path / "j.log")
    for worker in (0, 0):  # the same seed twice: the second worker repeats the first one's proposals
        assert worker_main(["--storage", storage, "--study", "s", "--spec", str(spec_file), "--trials", "2",
                            "--worker", str(worker), "--threads", "1"]) == 0
    report = check_study_integrity(optuna.load_study(study_name="s", storage=open_storage(storage)), 4)
    assert report["finished"] == 4 and report["lost"] == 0 and report["duplicate_params"] == 2 and not report["ok"]
    assert isinstance(objective_from_spec(spec), TaskObjective)
    with pytest.raises(ValueError, match="spec lacks"):
        objective_from_spec({"model": "tiny"})


# --------------------------------------------------------------------------- Trainer route


def test_trainer_hyperparameter_search_with_optuna(tokenizer):
    data = make_search_data(n_train=8, n_validation=4, n_test=0)
    base = tiny_llama(vocab_size=len(tokenizer))
    model_init = lora_model_init(base, ranks=(2, 4), target_modules=("q_proj", "v_proj"))
    trainer = task_trainer(model_init, tokenizer, data.train, data.validation, max_steps=2, batch_size=2)
    storage = optuna.storages.InMemoryStorage()
    best = trainer.hyperparameter_search(
        hp_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
        backend="optuna", direction="minimize", n_trials=2, sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage, study_name="trainer")
    study = optuna.load_study(study_name="trainer", storage=storage)
    assert len(study.trials) == 2 and best.objective == pytest.approx(study.best_value)
    assert set(best.hyperparameters) == {"learning_rate", "lora_rank"}
    # eval_loss is the same quantity as answer_loss
    model = model_init(None)
    assert trainer.model is None  # the search releases the last trial's model
    trainer.model = trainer.model_wrapped = model
    assert trainer.evaluate()["eval_loss"] == pytest.approx(answer_loss(model, tokenizer, data.validation), rel=1e-4)
    with pytest.raises(ValueError, match="max_steps"):
        task_trainer(model_init, tokenizer, data.train, data.validation, max_steps=0)
    with pytest.raises(ValueError, match="rank"):
        lora_model_init(base, ranks=())


# --------------------------------------------------------------------------- exercise checkers


def test_search_space_checker(capsys):
    assert checks.check_search_space(checks.reference_suggest_hyperparameters)

    def linear_lr(trial):
        return {"lr": trial.suggest_float("lr", 1e-5, 1e-2),
                "batch_size": trial.suggest_categorical("batch_size", [4, 8]),
                "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.2)}

    def int_batch(trial):
        return {"lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
                "batch_size": trial.suggest_int("batch_size", 4, 8),
                "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.2)}

    capsys.readouterr()
    assert not checks.check_search_space(linear_lr)
    assert "log scale" in capsys.readouterr().out
    assert not checks.check_search_space(int_batch)
    assert "suggest_categorical" in capsys.readouterr().out


def test_objective_checker(capsys, setup):
    from course_lib.training import task_batches, train

    with torch_threads(1):
        assert checks.check_objective(checks.reference_objective)

        def on_test(trial):
            model = setup.make_model()
            train(model, task_batches(setup.tokenizer, setup.train, 8, seed=0),
                  steps=trial.suggest_int("steps", 5, 20), lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True),
                  progress=False)
            return answer_loss(model, setup.tokenizer, setup.test)

        shared = setup.make_model()

        def reused(trial):
            lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
            steps = trial.suggest_int("steps", 5, 20)
            train(shared, task_batches(setup.tokenizer, setup.train, 8, seed=0), steps=steps, lr=lr, progress=False)
            return answer_loss(shared, setup.tokenizer, setup.validation)

        capsys.readouterr()
        assert not checks.check_objective(on_test)
        assert "test split" in capsys.readouterr().out
        assert not checks.check_objective(reused)
        assert "fresh model" in capsys.readouterr().out


def test_worker_seed_checker(capsys):
    assert checks.check_worker_seeds(checks.reference_make_worker_sampler)
    capsys.readouterr()
    assert not checks.check_worker_seeds(lambda base_seed, worker: optuna.samplers.RandomSampler(seed=base_seed))
    assert "seeded alike" in capsys.readouterr().out
    assert not checks.check_worker_seeds(lambda base_seed, worker: optuna.samplers.RandomSampler())
    assert "rerun" in capsys.readouterr().out


def _space(lr=("float", 1e-5, 1e-2, True), batch=(4, 8), warmup=(0.0, 0.2)):
    """A learner's search space with one thing changed."""
    def fn(trial):
        out = {}
        if lr[0] == "int":
            out["lr"] = trial.suggest_int("lr", int(lr[1]), int(lr[2]))
        else:
            out["lr"] = trial.suggest_float("lr", lr[1], lr[2], log=lr[3])
        out["batch_size"] = trial.suggest_categorical("batch_size", list(batch))
        out["warmup_fraction"] = trial.suggest_float("warmup_fraction", *warmup)
        return out
    return fn


def test_search_space_checker_separates_the_usual_mistakes(capsys):
    assert list(checks.SPACE_SPEC) == ["lr", "batch_size", "warmup_fraction"]
    mistakes = {
        "linear lr": (_space(lr=("float", 1e-5, 1e-2, False)), "log scale"),
        "narrow lr": (_space(lr=("float", 1e-4, 1e-2, True)), "[1e-5, 1e-2]"),
        "swapped lr bounds": (_space(lr=("float", 1e-2, 1e-5, True)), "raised ValueError"),
        "integer lr": (_space(lr=("int", 0, 1, False)), "continuous"),
        "other batch sizes": (_space(batch=(4, 8, 16)), "4 and 8"),
        "wider warm-up": (_space(warmup=(0.0, 0.5)), "[0, 0.2]"),
    }
    for label, (fn, hint) in mistakes.items():
        capsys.readouterr()
        assert not checks.check_search_space(fn), label
        assert hint in capsys.readouterr().out, label
    assert checks.check_search_space(_space(batch=(8, 4)))  # the order of the options does not matter


def _objective(lr=(1e-3, 1e-1, True), steps_kind="int", batch=8):
    """A learner's objective with one thing changed (batch size, lr scale or bounds, steps type)."""
    from course_lib.training import task_batches, train

    def fn(trial):
        ex = checks.exercise_setup()
        lr_value = trial.suggest_float("lr", lr[0], lr[1], log=lr[2])
        steps = (trial.suggest_int("steps", 5, 20) if steps_kind == "int"
                 else int(trial.suggest_float("steps", 5, 20)))
        model = ex.make_model()
        train(model, task_batches(ex.tokenizer, ex.train, batch, seed=0), steps=steps, lr=lr_value, progress=False)
        return answer_loss(model, ex.tokenizer, ex.validation)
    return fn


def test_objective_checker_looks_at_the_distributions_a_fixed_trial_hides(capsys):
    assert checks.OBJECTIVE_SPEC["lr"][3] is True and checks.OBJECTIVE_BATCH_SIZE == 8
    mistakes = {
        "linear lr": (_objective(lr=(1e-3, 1e-1, False)), "log scale"),
        "wrong lr range": (_objective(lr=(1e-4, 1e-1, True)), "ranges over"),
        "float steps": (_objective(steps_kind="float"), "suggest_int"),
        "batch size 4": (_objective(batch=4), "batch size 8"),
    }
    with torch_threads(1):
        for label, (fn, hint) in mistakes.items():
            capsys.readouterr()
            assert not checks.check_objective(fn), label
            assert hint in capsys.readouterr().out, label


def test_worker_seed_checker_refuses_a_seed_that_ignores_the_base_seed(capsys):
    capsys.readouterr()
    assert not checks.check_worker_seeds(lambda base_seed, worker: optuna.samplers.RandomSampler(seed=worker))
    assert "another base_seed" in capsys.readouterr().out
    assert checks.check_worker_seeds(lambda base_seed, worker: optuna.samplers.RandomSampler(seed=1000 * base_seed
                                                                                              + worker))


def test_reference_answers_and_spec_keys():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space = checks.reference_suggest_hyperparameters(trial)
    assert set(space) == set(checks.SPACE_SPEC) and 1e-5 <= space["lr"] <= 1e-2
    with torch_threads(1):
        loss = checks.reference_objective(optuna.trial.FixedTrial({"lr": 0.01, "steps": 5}))
    assert math.isfinite(loss) and loss > 0
    def first_lr(sampler):
        return optuna.create_study(sampler=sampler).ask().suggest_float("lr", 1e-5, 1e-2, log=True)

    assert first_lr(checks.reference_make_worker_sampler(3, 1)) == first_lr(optuna.samplers.RandomSampler(seed=4))
    spec = {key: None for key in SPEC_KEYS if key != "seed"}
    with pytest.raises(ValueError, match="seed"):
        objective_from_spec(spec)
