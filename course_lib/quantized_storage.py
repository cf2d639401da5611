"""Storage cost of quantized weights: bits per weight by formula, packed footprints, measured bits.

``bits + (scale bits + zero-point bits) / group_size`` per weight (:func:`bits_per_parameter`);
for a whole model, whose layers have different row lengths, :func:`packed_linear_bits` counts the
scales of every layer (a group size, ``"channel"`` or ``"tensor"``). :func:`linear_bits_per_weight`
measures what quantized layers really hold.
"""

from __future__ import annotations

from torch import nn

from .footprint import footprint_bytes
from .int_quantization import check_group
from .layers import linear_layers, linear_weight

__all__ = ["PER_TENSOR", "PER_CHANNEL", "bits_per_parameter", "packed_linear_bits", "packed_footprint_bytes",
           "linear_bits_per_weight"]

PER_TENSOR, PER_CHANNEL = "tensor", "channel"  # the scale layouts packed_linear_bits takes besides a group size


def bits_per_parameter(bits: float, group_size: int | None, scale_bits: int = 16,
                       zero_point_bits: int = 0) -> float:
    """Storage per weight: ``bits + (scale_bits + zero_point_bits) / group_size``.

    ``group_size`` is the number of weights sharing one scale (for per-channel scales, pass the
    row length ``in``); None means one scale per tensor, whose cost per weight is negligible.
    For a whole model, whose layers have different row lengths, use :func:`packed_linear_bits`.
    """
    if bits <= 0:
        raise ValueError(f"bits must be positive, got {bits}.")
    if group_size is None:
        return float(bits)
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer or None (one scale per tensor), got {group_size!r}; "
                         "for one scale per output channel pass the row length, or use packed_linear_bits.")
    return bits + (scale_bits + zero_point_bits) / group_size




def packed_linear_bits(model: nn.Module, bits: float, group_size: int | str, scale_bits: int = 16,
                       zero_point_bits: int = 0, exclude: tuple[str, ...] = ("lm_head",)) -> tuple[float, int]:
    """``(packed_bits, numel)``: the bits the weights of ``model``'s linear layers (outside
    ``exclude``) would take stored at ``bits`` per weight plus their scales, and how many weights
    there are. ``packed_bits / numel`` is the true bits per weight of the whole model.

    ``group_size``: an integer ``g`` (one scale per ``g`` consecutive inputs of a row; ``g`` must
    divide every layer's ``in``), :data:`PER_CHANNEL` (``"channel"``: one scale per output row,
    i.e. ``out`` scales per layer, whatever its ``in``) or :data:`PER_TENSOR` (``"tensor"``: one
    scale per layer). Each scale costs ``scale_bits + zero_point_bits``. For a layer ``[out, in]``:
    ``out * in * bits + n_scales * (scale_bits + zero_point_bits)``.
    """
    if bits <= 0:
        raise ValueError(f"bits must be positive, got {bits}.")
    if group_size not in (PER_TENSOR, PER_CHANNEL) and (isinstance(group_size, bool)
                                                        or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be a positive integer, {PER_CHANNEL!r} (one scale per output row) or "
                         f"{PER_TENSOR!r} (one scale per layer); got {group_size!r}.")
    total, numel = 0.0, 0
    for module in linear_layers(model, exclude=exclude).values():
        rows, columns = linear_weight(module).shape
        if group_size == PER_TENSOR:
            scales = 1
        elif group_size == PER_CHANNEL:
            scales = rows
        else:
            check_group(columns, group_size)
            scales = rows * (columns // group_size)
        total += rows * columns * bits + scales * (scale_bits + zero_point_bits)
        numel += rows * columns
    return total, numel


def packed_footprint_bytes(model: nn.Module, bits: float, group_size: int | str = PER_CHANNEL, scale_bits: int = 16,
                           zero_point_bits: int = 0, exclude: tuple[str, ...] = ("lm_head",)) -> int:
    """The footprint ``model`` *would* have if the weights of its linear layers (outside ``exclude``)
    were packed as :func:`packed_linear_bits` counts them (``group_size``: an integer,
    ``"channel"`` or ``"tensor"``); every other tensor counts as stored.

    ``footprint_bytes(model) - sum(stored bytes of those weights) + packed_bits / 8``.
    For fake-quantized models, which still store float32 weights.
    """
    if group_size is None:
        raise ValueError("group_size=None is ambiguous: pass 'channel' (one scale per output row), "
                         "'tensor' (one per layer) or a group size.")
    packed_bits, _ = packed_linear_bits(model, bits, group_size, scale_bits, zero_point_bits, exclude)
    stored = sum(w.numel() * w.element_size() for w in
                 (linear_weight(m) for m in linear_layers(model, exclude=exclude).values()))
    return int(footprint_bytes(model) - stored + packed_bits / 8)


def linear_bits_per_weight(model: nn.Module, exclude: tuple[str, ...] = ("lm_head",)) -> float:
    """Measured storage of the linear layers' weights: ``8 * bytes held / number of weights``.

    Bytes come from :func:`course_lib.footprint.footprint_bytes` of each layer (packed weights and
    their quantization state, biases excluded); the weight count is ``out * in`` of each layer.
    """
    total_bits, weights = 0, 0
    for m in linear_layers(model, exclude=exclude).values():
        bias = getattr(m, "bias", None)
        total_bits += 8 * (footprint_bytes(m) - (bias.numel() * bias.element_size() if bias is not None else 0))
        weights += m.in_features * m.out_features if hasattr(m, "in_features") else linear_weight(m).numel()
    return total_bits / weights

