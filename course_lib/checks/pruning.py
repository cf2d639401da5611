"""Checkers for chapter 02 (pruning).

Each checker runs the learner's function and the reference on several cases, verifies the
sparsity exactly, compares masks entry by entry, and recognises the usual mistakes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import linear_weight
from ..pruning import layer_sparsity, magnitude_mask, nm_mask, prunable_layers, score_mask
from . import Case, CheckResult, check_function

__all__ = ["reference_magnitude_mask", "check_magnitude_mask", "reference_wanda_score", "check_wanda_score",
           "reference_nm_mask", "check_nm_mask", "reference_prune_linear_layers", "check_prune_linear_layers"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- magnitude mask


def reference_magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask (True = keep) pruning exactly ``round(sparsity * numel)`` smallest ``|W|``."""
    return magnitude_mask(weight, sparsity, scope="layer")


def _magnitude_cases() -> list[Case]:
    return [Case((torch.randn(8, 12, generator=_gen(0)), 0.5), label="8x12 weight, 50 %"),
            Case((torch.randn(6, 5, generator=_gen(1)), 0.25), label="6x5 weight, 25 % (round(7.5) = 8)"),
            Case((torch.randn(4, 16, generator=_gen(2)) - 1.0, 0.7), label="mostly negative weights, 70 %"),
            Case((torch.randn(3, 4, generator=_gen(3)), 0.0), label="sparsity 0: keep everything")]


def _diagnose_mask_common(got, expected) -> str | None:
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == torch.bool:
        if torch.equal(got, ~expected):
            return "your mask is inverted: True must mean *keep* the weight, False prune it."
        if int((~got).sum()) != int((~expected).sum()):
            return (f"you pruned {int((~got).sum())} weights; this case needs exactly "
                    f"{int((~expected).sum())}.")
    if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
        return ("return a boolean tensor (e.g. scores > threshold, or a torch.ones(..., dtype=torch.bool, "
                "device=weight.device) you edit).")
    return None


def _diagnose_magnitude(got, expected, case: Case) -> str | None:
    weight, sparsity = case.args
    hint = _diagnose_mask_common(got, expected)
    if hint and isinstance(got, torch.Tensor) and int((~got).sum()) != int((~expected).sum()):
        return hint + " Prune round(sparsity * weight.numel()) weights, the rule torch.nn.utils.prune uses."
    if hint:
        return hint
    if isinstance(got, torch.Tensor) and torch.equal(got, score_mask(weight, sparsity)):
        return "rank the weights by magnitude, weight.abs(): a large negative weight matters as much as a large positive one."
    if isinstance(got, torch.Tensor) and torch.equal(got, magnitude_mask(weight, sparsity, scope="row")):
        return "you pruned the same number in every row; this exercise ranks all weights of the layer together."
    return None


def check_magnitude_mask(fn) -> CheckResult:
    """Check ``fn(weight [out, in], sparsity) -> bool keep-mask`` (whole-layer magnitude pruning)."""
    return check_function(fn, reference_magnitude_mask, _magnitude_cases(), name="magnitude_mask",
                          diagnose=_diagnose_magnitude)


# --------------------------------------------------------------------------- Wanda score


