"""Checkers for chapter 03 (quantization)."""

from __future__ import annotations

import torch

from ..code_books import fake_quantize_code_book, nf4_code_book
from ..int_quantization import absmax_dequantize, absmax_quantize, fake_quantize
from . import Case, CheckResult, check_function, compare_values

__all__ = ["reference_absmax_quantize", "check_absmax_quantize", "reference_absmax_dequantize",
           "check_absmax_dequantize", "reference_groupwise_fake_quantize", "check_groupwise_fake_quantize",
           "reference_nf4_code_book", "check_nf4_code_book", "reference_blockwise_code_book_quantize",
           "check_blockwise_code_book_quantize"]


def _weights(seed: int, shape, outlier: float | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=gen) * 0.05
    if outlier is not None:
        w.view(-1)[3] = outlier
    return w


# --------------------------------------------------------------------------- exercise 1: absmax


def reference_absmax_quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale for the whole tensor: ``scale = max|w| / (2**(bits-1) - 1)``, ``q = round(w / scale)`` as int8."""
    q, scale = absmax_quantize(w, bits)
    return q, scale.reshape(())


def _absmax_cases() -> list[Case]:
    return [Case((_weights(0, (8, 16)), 8), label="8 bits, random 8x16 weights"),
            Case((_weights(1, (4, 32)), 4), label="4 bits"),
            Case((_weights(2, (6, 10), outlier=-0.9), 3), label="3 bits, with a negative outlier"),
            Case((_weights(3, (64,)), 8), label="8 bits, a 1-D tensor"),
            Case((torch.tensor([7.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.4, -3.6]), 4),
                 label="4 bits, scale 1, exact halves (torch.round rounds a tie to the even integer)")]


def _compare_quantized(got, expected) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (q, scale), got {type(got).__name__}"
    q, scale = got
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        return f"q must be a torch.int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}"
    if q.shape != expected[0].shape:
        return f"q must keep the weight's shape {tuple(expected[0].shape)}, got {tuple(q.shape)}"
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.numel() != 1:
        return f"expected one scale for the whole tensor, got {scale.numel()} values"
    if not torch.isclose(scale.reshape(()), expected[1].float(), rtol=1e-5):
        return f"scale should be {expected[1].item():.6g}, got {scale.item():.6g}"
    wrong = int((q != expected[0]).sum())
    return None if wrong == 0 else f"{wrong} of {q.numel()} codes differ"


def _diagnose_absmax(got, expected, case: Case) -> str | None:
    w, bits = case.args
    absmax, qmax = w.abs().max().item(), 2 ** (bits - 1) - 1
    scale = float(torch.as_tensor(got[1]).reshape(-1)[0])
    if abs(scale - absmax / qmax) <= 1e-6 * absmax:  # the scale is right: the codes are not
        if torch.equal(got[0].to(torch.int8), torch.trunc(w / scale).to(torch.int8)):
            return "round to the nearest integer with torch.round; .to(torch.int8) alone truncates toward zero."
        if torch.equal(got[0].to(torch.int8), torch.floor(w / scale + 0.5).to(torch.int8)):
            return ("an exact half must go to the even integer, as torch.round does (2.5 -> 2, -0.5 -> 0); "
                    "floor(x + 0.5) rounds every half up.")
        if torch.equal(got[0].to(torch.int8), torch.floor(w / scale).to(torch.int8)):
            return "torch.floor rounds down; round to the nearest integer with torch.round."
        return "q = torch.round(w / scale), then .to(torch.int8)."
    if abs(scale - absmax / (2 ** bits - 1)) < 1e-9 or abs(scale - absmax / 2 ** (bits - 1)) < 1e-9:
        return f"with {bits} bits the symmetric codes go from -{qmax} to {qmax}: divide max|w| by 2**(bits-1) - 1."
    if abs(scale - (w.max() - w.min()).item() / (2 ** bits - 1)) < 1e-9:
        return "that is the asymmetric (min/max) scale; absmax uses max(|w|) / (2**(bits-1) - 1)."
    if abs(scale - w.max().item() / qmax) < 1e-9:
        return "use the largest *magnitude*, w.abs().max(): a negative outlier can be the largest."
    return f"scale = w.abs().max() / (2**(bits-1) - 1) = {absmax / qmax:.6g} for this case."


def check_absmax_quantize(fn) -> CheckResult:
    """Check ``fn(w, bits) -> (q as torch.int8, scale)``: symmetric per-tensor quantization."""
    return check_function(fn, reference_absmax_quantize, _absmax_cases(), name="absmax_quantize",
                          diagnose=_diagnose_absmax, compare=_compare_quantized)


def reference_absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``w_hat = q * scale`` as float32."""
    return absmax_dequantize(q, scale)


