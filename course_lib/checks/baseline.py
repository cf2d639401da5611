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

    return [Case((tiny_llama(vocab_size=300, tie_embeddings=True),), label="tiny Llama with tied embeddings"),
            Case((tiny_llama(vocab_size=300, tie_embeddings=False),), label="tiny Llama, untied"),
            Case((tiny_gpt2(vocab_size=300),), label="tiny GPT-2 (tied)")]


def _diagnose_count(got, expected, case: Case) -> str | None:
    model = case.args[0]
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    embed = model.get_input_embeddings().weight.numel()
    if got == with_duplicates and with_duplicates != expected:
        return ("you counted the tied embedding twice: the input embedding and lm_head are the same "
                "tensor. Count each distinct tensor once (compare id(p) or use model.parameters()).")
    if got == expected - embed:
        return "you left out the embedding matrix; it is a parameter too."
    return None


def check_count_unique_parameters(fn) -> CheckResult:
    """Check ``fn(model) -> int``: the number of distinct parameters."""
    return check_function(fn, reference_count_unique_parameters, _count_cases(),
                          name="count_unique_parameters", diagnose=_diagnose_count)
