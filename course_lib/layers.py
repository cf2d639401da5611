"""Model anatomy: find the parts of a model that optimization methods act on, for Llama- and
GPT-2-style models.

* :func:`model_family`: ``"llama"`` or ``"gpt2"``, from a model or a config (the one detector);
* :func:`linear_layers`, :func:`is_linear`, :func:`conv1d_type`: the linear layers;
* :func:`linear_weight`, :func:`set_linear_weight`: their weights as ``[out, in]``;
* :func:`decoder_layers`: the stack of transformer blocks.

GPT-2 stores its projections as ``transformers.pytorch_utils.Conv1D`` with the weight laid out
``[in_features, out_features]``, the transpose of ``nn.Linear``'s ``[out, in]``.
:func:`linear_weight` always returns the ``[out, in]`` view, so the rest of the course can
ignore the difference.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FAMILIES", "model_family", "conv1d_type", "is_linear", "linear_layers", "linear_weight",
           "set_linear_weight", "decoder_layers"]

FAMILIES = ("llama", "gpt2")


def conv1d_type():
    """GPT-2's ``transformers.pytorch_utils.Conv1D`` class (a linear layer stored ``[in, out]``)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def model_family(model_or_config) -> str:
    """``"gpt2"`` or ``"llama"`` for a model or its config; the course's one family detector.

    A config is GPT-2 when ``model_type == "gpt2"`` and Llama-style when it has the Llama fields
    (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
    ``vocab_size``; SmolLM2 is a Llama). A model is judged by its config.

    Raises:
        ValueError: neither family (e.g. a BERT config), naming the model type.
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "")
    if model_type == "gpt2":
        return "gpt2"
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if model_type in ("llama", "") and all(hasattr(config, a) for a in needed):
        return "llama"
    raise ValueError(f"Unsupported model or config {type(config).__name__} (model_type {model_type!r}): the course "
                     "handles Llama-style models (LlamaConfig, as SmolLM2) and GPT-2 (GPT2Config).")


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` (and its subclasses, e.g. bitsandbytes layers) and GPT-2's ``Conv1D``."""
    return isinstance(module, (nn.Linear, conv1d_type()))


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
    if isinstance(module, conv1d_type()):
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
