"""4-bit code books (INT4, FP4, NF4), block-wise quantization to a code book, and double quantization.

A code book is 16 values in [-1, 1]; each block of ``block_size`` weights (bitsandbytes: 64, over
the flattened tensor) is divided by its absmax and every weight is replaced by the nearest code
value: INT4 (evenly spaced), FP4 (a tiny float: sign, 2 exponent bits, 1 mantissa bit) and NF4
(quantiles of a normal distribution, QLoRA). Double quantization stores the block scales
themselves in 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .int_quantization import check_bits, check_float, check_group, make_grid

__all__ = ["int4_code_book", "fp4_code_book", "nf4_code_book", "CODE_BOOKS", "check_code", "code_book_quantize",
           "code_book_dequantize", "fake_quantize_code_book", "double_quantize_scales",
           "double_quant_bits_per_parameter"]


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


def check_code(code) -> torch.Tensor:
    """A 1-D float code book of at least 2 values, sorted (float32); ValueError otherwise."""
    check_float(code, "code")
    if code.ndim != 1 or code.numel() < 2:
        raise ValueError(f"code must be a 1-D tensor of at least 2 values, got shape {tuple(code.shape)}.")
    return torch.sort(code.float()).values


def code_book_quantize(w: torch.Tensor, code: torch.Tensor, block_size: int = 64):
    """Block-wise absmax quantization to a code book (as bitsandbytes does for NF4/FP4).

    The flattened ``w`` is cut into blocks of ``block_size``; each block is divided by its
    ``absmax = max|w|`` and every value is replaced by the index of the nearest entry of the
    sorted ``code`` (an exact tie goes to the lower value, as in bitsandbytes). Returns ``(indices as torch.uint8, absmax per block as float32)``.
    """
    check_float(w)
    code = check_code(code)
    check_group(w.numel(), block_size, "block_size")
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
    code = check_code(code).to(idx.device)
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
    check_float(absmax, "absmax")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer (how many scales share one float32 scale, "
                         f"e.g. 256), got {block_size!r}.")
    check_bits(bits)
    flat = absmax.detach().float().reshape(-1)
    mean = flat.mean()
    pad = (-flat.numel()) % block_size
    centred = torch.cat([flat - mean, flat.new_zeros(pad)]).reshape(-1, block_size)
    grid = make_grid(centred, bits, symmetric=True, dim=1)
    restored = grid.fake_quantize(centred).reshape(-1)[: flat.numel()] + mean
    return restored.reshape(absmax.shape), bits + 32 / block_size



def double_quant_bits_per_parameter(bits: int = 4, block_size: int = 64, scale_bits: int = 8,
                                    block_size2: int = 256, scale2_bits: int = 32) -> float:
    """QLoRA's double quantization: ``bits + scale_bits / block_size + scale2_bits / (block_size * block_size2)``.

    With the defaults (NF4, block 64, 8-bit scales in blocks of 256): 4 + 0.125 + 0.002 = 4.127,
    against ``4 + 32/64 = 4.5`` bits with float32 scales.
    """
    if min(bits, block_size, scale_bits, block_size2, scale2_bits) <= 0:
        raise ValueError("bits, block sizes and scale bits must all be positive.")
    return bits + scale_bits / block_size + scale2_bits / (block_size * block_size2)


