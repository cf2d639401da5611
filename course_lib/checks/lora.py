"""Checkers for chapter 05 (LoRA and QLoRA)."""

from __future__ import annotations

import torch

from . import Case, CheckResult, check_function

__all__ = ["reference_lora_forward", "check_lora_forward", "reference_count_lora_parameters",
           "check_count_lora_parameters", "reference_merge_lora", "check_merge_lora"]


def _close(a, b) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- 1. forward


def reference_lora_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           alpha: float, r: int) -> torch.Tensor:
    """y = x W^T + (alpha / r) * x A^T B^T, with W [out, in], A [r, in], B [out, r]."""
    return x @ W.T + (alpha / r) * (x @ A.T) @ B.T


def _lora_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for batch, d_in, d_out, r, alpha, label in [(3, 8, 5, 2, 4.0, "x [3, 8], W [5, 8], r=2, alpha=4"),
                                                (2, 6, 6, 4, 16.0, "x [2, 6], W [6, 6], r=4, alpha=16"),
                                                (4, 10, 3, 1, 1.0, "x [4, 10], W [3, 10], r=1, alpha=1")]:
        x = torch.randn(batch, d_in, generator=gen)
        W = torch.randn(d_out, d_in, generator=gen)
        A = torch.randn(r, d_in, generator=gen)
        B = torch.randn(d_out, r, generator=gen)
        cases.append(Case((x, W, A, B, alpha, r), label=label))
    x = torch.randn(2, 3, 8, generator=gen)  # a batch of sequences: [batch, seq, in]
    cases.append(Case((x, torch.randn(5, 8, generator=gen), torch.randn(2, 8, generator=gen),
                       torch.randn(5, 2, generator=gen), 8.0, 2), label="x [2, 3, 8] (batch of sequences)"))
    return cases


def _diagnose_lora_forward(got, expected, case: Case) -> str | None:
    x, W, A, B, alpha, r = case.args
    base, update = x @ W.T, (x @ A.T) @ B.T
    if _close(got, base):
        return "you returned only the frozen layer x @ W.T; add the low-rank update (alpha / r) * x A^T B^T."
    if _close(got, base + update):
        return "the update is scaled by alpha / r; you left the scaling out."
    if _close(got, base + (r / alpha) * update):
        return "the scaling is alpha / r, not r / alpha."
    if _close(got, (alpha / r) * update):
        return "you returned only the update; the output is the frozen layer plus the update."
    return "y = x @ W.T + (alpha / r) * (x @ A.T) @ B.T, where A is [r, in] and B is [out, r]."


def check_lora_forward(fn) -> CheckResult:
    """Check ``fn(x, W, A, B, alpha, r) -> y``: a LoRA linear layer's forward pass (no bias)."""
    return check_function(fn, reference_lora_forward, _lora_cases(), name="lora_forward",
                          diagnose=_diagnose_lora_forward)


# --------------------------------------------------------------------------- 2. counting


def reference_count_lora_parameters(model: torch.nn.Module, r: int, targets: list[str]) -> int:
    """Sum of r * (in + out) over the linear layers whose last name part is in ``targets``."""
    from ..layers import is_linear, linear_weight

    total = 0
    for name, module in model.named_modules():
        if is_linear(module) and name.rsplit(".", 1)[-1] in targets:
            out_f, in_f = linear_weight(module).shape
            total += r * (in_f + out_f)
    return total


