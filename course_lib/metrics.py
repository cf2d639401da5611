"""The course's measurements, each done one way for every chapter.

* :func:`perplexity`: exp of the mean next-token negative log-likelihood on fixed token blocks.
* :func:`exact_match`: greedy answers to a task's test prompts compared with the answers.
* :func:`footprint_bytes`: the bytes a model really occupies (parameters, buffers and
  quantization state), next to :func:`naive_footprint_bytes`, the source article's
  ``sum(p.numel() * p.element_size())``, which misses quantization state.
* :func:`count_parameters`: logical parameter count, non-zeros and sparsity.
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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .device import model_device, synchronize
from .tasks import Example, answer_token_budget, normalize_answer

DEFAULT_PROMPT = "The three most important ideas in computer science are"


# --------------------------------------------------------------------------- perplexity


@torch.no_grad()
def nll_sum(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True,
            desc: str = "perplexity") -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods over ``blocks`` and the number of tokens scored.

    Each block of length L scores L-1 tokens: token t+1 is predicted from tokens 0..t.
    """
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be a [n_blocks, block_size >= 2] tensor, got {tuple(blocks.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    starts = range(0, len(blocks), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
        batch = blocks[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            batch[:, 1:].reshape(-1),
            reduction="sum",
        )
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total, count


def perplexity(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True) -> float:
    """Perplexity on token blocks:  PPL = exp( (1/N) * sum_i -log p(x_i | x_<i) ).

    N counts every predicted token of every block (``block_size - 1`` per block). Batched, under
    ``torch.no_grad()``, in eval mode; log-probabilities are computed in float32.
    """
    total, count = nll_sum(model, blocks, batch_size=batch_size, progress=progress)
    return math.exp(total / count)


# --------------------------------------------------------------------------- task accuracy


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 16,
                     batch_size: int = 16, progress: bool = True) -> list[str]:
    """Greedy completions of ``prompts`` (left-padded batches), normalised as in exact match."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", disable=not progress or len(starts) < 2, leave=False):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers += [normalize_answer(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
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


# --------------------------------------------------------------------------- size


def _plain_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements; tensor subclasses (torchao) are summed over their parts."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_plain_bytes(getattr(t, n)) for n in names)
    if t.is_quantized:
        extra = 0
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales, zeros = t.q_per_channel_scales(), t.q_per_channel_zero_points()
            extra = scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()
        return t.numel() * t.element_size() + extra
    return t.numel() * t.element_size()


def _quant_state_tensors(p) -> list[torch.Tensor]:
    """Tensors a quantized parameter needs besides its packed data (bitsandbytes)."""
    tensors = []
    qs = getattr(p, "quant_state", None)  # bitsandbytes 4-bit
    while qs is not None:
        for attr in ("absmax", "code", "offset"):
            value = getattr(qs, attr, None)
            if isinstance(value, torch.Tensor):
                tensors.append(value)
        qs = getattr(qs, "state2", None)  # double quantization: the absmax's own state
    scb = getattr(p, "SCB", None)  # bitsandbytes int8: one scale per row
    if isinstance(scb, torch.Tensor):
        tensors.append(scb)
    return tensors


def _all_tensors(model) -> list[torch.Tensor]:
    tensors = list(model.parameters()) + list(model.buffers())
    for p in list(model.parameters()):
        tensors += _quant_state_tensors(p)
    return tensors + _packed_weights(model)


def _packed_weights(model) -> list[torch.Tensor]:
    """Weights and biases that torch.ao quantized Linear layers keep packed (not as parameters).

    Only the quantized layers are asked (their ``_packed_params`` is a module); the inner
    packed-params module would unpack the same weights a second time.
    """
    tensors = []
    for module in model.modules():
        inner = getattr(module, "_packed_params", None)
        if isinstance(inner, torch.nn.Module) and callable(getattr(module, "_weight_bias", None)):
            tensors += [t for t in module._weight_bias() if isinstance(t, torch.Tensor)]
    return tensors


def footprint_bytes(model) -> int:
    """True memory footprint: bytes of every distinct tensor the model holds.

    footprint = sum over distinct parameters, buffers and quantization state (bitsandbytes
    ``absmax``/``code``/nested state, int8 row scales, torch.ao packed weights and their
    per-channel scales, torchao tensor parts) of ``numel * element_size``. Tied weights count once.
    """
    seen: set[tuple] = set()
    total = 0
    for t in _all_tensors(model):
        key = _identity(t)
        if key in seen:
            continue
        seen.add(key)
        total += _plain_bytes(t)
    return total


def _identity(t: torch.Tensor) -> tuple:
    try:
        return ("ptr", t.data_ptr(), t.numel(), str(t.dtype))
    except (RuntimeError, NotImplementedError):  # some tensor subclasses have no data_ptr
        return ("id", id(t))


def naive_footprint_bytes(model) -> int:
    """The source article's estimate: ``sum(p.numel() * p.element_size() for p in model.parameters())``.

    It misses buffers and quantization state, and for 4-bit bitsandbytes weights ``numel()`` is
    the number of packed bytes, so it is not the parameter count either.
    """
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass(frozen=True)
class ParameterCount:
    total: int  # logical parameters (a packed 4-bit weight counts its unpacked shape)
    nonzero: int
    sparsity: float  # 1 - nonzero / total


def _logical_values(p) -> torch.Tensor | None:
    qs = getattr(p, "quant_state", None)
    if qs is not None:  # bitsandbytes 4-bit: dequantize to count zeros
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(p.data, qs)
    if type(p) not in (torch.Tensor, torch.nn.Parameter) and hasattr(p, "dequantize"):
        return p.dequantize()
    return p.data


@torch.no_grad()
def count_parameters(model) -> ParameterCount:
    """Parameters (tied ones once), how many are non-zero, and sparsity = 1 - nonzero/total."""
    total = nonzero = 0
    seen: set[tuple] = set()
    for p in list(model.parameters()) + _packed_weights(model):
        key = _identity(p)
        if key in seen:
            continue
        seen.add(key)
        values = _logical_values(p)
        if values.is_quantized:
            values = values.int_repr().to(torch.int16) - _zero_points(values)
        total += values.numel()
        nonzero += int(torch.count_nonzero(values))
    return ParameterCount(total, nonzero, 1 - nonzero / total if total else 0.0)


def _zero_points(q: torch.Tensor) -> torch.Tensor | int:
    if q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        shape = [1] * q.ndim
        shape[q.q_per_channel_axis()] = -1
        return q.q_per_channel_zero_points().view(shape).to(torch.int16)
    return int(q.q_zero_point())


# --------------------------------------------------------------------------- speed


@torch.no_grad()
def generation_speed(model, tokenizer, prompt: str = DEFAULT_PROMPT, new_tokens: int = 32,
                     repeats: int = 3, warmup: int = 1) -> dict:
    """Greedy generation of exactly ``new_tokens`` tokens, timed.

    Runs ``warmup`` untimed generations first (caches, lazy initialisation), then ``repeats``
    timed ones with GPU synchronisation before and after each. Reports the median:
    ``latency_s`` (whole generation, prefill included) and ``tokens_per_s = new_tokens / latency_s``.
    """
    if new_tokens < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"Need new_tokens >= 1, repeats >= 1, warmup >= 0; got {new_tokens}, {repeats}, {warmup}.")
    device = model_device(model)
    was_training = model.training
    model.eval()
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    for _ in range(warmup):
        model.generate(**enc, **kwargs)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = model.generate(**enc, **kwargs)
        synchronize(device)
        times.append(time.perf_counter() - start)
    model.train(was_training)
    produced = out.shape[1] - enc["input_ids"].shape[1]
    latency = statistics.median(times)
    return {"latency_s": latency, "tokens_per_s": produced / latency, "new_tokens": produced,
            "times_s": times}


@torch.no_grad()
def forward_seconds(model, input_ids: torch.Tensor, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of one forward pass over ``input_ids`` (a batch of token blocks).

    ``warmup`` untimed passes first; the device is synchronised around each timed pass. This is
    the prompt-processing (prefill) cost, where compute, not Python overhead, dominates.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"Need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    device = model_device(model)
    was_training = model.training
    model.eval()
    input_ids = input_ids.to(device)
    for _ in range(warmup):
        model(input_ids=input_ids)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        model(input_ids=input_ids)
        synchronize(device)
        times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times)


def relative_spread(values) -> float:
    """Run-to-run spread of repeated timings: ``(max - min) / median`` (0 for a single value)."""
    values = list(values)
    if not values:
        raise ValueError("relative_spread needs at least one value.")
    return (max(values) - min(values)) / statistics.median(values)


def compare_speeds(models: dict, tokenizer, new_tokens: int = 32, rounds: int = 3,
                   forward_input: torch.Tensor | None = None):
    """Time several models **side by side**, so that drift in the machine's speed hits all alike.

    Each model gets one untimed generation (and forward pass) as warm-up. Then, in each of
    ``rounds`` rounds, every model is timed once: a greedy generation of ``new_tokens`` tokens
    (:func:`generation_speed`) and, if ``forward_input`` is given, one forward pass over it
    (:func:`forward_seconds`). Round ``i`` starts with model ``i mod n``, so no model is always first.

    Returns a pandas DataFrame indexed by the models' labels, in the given order, with the
    medians ``latency_s`` and ``tokens_per_s = new_tokens / latency_s`` and ``spread``, the
    :func:`relative_spread` of that model's latencies; with ``forward_input`` also
    ``forward_s`` and ``forward_spread``. A difference between two models smaller than their
    spreads is within this machine's noise.
    """
    import pandas as pd

    if not models:
        raise ValueError("compare_speeds needs at least one model, e.g. {'base': model}.")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    names = list(models)
    for name in names:
        generation_speed(models[name], tokenizer, new_tokens=new_tokens, repeats=1, warmup=0)
        if forward_input is not None:
            forward_seconds(models[name], forward_input, repeats=1, warmup=0)
    latency = {name: [] for name in names}
    forward = {name: [] for name in names}
    produced = {}
    for round_ in range(rounds):
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
               "spread": relative_spread(latency[name])}
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

    Attributes after the block: ``peak_bytes``, ``start_bytes``, ``increase_bytes`` (peak - start).
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = self.start_bytes = 0
        self._stop = threading.Event()

    @property
    def increase_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            self._proc = psutil.Process(os.getpid())
            self.start_bytes = self.peak_bytes = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
        return False
