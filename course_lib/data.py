"""Text for perplexity, calibration and language-model training, available offline.

The default corpus is ``pydoc``: CPython's own help texts (``pydoc_data.topics``, about 465 k
characters of English technical prose, ~113 k SmolLM2 tokens), which ship with every Python.
It is split **by topic**, deterministically, into three disjoint parts:

* ``validation`` (~15 % of characters): perplexity, the same blocks in every chapter;
* ``calibration`` (~12 %): activation statistics for pruning, quantization, layer importance;
* ``train`` (the rest): language-model fine-tuning and distillation.

``wikitext2`` (WikiText-2 raw, via ``datasets``) is an option when the hub is reachable; its
calibration part is the last 10 % of its training split.

Text is packed into non-overlapping blocks of ``block_size`` tokens (documents joined by a
blank line, the remainder dropped), so perplexity is measured on identical inputs every time.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import torch

__all__ = ["SPLITS", "CORPORA", "SPLIT_FRACTIONS", "MIN_BLOCKS_128", "pydoc_split_topics", "load_text",
           "token_blocks"]

SPLITS = ("train", "validation", "calibration")
CORPORA = ("pydoc", "wikitext2")
SPLIT_FRACTIONS = {"validation": 0.15, "calibration": 0.12}  # of characters; train gets the rest

# Blocks of 128 SmolLM2 tokens in each pydoc split: CPython's help texts change between versions
# (measured: validation 133 / 134 / 157 / 158 blocks on Python 3.10.13 / 3.11.7 / 3.12.1 / 3.13.0;
# calibration 152 / 157 / 144 / 158; train 578 / 591 / 624 / 635). Sizes must fit the smallest.
MIN_BLOCKS_128 = {"validation": 133, "calibration": 144, "train": 578}


def _check(split: str, corpus: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    if corpus not in CORPORA:
        raise ValueError(f"Unknown corpus {corpus!r}; use one of {CORPORA}.")


@lru_cache(maxsize=None)
def pydoc_split_topics() -> dict[str, tuple[str, ...]]:
    """Topic names of each split of the pydoc corpus.

    Topics are visited in the order of ``crc32(name)``; each goes to validation until it holds
    15 % of all characters, then to calibration until 12 %, then to train.
    """
    from pydoc_data.topics import topics

    total = sum(len(t) for t in topics.values())
    order = sorted(topics, key=lambda k: (zlib.crc32(k.encode()), k))
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    filled = {s: 0 for s in SPLITS}
    for name in order:
        for split in ("validation", "calibration"):
            if filled[split] < SPLIT_FRACTIONS[split] * total:
                break
        else:
            split = "train"
        splits[split].append(name)
        filled[split] += len(topics[name])
    return {s: tuple(sorted(v)) for s, v in splits.items()}


@lru_cache(maxsize=None)
def load_text(split: str = "validation", corpus: str = "pydoc") -> str:
    """The raw text of one split: documents joined by a blank line."""
    _check(split, corpus)
    if corpus == "pydoc":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[name] for name in pydoc_split_topics()[split])
    return _wikitext2_text(split)


def _wikitext2_text(split: str) -> str:
    from .model_sources import hub_offline, hub_reachable

    if hub_offline() or not hub_reachable():
        raise ValueError(
            "WikiText-2 is downloaded from the Hugging Face hub, which is unreachable here "
            "(or HF_HUB_OFFLINE is set). Use corpus='pydoc', which ships with Python."
        )
    try:
        from datasets import load_dataset
    except ImportError as err:  # datasets is the optional `wikitext` extra (pyproject.toml)
        raise ValueError(
            "corpus='wikitext2' needs the `datasets` package, which the course installs only on request: "
            "pip install -e '.[wikitext]' (or pip install 'datasets>=4.0,<6'); corpus='pydoc' needs nothing."
        ) from err

    if split == "validation":
        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="validation")["text"]
    else:
        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")["text"]
        cut = int(len(rows) * 0.9)
        rows = rows[cut:] if split == "calibration" else rows[:cut]
    return "".join(rows)


_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}


def _token_ids(tokenizer, split: str, corpus: str) -> torch.Tensor:
    """All token ids of a split, tokenized once per process and tokenizer."""
    key = (getattr(tokenizer, "name_or_path", ""), type(tokenizer).__name__, len(tokenizer), split, corpus)
    if key not in _TOKEN_CACHE:
        ids = tokenizer(load_text(split, corpus), add_special_tokens=False)["input_ids"]
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]


def token_blocks(tokenizer, split: str = "validation", block_size: int = 128,
                 max_blocks: int | None = None, corpus: str = "pydoc") -> torch.Tensor:
    """Token blocks of shape ``[n_blocks, block_size]`` (``torch.long``), always the same ones.

    Args:
        max_blocks: keep only the first ``max_blocks`` blocks (all when None).

    Raises:
        ValueError: bad split/corpus/sizes, or fewer blocks available than ``max_blocks``.
    """
    _check(split, corpus)
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 tokens, got {block_size}.")
    if max_blocks is not None and max_blocks < 1:
        raise ValueError(f"max_blocks must be positive or None, got {max_blocks}.")
    ids = _token_ids(tokenizer, split, corpus)
    n = len(ids) // block_size
    if n == 0:
        raise ValueError(f"The {corpus} {split} split has {len(ids)} tokens, fewer than one block of "
                         f"{block_size}: use a smaller block_size.")
    if max_blocks is not None:
        if max_blocks > n:
            raise ValueError(
                f"The {corpus} {split} split has only {n} blocks of {block_size} tokens here; "
                f"asked for {max_blocks}. (The pydoc corpus differs between Python versions; "
                f"course profiles ask for at most {MIN_BLOCKS_128} blocks of 128 tokens.)"
            )
        n = max_blocks
    return ids[: n * block_size].view(n, block_size).clone()
