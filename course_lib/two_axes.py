"""The two axes: which technique improves knowledge, which improves behaviour, and do they add up?

Every technique is one way of answering the same test questions: a prompt recipe (chat template,
instruction, shots, retrieved context) and a model (the base, or one with a LoRA adapter).
:func:`evaluate_technique` answers the questions twice:

* the **knowledge task** (short answers): ``knowledge`` = rate of
  :func:`~course_lib.knowledge_base.knowledge_correct`, plus the hallucination rate;
* the **behaviour task** (the exact JSON line): ``behaviour`` = rate of
  :func:`~course_lib.knowledge_base.format_correct` (the format, whatever the value), and
  ``both`` = strict exact match of the JSON line (format *and* knowledge).

:func:`fact_examples` and :func:`format_examples` are the two fine-tuning sets: the knowledge
base's one-hop question-answer pairs (knowledge into the weights), and JSON answers with the
supporting facts in the prompt, from a *different* knowledge base (behaviour only).
:func:`axes_plot` draws the 2x2 picture; :func:`improves_verdict` and :func:`additive_verdict`
turn rates into claim verdicts with :func:`course_lib.claims.rate_comparison`.
"""

from __future__ import annotations

import random

from .claims import INCONCLUSIVE, all_hold, rate_comparison
from .knowledge_base import (KnowledgeBase, Question, format_correct, knowledge_correct, make_questions,
                             one_hop_questions)
from .prompting import INSTRUCTIONS, build_prompt, formatted_answer, make_examples, run_condition
from .tasks import Example

__all__ = ["TASK_TOKENS", "evaluate_technique", "oracle_contexts", "fact_examples", "format_examples",
           "axes_plot", "improves_verdict", "additive_verdict",
           "not_linear_verdict", "cheapest_first_verdict", "technique_table", "knowledge_by_hops"]

# New tokens to generate: a short answer, and the JSON line (invented names are many tokens).
TASK_TOKENS = {"short": 12, "json": 32}


def evaluate_technique(model, tokenizer, questions: list[Question], *, contexts=None, shots: int = 0,
                       shot_pool=(), batch_size: int = 8) -> dict:
    """Knowledge and behaviour of one technique on ``questions`` (see the module docstring).

    Prompts use the chat template and the format's instruction; ``contexts[i]`` (or None) is
    question i's retrieved context; the first ``shots`` of ``shot_pool`` (``(question, context)``
    pairs) are shown as worked examples. Returns rates, mean prompt tokens and seconds per question
    of both tasks, and the predictions.
    """
    if shots > len(shot_pool):
        raise ValueError(f"{shots} shots asked, but the shot pool holds {len(shot_pool)}.")
    row = {}
    for fmt in ("short", "json"):
        pool = [(q, c if contexts is not None else None) for q, c in list(shot_pool)[:shots]]
        examples = make_examples(questions, tokenizer, fmt=fmt, contexts=contexts, chat=True,
                                 instruction=INSTRUCTIONS[fmt], shots=pool)
        result = run_condition(model, tokenizer, questions, examples, TASK_TOKENS[fmt], batch_size)
        row[f"{fmt} tokens"] = result["prompt tokens"]
        row[f"{fmt} s / q"] = result["s / question"]
        row[f"{fmt} predictions"] = result["predictions"]
        if fmt == "short":
            row["knowledge"], row["hallucinated"] = result["knowledge"], result["hallucinated"]
        else:
            row["behaviour"] = sum(format_correct(p, q) for p, q in zip(result["predictions"], questions)) / len(questions)
            row["both"] = result["exact match"]
    return row


def oracle_contexts(kb: KnowledgeBase, questions: list[Question]) -> list[list[str]]:
    """For each question exactly the fact sentences it needs (empty for an unanswerable one)."""
    return [[kb.facts[i].text for i in q.fact_ids] for q in questions]


