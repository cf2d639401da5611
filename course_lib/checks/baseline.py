"""Checkers for chapter 00 (baseline and metrics)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import Case, CheckResult, check_function

__all__ = ["reference_perplexity_from_logits", "check_perplexity_from_logits",
           "reference_count_unique_parameters", "check_count_unique_parameters"]


def reference_perplexity_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """PPL = exp(mean over positions t of -log softmax(logits[:, t])[input_ids[:, t + 1]])."""
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                          input_ids[:, 1:].reshape(-1))
    return math.exp(nll.item())


def _perplexity_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for b, t, v, label in [(2, 6, 11, "random logits, batch 2"), (1, 9, 7, "random logits, batch 1"),
                           (3, 5, 50, "random logits, vocabulary 50")]:
        logits = torch.randn(b, t, v, generator=gen) * 2
        ids = torch.randint(0, v, (b, t), generator=gen)
        cases.append(Case((logits, ids), label=label))
    cases.append(Case((torch.zeros(2, 4, 13), torch.randint(0, 13, (2, 4), generator=gen)),
                      label="uniform logits (perplexity must equal the vocabulary size, 13)"))
    # rows of very different difficulty: a mean of per-row perplexities is far from the right value
    sharp = torch.randn(2, 7, 9, generator=gen)
    sharp[0] *= 8
    cases.append(Case((sharp, torch.randint(0, 9, (2, 7), generator=gen)),
                      label="two rows of very different difficulty"))
    return cases


def _diagnose_perplexity(got, expected, case: Case) -> str | None:
    logits, ids = case.args
    got = float(got)
    unshifted = math.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), ids.reshape(-1)).item())
    mean_nll = math.log(expected)
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1),
                              reduction="none")
    if math.isclose(got, unshifted, rel_tol=1e-4):
        return ("the logits at position t predict token t+1: compare logits[:, :-1] with "
                "input_ids[:, 1:] (you compared each position with its own token).")
    if math.isclose(got, mean_nll, rel_tol=1e-4):
        return "that is the mean negative log-likelihood; perplexity is its exponential."
    if math.isclose(got, math.exp(shifted.sum().item()), rel_tol=1e-4) or math.isclose(
            got, shifted.sum().item(), rel_tol=1e-4):
        return "average the negative log-likelihoods over all predicted tokens before taking exp."
    per_row = shifted.view(logits.shape[0], -1).mean(dim=1)
    if logits.shape[0] > 1 and math.isclose(got, per_row.exp().mean().item(), rel_tol=1e-4):
        return ("you averaged one perplexity per row; average the log-likelihoods of all predicted tokens "
                "first, then take exp once.")
    if logits.shape[0] > 1 and math.isclose(got, per_row[0].exp().item(), rel_tol=1e-4):
        return "you scored only the first row of the batch; use every row."
    wrong_dim = -F.log_softmax(logits[:, :-1].double(), dim=1).gather(-1, ids[:, 1:, None]).mean()
    if math.isclose(got, math.exp(wrong_dim.item()), rel_tol=1e-4):
        return "take the softmax over the vocabulary, the last dimension (dim=-1), not over positions."
    if math.isclose(got, 2 ** mean_nll, rel_tol=1e-4):
        return "use the natural exponential, math.exp or torch.exp, matching the natural log in cross-entropy."
    return ("perplexity = exp(mean of -log p(next token)); take log_softmax over the vocabulary "
            "(last) dimension.")


def check_perplexity_from_logits(fn) -> CheckResult:
    """Check ``fn(logits [batch, seq, vocab], input_ids [batch, seq]) -> float`` perplexity."""
    return check_function(fn, reference_perplexity_from_logits, _perplexity_cases(),
                          name="perplexity_from_logits", diagnose=_diagnose_perplexity)


def reference_count_unique_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once each, even when two modules share one tensor (tied embeddings)."""
    seen, total = set(), 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _count_cases() -> list[Case]:
    from ..tiny_models import tiny_gpt2, tiny_llama

    frozen = tiny_llama(vocab_size=200, tie_embeddings=True, seed=1)
    frozen.model.layers[0].mlp.requires_grad_(False)  # as when only some layers train
    return [Case((tiny_llama(vocab_size=300, tie_embeddings=True),), label="tiny Llama with tied embeddings"),
            Case((tiny_llama(vocab_size=300, tie_embeddings=False),), label="tiny Llama, untied"),
            Case((tiny_gpt2(vocab_size=300),), label="tiny GPT-2 (tied)"),
            Case((frozen,), label="tiny Llama with a frozen MLP (requires_grad=False)")]


def _diagnose_count(got, expected, case: Case) -> str | None:
    model = case.args[0]
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    embed = model.get_input_embeddings().weight.numel()
    if got == with_duplicates and with_duplicates != expected:
        return ("you counted the tied embedding twice: the input embedding and lm_head are the same "
                "tensor. Count each distinct tensor once (compare id(p) or use model.parameters()).")
    if got == expected - embed:
        return "you left out the embedding matrix; it is a parameter too."
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if got == trainable and trainable != expected:
        return "you counted only trainable parameters (requires_grad); a frozen weight is still stored: count it."
    return None


def check_count_unique_parameters(fn) -> CheckResult:
    """Check ``fn(model) -> int``: the number of distinct parameters."""
    return check_function(fn, reference_count_unique_parameters, _count_cases(),
                          name="count_unique_parameters", diagnose=_diagnose_count)