def _dequantize_cases() -> list[Case]:
    cases = []
    for seed, (shape, bits) in enumerate([((8, 16), 8), ((4, 32), 4), ((30,), 3)]):
        q, scale = reference_absmax_quantize(_weights(seed, shape), bits)
        cases.append(Case((q, scale), label=f"{bits}-bit codes of shape {shape}"))
    return cases


def _diagnose_dequantize(got, expected, case: Case) -> str | None:
    q, scale = case.args
    if isinstance(got, torch.Tensor) and not got.is_floating_point():
        return "convert the int8 codes to float (q.float()) before multiplying, or the result stays integer."
    if isinstance(got, torch.Tensor) and torch.allclose(got.float(), q.float() / scale):
        return "dequantizing multiplies by the scale (quantizing divided by it)."
    return None


def check_absmax_dequantize(fn) -> CheckResult:
    """Check ``fn(q, scale) -> w_hat`` (float)."""
    return check_function(fn, reference_absmax_dequantize, _dequantize_cases(), name="absmax_dequantize",
                          diagnose=_diagnose_dequantize)


# --------------------------------------------------------------------------- exercise 2: group-wise


def reference_groupwise_fake_quantize(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric absmax round trip with one scale per ``group_size`` consecutive inputs of each row."""
    return fake_quantize(w, bits, "group", group_size)


def _group_cases() -> list[Case]:
    return [Case((_weights(10, (4, 16)), 4, 8), label="4x16 weight, 4 bits, groups of 8"),
            Case((_weights(11, (6, 64), outlier=1.5), 4, 32), label="an outlier in the first group"),
            Case((_weights(12, (3, 48)), 3, 16), label="3 bits, groups of 16"),
            Case((_weights(13, (8, 128)), 8, 64), label="8 bits, groups of 64"),
            Case((torch.tensor([[7.0, 0.5, 2.5, -1.5], [-0.7, 0.1, 0.25, -0.35]]), 4, 4),
                 label="exact halves, and rows whose groups need different scales")]


def _diagnose_group(got, expected, case: Case) -> str | None:
    w, bits, g = case.args
    if not isinstance(got, torch.Tensor) or got.shape != w.shape:
        return "return the dequantized weight with the same shape as w (reshape back at the end)."
    close = lambda other: torch.allclose(got.float(), other, atol=1e-6)  # noqa: E731
    if close(fake_quantize(w, bits, "channel")):
        return "that is one scale per row: split each row into groups of group_size (w.reshape(-1, group_size))."
    if close(fake_quantize(w, bits, "tensor")):
        return "that is one scale for the whole tensor: compute max|w| per group (amax(dim=-1, keepdim=True))."
    if w.shape[0] % g == 0 and close(fake_quantize(w.T.contiguous(), bits, "group", g).T):
        return "groups run along a row (consecutive inputs of one output), not down a column."
    if close(w):
        return "you returned the weight unchanged: round w / scale to integers, then multiply back."
    rows = w.reshape(-1, g)
    scale = rows.abs().amax(dim=1, keepdim=True) / (2 ** bits - 1)
    if close((torch.round(rows / scale) * scale).reshape(w.shape)):
        return f"symmetric {bits}-bit codes go up to 2**(bits-1) - 1 = {2 ** (bits - 1) - 1}, not 2**bits - 1."
    return "per group: scale = max|w_group| / (2**(bits-1) - 1); w_hat = round(w_group / scale) * scale."


def check_groupwise_fake_quantize(fn) -> CheckResult:
    """Check ``fn(w [out, in], bits, group_size) -> w_hat`` (group-wise absmax round trip)."""
    return check_function(fn, reference_groupwise_fake_quantize, _group_cases(), name="groupwise_fake_quantize",
                          diagnose=_diagnose_group, compare=lambda g, e: _compare_tensor(g, e, 1e-6))


def _compare_tensor(got, expected, atol: float) -> str | None:
    return compare_values(got, expected, atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------- exercise 3: NF4 code book


def reference_nf4_code_book() -> torch.Tensor:
    """The 16 NF4 values (QLoRA), sorted, in [-1, 1], with an exact zero."""
    return nf4_code_book()


def _diagnose_nf4(got, expected, case: Case) -> str | None:
    if not isinstance(got, torch.Tensor):
        return "return a torch.Tensor of 16 values."
    got = got.reshape(-1).double()
    if got.numel() != 16:
        if got.numel() in (17, 15):
            return "8 positive values, 7 negative values and one zero make 16 (drop the extra zero)."
        return f"NF4 has exactly 16 values (4 bits), you returned {got.numel()}."
    if not torch.all(got[1:] >= got[:-1]):
        return "sort the values (torch.sort) so that code[i] < code[i+1]."
    if got.abs().max() > 1.0001 or got.abs().max() < 0.9999:
        return "divide by the largest magnitude so that the code book spans [-1, 1]."
    if not torch.any(got == 0):
        return "NF4 has an exact zero: add 0 to the 8 positive and 7 negative quantiles."
    if torch.allclose(got, -got.flip(0), atol=1e-4):
        return "NF4 is not symmetric: 8 quantiles on the positive side (linspace(offset, 0.5, 9)[:-1]), " \
               "7 on the negative side (linspace(offset, 0.5, 8)[:-1])."
    return "positive side: torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1]) with offset 0.9677083."


def check_nf4_code_book(fn) -> CheckResult:
    """Check ``fn() -> tensor of the 16 NF4 values``."""
    return check_function(fn, reference_nf4_code_book, [Case(label="the NF4 code book")], name="nf4_code_book",
                          diagnose=_diagnose_nf4, compare=lambda g, e: _compare_tensor(g, e, 1e-4))


# --------------------------------------------------------------------------- exercise 4: mapping to a code book


def reference_blockwise_code_book_quantize(w: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flatten, cut into blocks, divide by each block's absmax, snap to the nearest code value, scale back."""
    return fake_quantize_code_book(w, code, block_size)


def _code_cases() -> list[Case]:
    nf4 = nf4_code_book()
    return [Case((_weights(20, (4, 32)), nf4, 16), label="NF4, blocks of 16"),
            Case((_weights(21, (8, 64), outlier=-2.0), nf4, 64), label="NF4, blocks of 64, with an outlier"),
            Case((_weights(22, (2, 48)), torch.linspace(-1, 1, 8), 32),
                 label="an 8-value evenly spaced code book, blocks of 32 crossing rows")]


def _diagnose_code(got, expected, case: Case) -> str | None:
    w, code, block = case.args
    if not isinstance(got, torch.Tensor) or got.shape != w.shape:
        return "return the dequantized weight with the same shape as w."
    close = lambda other: torch.allclose(got.float(), other, atol=1e-6)  # noqa: E731
    flat = w.reshape(-1, block)
    absmax = flat.abs().amax(dim=1, keepdim=True)
    nearest = code[(flat / absmax).unsqueeze(-1).sub(code).abs().argmin(-1)]
    if close(nearest.reshape(w.shape)):
        return "you returned code values in [-1, 1]: multiply them back by each block's absmax."
    per_row = w.abs().amax(dim=1, keepdim=True)
    if close((code[(w / per_row).unsqueeze(-1).sub(code).abs().argmin(-1)] * per_row)):
        return "one absmax per row is not block-wise: flatten w and cut it into blocks of block_size."
    return "per block: x = block / absmax, index = argmin over the code of |x - code|, w_hat = code[index] * absmax."


def check_blockwise_code_book_quantize(fn) -> CheckResult:
    """Check ``fn(w, code, block_size) -> w_hat`` (block-wise absmax, nearest code value)."""
    return check_function(fn, reference_blockwise_code_book_quantize, _code_cases(),
                          name="blockwise_code_book_quantize", diagnose=_diagnose_code,
                          compare=lambda g, e: _compare_tensor(g, e, 1e-6))