def fact_examples(kb: KnowledgeBase, tokenizer) -> list[Example]:
    """Every one-hop fact of ``kb`` (city, year, leader of each organisation) as a chat-template
    question with its short answer: the knowledge put into the weights by fine-tuning."""
    return [Example(build_prompt(q, tokenizer, chat=True, instruction=INSTRUCTIONS["short"]), q.answer)
            for q in one_hop_questions(kb)]


def format_examples(kb: KnowledgeBase, tokenizer, n: int, seed: int = 0) -> list[Example]:
    """``n`` JSON-format training examples from ``kb`` (use a knowledge base other than the test
    one): the supporting facts are in the prompt, so only the format is learned. Questions come
    from :func:`~course_lib.knowledge_base.make_questions` with seeds ``seed, seed + 1, ...``
    until there are ``n`` (one seed gives at most three per organisation)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    per_seed = 3 * min(len(kb.entities), len(kb.unknown_entities))
    questions: list[Question] = []
    while len(questions) < n:
        questions += make_questions(kb, min(per_seed, n - len(questions)), seed=seed + len(questions) // per_seed)
    contexts = oracle_contexts(kb, questions)
    return [Example(build_prompt(q, tokenizer, chat=True, instruction=INSTRUCTIONS["json"], context=c, fmt="json"),
                    formatted_answer(q, "json")) for q, c in zip(questions, contexts)]


def axes_plot(rows: dict, baseline: str, n: int, ax=None):
    """The 2x2 picture: each technique at (knowledge, behaviour); the dashed lines are the
    baseline's rates, so the quadrants read "improved knowledge", "improved behaviour", "both",
    "neither"; the grey box around the baseline is the noise band of ``n`` questions."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .claims import rate_band

    if baseline not in rows:
        raise ValueError(f"baseline {baseline!r} is not one of the techniques {list(rows)}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 6.5))
    bx, by = rows[baseline]["knowledge"], rows[baseline]["behaviour"]
    wx, wy = rate_band(bx, bx, n), rate_band(by, by, n)
    ax.add_patch(Rectangle((bx - wx, by - wy), 2 * wx, 2 * wy, color="0.88", zorder=0))
    ax.axvline(bx, ls="--", c="0.5", lw=1)
    ax.axhline(by, ls="--", c="0.5", lw=1)
    for (label, x, y), (ha, va) in zip([("LLM optimization:\nbehaviour improved", 0.02, 0.98),
                                        ("both improved", 0.98, 0.98), ("neither", 0.02, 0.02),
                                        ("context optimization:\nknowledge improved", 0.98, 0.02)],
                                       [("left", "top"), ("right", "top"), ("left", "bottom"), ("right", "bottom")]):
        ax.text(x, y, label, transform=ax.transAxes, ha=ha, va=va, fontsize=10, color="0.35", style="italic")
    rng = random.Random(0)
    for name, row in rows.items():
        x, y = row["knowledge"] + rng.uniform(-0.012, 0.012), row["behaviour"] + rng.uniform(-0.012, 0.012)
        ax.scatter(x, y, s=70, zorder=3)
        ax.annotate(name, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=10)
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="knowledge task: correct answers",
           ylabel="behaviour task: exact JSON format", title="What each technique improved (dashed: baseline)")
    return ax


def improves_verdict(rows: dict, technique: str, baseline: str, axis: str, n: int):
    """Does ``technique`` beat ``baseline`` on ``axis`` (``knowledge``, ``behaviour`` or ``both``)
    beyond the noise of ``n`` questions? (:func:`~course_lib.claims.rate_comparison`)."""
    if axis not in ("knowledge", "behaviour", "both"):
        raise ValueError(f"axis must be 'knowledge', 'behaviour' or 'both', got {axis!r}.")
    return rate_comparison(rows[technique][axis], rows[baseline][axis], n)


