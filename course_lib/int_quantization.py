"""Integer grids: a weight stored as an integer code plus a floating scale (and zero point).

* symmetric (absmax): ``scale = max|w| / qmax`` with ``qmax = 2**(bits-1) - 1``,
  ``q = clamp(round(w / scale), -qmax, qmax)``, ``w_hat = q * scale``; zero is exact and the
  grid is symmetric (``-qmax .. qmax``; the code ``-2**(bits-1)`` is left unused);
* asymmetric (zero point): ``scale = (max - min) / (2**bits - 1)`` (with ``min <= 0 <= max``),
  ``zero_point = round(-min / scale)``, ``q = clamp(round(w / scale) + zero_point, 0, 2**bits - 1)``,
  ``w_hat = (q - zero_point) * scale``.

Rounding is ``torch.round`` (round half to even). One scale per tensor, per output channel (row
of the ``[out, in]`` weight) or per group of ``group_size`` consecutive inputs of a row:
:func:`fake_quantize` does all three. The input checks (:func:`check_float`, :func:`check_bits`,
:func:`check_group`) are public because GPTQ and the code books validate the same way.
Nothing here modifies the caller's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["INT_BITS", "GRANULARITIES", "check_float", "check_bits", "check_group", "int_range", "Grid",
           "make_grid", "absmax_quantize", "absmax_dequantize", "zero_point_quantize", "zero_point_dequantize",
           "fake_quantize", "quantization_error", "layer_error_table"]

INT_BITS = range(2, 9)  # integer grids this module supports: 2 to 8 bits
GRANULARITIES = ("tensor", "channel", "group")


def check_float(w, what: str = "weight") -> None:
    """Raise ValueError unless ``w`` is a non-empty floating-point tensor."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(w).__name__}.")
    if not w.is_floating_point():
        raise ValueError(f"{what} must be a floating-point tensor (float32/float16/bfloat16), got {w.dtype}; "
                         "convert it with .float() first.")
    if w.numel() == 0:
        raise ValueError(f"{what} is empty.")


def check_bits(bits) -> None:
    """Raise ValueError unless ``bits`` is an int from 2 to 8."""
    if not isinstance(bits, int) or bits not in INT_BITS:
        raise ValueError(f"bits must be an integer from {INT_BITS.start} to {INT_BITS.stop - 1}, got {bits!r}.")


def check_group(size: int, group_size, what: str = "group_size") -> None:
    """Raise ValueError unless ``group_size`` is a positive int (not a bool) that divides ``size``."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{what} must be a positive integer, got {group_size!r}.")
    if size % group_size:
        raise ValueError(f"{what}={group_size} does not divide the dimension of size {size}; "
                         f"choose a divisor of {size} (e.g. 32, 64 or 128 when they divide it).")


def int_range(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """``(qmin, qmax)``: ``(-(2**(bits-1) - 1), 2**(bits-1) - 1)`` symmetric, ``(0, 2**bits - 1)`` asymmetric."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


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
    check_float(w)
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
    check_float(w)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    rows = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w.reshape(1, -1)
    if granularity == "tensor":
        grid = make_grid(rows, bits, symmetric, dim=None)
    elif granularity == "channel":
        grid = make_grid(rows, bits, symmetric, dim=1)
    else:
        check_group(rows.shape[1], group_size)
        rows = rows.reshape(-1, group_size)
        grid = make_grid(rows, bits, symmetric, dim=1)
    return grid.fake_quantize(rows).reshape(w.shape)


def quantization_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict:
    """``mse = mean((w - w_hat)**2)``, ``relative = ||w - w_hat|| / ||w||`` (Frobenius), ``max_abs``,
    and ``sqnr_db = 10 log10(sum w**2 / sum (w - w_hat)**2)`` (signal-to-quantization-noise ratio)."""
    check_float(w)
    check_float(w_hat, "w_hat")
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

