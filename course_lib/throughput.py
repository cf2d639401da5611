"""Decoding throughput against batch size, and the memory bandwidth it implies.

Is greedy decoding limited by memory bandwidth? Each decoding step reads every weight once,
whatever the batch size. If reading the weights is what takes the time, a step for ``b``
sequences costs about as much as a step for one, and tokens per second grow about ``b``-fold;
if arithmetic (or Python overhead that scales with the work) takes the time, they grow less.
:func:`batched_generation_speed` measures it, side by side, on the model's device;
:func:`achieved_bandwidth` turns tokens per second into the GB/s of weights read;
:func:`batching_verdict` says whether throughput grew as a bandwidth-bound decoder's would.
Introduced in chapter 00 (baseline and metrics).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from tqdm.auto import tqdm

from .claims import INCONCLUSIVE
from .device import model_device, synchronize
from .inference import eval_mode
from .metrics import DEFAULT_PROMPT, relative_spread

__all__ = ["SIZES", "batched_generation_speed", "achieved_bandwidth", "batching_verdict"]

# Batch sizes of chapter 00's throughput experiment. Cost (cpu): one generation of
# profile.gen_tokens=32 tokens per batch size and round, 3 rounds; batch 8 costs about as much as
# 2-3 single generations on 2 cores (a few seconds each), so about a minute in all. gpu (T4): the
# same 32 tokens at batch 64 are well under a second per round; memory: the fp32 weights (0.54 GB)
# plus a KV cache of 64 x 30 layers x 2 x 3 heads x 64 x ~45 positions x 4 bytes, a few MB.
SIZES = {
    "smoke": {"batch_sizes": (1, 2)},
    "cpu": {"batch_sizes": (1, 4, 8)},
    "gpu": {"batch_sizes": (1, 8, 64)},
}


def _one_generation(model, input_ids, new_tokens: int, pad_token_id) -> float:
    device = input_ids.device
    synchronize(device)
    start = time.perf_counter()
    model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id)
    synchronize(device)
    return time.perf_counter() - start


def batched_generation_speed(model, tokenizer, batch_sizes, new_tokens: int = 32, rounds: int = 3,
                             prompt: str = DEFAULT_PROMPT):
    """Greedy generation of ``new_tokens`` tokens for ``b`` copies of the same ``prompt`` (no
    padding needed), for each ``b`` in ``batch_sizes``, timed side by side: one untimed warm-up
    per batch size, then ``rounds`` rounds, each timing every batch size once, rotating which goes
    first. The prompt is created on the model's device.

    Returns a pandas DataFrame indexed by ``batch_size`` with ``latency_s`` (median),
    ``tokens_per_s = b * new_tokens / latency_s``, ``step_s = latency_s / new_tokens`` (prefill
    included), ``spread`` (:func:`course_lib.metrics.relative_spread`, NaN with one round),
    ``rounds`` and ``device``.
    """
    import pandas as pd

    sizes = [int(b) for b in batch_sizes]
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ValueError(f"batch_sizes must be distinct positive integers, got {list(batch_sizes)}.")
    if new_tokens < 1 or rounds < 1:
        raise ValueError(f"Need new_tokens >= 1 and rounds >= 1, got {new_tokens} and {rounds}.")
    device = model_device(model)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    times = {b: [] for b in sizes}
    with eval_mode(model):
        for b in sizes:
            _one_generation(model, ids.expand(b, -1), new_tokens, pad)
        for round_ in tqdm(range(rounds), desc="timing rounds", disable=rounds < 2, leave=False):
            shift = round_ % len(sizes)
            for b in sizes[shift:] + sizes[:shift]:
                times[b].append(_one_generation(model, ids.expand(b, -1), new_tokens, pad))
    rows = {b: {"latency_s": statistics.median(t), "tokens_per_s": b * new_tokens / statistics.median(t),
                "step_s": statistics.median(t) / new_tokens, "spread": relative_spread(t), "rounds": rounds,
                "device": str(device)} for b, t in times.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("batch_size")


def achieved_bandwidth(weight_bytes: int, tokens_per_s: float, batch_size: int = 1) -> float:
    """Bytes of weights read per second, in GB/s: every decoding step reads all ``weight_bytes``
    once and yields ``batch_size`` tokens, so ``GB/s = weight_bytes * tokens_per_s / batch_size / 1e9``.
    (Prefill and the KV cache are ignored: an upper bound on the weight traffic's share.)"""
    if weight_bytes <= 0 or tokens_per_s <= 0 or batch_size < 1:
        raise ValueError(f"Need positive weight_bytes and tokens_per_s and batch_size >= 1; got "
                         f"{weight_bytes}, {tokens_per_s}, {batch_size}.")
    return weight_bytes * tokens_per_s / batch_size / 1e9


def batching_verdict(table, efficiency: float = 0.5):
    """Did tokens per second grow with batch size as a bandwidth-bound decoder's would?

    ``scaling = (tokens_per_s[b_max] / tokens_per_s[b_min]) / (b_max / b_min)``: 1 if a step for
    ``b_max`` sequences costs as much as one for ``b_min`` (weight reads dominate), ``b_min/b_max``
    if tokens per second stay flat. True if ``scaling`` is at least ``efficiency`` even after
    removing the timing noise (the larger relative spread of the two rows), False if it is below
    even after adding it, else INCONCLUSIVE (also with one round: no noise estimate).
    Returns ``(verdict, scaling)``.
    """
    if len(table) < 2:
        raise ValueError("batching_verdict needs at least two batch sizes.")
    low, high = min(table.index), max(table.index)
    scaling = (table.loc[high, "tokens_per_s"] / table.loc[low, "tokens_per_s"]) / (high / low)
    noise = max(float(table.loc[low, "spread"]), float(table.loc[high, "spread"]))
    if math.isnan(noise):
        return INCONCLUSIVE, scaling
    if scaling * (1 - noise) >= efficiency:
        return True, scaling
    if scaling * (1 + noise) < efficiency:
        return False, scaling
    return INCONCLUSIVE, scaling
