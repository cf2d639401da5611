"""The course's measurements, each done one way for every chapter.

* :func:`perplexity`: exp of the mean next-token negative log-likelihood on fixed token blocks.
* :func:`exact_match`: greedy answers to a task's test prompts compared with the answers;
  :func:`answer_loss`: the held-out loss on a task's answer tokens (teacher-forced).
* size: :mod:`course_lib.footprint` (true footprint, the article's estimate, parameter counts).
* :func:`generation_speed`: greedy generation latency and tokens/s, after a warm-up, with GPU
  synchronisation; :func:`forward_seconds`: one forward pass over a batch (prefill).
* :func:`compare_speeds`: several models timed side by side in interleaved rounds, with the
  run-to-run :func:`relative_spread` that tells a real difference from noise.
* :class:`PeakMemory`: peak memory while a block of code runs.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .device import model_device, synchronize
from .inference import batches, eval_mode
from .tasks import Example, answer_token_budget, collate, encode_example, normalize_answer

__all__ = ["DEFAULT_PROMPT", "nll_sum", "perplexity", "generate_answers", "exact_match", "answer_loss",
           "generation_speed", "forward_seconds", "relative_spread", "compare_speeds", "PeakMemory"]

DEFAULT_PROMPT = "The three most important ideas in computer science are"


# --------------------------------------------------------------------------- perplexity


def nll_sum(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True,
            desc: str = "perplexity") -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods over ``blocks`` and the number of tokens scored.

    Each block of length L scores L-1 tokens: token t+1 is predicted from tokens 0..t.

    Raises:
        ValueError: ``blocks`` is not a ``[n_blocks >= 1, block_size >= 2]`` tensor of token ids
            below the model's vocabulary size.
    """
    if not isinstance(blocks, torch.Tensor) or blocks.ndim != 2 or blocks.shape[1] < 2 or len(blocks) == 0:
        shape = tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__
        raise ValueError(f"blocks must be a [n_blocks >= 1, block_size >= 2] tensor of token ids "
                         f"(course_lib.data.token_blocks gives one), got {shape}.")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (int(blocks.max()) >= vocab or int(blocks.min()) < 0):
        raise ValueError(f"Token ids must lie in [0, {vocab}) (the model's vocabulary); these blocks hold ids from "
                         f"{int(blocks.min())} to {int(blocks.max())}. Were they made with another tokenizer?")
    total, count = 0.0, 0
    with eval_mode(model):
        for batch in batches(blocks, batch_size, model_device(model), desc=desc, progress=progress):
            logits = model(input_ids=batch).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   batch[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += batch[:, 1:].numel()
    return total, count


def perplexity(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True) -> float:
    """Perplexity on token blocks:  PPL = exp( (1/N) * sum_i -log p(x_i | x_<i) ).

    N counts every predicted token of every block (``block_size - 1`` per block). Batched, under
    ``torch.no_grad()``, in eval mode; log-probabilities are computed in float32.
    """
    total, count = nll_sum(model, blocks, batch_size=batch_size, progress=progress)
    return math.exp(total / count)


# --------------------------------------------------------------------------- task accuracy


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 16,
                     batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy completions of ``prompts`` (left-padded batches), normalised as in exact match."""
    device = model_device(model)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        starts = range(0, len(prompts), batch_size)
        with eval_mode(model):
            for start in tqdm(starts, desc="generating", disable=not progress or len(starts) < 2, leave=False):
                chunk = prompts[start:start + batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                answers += [normalize_answer(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = old_side
    return answers


def exact_match(model, tokenizer, examples: list[Example], batch_size: int = 16,
                max_new_tokens: int | None = None, progress: bool = True,
                return_predictions: bool = False):
    """Fraction of examples whose greedy answer equals the reference exactly:
    ``EM = (1/n) * sum_i [normalize(generate(prompt_i)) == answer_i]``.

    Returns the accuracy, or ``(accuracy, predictions)`` when ``return_predictions``.
    """
    if not examples:
        raise ValueError("exact_match needs at least one example.")
    if max_new_tokens is None:
        max_new_tokens = answer_token_budget(tokenizer, examples)
    preds = generate_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens,
                             batch_size, progress)
    acc = sum(p == e.answer for p, e in zip(preds, examples)) / len(examples)
    return (acc, preds) if return_predictions else acc


def answer_loss(model, tokenizer, examples: list[Example], batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over the *answer* tokens of ``examples``, token-weighted:

        L = sum_i sum_{t in answer_i} -log p(x_t | x_<t)  /  (number of answer tokens)

    The prompt tokens are not scored (they are given, not predicted), exactly as in training.
    Restores the model's train/eval mode. Chapter 01 scores trials by it (cheap and smooth,
    unlike exact match); chapter 05 its sweeps.
    """
    if not examples:
        raise ValueError("answer_loss needs at least one example.")
    device = model_device(model)
    total, count = 0.0, 0
    encoded = [encode_example(tokenizer, e) for e in examples]
    with eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size],
                                                           tokenizer.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


