"""Quantization by hand: integer grids, 4-bit code books, storage cost, and whole-model helpers.

**Integer grids.** A weight ``w`` is stored as an integer code ``q`` plus a floating scale:

* symmetric (absmax): ``scale = max|w| / qmax`` with ``qmax = 2**(bits-1) - 1``,
  ``q = clamp(round(w / scale), -qmax, qmax)``, ``w_hat = q * scale``; zero is exact and the
  grid is symmetric (``-qmax .. qmax``; the code ``-2**(bits-1)`` is left unused);
* asymmetric (zero point): ``scale = (max - min) / (2**bits - 1)`` (with ``min <= 0 <= max``),
  ``zero_point = round(-min / scale)``, ``q = clamp(round(w / scale) + zero_point, 0, 2**bits - 1)``,
  ``w_hat = (q - zero_point) * scale``.

One scale per tensor, per output channel (row of the ``[out, in]`` weight) or per group of
``group_size`` consecutive inputs of a row: :func:`fake_quantize` does all three.

**Code books** (4-bit data types): 16 values in [-1, 1]; each block of ``block_size`` weights
(bitsandbytes: 64, over the flattened tensor) is divided by its absmax and every weight is
replaced by the nearest code value: INT4 (evenly spaced), FP4 (a tiny float: sign, 2 exponent
bits, 1 mantissa bit) and NF4 (quantiles of a normal distribution, QLoRA).

**Storage.** ``bits + (scale bits + zero-point bits) / group_size`` per parameter
(:func:`bits_per_parameter`); for a whole model, whose layers have different row lengths,
:func:`packed_linear_bits` counts the scales of every layer (a group size, ``"channel"`` or
``"tensor"``). Double quantization stores the block scales themselves in 8 bits.

Nothing here modifies the caller's tensors or model, except functions ending in ``_``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .device import model_device
from .layers import linear_layers, linear_weight, set_linear_weight
from .metrics import perplexity
from .footprint import footprint_bytes

# Chapter sizes (see course_lib.profiles.sizes_for). Perplexities of the ladder and the 4-bit
# data types use `ladder_eval_blocks` validation blocks (fewer than the scorecard's
# profile.eval_blocks, to fit the cpu budget); scorecard records use the shared protocol.
# torchao's int8 path is slow in eager mode on a CPU, so its perplexity uses fewer blocks still.
SIZES = {
    "smoke": {"ladder_eval_blocks": 2, "static_calib_blocks": 2, "torchao_eval_blocks": 1, "gptq_layers": 2},
    "cpu": {"ladder_eval_blocks": 16, "static_calib_blocks": 8, "torchao_eval_blocks": 4, "gptq_layers": None},
    "gpu": {"ladder_eval_blocks": 64, "static_calib_blocks": 32, "torchao_eval_blocks": 64, "gptq_layers": None},
}

# Group size for whole-model experiments on SmolLM2: 64 divides both its hidden size (576) and
# its MLP size (1536); the papers' 128 does not divide 576 (= 4.5 x 128).
GROUP_SIZE = 64
INT_BITS = range(2, 9)  # integer grids this module supports: 2 to 8 bits
GRANULARITIES = ("tensor", "channel", "group")


# --------------------------------------------------------------------------- input checks


def _check_float(w, what: str = "weight") -> None:
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(w).__name__}.")
    if not w.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor (float32/float16/bfloat16), got {w.dtype}; "
                         "convert it with .float() first.")
    if w.numel() == 0:
        raise ValueError(f"{what} is empty.")


def _check_bits(bits) -> None:
    if not isinstance(bits, int) or bits not in INT_BITS:
        raise ValueError(f"bits must be an integer from {INT_BITS.start} to {INT_BITS.stop - 1}, got {bits!r}.")


def _check_group(size: int, group_size, what: str = "group_size") -> None:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{what} must be a positive integer, got {group_size!r}.")
    if size % group_size:
        raise ValueError(f"{what}={group_size} does not divide the dimension of size {size}; "
                         f"choose a divisor of {size} (e.g. 32, 64 or 128 when they divide it).")


def int_range(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """``(qmin, qmax)``: ``(-(2**(bits-1) - 1), 2**(bits-1) - 1)`` symmetric, ``(0, 2**bits - 1)`` asymmetric."""
    _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


# --------------------------------------------------------------------------- integer grids


@dataclass(frozen=True)
class Grid:
    """An integer grid: ``w_hat = (clamp(round(w / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    ``scale`` and ``zero_point`` broadcast against the weights they were computed from.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes (as a float tensor holding whole numbers) of ``w`` on this grid."""
        return torch.clamp(torch.round(w / self.scale) + self.zero_point, self.qmin, self.qmax)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """``(q - zero_point) * scale``."""
        return (q.float() - self.zero_point) * self.scale

    def fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Round trip: ``dequantize(quantize(w))``, in ``w``'s dtype."""
        return self.dequantize(self.quantize(w.float())).to(w.dtype)


def make_grid(w: torch.Tensor, bits: int, symmetric: bool = True, dim: int | None = None) -> Grid:
    """The grid that covers ``w`` (one scale per slice along ``dim``; the whole tensor when None).

    Symmetric: ``scale = max|w| / qmax``. Asymmetric: ``scale = (max - min) / (2**bits - 1)`` and
    ``zero_point = round(-min / scale)``, with min and max widened to include 0 so that zero is
    exact. An all-zero slice gets scale 1 (its codes are all zero).
    """
    _check_float(w)
    qmin, qmax = int_range(bits, symmetric)
    w = w.float()
    if dim is None:
        low, high = w.min(), w.max()
    else:
        low, high = w.amin(dim=dim, keepdim=True), w.amax(dim=dim, keepdim=True)
    low, high = torch.clamp(low, max=0), torch.clamp(high, min=0)
    if symmetric:
        scale = torch.maximum(-low, high) / qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (high - low) / (qmax - qmin)
        zero = torch.round(-low / torch.where(scale > 0, scale, 1.0))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return Grid(scale, zero, qmin, qmax)


def absmax_quantize(w: torch.Tensor, bits: int = 8, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization: ``scale = max|w| / (2**(bits-1) - 1)``, ``q = round(w / scale)``.

    Returns ``(q, scale)``: ``q`` as ``torch.int8`` (bits <= 8), ``scale`` as float32 (a scalar,
    or one per slice along ``dim`` with ``keepdim``).
    """
    grid = make_grid(w, bits, symmetric=True, dim=dim)
    return grid.quantize(w.float()).to(torch.int8), grid.scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``w_hat = q * scale`` (float32)."""
    return q.float() * scale


def zero_point_quantize(w: torch.Tensor, bits: int = 8, dim: int | None = None):
    """Asymmetric quantization: ``scale = (max - min) / (2**bits - 1)``, ``zero_point = round(-min / scale)``,
    ``q = clamp(round(w / scale) + zero_point, 0, 2**bits - 1)``.

    Returns ``(q as torch.uint8, scale, zero_point)``.
    """
    grid = make_grid(w, bits, symmetric=False, dim=dim)
    return grid.quantize(w.float()).to(torch.uint8), grid.scale, grid.zero_point


def zero_point_dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``w_hat = (q - zero_point) * scale`` (float32)."""
    return (q.float() - zero_point) * scale


def fake_quantize(w: torch.Tensor, bits: int, granularity: str = "channel", group_size: int = 128,
                  symmetric: bool = True) -> torch.Tensor:
    """Quantize and dequantize a ``[out, in]`` weight (round to nearest); same shape and dtype.

    ``granularity``: ``"tensor"`` (one scale), ``"channel"`` (one per output row) or ``"group"``
    (one per ``group_size`` consecutive inputs of a row; ``group_size`` must divide ``in``).
    A 1-D tensor is treated as one row.
    """
    _check_float(w)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    rows = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w.reshape(1, -1)
    if granularity == "tensor":
        grid = make_grid(rows, bits, symmetric, dim=None)
    elif granularity == "channel":
        grid = make_grid(rows, bits, symmetric, dim=1)
    else:
        _check_group(rows.shape[1], group_size)
        rows = rows.reshape(-1, group_size)
        grid = make_grid(rows, bits, symmetric, dim=1)
    return grid.fake_quantize(rows).reshape(w.shape)


def quantization_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict:
    """``mse = mean((w - w_hat)**2)``, ``relative = ||w - w_hat|| / ||w||`` (Frobenius), ``max_abs``,
    and ``sqnr_db = 10 log10(sum w**2 / sum (w - w_hat)**2)`` (signal-to-quantization-noise ratio)."""
    _check_float(w)
    _check_float(w_hat, "w_hat")
    if w.shape != w_hat.shape:
        raise ValueError(f"w {tuple(w.shape)} and w_hat {tuple(w_hat.shape)} must have the same shape.")
    diff = (w.float() - w_hat.float())
    noise, signal = diff.pow(2).sum().item(), w.float().pow(2).sum().item()
    return {"mse": diff.pow(2).mean().item(), "relative": (noise / signal) ** 0.5 if signal else float("nan"),
            "max_abs": diff.abs().max().item(),
            "sqnr_db": 10 * torch.log10(torch.tensor(signal / noise)).item() if noise else float("inf")}


def layer_error_table(weight: torch.Tensor, bits=(8, 4, 3), group_sizes=(128, 64)):
    """The round-to-nearest error of one ``[out, in]`` weight under every scheme: each of ``bits``
    x scale per tensor, per channel and per group of each of ``group_sizes`` x absmax (symmetric)
    and zero point (asymmetric), via :func:`fake_quantize` and :func:`quantization_error`.

    Returns a pandas DataFrame with columns ``bits, scale per, scheme, relative error %, SQNR dB``,
    one row per combination, in that order.
    """
    import pandas as pd

    layouts = [("tensor", "tensor", None), ("channel", "channel", None)]
    layouts += [(f"group {g}", "group", g) for g in group_sizes]
    rows = []
    for b in bits:
        for label, granularity, group in layouts:
            for symmetric in (True, False):
                kwargs = {} if group is None else {"group_size": group}
                err = quantization_error(weight, fake_quantize(weight, b, granularity, symmetric=symmetric, **kwargs))
                rows.append({"bits": b, "scale per": label, "scheme": "absmax" if symmetric else "zero point",
                             "relative error %": 100 * err["relative"], "SQNR dB": err["sqnr_db"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 4-bit code books


def int4_code_book() -> torch.Tensor:
    """INT4 with absmax scaling: 15 evenly spaced values ``k / 7`` for ``k = -7..7`` (symmetric)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def fp4_code_book(standard: bool = False) -> torch.Tensor:
    """The 16 values of a 4-bit float (1 sign, 2 exponent, 1 mantissa bit: E2M1), divided by the largest.

    Normal numbers are ``2**e * (1 + m/2)`` for exponent ``e = 1..3`` and mantissa ``m = 0, 1``,
    i.e. 2, 3, 4, 6, 8, 12; with exponent 0 the OCP/MX standard has the subnormals 0 and 1.
    bitsandbytes' FP4 (``standard=False``, the default, used by ``quant_type="fp4"``) uses 0 and
    0.0625 instead. Sorted, both signs (two zeros: +0 and -0).
    """
    small = 1.0 if standard else 0.0625
    magnitudes = torch.tensor([0.0, small, 2, 3, 4, 6, 8, 12]) / 12
    return torch.sort(torch.cat([-magnitudes, magnitudes])).values


def nf4_code_book(offset: float = 0.9677083) -> torch.Tensor:
    """NormalFloat4 (QLoRA): quantiles of a standard normal, normalised to [-1, 1], with an exact zero.

    8 positive values: ``Phi^-1(p)`` for 9 probabilities ``p`` evenly spaced from ``offset`` down
    to 0.5 (the last, 0, dropped); 7 negative values the same way with 8 probabilities; plus 0.
    Every value is divided by the largest. ``offset = 0.9677083`` is QLoRA's (the average of
    ``1 - 1/(2*15)`` and ``1 - 1/(2*16)``).
    """
    if not 0.5 < offset < 1:
        raise ValueError(f"offset must be between 0.5 and 1 (a probability above the median), got {offset}.")
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)])
    return torch.sort(values / values.abs().max()).values.float()


CODE_BOOKS: dict[str, Callable[[], torch.Tensor]] = {"int4": int4_code_book, "fp4": fp4_code_book,
                                                     "nf4": nf4_code_book}


def _check_code(code) -> torch.Tensor:
    _check_float(code, "code")
    if code.ndim != 1 or code.numel() < 2:
        raise ValueError(f"code must be a 1-D tensor of at least 2 values, got shape {tuple(code.shape)}.")
    return torch.sort(code.float()).values


def code_book_quantize(w: torch.Tensor, code: torch.Tensor, block_size: int = 64):
    """Block-wise absmax quantization to a code book (as bitsandbytes does for NF4/FP4).

    The flattened ``w`` is cut into blocks of ``block_size``; each block is divided by its
    ``absmax = max|w|`` and every value is replaced by the index of the nearest entry of the
    sorted ``code`` (an exact tie goes to the lower value, as in bitsandbytes). Returns ``(indices as torch.uint8, absmax per block as float32)``.
    """
    _check_float(w)
    code = _check_code(code)
    _check_group(w.numel(), block_size, "block_size")
    blocks = w.detach().float().reshape(-1, block_size)
    code = code.to(blocks.device)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    # times the reciprocal, then the nearest value (bucketize against the midpoints): the same
    # float arithmetic as bitsandbytes, so that exact ties fall the same way
    normed = blocks * (1.0 / torch.where(absmax > 0, absmax, torch.ones_like(absmax)))
    idx = torch.bucketize(normed, (code[1:] + code[:-1]) / 2)
    return idx.to(torch.uint8), absmax.squeeze(1)


def code_book_dequantize(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, shape) -> torch.Tensor:
    """``w_hat = code[idx] * absmax`` of each block, reshaped to ``shape``."""
    code = _check_code(code).to(idx.device)
    blocks = code[idx.long()] * absmax.float().reshape(-1, 1)
    return blocks.reshape(shape)


def fake_quantize_code_book(w: torch.Tensor, code: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Round trip through :func:`code_book_quantize` and :func:`code_book_dequantize`; ``w``'s dtype."""
    idx, absmax = code_book_quantize(w, code, block_size)
    return code_book_dequantize(idx, absmax, code, w.shape).to(w.dtype)


def double_quantize_scales(absmax: torch.Tensor, block_size: int = 256, bits: int = 8):
    """Double quantization by hand: the block scales themselves stored in ``bits`` bits.

    Subtract their mean (absmax values are all positive), then absmax-quantize blocks of
    ``block_size`` scales. Returns ``(absmax_hat, bits_per_scale)`` where
    ``bits_per_scale = bits + (32 / block_size)`` (a float32 scale per block of scales; the
    mean's 32 bits are negligible). bitsandbytes does the same with an 8-bit float code book.
    """
    _check_float(absmax, "absmax")
    flat = absmax.detach().float().reshape(-1)
    mean = flat.mean()
    pad = (-flat.numel()) % block_size
    centred = torch.cat([flat - mean, flat.new_zeros(pad)]).reshape(-1, block_size)
    grid = make_grid(centred, bits, symmetric=True, dim=1)
    restored = grid.fake_quantize(centred).reshape(-1)[: flat.numel()] + mean
    return restored.reshape(absmax.shape), bits + 32 / block_size


# --------------------------------------------------------------------------- storage cost


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


def double_quant_bits_per_parameter(bits: int = 4, block_size: int = 64, scale_bits: int = 8,
                                    block_size2: int = 256, scale2_bits: int = 32) -> float:
    """QLoRA's double quantization: ``bits + scale_bits / block_size + scale2_bits / (block_size * block_size2)``.

    With the defaults (NF4, block 64, 8-bit scales in blocks of 256): 4 + 0.125 + 0.002 = 4.127,
    against ``4 + 32/64 = 4.5`` bits with float32 scales.
    """
    if min(bits, block_size, scale_bits, block_size2, scale2_bits) <= 0:
        raise ValueError("bits, block sizes and scale bits must all be positive.")
    return bits + scale_bits / block_size + scale2_bits / (block_size * block_size2)


PER_TENSOR, PER_CHANNEL = "tensor", "channel"  # the scale layouts packed_linear_bits takes besides a group size


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
            _check_group(columns, group_size)
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


# --------------------------------------------------------------------------- whole models


@torch.no_grad()
def fake_quantize_model_(model: nn.Module, quantizer: Callable[[torch.Tensor], torch.Tensor],
                         exclude: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Replace, **in place**, the weight of every linear layer (outside ``exclude``) by
    ``quantizer(weight)``, where ``weight`` is ``[out, in]``. Returns ``model``.

    Example: ``fake_quantize_model_(copy.deepcopy(model), lambda w: fake_quantize(w, 4, "group", 128))``.
    The weights stay float32 ("fake" quantization): the model computes what the quantized model
    would, but its footprint does not shrink (see :func:`packed_footprint_bytes`).
    """
    for module in linear_layers(model, exclude=exclude).values():
        w = linear_weight(module)
        w_hat = quantizer(w.detach())
        if not isinstance(w_hat, torch.Tensor) or w_hat.shape != w.shape:
            raise ValueError(f"quantizer must return a tensor of the weight's shape {tuple(w.shape)}.")
        set_linear_weight(module, w_hat)
    return model


def _bits_per_weight(model, bits, group_size, scale_bits, zero_point_bits) -> float:
    packed, numel = packed_linear_bits(model, bits, group_size, scale_bits, zero_point_bits)
    return packed / numel


def rtn_ladder(model: nn.Module, blocks: torch.Tensor, bits=(8, 4, 3), granularities=GRANULARITIES,
               group_size: int = 128, symmetric: bool = True, batch_size: int = 8, progress: bool = True):
    """Perplexity of round-to-nearest fake quantization at every ``bits`` x ``granularity``.

    Each cell quantizes a fresh copy of ``model`` (the caller's model is untouched) with
    :func:`fake_quantize` and measures :func:`course_lib.metrics.perplexity` on ``blocks``.
    Returns a pandas DataFrame: ``bits, granularity, perplexity, bits_per_weight`` (the whole
    model's :func:`packed_linear_bits` per weight, with 16-bit scales, and 16-bit zero points
    when asymmetric).
    """
    import pandas as pd

    for b in bits:
        _check_bits(b)
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise ValueError(f"Unknown granularities {unknown}; use {GRANULARITIES}.")
    layout = {"tensor": PER_TENSOR, "channel": PER_CHANNEL, "group": group_size}
    zero_bits = 0 if symmetric else 16
    rows = []
    cells = [(b, g) for b in bits for g in granularities]
    for b, g in tqdm(cells, desc="bit-width ladder", disable=not progress):
        quantized = fake_quantize_model_(copy.deepcopy(model),
                                         lambda w: fake_quantize(w, b, g, group_size, symmetric))
        ppl = perplexity(quantized, blocks, batch_size=batch_size, progress=False)
        del quantized
        rows.append({"bits": b, "granularity": g if g != "group" else f"group {group_size}", "perplexity": ppl,
                     "bits_per_weight": _bits_per_weight(model, b, layout[g], 16, zero_bits)})
    return pd.DataFrame(rows)


@torch.no_grad()
def input_channel_absmax(model: nn.Module, module: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``max |x[..., j]|`` over every token of ``blocks``, for each input channel ``j`` of ``module``.

    Runs ``model`` on ``blocks`` with a forward pre-hook on ``module``; returns a float32 vector
    of length ``in_features``. Large, rare values (outlier channels) are what break per-tensor
    activation scales.
    """
    found: list[torch.Tensor] = []

    def hook(_, args):
        x = args[0].detach().float()
        found.append(x.reshape(-1, x.shape[-1]).abs().amax(dim=0))

    handle = module.register_forward_pre_hook(hook)
    device = model_device(model)
    try:
        for start in range(0, len(blocks), batch_size):
            model(input_ids=blocks[start:start + batch_size].to(device))
    finally:
        handle.remove()
    if not found:
        raise ValueError("module was never called: is it a part of model?")
    return torch.stack(found).amax(dim=0)


# --------------------------------------------------------------------------- PyTorch dynamic int8


def dynamic_quantize_linears(model: nn.Module, names=None) -> nn.Module:
    """PyTorch's dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``) on a CPU copy.

    ``names``: the qualified names of the ``nn.Linear`` layers to quantize; None quantizes every
    ``nn.Linear`` (including ``lm_head``, as the plain call does). Weights become int8 (one scale
    per tensor); each input is quantized on the fly with one scale per input tensor. The
    caller's model is not modified.
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    if names is None:
        spec = {nn.Linear}
    else:
        names = list(names)
        if not names:
            raise ValueError("names is empty: give the qualified names of the nn.Linear layers, or None for all.")
        for name in names:
            if not isinstance(model.get_submodule(name), nn.Linear):
                raise ValueError(f"{name} is a {type(model.get_submodule(name)).__name__}, not an nn.Linear.")
        spec = {name: default_dynamic_qconfig for name in names}
    return quantize_dynamic(copy.deepcopy(model).cpu().eval(), spec, dtype=torch.qint8, inplace=True)


def dynamic_family_perplexity(model: nn.Module, families: dict[str, tuple[str, ...]], blocks: torch.Tensor,
                              batch_size: int = 8) -> dict[str, float]:
    """Perplexity on ``blocks`` with dynamic int8 applied to one family of layers at a time.

    ``families`` maps a label to name fragments, e.g. ``{"MLP down": ("down_proj",)}``: the
    family is every linear layer (outside ``lm_head``) whose name contains one of them. Each
    family is quantized on its own copy (:func:`dynamic_quantize_linears`). Returns
    ``{label: perplexity}``.
    """
    result = {}
    for label, parts in families.items():
        chosen = [n for n in linear_layers(model) if any(p in n for p in parts)]
        if not chosen:
            raise ValueError(f"family {label!r}: no linear layer name contains any of {parts}.")
        quantized = dynamic_quantize_linears(model, chosen)
        result[label] = perplexity(quantized, blocks, batch_size=batch_size, progress=False)
        del quantized
    return result


# --------------------------------------------------------------------------- PyTorch static PTQ


class StaticQuantLinear(nn.Sequential):
    """``QuantStub -> Linear -> DeQuantStub``: a float Linear that PyTorch's eager static
    post-training quantization can convert to an int8 ``quantized.Linear`` (activations and weights
    int8, activation scale fixed from calibration)."""

    def __init__(self, linear: nn.Linear):
        from torch.ao.quantization import DeQuantStub, QuantStub

        if not isinstance(linear, nn.Linear):
            raise ValueError(f"StaticQuantLinear wraps an nn.Linear, got {type(linear).__name__}.")
        super().__init__(QuantStub(), linear, DeQuantStub())


def static_quantize_linears(model: nn.Module, names, calibration_blocks: torch.Tensor | None,
                            backend: str = "x86", batch_size: int = 8, progress: bool = True) -> nn.Module:
    """Eager-mode static post-training quantization of the named ``nn.Linear`` layers, on a copy.

    The three steps, each once: **prepare** (wrap each layer in :class:`StaticQuantLinear`, attach
    ``get_default_qconfig(backend)``: observers record activation ranges), **calibrate** (run the
    copy on ``calibration_blocks``), **convert** (replace observed layers by int8 kernels).
    ``calibration_blocks=None`` skips calibration, as the source article's code does: the
    observers have then seen nothing and the activation scales are meaningless (shown, not advised).
    The caller's model is not modified. CPU only (the x86/fbgemm or qnnpack kernels).
    """
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    names = list(names)
    if not names:
        raise ValueError("names is empty: give the qualified names of the nn.Linear layers to quantize.")
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"Quantized backend {backend!r} is not available here; "
                         f"supported: {torch.backends.quantized.supported_engines}.")
    qmodel = copy.deepcopy(model).cpu().eval()
    torch.backends.quantized.engine = backend
    for name in names:
        layer = qmodel.get_submodule(name)
        wrapped = StaticQuantLinear(layer)
        wrapped.qconfig = get_default_qconfig(backend)
        qmodel.set_submodule(name, wrapped)
    prepare(qmodel, inplace=True)  # 1. prepare: observers, once
    with torch.no_grad():  # 2. calibrate on real text
        starts = range(0, 0 if calibration_blocks is None else len(calibration_blocks), batch_size)
        for start in tqdm(starts, desc="calibrating", disable=not progress or len(starts) < 2, leave=False):
            qmodel(input_ids=calibration_blocks[start:start + batch_size])
    convert(qmodel, inplace=True)  # 3. convert: int8 weights and kernels
    return qmodel


# --------------------------------------------------------------------------- claim helpers


def ordering_verdict(lower: str, higher: str, *measurements: dict):
    """Is ``lower``'s value below ``higher``'s in **every** measurement (e.g. perplexities on two
    different sets of blocks)? True if it is in all, False if ``higher``'s is below in all,
    otherwise (they disagree, or tie) :data:`course_lib.claims.INCONCLUSIVE`.
    """
    from .claims import INCONCLUSIVE

    if not measurements:
        raise ValueError("give at least one measurement: a dict of values by name.")
    for m in measurements:
        missing = [k for k in (lower, higher) if k not in m]
        if missing:
            raise ValueError(f"{missing} missing from a measurement with keys {list(m)}.")
    if all(m[lower] < m[higher] for m in measurements):
        return True
    if all(m[higher] < m[lower] for m in measurements):
        return False
    return INCONCLUSIVE


# --------------------------------------------------------------------------- pictures


def plot_weight_histogram(w: torch.Tensor, w_hat: torch.Tensor | None = None, ax=None, bins: int = 200,
                          title: str = ""):
    """Histogram of ``w`` (and of ``w_hat`` on top, when given), log-scaled counts. Returns the axes."""
    import matplotlib.pyplot as plt

    _check_float(w)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    values = w.detach().float().reshape(-1).numpy()
    low, high = values.min(), values.max()
    ax.hist(values, bins=bins, range=(low, high), color="#4c72b0", alpha=0.6, label="original")
    if w_hat is not None:
        ax.hist(w_hat.detach().float().reshape(-1).numpy(), bins=bins, range=(low, high), color="#dd8452",
                alpha=0.8, histtype="step", lw=1.2, label="quantized")
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return ax


def plot_ladder(table, baseline_perplexity: float, ax=None):
    """Perplexity against bits, one line per granularity, the float32 baseline dashed. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for granularity, group in table.groupby("granularity", sort=False):
        group = group.sort_values("bits")
        ax.plot(group["bits"], group["perplexity"], marker="o", label=granularity)
    ax.axhline(baseline_perplexity, color="grey", ls="--", label=f"float32 ({baseline_perplexity:.1f})")
    ax.set_yscale("log")
    ax.set_xticks(sorted(table["bits"].unique()))
    ax.set_xlabel("bits per weight (round to nearest, symmetric)")
    ax.set_ylabel("validation perplexity (log)")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def quantization_explorer(weight: torch.Tensor, bits: int = 4, group_size: int = 128, title: str = ""):
    """An ipywidgets explorer: sliders for bits and group size redraw the weight histogram and the error.

    Group size 0 means one scale per output channel (row). The first view is drawn when the
    function runs, so it also works without a live kernel. Returns the widget (display it); its
    ``view`` attribute holds the bits, group size, error and title of the picture shown.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    _check_float(weight)
    _check_bits(bits)
    w = weight.detach().float()
    sizes = [s for s in (16, 32, 64, 128, 256, 512) if w.shape[-1] % s == 0]
    options = [("per channel", 0)] + [(str(s), s) for s in sizes]
    if group_size not in sizes:
        group_size = 0
    bits_slider = widgets.IntSlider(value=bits, min=INT_BITS.start, max=INT_BITS.stop - 1, description="bits")
    group_slider = widgets.SelectionSlider(options=options, value=group_size, description="group size")
    out = widgets.Output()
    box = widgets.VBox([widgets.HBox([bits_slider, group_slider]), out])

    def redraw(*_):
        from IPython.display import display

        b, g = bits_slider.value, group_slider.value
        w_hat = fake_quantize(w, b, "channel") if g == 0 else fake_quantize(w, b, "group", g)
        err = quantization_error(w, w_hat)
        label = "per channel" if g == 0 else f"group {g}"
        fig, ax = plt.subplots(figsize=(8, 3))
        plot_weight_histogram(w, w_hat, ax=ax, title=f"{title} {b} bits, {label}: relative error "
                                                     f"{err['relative']:.3%}, SQNR {err['sqnr_db']:.1f} dB")
        box.view = {"bits": b, "group_size": g, "error": err, "title": ax.get_title()}
        out.clear_output(wait=True)
        with out:
            display(fig)
        plt.close(fig)

    bits_slider.observe(redraw, names="value")
    group_slider.observe(redraw, names="value")
    redraw()
    return box
