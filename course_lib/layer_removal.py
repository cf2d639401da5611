"""Depth pruning: score every decoder layer by its Block Influence and remove the least useful.

**Block Influence** (ShortGPT, Men et al. 2024) measures how much a layer changes the hidden
state that flows through it. With ``x_in`` the input of layer ``i`` and ``x_out`` its output,
at every token position of some calibration text:

    BI_i = 1 - mean over tokens of  cos(x_in, x_out) = 1 - mean( x_in . x_out / (|x_in| |x_out|) )

A layer whose output points the same way as its input (BI near 0) mostly adds a small
correction to the residual stream, so removing it should hurt least.

* :func:`block_influence` measures BI of every layer on calibration blocks (forward hooks, no
  change to the model).
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
from tqdm.auto import tqdm

from .device import model_device
from .layers import decoder_layers

STRATEGIES = ("lowest", "last", "random")


def _hidden(value) -> torch.Tensor:
    """The hidden-state tensor of a layer's input or output (some layers return tuples)."""
    return value[0] if isinstance(value, (tuple, list)) else value


def cosine_similarity_per_token(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """``cos(x_in[..., :], x_out[..., :])`` along the hidden dimension, computed in float32.

    Shapes ``[..., hidden]`` in, ``[...]`` out. Raises ValueError on mismatched shapes.
    """
    if x_in.shape != x_out.shape:
        raise ValueError(f"Input and output hidden states must have the same shape, got "
                         f"{tuple(x_in.shape)} and {tuple(x_out.shape)}.")
    return F.cosine_similarity(x_in.float(), x_out.float(), dim=-1)


@torch.no_grad()
def block_influence(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Block Influence of every decoder layer: ``BI_i = 1 - mean_tokens cos(x_in_i, x_out_i)``.

    Args:
        blocks: calibration token blocks ``[n_blocks, block_size]`` (every token is averaged).

    Returns:
        a float64 tensor ``[num_layers]``; higher means the layer changes its input more.

    The model is run in eval mode through forward hooks that are removed afterwards; its
    weights are not changed.
    """
    if blocks.ndim != 2 or len(blocks) == 0:
        raise ValueError(f"blocks must be a non-empty [n_blocks, block_size] tensor, got {tuple(blocks.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    counts = torch.zeros(len(layers), dtype=torch.float64)

    def make_hook(i):
        def hook(module, args, kwargs, output):
            x_in = _hidden(args[0] if args else kwargs["hidden_states"])
            cos = cosine_similarity_per_token(x_in, _hidden(output))
            sums[i] += cos.double().sum().item()
            counts[i] += cos.numel()
        return hook

    handles = [layer.register_forward_hook(make_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        starts = range(0, len(blocks), batch_size)
        for start in tqdm(starts, desc="block influence", disable=not progress or len(starts) < 2, leave=False):
            model(input_ids=blocks[start:start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
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
        ValueError: an index is out of range or repeated, or every layer would be removed.
    """
    n = len(decoder_layers(model))
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
