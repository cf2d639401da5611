"""Checkers for chapter 08 (context optimization vs LLM optimization)."""

from __future__ import annotations

from ..knowledge_base import IDK, Question, answer_rates, is_abstention, knowledge_correct
from ..retrieval import Chunk, recall_at_k
from . import Case, CheckResult, check_function

__all__ = ["reference_recall_at_k", "check_recall_at_k", "reference_hallucination_rate",
           "check_hallucination_rate"]


def reference_recall_at_k(retrieved: list[list[int]], chunks: list[Chunk], questions: list[Question]) -> float:
    """Fraction of answerable questions whose needed facts all lie in their retrieved chunks."""
    return recall_at_k(retrieved, chunks, questions)


_CHUNKS = [Chunk("a", (0, 1)), Chunk("b", (2,)), Chunk("c", (3,)), Chunk("d", (4, 5))]
_ONE = Question("q1", "E", "x", 1, (2,))
_TWO = Question("q2", "F", "y", 2, (0, 3))
_NONE = Question("q0", "G", IDK, 0, ())


def _recall_cases() -> list[Case]:
    return [Case(([[1], [0, 2]], _CHUNKS, [_ONE, _TWO]), label="both questions fully retrieved"),
            Case(([[1], [0, 1]], _CHUNKS, [_ONE, _TWO]), label="a two-fact question with only one of its facts"),
            Case(([[1], [3], [0, 2]], _CHUNKS, [_ONE, _NONE, _TWO]), label="with an unanswerable question"),
            Case(([[3, 1], [2, 0], [1]], _CHUNKS, [_ONE, _TWO, _NONE]), label="k = 2")]


def _diagnose_recall(got, expected, case: Case) -> str | None:
    retrieved, chunks, questions = case.args
    answerable = [q for q in questions if q.answer != IDK]
    any_fact = [bool(set(q.fact_ids) & {f for i in r for f in chunks[i].fact_ids})
                for r, q in zip(retrieved, questions) if q.answer != IDK]
    if len(answerable) < len(questions) and isinstance(got, float) and abs(got * len(questions) - expected * len(answerable)) < 1e-9:
        return "divide by the number of *answerable* questions: unanswerable ones have no facts to retrieve."
    if isinstance(got, float) and abs(got - sum(any_fact) / len(any_fact)) < 1e-9:
        return "a question counts only when *all* its facts are retrieved (a subset test), not any one of them."
    return "a chunk holds several facts: collect the fact ids of every retrieved chunk, then test q.fact_ids against them."


def check_recall_at_k(fn) -> CheckResult:
    """Compare ``fn(retrieved, chunks, questions)`` with the reference recall@k."""
    return check_function(fn, reference_recall_at_k, _recall_cases(), name="recall_at_k", diagnose=_diagnose_recall)


def reference_hallucination_rate(predictions: list[str], questions: list[Question]) -> float:
    """Fraction of questions answered with a confident wrong value (see ``answer_rates``)."""
    return answer_rates(predictions, questions)["hallucinated"]


def _hallucination_cases() -> list[Case]:
    return [Case((["x", "y"], [_ONE, _TWO]), label="all correct"),
            Case((["x", "I don't know", "Paris"], [_ONE, _TWO, _NONE]), label="a value for an unknown organisation"),
            Case((["wrong", "I don't know", "I don't know"], [_ONE, _TWO, _NONE]), label="abstentions are not hallucinations"),
            Case((["The answer is x.", "z", "unknown"], [_ONE, _TWO, _NONE]), label="a chatty correct answer")]


def _diagnose_hallucination(got, expected, case: Case) -> str | None:
    predictions, questions = case.args
    n = len(questions)
    all_wrong = sum(not knowledge_correct(p, q) for p, q in zip(predictions, questions)) / n
    answerable_only = sum(q.answer != IDK and not knowledge_correct(p, q) and not is_abstention(p)
                          for p, q in zip(predictions, questions)) / n
    if isinstance(got, float) and abs(got - all_wrong) < 1e-9:
        return "an abstention (\"I don't know\") is never a hallucination; use is_abstention."
    if isinstance(got, float) and abs(got - answerable_only) < 1e-9:
        return "any value given for an organisation that does not exist is a hallucination."
    return "a hallucination is an answer that is neither correct (knowledge_correct) nor an abstention."


def check_hallucination_rate(fn) -> CheckResult:
    """Compare ``fn(predictions, questions)`` with the reference hallucination rate."""
    return check_function(fn, reference_hallucination_rate, _hallucination_cases(), name="hallucination_rate",
                          diagnose=_diagnose_hallucination)