def _count_cases() -> list[Case]:
    from ..tiny_models import tiny_gpt2, tiny_llama

    llama = tiny_llama(vocab_size=300, hidden_size=32, intermediate_size=48, num_layers=2)
    gpt2 = tiny_gpt2(vocab_size=300, n_embd=32, n_layer=3)
    # The all-linear case comes first: there "only q_proj" and "only matrix A" give different counts.
    return [Case((llama, 2, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
                 label="tiny Llama, r=2, all linear layers but lm_head"),
            Case((llama, 8, ["q_proj", "v_proj"]), label="tiny Llama, r=8, q_proj and v_proj"),
            Case((gpt2, 4, ["c_attn"]), label="tiny GPT-2 (Conv1D layers), r=4, c_attn")]


def _layer_counts(model, r: int, keep) -> list[tuple[str, int, int]]:
    """``(name, out, in)`` of every linear layer whose name satisfies ``keep``."""
    from ..layers import is_linear, linear_weight

    return [(n, *linear_weight(m).shape) for n, m in model.named_modules() if is_linear(m) and keep(n)]


def _diagnose_count(got, expected, case: Case) -> str | None:
    """Recognise the mistakes learners make: counting W, one matrix, r * in * out, lm_head or every
    linear layer, one layer per kind instead of all of them, one target only, missing Conv1D."""
    model, r, targets = case.args
    short = lambda n: n.rsplit(".", 1)[-1]  # noqa: E731
    chosen = _layer_counts(model, r, lambda n: short(n) in targets)
    lora = lambda layers: sum(r * (i + o) for _, o, i in layers)  # noqa: E731
    if got == 0 and expected:
        return ("nothing was counted. GPT-2 stores its projections as transformers' Conv1D, not "
                "nn.Linear: course_lib.layers.is_linear(module) recognises both."
                if any(type(m).__name__ == "Conv1D" for m in model.modules()) else
                "nothing was counted: match a module when the last part of its name (after the last '.') is a target.")
    if got == sum(o * i for _, o, i in chosen):
        return "that is the size of the frozen weights W (out * in); LoRA trains A [r, in] and B [out, r]."
    if got in (sum(r * i for _, o, i in chosen), sum(r * o for _, o, i in chosen)):
        return "you counted one of the two matrices: A has r * in parameters and B has out * r."
    if got == sum(r * o * i for _, o, i in chosen):
        return "r * in * out multiplies the sizes; A [r, in] and B [out, r] add up: r * (in + out) per layer."
    if got == sum(r * r for _ in chosen):
        return "A is [r, in] and B is [out, r], not [r, r]: each adapted layer adds r * (in + out)."
    everything = _layer_counts(model, r, lambda n: True)
    if got == lora(everything):
        heads = [n for n, _, _ in everything if short(n) not in targets]
        return (f"you counted every linear layer, including {', '.join(heads[:3])}: count only those whose "
                f"name ends with one of {targets}" + (" (lm_head is never adapted here)." if "lm_head" in heads else "."))
    heads = _layer_counts(model, r, lambda n: short(n) == "lm_head")
    if heads and got == expected + lora(heads):
        return "you also counted lm_head, the output layer; it is not among the targets."
    one_each = {short(n): r * (i + o) for n, o, i in chosen}
    if got == sum(one_each.values()) and len(chosen) > len(one_each):
        return (f"that is one layer of each kind; every block has them: {len(chosen)} layers match "
                f"{targets} in this model. Sum over all of them.")
    if got in {lora([layer for layer in chosen if short(layer[0]) == t]) for t in targets} and len(targets) > 1:
        return f"you counted only one of the targets {targets}: a layer counts when its last name part is any of them."
    return None


def check_count_lora_parameters(fn) -> CheckResult:
    """Check ``fn(model, r, targets) -> int``: the parameters LoRA adds for that configuration."""
    return check_function(fn, reference_count_lora_parameters, _count_cases(), name="count_lora_parameters",
                          diagnose=_diagnose_count)


# --------------------------------------------------------------------------- 3. merging


def reference_merge_lora(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int) -> torch.Tensor:
    """W' = W + (alpha / r) * B @ A, the one weight that computes base plus update."""
    return W + (alpha / r) * (B @ A)


def _merge_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    cases = []
    for d_out, d_in, r, alpha in [(5, 8, 2, 4.0), (6, 3, 3, 6.0), (4, 4, 1, 32.0)]:
        cases.append(Case((torch.randn(d_out, d_in, generator=gen), torch.randn(r, d_in, generator=gen),
                           torch.randn(d_out, r, generator=gen), alpha, r),
                          label=f"W [{d_out}, {d_in}], r={r}, alpha={alpha:g}"))
    return cases


def _diagnose_merge(got, expected, case: Case) -> str | None:
    W, A, B, alpha, r = case.args
    if _close(got, W + B @ A):
        return "scale the product by alpha / r before adding it to W."
    if _close(got, W + (r / alpha) * (B @ A)):
        return "the scaling is alpha / r, not r / alpha."
    if _close(got, W):
        return "W did not change: add (alpha / r) * B @ A (and do not modify W in place before returning)."
    if _close(got, (alpha / r) * (B @ A)):
        return "that is the update alone; the merged weight is W plus the update."
    if W.shape[0] == W.shape[1] and _close(got, W + (alpha / r) * (B @ A).T):
        return "W is [out, in] and B @ A is [out, in] too: do not transpose the product."
    return "W' = W + (alpha / r) * B @ A (B is [out, r], A is [r, in])."


def check_merge_lora(fn) -> CheckResult:
    """Check ``fn(W, A, B, alpha, r) -> W'``: merging a LoRA update into the weight."""
    return check_function(fn, reference_merge_lora, _merge_cases(), name="merge_lora",
                          diagnose=_diagnose_merge)
