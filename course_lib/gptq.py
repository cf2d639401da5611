"""GPTQ (Frantar et al., 2022): round weights one input column at a time and let the remaining
columns absorb each rounding error, weighted by how the layer's real inputs are correlated.

For a linear layer ``y = W x``, quantizing ``W`` to ``W_hat`` costs
``E = sum over calibration tokens of ||(W - W_hat) x||^2 = tr((W - W_hat) X^T X (W - W_hat)^T)
= 1/2 tr((W - W_hat) H (W - W_hat)^T)`` with the Hessian ``H = 2 X^T X`` of ``E`` (``X``: the
layer's calibration inputs, one token per row).
Round-to-nearest ignores ``H``. GPTQ walks through the columns ``j = 0 .. in-1``: it rounds
column ``j`` and spreads the error ``e = (w_j - q_j) / [H^-1]_jj`` over the columns not yet
rounded, ``W[:, j+1:] -= e [H^-1]_{j, j+1:}`` (the Optimal Brain Surgeon update), using the
Cholesky factor of ``H^-1`` for stability and updating in blocks for speed.

Each row is quantized on the same integer grid as :func:`course_lib.quantization.fake_quantize`
(a scale per group of ``group_size`` inputs, computed when the walk reaches the group), so GPTQ
and round-to-nearest differ only in the rounding decisions. This is the reference algorithm
without activation reordering ("act-order") and without re-running the layer between its
sub-layers ("true sequential").

:func:`gptq_quantize_model_` runs it layer by layer: each decoder block is calibrated on the
outputs of the already-quantized blocks before it, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .device import model_device
from .inference import batches, eval_mode
from .int_quantization import check_bits, check_float, check_group, make_grid
from .layers import decoder_layers, linear_layers, linear_weight, set_linear_weight

__all__ = ["check_hessian", "gptq_quantize_weight", "first_block_inputs", "layer_hessians", "gptq_quantize_model_"]


def check_hessian(hessian: torch.Tensor, columns: int) -> None:
    """Raise ValueError unless ``hessian`` is a float ``[columns, columns]`` tensor."""
    check_float(hessian, "hessian")
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian must be [in, in] = [{columns}, {columns}] for this weight, "
                         f"got {tuple(hessian.shape)}.")


@torch.no_grad()
def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = 128,
                         symmetric: bool = True, damp: float = 0.01, block_size: int = 128) -> torch.Tensor:
    """GPTQ-quantize one ``[out, in]`` weight given ``H = 2 X^T X`` (``[in, in]``); returns the
    dequantized ``W_hat`` (float32, same shape). The inputs are not modified.

    Args:
        group_size: inputs sharing one scale per row (must divide ``in``); None: one scale per row.
        damp: ``damp * mean(diag H)`` is added to the diagonal of ``H`` (numerical stability).
        block_size: columns per lazy-batch update (a multiple of ``group_size``); it changes speed only.
    """
    check_float(weight)
    check_bits(bits)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}.")
    rows, columns = weight.shape
    check_hessian(hessian, columns)
    if not 0 <= damp < 1:
        raise ValueError(f"damp must be in [0, 1), got {damp}.")
    group = columns if group_size is None else group_size
    check_group(columns, group)
    if block_size % group and group % block_size:
        raise ValueError(f"block_size={block_size} must be a multiple or a divisor of group_size={group}.")

    W = weight.detach().float().clone()
    H = hessian.detach().to(W.device, torch.float64).clone()
    dead = torch.diag(H) == 0  # inputs that were always zero: their weights do not matter
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(columns, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()

    Q = torch.zeros_like(W)
    grid = None
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1, device=W.device), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            column = i1 + i
            if column % group == 0:  # a new group starts: its scale from its current weights
                if i + group <= i2 - i1:
                    grid = make_grid(W1[:, i:i + group], bits, symmetric, dim=1)
                else:
                    current = torch.cat([W1[:, i:], W[:, i2:column + group]], dim=1)
                    grid = make_grid(current, bits, symmetric, dim=1)
            w = W1[:, i:i + 1]
            q = grid.fake_quantize(w)
            Q[:, column:column + 1] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i:i + 1, i:]
            Err1[:, i:i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q


class _StopForward(Exception):
    pass


@torch.no_grad()
def first_block_inputs(model: nn.Module, blocks: torch.Tensor, batch_size: int):
    """Per batch of ``blocks``: the hidden states entering the first decoder block and the keyword
    arguments (attention mask, position embeddings...) the model passes to every block, on the
    model's device. The forward pass stops at the first block (nothing after it runs)."""
    first = decoder_layers(model)[0]
    captured = []

    def hook(_, args, kwargs):
        captured.append((args[0] if args else kwargs.pop("hidden_states"), kwargs))
        raise _StopForward

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with eval_mode(model):
            for batch in batches(blocks, batch_size, model_device(model), desc="GPTQ inputs", progress=False):
                try:
                    model(input_ids=batch, use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return captured


def _run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def layer_hessians(block: nn.Module, inputs) -> dict[str, torch.Tensor]:
    """``H = 2 X^T X / n`` for every linear layer of one decoder ``block``, where ``X`` holds the
    ``n`` token vectors that reach the layer when ``block`` runs on ``inputs`` (a list of
    ``(hidden_states, kwargs)``). Keys are the layers' names inside the block.

    Layers that read the same input tensor (q/k/v, gate/up) get the *same* Hessian object,
    computed once. "The same input" means the very same tensor object, held (not its address:
    a freed buffer's address can be reused by an unrelated layer's input).
    """
    layers = linear_layers(block, exclude=())
    owner: dict[str, str] = {}  # layer name -> name of the layer whose Hessian it shares
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    last: dict = {"input": None, "name": None}  # holds the previous layer's input tensor itself
    handles = []

    def make_hook(name):
        def hook(_, args):
            if args[0] is last["input"]:  # the very same tensor as the previous layer: share its Hessian
                owner.setdefault(name, last["name"])
                return
            owner.setdefault(name, name)
            last.update(input=args[0], name=owner[name])
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[owner[name]] = sums.get(owner[name], 0) + x.T @ x
            counts[owner[name]] = counts.get(owner[name], 0) + x.shape[0]
        return hook

    for name, layer in layers.items():
        handles.append(layer.register_forward_pre_hook(make_hook(name)))
    try:
        for hidden, kwargs in inputs:
            last.update(input=None, name=None)
            _run_block(block, hidden, kwargs)
    finally:
        last.update(input=None, name=None)
        for h in handles:
            h.remove()
    hessians = {name: 2 * sums[name] / counts[name] for name in sums}
    return {name: hessians[owner[name]] for name in layers if name in owner}


@torch.no_grad()
def gptq_quantize_model_(model: nn.Module, calibration_blocks: torch.Tensor, bits: int, group_size: int | None = 128,
                         symmetric: bool = True, damp: float = 0.01, batch_size: int = 8,
                         max_layers: int | None = None, progress: bool = True) -> nn.Module:
    """GPTQ every linear layer of every decoder block of ``model``, **in place**; returns ``model``.

    Block by block: record the block's inputs (outputs of the already-quantized blocks before
    it), compute each linear layer's Hessian (:func:`layer_hessians`), quantize the weights with
    :func:`gptq_quantize_weight`, then run the quantized block to get the next block's inputs.
    The embedding and ``lm_head`` stay in float32. ``max_layers`` stops after that many blocks
    (smoke tests only). Weights stay float32 ("fake" quantization). The model runs in evaluation
    mode and gets its train/eval mode back afterwards.

    Raises:
        ValueError: ``calibration_blocks`` is not a 2-D tensor or has no rows (no calibration, no GPTQ).
    """
    if not isinstance(calibration_blocks, torch.Tensor) or calibration_blocks.ndim != 2:
        raise ValueError(f"calibration_blocks must be a [n_blocks, block_size] tensor of token ids, got "
                         f"{tuple(getattr(calibration_blocks, 'shape', ())) or type(calibration_blocks).__name__}.")
    if len(calibration_blocks) == 0:
        raise ValueError("calibration_blocks is empty: GPTQ needs calibration text to build each layer's "
                         "Hessian, e.g. data.token_blocks(tokenizer, 'calibration', 128, 32).")
    inputs = first_block_inputs(model, calibration_blocks, batch_size)
    blocks = list(decoder_layers(model))[:max_layers]
    with eval_mode(model):
        _quantize_blocks_(blocks, inputs, bits, group_size, symmetric, damp, progress)
    return model


def _quantize_blocks_(blocks, inputs, bits, group_size, symmetric, damp, progress) -> None:
    """GPTQ each decoder block in turn, feeding each the outputs of the quantized blocks before it."""
    for block in tqdm(blocks, desc=f"GPTQ {bits}-bit", disable=not progress):
        hessians = layer_hessians(block, inputs)
        shared: dict[int, list[str]] = {}  # layers with the same input (q/k/v, gate/up)
        for name, H in hessians.items():
            shared.setdefault(id(H), []).append(name)
        for names in shared.values():
            # GPTQ treats every row on its own, so layers sharing H are quantized as one stacked weight.
            layers = [block.get_submodule(n) for n in names]
            stacked = torch.cat([linear_weight(layer) for layer in layers], dim=0)
            quantized = gptq_quantize_weight(stacked, hessians[names[0]], bits, group_size, symmetric, damp)
            for layer, part in zip(layers, quantized.split([linear_weight(m).shape[0] for m in layers])):
                set_linear_weight(layer, part)
        inputs = [(_run_block(block, hidden, kwargs), kwargs) for hidden, kwargs in inputs]