# --------------------------------------------------------------------------- speed


def _timed(device, fn) -> float:
    """Seconds ``fn()`` takes, with the device synchronised before and after (GPU work is queued)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def generation_speed(model, tokenizer, prompt: str = DEFAULT_PROMPT, new_tokens: int = 32,
                     repeats: int = 3, warmup: int = 1) -> dict:
    """Greedy generation of exactly ``new_tokens`` tokens, timed.

    Runs ``warmup`` untimed generations first (caches, lazy initialisation), then ``repeats``
    timed ones with GPU synchronisation before and after each. Reports the median:
    ``latency_s`` (whole generation, prefill included), ``tokens_per_s = new_tokens / latency_s``
    and every timing in ``times_s``. To compare models, time them side by side with
    :func:`compare_speeds`.
    """
    if new_tokens < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"Need new_tokens >= 1, repeats >= 1, warmup >= 0; got {new_tokens}, {repeats}, {warmup}.")
    device = model_device(model)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    outputs = []
    with eval_mode(model):
        for _ in range(warmup):
            model.generate(**enc, **kwargs)
        times = [_timed(device, lambda: outputs.append(model.generate(**enc, **kwargs))) for _ in range(repeats)]
    produced = outputs[-1].shape[1] - enc["input_ids"].shape[1]
    latency = statistics.median(times)
    return {"latency_s": latency, "tokens_per_s": produced / latency, "new_tokens": produced,
            "times_s": times}


def forward_seconds(model, input_ids: torch.Tensor, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of one forward pass over ``input_ids`` (a batch of token blocks).

    ``warmup`` untimed passes first; the device is synchronised around each timed pass. This is
    the prompt-processing (prefill) cost, where compute, not Python overhead, dominates.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"Need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    device = model_device(model)
    input_ids = input_ids.to(device)
    with eval_mode(model):
        for _ in range(warmup):
            model(input_ids=input_ids)
        times = [_timed(device, lambda: model(input_ids=input_ids)) for _ in range(repeats)]
    return statistics.median(times)


def relative_spread(values) -> float:
    """Run-to-run spread of repeated timings: ``(max - min) / median``.

    NaN for a single value: one timing says nothing about the noise, so a verdict built on it
    (``course_lib.claims.speedup_verdict``) is inconclusive, never "holds".
    """
    values = list(values)
    if not values:
        raise ValueError("relative_spread needs at least one value.")
    if len(values) < 2:
        return math.nan
    return (max(values) - min(values)) / statistics.median(values)


def _timing_devices(models: dict) -> dict[str, str]:
    """``{label: device}`` of the models to time; refuses models on different devices."""
    devices = {name: str(model_device(m)) for name, m in models.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"compare_speeds times models on one device; these are on several: {devices}. "
                         "Move them all to the same device first.")
    return devices


def compare_speeds(models: dict, tokenizer, new_tokens: int = 32, rounds: int = 3,
                   forward_input: torch.Tensor | None = None):
    """Time several models **side by side**, so that drift in the machine's speed hits all alike.

    Each model gets one untimed generation (and forward pass) as warm-up. Then, in each of
    ``rounds`` rounds, every model is timed once: a greedy generation of ``new_tokens`` tokens
    (:func:`generation_speed`) and, if ``forward_input`` is given, one forward pass over it
    (:func:`forward_seconds`). Round ``i`` starts with model ``i mod n``, so no model is always first.

    Returns a pandas DataFrame indexed by the models' labels, in the given order, with the
    medians ``latency_s`` and ``tokens_per_s = new_tokens / latency_s``, ``spread`` (the
    :func:`relative_spread` of that model's latencies, NaN with one round), ``rounds`` and
    ``device``; with ``forward_input`` also ``forward_s`` and ``forward_spread``. A difference
    between two models smaller than their spreads is within this machine's noise:
    :func:`course_lib.claims.speed_claim` reads the table that way. Every model must be on the same
    device (a comparison across devices says nothing about the method).
    """
    import pandas as pd

    if not models:
        raise ValueError("compare_speeds needs at least one model, e.g. {'base': model}.")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    names = list(models)
    devices = _timing_devices(models)
    for name in tqdm(names, desc="warm-up", disable=len(names) < 2, leave=False):
        generation_speed(models[name], tokenizer, new_tokens=new_tokens, repeats=1, warmup=0)
        if forward_input is not None:
            forward_seconds(models[name], forward_input, repeats=1, warmup=0)
    latency = {name: [] for name in names}
    forward = {name: [] for name in names}
    produced = {}
    for round_ in tqdm(range(rounds), desc="timing rounds", disable=rounds < 2, leave=False):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            timing = generation_speed(models[name], tokenizer, new_tokens=new_tokens, repeats=1, warmup=0)
            latency[name].append(timing["latency_s"])
            produced[name] = timing["new_tokens"]
            if forward_input is not None:
                forward[name].append(forward_seconds(models[name], forward_input, repeats=1, warmup=0))
    rows = {}
    for name in names:
        row = {"latency_s": statistics.median(latency[name]),
               "tokens_per_s": produced[name] / statistics.median(latency[name]),
               "spread": relative_spread(latency[name]), "rounds": rounds, "device": devices[name]}
        if forward_input is not None:
            row.update(forward_s=statistics.median(forward[name]), forward_spread=relative_spread(forward[name]))
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory while the ``with`` block runs.

    On CUDA: ``torch.cuda.max_memory_allocated`` (bytes held by tensors).
    On CPU: the process's resident set size (RSS), sampled every ``interval`` seconds in a
    background thread; it includes everything the process holds, not only this model, and
    memory freed earlier may be reused without raising RSS, so compare ``increase_bytes`` only
    between measurements made the same way in fresh processes (or read ``peak_bytes``).

    ``children=True`` samples the summed RSS of this process's child processes instead (how
    ``course_lib.benchmark`` measures a notebook's kernel).

    Attributes after the block: ``peak_bytes``, ``start_bytes``, ``increase_bytes`` (peak - start).
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.005, children: bool = False):
        self.device = torch.device(device)
        self.interval, self.children = interval, children
        self.peak_bytes = self.start_bytes = 0
        self._stop = threading.Event()

    @property
    def increase_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes

    def _rss(self) -> int:
        """This process's resident memory, or (``children=True``) the sum over its child processes."""
        import psutil

        if not self.children:
            return self._proc.memory_info().rss
        total = 0
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # ended while we looked
                pass
        return total

    def __enter__(self):
        if self.device.type == "cuda" and not self.children:
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            self._proc = psutil.Process(os.getpid())
            self.start_bytes = self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda" and not self.children:
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())
        return False
