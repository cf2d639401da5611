import re

import pytest

from course_lib.tasks import (DATE_FORMATS, answer_token_budget, collate, encode_example, make_task,
                              normalize_answer, number_to_words)


def test_date_task_is_deterministic_and_held_out():
    a = make_task("date-iso", n_train=300, n_test=50, seed=0)
    b = make_task("date-iso", n_train=10, n_test=50, seed=0)
    assert a.test == b.test  # the test split does not depend on the train size
    assert a.train[:10] == b.train
    prompts_test = {e.prompt.splitlines()[1] for e in a.test}
    assert not prompts_test & {e.prompt.splitlines()[1] for e in a.train}
    assert make_task("date-iso", 5, 5, seed=1).test != a.test[:5]
    for e in a.train + a.test:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", e.answer)
        assert e.prompt.endswith("\nISO:")


def test_every_date_format_is_used_and_unambiguous():
    task = make_task("date-iso", n_train=2000, n_test=0)
    shown = [e.prompt.splitlines()[1] for e in task.train]
    assert len(DATE_FORMATS) == 12
    assert any("(month/day/year)" in s for s in shown) and any("(day.month.year)" in s for s in shown)


@pytest.mark.parametrize("n, words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (57, "fifty-seven"),
                                      (100, "one hundred"), (305, "three hundred five"),
                                      (3405, "three thousand four hundred five"),
                                      (9999, "nine thousand nine hundred ninety-nine")])
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="Unknown task"):
        make_task("dates")
    with pytest.raises(ValueError, match="non-negative"):
        make_task("date-iso", n_train=-1)
    with pytest.raises(ValueError, match="at most"):
        make_task("number-words", n_train=6000)
    with pytest.raises(ValueError):
        number_to_words(10000)


def test_normalize_answer():
    assert normalize_answer(" 2021-03-05\nDate: more") == "2021-03-05"


def test_encoding_masks_the_prompt(tokenizer):
    example = make_task("date-iso", 1, 0).train[0]
    enc = encode_example(tokenizer, example)
    prompt_len = len(tokenizer(example.prompt, add_special_tokens=False)["input_ids"])
    assert enc["labels"][:prompt_len] == [-100] * prompt_len
    assert enc["labels"][prompt_len:] == enc["input_ids"][prompt_len:]
    assert enc["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc["input_ids"][prompt_len:-1]).strip() == example.answer
    batch = collate([enc, encode_example(tokenizer, make_task("number-words", 1, 0).train[0])],
                    tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert answer_token_budget(tokenizer, [example]) >= len(enc["input_ids"]) - prompt_len


def test_task_data_holds_both_splits():
    from course_lib.tasks import TaskData

    task = make_task("number-words", n_train=3, n_test=2)
    assert isinstance(task, TaskData) and task.name == "number-words"
    assert (len(task.train), len(task.test)) == (3, 2)


def test_task_names_and_the_task_data_container():
    from course_lib.tasks import TASK_NAMES, TaskData

    for name in TASK_NAMES:
        data = make_task(name, n_train=3, n_test=2)
        assert isinstance(data, TaskData) and len(data.train) == 3 and len(data.test) == 2
