"""Quantization-aware training (QAT): train through the rounding with a straight-through estimator.

During training every linear weight ``W`` (outside ``lm_head``) is used as
``W_q = W + (fake_quantize(W) - W).detach()``: the forward pass computes with the rounded
weights, while the gradient flows to ``W`` as if rounding were the identity (the
straight-through estimator, STE). After training the weights are replaced by their rounded
values, so the model lands on the same grid as round-to-nearest (RTN) of the same bits and group
size: QAT and RTN differ only in where training moved the weights before the final rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .device import model_device
from .inference import batches
from .int_quantization import check_bits, fake_quantize
from .layers import linear_layers

__all__ = ["StraightThroughQuantizer", "qat_train_"]


class StraightThroughQuantizer(nn.Module):
    """A parametrization: ``W -> W + (fake_quantize(W, bits, "group", group_size) - W).detach()``.
    Its value is the rounded weight; its gradient with respect to ``W`` is the identity."""

    def __init__(self, bits: int, group_size: int):
        super().__init__()
        check_bits(bits)
        self.bits, self.group_size = bits, group_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (fake_quantize(weight.detach(), self.bits, "group", self.group_size) - weight).detach()


def qat_train_(model: nn.Module, train_blocks: torch.Tensor, bits: int, group_size: int, steps: int,
               batch_size: int = 4, lr: float = 1e-5, exclude: tuple[str, ...] = ("lm_head",)) -> list[float]:
    """Train ``model`` **in place** for ``steps`` AdamW steps of causal-LM loss on ``train_blocks``
    (cycled, ``batch_size`` blocks a step, on the model's device) with every linear weight
    fake-quantized through :class:`StraightThroughQuantizer`; then bake the rounded weights in.
    Returns the training loss of each step (measured with the quantized weights).

    Raises:
        ValueError: ``steps < 1`` or ``train_blocks`` has fewer rows than ``batch_size``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")
    if len(train_blocks) < batch_size:
        raise ValueError(f"train_blocks has {len(train_blocks)} rows, fewer than batch_size={batch_size}.")
    layers = linear_layers(model, exclude=exclude)
    for layer in layers.values():
        parametrize.register_parametrization(layer, "weight", StraightThroughQuantizer(bits, group_size))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    losses, was_training = [], model.training
    model.train()
    try:
        while len(losses) < steps:
            for batch in batches(train_blocks, batch_size, model_device(model), desc="QAT", progress=False):
                if len(batch) < batch_size or len(losses) == steps:
                    continue
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
    finally:
        for layer in layers.values():  # the rounded weights stay: the model is now on the grid
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        model.train(was_training)
    return losses
