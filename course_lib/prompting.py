"""Prompts for the knowledge-base questions, and answering a batch of them, timed.

:func:`build_prompt` writes one prompt from four knobs, each of which the lesson measures:

* ``chat``: plain text, or the model's own chat template
  (``tokenizer.apply_chat_template(..., add_generation_prompt=True)``);
* ``instruction``: none, or :data:`INSTRUCTIONS` for the answer format;
* ``shots``: worked examples (question, its context, its answer) shown before the question;
  in the chat template each shot is a user turn and an assistant turn;
* ``context``: retrieved (or given) fact sentences, listed before the question (RAG).

The plain layout, which ends with the cue the answer follows (as every course task does)::

    <instruction>

    Context:
    - <fact>

    Question: <shot question>
    Answer: <shot answer>

    Question: <question>
    Answer:

:func:`run_condition` answers questions greedily with the course's
:func:`course_lib.metrics.generate_answers` (on the model's device) and returns knowledge
accuracy, exact match, hallucination rate, mean prompt length in tokens and seconds per question.
"""

from __future__ import annotations

import time

from .device import model_device, synchronize
from .knowledge_base import IDK, Question, answer_rates, json_answer
from .metrics import generate_answers
from .tasks import Example

__all__ = ["FORMATS", "INSTRUCTIONS", "CONTEXT_RULE", "formatted_answer", "build_prompt", "make_examples",
           "prompt_tokens", "run_condition"]

FORMATS = ("short", "json")
INSTRUCTIONS = {
    "short": f"Answer the question with the answer only: a name or a number. If you do not know it, "
             f"answer: {IDK}.",
    "json": 'Answer with one line of JSON and nothing else, exactly like {"entity": "<the organisation the '
            f'question asks about>", "answer": "<the answer>"}}. If you do not know it, the answer is "{IDK}".',
}
CONTEXT_RULE = f"Use only the context. If the context does not contain the answer, say {IDK}."


def formatted_answer(question: Question, fmt: str = "short") -> str:
    """The reference answer in format ``fmt``: the value (``short``) or the JSON line (``json``)."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown answer format {fmt!r}; use one of {FORMATS}.")
    return question.answer if fmt == "short" else json_answer(question.entity, question.answer)


def _user_text(question: Question, context: list[str] | None) -> str:
    lines = []
    if context is not None:
        lines += ["Context:"] + [f"- {c}" for c in context] + [""]
    return "\n".join(lines + [f"Question: {question.text}"])


def build_prompt(question: Question, tokenizer=None, *, chat: bool = False, instruction: str | None = None,
                 shots: list[tuple[Question, list[str] | None]] = (), context: list[str] | None = None,
                 fmt: str = "short") -> str:
    """The prompt for ``question`` (see the module docstring for the layout).

    ``shots`` are ``(question, context or None)`` pairs answered in format ``fmt``. With
    ``chat=True`` the tokenizer's chat template is applied (a ``tokenizer`` is then required)
    and the answer follows the assistant header; otherwise the prompt ends with ``"Answer:"``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown answer format {fmt!r}; use one of {FORMATS}.")
    head = "\n".join(x for x in (instruction, CONTEXT_RULE if context is not None else None) if x)
    if not chat:
        parts = [head + "\n"] if head else []
        parts += [f"{_user_text(q, c)}\nAnswer: {formatted_answer(q, fmt)}\n" for q, c in shots]
        return "\n".join(parts + [f"{_user_text(question, context)}\nAnswer:"])
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat=True needs a tokenizer that has a chat template (course_lib.models.load_tokenizer()).")
    messages = []
    for i, (q, c) in enumerate(shots):
        text = _user_text(q, c)
        messages += [{"role": "user", "content": f"{head}\n{text}" if head and i == 0 else text},
                     {"role": "assistant", "content": formatted_answer(q, fmt)}]
    last = _user_text(question, context)
    messages.append({"role": "user", "content": f"{head}\n{last}" if head and not shots else last})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def make_examples(questions: list[Question], tokenizer=None, *, fmt: str = "short",
                  contexts: list[list[str]] | None = None, **prompt_kwargs) -> list[Example]:
    """Course :class:`~course_lib.tasks.Example` objects (prompt, reference answer in ``fmt``),
    one per question; ``contexts[i]`` is question i's context (None: no context)."""
    if contexts is not None and len(contexts) != len(questions):
        raise ValueError(f"Need one context per question; got {len(contexts)} for {len(questions)} questions.")
    return [Example(build_prompt(q, tokenizer, fmt=fmt, context=None if contexts is None else contexts[i],
                                 **prompt_kwargs), formatted_answer(q, fmt))
            for i, q in enumerate(questions)]


def prompt_tokens(tokenizer, examples: list[Example]) -> float:
    """Mean prompt length in tokens (as :func:`~course_lib.metrics.generate_answers` tokenizes it)."""
    if not examples:
        raise ValueError("prompt_tokens needs at least one example.")
    return sum(len(tokenizer(e.prompt, add_special_tokens=False)["input_ids"]) for e in examples) / len(examples)


def run_condition(model, tokenizer, questions: list[Question], examples: list[Example],
                  max_new_tokens: int = 24, batch_size: int = 8) -> dict:
    """Answer ``examples`` (built from ``questions``, same order) greedily and score them.

    Returns ``knowledge`` (:func:`~course_lib.knowledge_base.knowledge_correct` rate),
    ``exact match`` (normalised answer equals the reference), ``hallucinated`` (see
    :func:`~course_lib.knowledge_base.answer_rates`), ``prompt tokens`` (mean), ``s / question``
    (wall time of the whole batch loop on the model's device, divided by the number of questions)
    and ``predictions``.
    """
    if len(questions) != len(examples) or not questions:
        raise ValueError(f"Need one example per question (non-empty); got {len(examples)} and {len(questions)}.")
    device = model_device(model)
    synchronize(device)
    start = time.perf_counter()
    preds = generate_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens, batch_size,
                             progress=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    rates = answer_rates(preds, questions)
    exact = sum(p == e.answer for p, e in zip(preds, examples)) / len(examples)
    return {"knowledge": rates["correct"], "exact match": exact, "hallucinated": rates["hallucinated"],
            "prompt tokens": prompt_tokens(tokenizer, examples), "s / question": seconds / len(examples),
            "predictions": preds}
