"""Wanda's calibration statistic: the L2 norm of every input feature of a layer, in one pass or
block by block.

``||X_j||_2 = sqrt( sum over all calibration tokens t of x_{t,j}^2 )``, where ``x_t`` is what a
linear layer receives for token t. Wanda (Sun et al., 2023) scores a weight by
``|W_ij| * ||X_j||_2`` (:func:`course_lib.pruning.wanda_scores`).

Two ways to gather the norms:

* **one pass** (:func:`input_norms`): every layer's norms from one run of the *unpruned* model;
* **sequential** (:func:`sequential_wanda_masks`), as the reference implementation does: decoder
  block by block, each block's norms taken on a model whose earlier blocks are already pruned,
  so each block is calibrated on the inputs it will really receive.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from tqdm.auto import tqdm

from .inference import capture
from .layers import decoder_layers, linear_layers, linear_weight
from .pruning import apply_masks_, prunable_layers, score_mask, wanda_scores

__all__ = ["input_norms", "layers_by_block", "sequential_wanda_masks"]


def input_norms(model: nn.Module, blocks: torch.Tensor, modules: dict[str, nn.Module] | None = None,
                batch_size: int = 8, progress: bool = True) -> dict[str, torch.Tensor]:
    """The L2 norm of every input feature of each layer over the calibration tokens.

    ``||X_j||_2 = sqrt( sum over all tokens t of x_{t,j}^2 )`` when ``model`` reads ``blocks``
    (``[n_blocks, block_size]`` token ids), gathered with :func:`course_lib.inference.capture`.

    Args:
        modules: the layers to watch by name (default: every linear layer but ``lm_head``).

    Returns:
        ``{name: tensor [in_features]}`` in float32 on the model's device. The model is not changed.
    """
    if not isinstance(blocks, torch.Tensor) or blocks.ndim != 2:
        raise ValueError(f"blocks must be a [n_blocks, block_size] tensor of token ids, got shape "
                         f"{tuple(getattr(blocks, 'shape', ()))}.")
    modules = linear_layers(model) if modules is None else modules
    sums: dict[str, torch.Tensor] = {}
    capture(model, modules, blocks, _accumulator(sums), batch_size, desc="calibration", progress=progress)
    return {name: sums[name].sqrt().float() for name in modules}


def _accumulator(sums: dict):
    """A capture callback adding each input's per-feature sum of squares to ``sums[name]``."""
    def accumulate(name, x, _output):
        squares = x.reshape(-1, x.shape[-1]).float().pow(2).sum(0).to(torch.float64)
        sums[name] = sums[name] + squares if name in sums else squares
    return accumulate


class _BlockDone(Exception):
    """Raised after the watched block ran: the rest of the forward pass is not needed."""


def _block_norms(model: nn.Module, block: nn.Module, group: dict[str, nn.Module], blocks: torch.Tensor,
                 batch_size: int) -> dict[str, torch.Tensor]:
    """Input norms of ``group`` (the layers of ``block``), stopping each forward pass after ``block``."""
    sums: dict[str, torch.Tensor] = {}
    watched = {**group, "_block": block}
    accumulate = _accumulator(sums)

    def fn(name, x, output):
        if name == "_block":
            raise _BlockDone
        accumulate(name, x, output)

    for start in range(0, len(blocks), batch_size):
        try:
            capture(model, watched, blocks[start:start + batch_size], fn, batch_size, progress=False)
        except _BlockDone:
            pass
    return {name: sums[name].sqrt().float() for name in group}


def layers_by_block(model: nn.Module, include: tuple[str, ...] | None = None) -> list[dict[str, nn.Module]]:
    """The prunable linear layers (:func:`course_lib.pruning.prunable_layers`) grouped by decoder
    block, in the order the blocks run: ``[{name: layer} for each block]``.

    Raises:
        ValueError: a prunable layer lies outside every decoder block.
    """
    layers = prunable_layers(model, include)
    groups = []
    for block in decoder_layers(model):
        inside = {id(m) for m in block.modules()}
        groups.append({name: m for name, m in layers.items() if id(m) in inside})
    placed = {name for group in groups for name in group}
    outside = [name for name in layers if name not in placed]
    if outside:
        raise ValueError(f"These layers are in no decoder block, so no block order applies: {outside}.")
    return groups


def sequential_wanda_masks(model: nn.Module, blocks: torch.Tensor, sparsity: float, scope: str = "row",
                           batch_size: int = 8, progress: bool = True) -> dict[str, torch.Tensor]:
    """Wanda keep-masks calibrated block by block, as in the reference implementation.

    For block b = 0, 1, ...: measure the input norms of block b's linear layers on a working copy
    whose blocks 0..b-1 are already pruned, score ``|W| * ||X||`` (:func:`wanda_scores`), mask the
    lowest ``sparsity`` in ``scope`` ("row" or "layer"), and prune block b of the copy. Within a
    block the norms come from the block's unpruned weights (as the reference does).

    Cost: for block b, a forward pass of ``blocks`` up to block b (it stops there), so about half
    a forward pass per decoder block in all (the one-pass :func:`input_norms` needs one in total). Returns ``{layer name: bool [out, in]}``; the caller's model is untouched.
    """
    work = copy.deepcopy(model)
    masks: dict[str, torch.Tensor] = {}
    groups = layers_by_block(work)
    for block, group in tqdm(list(zip(decoder_layers(work), groups)), desc="sequential calibration",
                             disable=not progress, leave=False):
        norms = _block_norms(work, block, group, blocks, batch_size)
        block_masks = {name: score_mask(wanda_scores(linear_weight(m), norms[name]), sparsity, scope)
                       for name, m in group.items()}
        apply_masks_(work, block_masks)
        masks.update(block_masks)
    del work
    return masks
