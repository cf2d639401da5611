"""What a model occupies: bytes and parameters, counted one way for every chapter.

* :func:`footprint_bytes`: the bytes a model really occupies (parameters, buffers and
  quantization state), next to :func:`naive_footprint_bytes`, the source article's
  ``sum(p.numel() * p.element_size())``, which misses quantization state.
* :func:`count_parameters`: logical parameter count, non-zeros and sparsity.

Quantized layers keep state outside their parameters: bitsandbytes 4-bit weights a
``quant_state`` (block scales, code book, and with double quantization the scales' own state);
bitsandbytes int8 layers one scale per row, in ``weight.SCB`` before the first forward pass and in
``module.state.SCB`` after it (bitsandbytes 0.50 moves it); torch.ao int8 layers packed weights.
All of it is counted, at whatever moment the model is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["footprint_bytes", "naive_footprint_bytes", "ParameterCount", "count_parameters"]


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


def _module_state_tensors(model) -> list[torch.Tensor]:
    """Quantization state kept on a module rather than its weight: bitsandbytes ``Linear8bitLt``
    moves its row scales from ``weight.SCB`` to ``module.state.SCB`` on the first forward pass."""
    tensors = []
    for module in model.modules():
        state = getattr(module, "state", None)
        scb = getattr(state, "SCB", None) if state is not None and not isinstance(state, dict) else None
        if isinstance(scb, torch.Tensor):
            tensors.append(scb)
    return tensors


def _all_tensors(model) -> list[torch.Tensor]:
    tensors = list(model.parameters()) + list(model.buffers())
    for p in list(model.parameters()):
        tensors += _quant_state_tensors(p)
    return tensors + _module_state_tensors(model) + _packed_weights(model)


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