def additive_verdict(rows: dict, combined: str, parts: list[str], n: int, axis: str = "both"):
    """"Techniques are additive": the combination beats *each* of its parts on ``axis`` (by
    default ``both``, which needs knowledge and format at once). True if it beats all beyond the
    noise, False if some part is as good or better beyond the noise, else INCONCLUSIVE."""
    if not parts:
        raise ValueError("additive_verdict needs the parts of the combination.")
    return all_hold(*[improves_verdict(rows, combined, part, axis, n) for part in parts])


def not_linear_verdict(rows: dict, context_technique: str, llm_technique: str, baseline: str, n: int):
    """"The process is not linear": each axis needs its own tool. True if the context technique
    improves knowledge and the LLM technique improves behaviour (beyond the noise), while neither
    also improves the *other* axis beyond the noise; False if one tool fixes both axes; otherwise
    INCONCLUSIVE (e.g. a tool's own improvement is within the noise)."""
    own = [improves_verdict(rows, context_technique, baseline, "knowledge", n),
           improves_verdict(rows, llm_technique, baseline, "behaviour", n)]
    cross = [improves_verdict(rows, context_technique, baseline, "behaviour", n),
             improves_verdict(rows, llm_technique, baseline, "knowledge", n)]
    if any(c is True for c in cross):
        return False
    return all_hold(*own)


def cheapest_first_verdict(gain, extra_seconds_per_question: float, questions_served: int,
                           training_seconds: float, margin: float = 2.0):
    """"Prompt engineering comes first because it is cheapest": the prompt technique's extra
    latency over ``questions_served`` questions, ``extra = extra_seconds_per_question *
    questions_served``, against the fine-tuning's ``training_seconds``.

    The latencies come from one pass over the questions each (not interleaved rounds), so a
    close call is noise: the prompt is *cheaper* only if ``extra * margin < training_seconds``,
    *dearer* only if ``extra > training_seconds * margin``, otherwise INCONCLUSIVE. The verdict is
    ``all_hold(gain, cheaper)``: False when the gain is False or prompting is clearly dearer.
    """
    if questions_served < 1 or training_seconds < 0 or margin < 1:
        raise ValueError(f"Need questions_served >= 1, training_seconds >= 0 and margin >= 1, got "
                         f"{questions_served}, {training_seconds}, {margin}.")
    extra = max(extra_seconds_per_question, 0.0) * questions_served
    cheaper = True if extra * margin < training_seconds else False if extra > training_seconds * margin \
        else INCONCLUSIVE
    return all_hold(gain, cheaper)


def technique_table(rows: dict):
    """A pandas table of every technique's rates, prompt tokens and seconds per question."""
    import pandas as pd

    columns = ["knowledge", "hallucinated", "behaviour", "both", "short tokens", "json tokens", "short s / q",
               "json s / q"]
    return pd.DataFrame({name: {c: row[c] for c in columns} for name, row in rows.items()}).T


def knowledge_by_hops(rows: dict, questions: list[Question]):
    """A pandas table, one row per technique of ``rows``: the knowledge rate on each kind of
    question (1 fact, 2 facts, 0 facts = unanswerable, where correct means "I don't know"), beside
    the technique's behaviour and hallucination rates. Kinds with no question are left out."""
    import pandas as pd

    table = {}
    for name, row in rows.items():
        predictions = row["short predictions"]
        if len(predictions) != len(questions):
            raise ValueError(f"{name}: {len(predictions)} predictions for {len(questions)} questions.")
        rates = {}
        for hops in (1, 2, 0):
            kind = [(p, q) for p, q in zip(predictions, questions) if q.hops == hops]
            if kind:
                rates[f"knowledge, {hops} fact(s)"] = sum(knowledge_correct(p, q) for p, q in kind) / len(kind)
        table[name] = {**rates, "behaviour": row["behaviour"], "hallucinated": row["hallucinated"]}
    return pd.DataFrame(table).T.astype(float)
