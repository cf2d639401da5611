"""Depth pruning: score every decoder layer by its Block Influence and remove the least useful.

**Block Influence** (ShortGPT, Men et al. 2024) measures how much a layer changes the hidden
state that flows through it. With ``x_in`` the input of layer ``i`` and ``x_out`` its output,
at every token position of some calibration text:

    BI_i = 1 - mean over tokens of  cos(x_in, x_out) = 1 - mean( x_in . x_out / (|x_in| |x_out|) )

A layer whose output points the same way as its input (BI near 0) mostly adds a small
correction to the residual stream, so removing it should hurt least.

* :func:`block_influence` measures BI of every layer on calibration blocks (through
  :func:`course_lib.inference.capture`'s forward hooks; no change to the model).
* :func:`choose_layers` picks ``k`` layers to drop: the ``"lowest"`` influence, the ``"last"``
  k, or ``"random"`` k (the baselines the lesson compares against).
* :func:`remove_layers` returns a **new**, shallower model (the caller's model is untouched),
  with its config and the layer indices its key/value cache uses renumbered.

Works for Llama-style models (``model.model.layers``) and GPT-2 (``model.transformer.h``).
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F

from .inference import capture
from .layers import decoder_layers

__all__ = ["STRATEGIES", "cosine_similarity_per_token", "block_influence", "choose_layers", "remove_layers"]

STRATEGIES = ("lowest", "last", "random")


def cosine_similarity_per_token(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """``cos(x_in[..., :], x_out[..., :])`` along the hidden dimension, computed in float32.

    Shapes ``[..., hidden]`` in, ``[...]`` out. Raises ValueError on mismatched shapes.
    """
    if x_in.shape != x_out.shape:
        raise ValueError(f"Input and output hidden states must have the same shape, got "
                         f"{tuple(x_in.shape)} and {tuple(x_out.shape)}.")
    return F.cosine_similarity(x_in.float(), x_out.float(), dim=-1)


def block_influence(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Block Influence of every decoder layer: ``BI_i = 1 - mean_tokens cos(x_in_i, x_out_i)``.

    Args:
        blocks: calibration token blocks ``[n_blocks, block_size]`` (every token is averaged).

    Returns:
        a float64 CPU tensor ``[num_layers]``; higher means the layer changes its input more.

    The blocks run on the model's device through :func:`course_lib.inference.capture` (eval mode,
    no gradients, hooks removed afterwards, the model's train/eval mode restored); its weights are
    not changed.
    """
    if not isinstance(blocks, torch.Tensor) or blocks.ndim != 2 or len(blocks) == 0:
        shape = tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__
        raise ValueError(f"blocks must be a non-empty [n_blocks, block_size] tensor, got {shape}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    layers = decoder_layers(model)
    index = {f"layer {i}": i for i in range(len(layers))}
    sums = torch.zeros(len(layers), dtype=torch.float64)
    counts = torch.zeros(len(layers), dtype=torch.float64)

    def accumulate(name, x_in, x_out):
        cos = cosine_similarity_per_token(x_in, x_out)
        sums[index[name]] += cos.double().sum().item()
        counts[index[name]] += cos.numel()

    capture(model, {name: layers[i] for name, i in index.items()}, blocks, accumulate, batch_size,
            desc="block influence", progress=progress)
    return 1.0 - sums / counts


def choose_layers(influence: torch.Tensor, k: int, strategy: str = "lowest", seed: int = 0) -> list[int]:
    """Indices of ``k`` layers to remove, sorted ascending.

    * ``"lowest"``: the k layers with the lowest Block Influence;
    * ``"last"``: the last k layers (the naive choice);
    * ``"random"``: k layers drawn uniformly without replacement (seeded).

    Raises:
        ValueError: unknown strategy, or ``k`` not in ``1 .. num_layers - 1`` (a model needs at
            least one layer left).
    """
    n = len(influence)
    _check_count(k, n)
    if strategy == "lowest":
        chosen = torch.argsort(torch.as_tensor(influence), stable=True)[:k].tolist()
    elif strategy == "last":
        chosen = list(range(n - k, n))
    elif strategy == "random":
        chosen = random.Random(seed).sample(range(n), k)
    else:
        raise ValueError(f"Unknown strategy {strategy!r}; use one of {STRATEGIES}.")
    return sorted(int(i) for i in chosen)


def _check_count(k: int, n: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"Remove at least one layer: k must be a positive integer, got {k!r}.")
    if k >= n:
        raise ValueError(f"Cannot remove {k} of {n} layers: at least one layer must remain "
                         f"(use k <= {n - 1}).")


def remove_layers(model, layers: list[int]):
    """A new model without the decoder layers ``layers`` (0-based); ``model`` is not modified.

    The copy's ``config.num_hidden_layers`` (and ``layer_types`` where present) and every
    attention module's ``layer_idx`` (its slot in the key/value cache) are renumbered, so it
    generates, saves and reloads like a model that was built with fewer layers.

    Raises:
        ValueError: ``layers`` is not a list (e.g. the int 1: pass ``[1]``), an index is out of
            range or repeated, or every layer would be removed.
    """
    n = len(decoder_layers(model))
    if not isinstance(layers, (list, tuple, range)):
        raise ValueError(f"layers must be a list of layer indices, got {type(layers).__name__} {layers!r}. "
                         f"To remove layer {layers!r}, pass [{layers!r}]; to remove k layers, pass "
                         "choose_layers(influence, k).")
    indices = list(layers)
    if not indices:
        raise ValueError("No layers given: pass the indices of at least one layer to remove.")
    bad = [i for i in indices if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"Layer indices {bad} are out of range: the model has {n} layers (0 .. {n - 1}).")
    if len(set(indices)) != len(indices):
        raise ValueError(f"Layer indices repeat: {indices}. Give each layer once.")
    _check_count(len(indices), n)

    new = copy.deepcopy(model)
    stack = decoder_layers(new)
    for i in sorted(indices, reverse=True):
        del stack[i]
    for new_index, layer in enumerate(stack):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    keep = [i for i in range(n) if i not in set(indices)]
    config = new.config
    config.num_hidden_layers = len(stack)  # GPT-2 maps this name to n_layer
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == n:
        config.layer_types = [config.layer_types[i] for i in keep]
    return new
