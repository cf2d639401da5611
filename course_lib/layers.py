"""Find the parts of a model that optimization methods act on, for Llama- and GPT-2-style models.

GPT-2 stores its projections as ``transformers.pytorch_utils.Conv1D`` with the weight laid out
``[in_features, out_features]``, the transpose of ``nn.Linear``'s ``[out, in]``.
:func:`linear_weight` always returns the ``[out, in]`` view, so the rest of the course can
ignore the difference.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` (and its subclasses, e.g. bitsandbytes layers) and GPT-2's ``Conv1D``."""
    return isinstance(module, (nn.Linear, _conv1d_type()))


def linear_layers(model: nn.Module, exclude: tuple[str, ...] = ("lm_head",)) -> dict[str, nn.Module]:
    """All linear layers by qualified name, skipping names that contain any of ``exclude``.

    The output head is excluded by default: with tied embeddings it *is* the embedding matrix.

    Raises:
        ValueError: the model has no linear layers left to return.
    """
    found = {name: m for name, m in model.named_modules()
             if is_linear(m) and not any(part in name for part in exclude)}
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(
            f"{type(model).__name__} has no linear layers (nn.Linear or Conv1D) outside {exclude}; "
            f"its module types are: {', '.join(kinds)}."
        )
    return found


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out_features, in_features]`` (a view; Conv1D's weight is transposed)."""
    if isinstance(module, _conv1d_type()):
        return module.weight.T
    if isinstance(module, nn.Linear):
        return module.weight
    raise ValueError(f"{type(module).__name__} is not a linear layer (nn.Linear or Conv1D).")


def set_linear_weight(module: nn.Module, weight_out_in: torch.Tensor) -> None:
    """Write an ``[out, in]`` weight into a Linear or Conv1D layer, in place."""
    target = linear_weight(module)
    if target.shape != weight_out_in.shape:
        raise ValueError(f"Weight shape {tuple(weight_out_in.shape)} does not match the layer's "
                         f"[out, in] shape {tuple(target.shape)}.")
    with torch.no_grad():
        target.copy_(weight_out_in.to(target.dtype))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: ``model.model.layers`` (Llama) or ``model.transformer.h`` (GPT-2)."""
    base = getattr(model, "base_model", model)
    for path in ("model.layers", "layers", "transformer.h", "h", "model.model.layers"):
        obj = base
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"Cannot find the decoder blocks of {type(model).__name__}: expected model.layers (Llama) "
        "or transformer.h (GPT-2)."
    )