def reference_wanda_score(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| * ||X_j||_2`` with ``X`` the ``[tokens, in_features]`` inputs of the layer."""
    return weight.abs() * inputs.norm(p=2, dim=0)[None, :]


def _wanda_cases() -> list[Case]:
    scale = torch.tensor([0.1, 1.0, 10.0, 1.0, 100.0, 0.5])
    return [Case((torch.randn(4, 6, generator=_gen(10)), torch.randn(10, 6, generator=_gen(11)) * scale),
                 label="4x6 weight, 10 tokens with features of very different scales"),
            Case((torch.randn(3, 3, generator=_gen(12)), torch.randn(5, 3, generator=_gen(13)) * torch.tensor([1.0, 5.0, 0.2])),
                 label="square 3x3 weight (rows and columns are easy to mix up)"),
            Case((torch.randn(5, 8, generator=_gen(14)) - 0.5, torch.randn(7, 8, generator=_gen(15))),
                 label="5x8 weight, mostly negative")]


def _diagnose_wanda(got, expected, case: Case) -> str | None:
    weight, inputs = case.args
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return "the score has the weight's shape [out, in]: multiply |W| by one norm per input column."
    candidates = {
        "take |W| (weight.abs()): Wanda scores magnitudes.": weight * inputs.norm(dim=0)[None, :],
        "the norm runs over tokens (dim=0 of X), giving one value per input feature, and multiplies "
        "the columns: norms[None, :], not norms[:, None].": weight.abs() * inputs.norm(dim=0)[:, None]
        if weight.shape[0] == weight.shape[1] else None,
        "use the L2 norm sqrt(sum of squares) of each input feature, not its square.": weight.abs() * inputs.pow(2).sum(0)[None, :],
        "use the L2 norm over tokens, not the mean absolute value.": weight.abs() * inputs.abs().mean(0)[None, :],
        "use the L2 norm over tokens (sqrt of the sum of squares), not the root-mean-square.":
            weight.abs() * inputs.pow(2).mean(0).sqrt()[None, :],
        "the score also needs the input norms: |W_ij| * ||X_j||_2, not |W| alone.": weight.abs(),
    }
    for hint, value in candidates.items():
        if value is not None and torch.allclose(got.float(), value.float(), rtol=1e-4, atol=1e-6):
            return hint
    return None


def check_wanda_score(fn) -> CheckResult:
    """Check ``fn(weight [out, in], inputs [tokens, in]) -> scores [out, in]``."""
    return check_function(fn, reference_wanda_score, _wanda_cases(), name="wanda_score",
                          diagnose=_diagnose_wanda)


# --------------------------------------------------------------------------- N:M mask


def reference_nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores kept in every ``m`` consecutive inputs of each row."""
    return nm_mask(scores, n, m)


def _nm_cases() -> list[Case]:
    return [Case((torch.rand(4, 8, generator=_gen(20)), 2, 4), label="2:4 on a 4x8 score"),
            Case((torch.rand(3, 16, generator=_gen(21)), 4, 8), label="4:8 on a 3x16 score"),
            Case((torch.rand(8, 8, generator=_gen(22)), 2, 4), label="2:4 on a square 8x8 score"),
            Case((torch.rand(2, 12, generator=_gen(23)), 1, 4), label="1:4 on a 2x12 score")]


def _diagnose_nm(got, expected, case: Case) -> str | None:
    scores, n, m = case.args
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(got, nm_mask(-scores, n, m)):
        return "keep the N *highest* scores of each group (torch.topk(..., largest=True)); True means keep."
    hint = _diagnose_mask_common(got, expected)
    if hint:
        return hint
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return None
    if scores.shape[0] % m == 0 and torch.equal(got, nm_mask(scores.T.contiguous(), n, m).T):
        return "the groups of M run along each row (consecutive input features), not down the columns."
    per_group = got.reshape(scores.shape[0], -1, m).sum(-1)
    if not (per_group == n).all():
        return f"every group of {m} consecutive weights in a row must keep exactly {n}."
    return None


def check_nm_mask(fn) -> CheckResult:
    """Check ``fn(scores [out, in], n, m) -> bool keep-mask`` with N kept of every M."""
    return check_function(fn, reference_nm_mask, _nm_cases(), name="nm_mask", diagnose=_diagnose_nm)


# --------------------------------------------------------------------------- torch.nn.utils.prune


def reference_prune_linear_layers(model: nn.Module, amount: float) -> nn.Module:
    """``prune.l1_unstructured`` on every linear layer but ``lm_head``, then ``prune.remove``; the
    same model object is returned."""
    from torch.nn.utils import prune

    for module in prunable_layers(model).values():
        prune.l1_unstructured(module, name="weight", amount=amount)
        prune.remove(module, "weight")
    return model


def _prune_cases() -> list[Case]:
    from ..tiny_models import tiny_gpt2, tiny_llama

    return [Case((tiny_llama(vocab_size=300), 0.3), label="tiny Llama, 30 %"),
            Case((tiny_gpt2(vocab_size=300), 0.5), label="tiny GPT-2 (Conv1D layers), 50 %"),
            Case((tiny_llama(vocab_size=300, seed=1), 0.8), label="tiny Llama, 80 %")]


def _compare_models(got, expected) -> str | None:
    if not isinstance(got, nn.Module) or not hasattr(got, "config"):
        return f"expected the whole model back, got {type(got).__name__}"
    leftovers = [n for n, _ in got.named_parameters() if n.endswith("weight_orig")]
    if leftovers:
        return f"{len(leftovers)} layers still hold weight_orig (e.g. {leftovers[0]})"
    got_state, exp_state = got.state_dict(), expected.state_dict()
    if set(got_state) != set(exp_state):
        return "the model's parameter names changed"
    for name, value in exp_state.items():
        if not torch.equal((got_state[name] == 0), (value == 0)):
            return f"the zeros of {name} differ from the reference"
        if not torch.allclose(got_state[name], value):
            return f"the values of {name} differ from the reference"
    return None


def _zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def _diagnose_layers(got: nn.Module, expected: nn.Module, original: nn.Module, amount: float) -> str | None:
    """Which layers the learner pruned, how much, and which weights, against the reference."""
    mine, ref = layer_sparsity(got), layer_sparsity(expected)
    untouched = [n for n in ref if mine[n] < 0.5 * ref[n]]
    if untouched and len(untouched) < len(ref):
        return (f"{len(untouched)} of {len(ref)} layers were not pruned (e.g. {untouched[0]}). GPT-2's layers "
                "are transformers' Conv1D, not nn.Linear: loop over prunable_layers(model).values().")
    if untouched:
        return "no layer was pruned: prune each layer's 'weight' with prune.l1_unstructured."
    if all(abs(mine[n] - (1 - amount)) < 0.02 for n in ref) and abs(amount - 0.5) > 0.02:
        return "you pruned 1 - amount of each layer: amount is the fraction to *remove*."
    if any(abs(mine[n] - ref[n]) > 1e-9 for n in ref):  # each layer loses exactly round(amount * n)
        return ("the layers lost different fractions of their weights: prune each layer by `amount` on its "
                "own (l1_unstructured per module), not all layers ranked together (global_unstructured).")
    got_modules, before = dict(got.named_modules()), dict(original.named_modules())
    for n in ref:
        w0, kept = linear_weight(before[n]).detach().abs(), linear_weight(got_modules[n]).detach() != 0
        if (~kept).any() and kept.any() and w0[~kept].max() > w0[kept].min():
            return "the zeros are not the smallest weights: use prune.l1_unstructured (by |w|), not random_unstructured."
    return None


def _diagnose_prune(got, expected, case: Case) -> str | None:
    if isinstance(got, nn.Module) and not hasattr(got, "config"):
        return ("prune.l1_unstructured(module, ...) prunes *one* module and returns that module. The "
                "source article's `model = prune.l1_unstructured(...)` replaces the model by one layer: "
                "loop over the layers, prune each, and return the model.")
    if got is None:
        return "return the model at the end."
    if not isinstance(got, nn.Module):
        return None
    if any(n.endswith("weight_orig") for n, _ in got.named_parameters()):
        return "call prune.remove(module, 'weight') after pruning, to make the zeros permanent."
    # the tied embedding may hold zeros of its own (a padding row): compare with the reference's
    if _zeros(got.get_output_embeddings().weight) > _zeros(expected.get_output_embeddings().weight):
        return ("leave lm_head out: it is tied to the input embedding, so pruning it prunes "
                "the embedding too. course_lib.pruning.prunable_layers(model) lists the right layers.")
    return _diagnose_layers(got, expected, case.args[0], case.args[1])


def check_prune_linear_layers(fn) -> CheckResult:
    """Check ``fn(model, amount) -> model`` that prunes every linear layer but ``lm_head`` with
    ``torch.nn.utils.prune.l1_unstructured`` and makes it permanent."""
    return check_function(fn, reference_prune_linear_layers, _prune_cases(), name="prune_linear_layers",
                          diagnose=_diagnose_prune, compare=_compare_models)
