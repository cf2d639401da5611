import pytest
import torch
from pydoc_data.topics import topics

from course_lib import data
from course_lib.data import load_text, pydoc_split_topics, token_blocks


def test_splits_are_disjoint_cover_everything_and_have_the_target_sizes():
    splits = pydoc_split_topics()
    names = [n for s in splits.values() for n in s]
    assert len(names) == len(set(names)) == len(topics)
    total = sum(len(t) for t in topics.values())
    for split, fraction in data.SPLIT_FRACTIONS.items():
        size = sum(len(topics[n]) for n in splits[split]) / total
        assert fraction <= size < fraction + 0.12, (split, size)


def test_token_blocks_are_deterministic(tokenizer):
    a = token_blocks(tokenizer, "validation", 64, 5)
    b = token_blocks(tokenizer, "validation", 64, 5)
    assert a.shape == (5, 64) and a.dtype == torch.long and torch.equal(a, b)
    # the blocks are the start of the split's text, packed without overlap
    ids = tokenizer(load_text("validation"), add_special_tokens=False)["input_ids"]
    assert a.flatten().tolist() == ids[: 5 * 64]
    assert not torch.equal(token_blocks(tokenizer, "train", 64, 5), a)


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="Unknown split"):
        token_blocks(tokenizer, "test")
    with pytest.raises(ValueError, match="Unknown corpus"):
        token_blocks(tokenizer, corpus="c4")
    with pytest.raises(ValueError, match="only"):
        token_blocks(tokenizer, "validation", 128, 10**6)
    with pytest.raises(ValueError, match="block_size"):
        token_blocks(tokenizer, "validation", 1)


def test_wikitext_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_text.cache_clear()
    with pytest.raises(ValueError, match="corpus='pydoc'"):
        load_text("validation", "wikitext2")


def test_a_block_larger_than_the_split_is_an_error(tokenizer):
    from course_lib.data import token_blocks

    with pytest.raises(ValueError, match="fewer than one block"):
        token_blocks(tokenizer, "validation", block_size=10_000_000)


def test_splits_and_corpora_are_checked():
    from course_lib.data import CORPORA, SPLITS

    assert SPLITS == ("train", "validation", "calibration") and "pydoc" in CORPORA
    with pytest.raises(ValueError, match="Unknown split"):
        load_text("test")
    with pytest.raises(ValueError, match="Unknown corpus"):
        load_text("train", corpus="c4")
