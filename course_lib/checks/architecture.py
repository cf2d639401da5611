"""Checkers for chapter 06 (structural redesign): a config's parameter count, Block Influence."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from . import Case, CheckResult, check_function

__all__ = ["reference_llama_parameter_count", "check_parameter_count", "reference_block_influence",
           "check_block_influence"]


def reference_llama_parameter_count(config) -> int:
    """Parameters of a Llama-style model from its config (no biases): see course_lib.architecture."""
    from ..architecture import parameter_breakdown

    return parameter_breakdown(config).total


def _llama(**changes):
    from transformers import LlamaConfig

    base = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True)
    return LlamaConfig(**{**base, **changes})


def _count_cases() -> list[Case]:
    return [
        Case((_llama(),), label="SmolLM2-135M's config (tied embeddings, 9 query / 3 key-value heads)"),
        Case((_llama(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, intermediate_size=344),), label="full multi-head attention (K = H)"),
        Case((_llama(vocab_size=500, hidden_size=96, num_hidden_layers=3, num_attention_heads=6,
                     num_key_value_heads=2, intermediate_size=256, tie_word_embeddings=False),),
             label="untied output layer"),
        Case((_llama(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=128, head_dim=32),),
             label="head_dim set explicitly (32, not hidden_size / heads = 16)"),
    ]


def _diagnose_count(got, expected, case: Case) -> str | None:
    c = case.args[0]
    d, L, V, f = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    H, K, h = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    tied = c.tie_word_embeddings
    if got == expected - V * d and tied:
        return "count the token embedding, V x d (vocab_size x hidden_size): with tied weights it is also the output layer."
    if got == expected + V * d and tied:
        return "the output layer is tied to the embedding (tie_word_embeddings=True): count that matrix once."
    if got == expected - V * d and not tied:
        return "with tie_word_embeddings=False the output layer lm_head is a second V x d matrix."
    if got == expected + L * 2 * d * (H - K) * h:
        return ("keys and values have num_key_value_heads heads (grouped-query attention), not "
                "num_attention_heads: k_proj and v_proj are d x (K * head_dim).")
    if got == expected - L * 2 * d - d or got == expected - L * 2 * d:
        return "count the RMSNorm weights: two of size d per layer, and a final one of size d."
    if got == expected - d:
        return "do not forget the final norm (model.norm), d parameters."
    if got == expected - L * d * f:
        return "a Llama MLP has three matrices: gate_proj, up_proj (d x f each) and down_proj (f x d)."
    if h != d // H:
        simple_h = d // H
        guess = expected - L * (2 * d * H * h + 2 * d * K * h) + L * (2 * d * H * simple_h + 2 * d * K * simple_h)
        if got == guess:
            return "use config.head_dim for the head size: here it is set explicitly and differs from hidden_size / heads."
    return "add up embedding V*d, per layer attention + MLP + 2 norms, the final norm, and lm_head if not tied."


def check_parameter_count(fn) -> CheckResult:
    """Check ``fn(config) -> int``: a Llama config's parameter count from the formula."""
    return check_function(fn, reference_llama_parameter_count, _count_cases(), name="llama_parameter_count",
                          diagnose=lambda got, expected, case: _diagnose_count(_as_int(got), expected, case),
                          compare=_exact_int)


def _as_int(got):
    """``got`` as a Python int where it is a whole number (NumPy and tensor integers too), else unchanged."""
    try:
        value = got.item() if isinstance(got, torch.Tensor) else got
        return int(value) if float(value).is_integer() else got
    except (TypeError, ValueError, RuntimeError):
        return got


def _exact_int(got, expected) -> str | None:
    """None if ``got`` is the whole number ``expected``: a Python or NumPy integer, a whole float,
    or a one-element tensor holding one; otherwise what is wrong."""
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return f"expected one whole number, got a tensor of shape {tuple(got.shape)}"
        got = got.item()
    if isinstance(got, bool) or not (isinstance(got, numbers.Integral)
                                     or (isinstance(got, numbers.Real) and float(got).is_integer())):
        return f"expected a whole number (int), got {got!r}"
    return None if int(got) == expected else f"expected {expected:,}, got {int(got):,} (off by {int(got) - expected:+,})"


def reference_block_influence(x_in: torch.Tensor, x_out: torch.Tensor) -> float:
    """BI = 1 - mean over tokens of cos(x_in, x_out), cosine along the last (hidden) dimension."""
    return 1.0 - F.cosine_similarity(x_in.double(), x_out.double(), dim=-1).mean().item()


def _influence_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=gen)
    small_change = x + 0.1 * torch.randn(2, 5, 8, generator=gen)
    return [
        Case((x, torch.randn(2, 5, 8, generator=gen)), label="random input and output [2, 5, 8]"),
        Case((x, small_change), label="a layer that changes its input a little"),
        Case((x, x * 3.0), label="output = 3 x input (same direction: BI must be 0)"),
        Case((x, -x), label="output = -input (opposite direction: BI must be 2)"),
        Case((torch.randn(1, 7, 16, generator=gen), torch.randn(1, 7, 16, generator=gen)), label="one sequence, hidden 16"),
    ]


def _diagnose_influence(got, expected, case: Case) -> str | None:
    x_in, x_out = case.args
    got = float(got)
    if math.isclose(got, 1 - expected, abs_tol=1e-6):
        return "that is the mean cosine similarity; Block Influence is 1 minus it."
    wrong_dim = 1 - F.cosine_similarity(x_in.double(), x_out.double(), dim=1).mean().item()
    if math.isclose(got, wrong_dim, abs_tol=1e-6):
        return "take the cosine along the hidden dimension (dim=-1), one value per token."
    dots = 1 - (x_in.double() * x_out.double()).sum(-1).mean().item()
    if math.isclose(got, dots, abs_tol=1e-6):
        return "normalise: cosine = dot product / (|x_in| * |x_out|)."
    return "BI = 1 - mean over all tokens of cos(x_in[token], x_out[token])."


def check_block_influence(fn) -> CheckResult:
    """Check ``fn(x_in, x_out) -> float`` for hidden states ``[batch, seq, hidden]``."""
    return check_function(fn, reference_block_influence, _influence_cases(), name="block_influence_of_layer",
                          diagnose=_diagnose_influence)
