"""A knowledge base of invented facts, the questions over it, and how answers are scored.

The model cannot know these facts: every organisation, person and city name is made up from
syllables by a seeded generator. Each organisation has four facts, one sentence each::

    Vostrel is based in the city of Darnuk.
    Vostrel was founded in 1874.
    Vostrel is led by Mira Talbeck.
    Vostrel works with the partner organisation Quimbel.

Questions need one fact (``hops=1``: city, year or leader of an organisation) or two
(``hops=2``: city or year of an organisation's *partner*), or cannot be answered
(``hops=0``: an organisation that is not in the knowledge base; the right answer is
:data:`IDK`). Each question keeps the ids of the facts it needs, so retrieval can be scored
separately from answering (:mod:`course_lib.retrieval`).

Two answer formats separate the chapter's two axes:

* ``short``: the value alone (``1874``); knowledge is scored by :func:`knowledge_correct`, which
  accepts any answer that *contains* the value and is not an abstention, so a knowledgeable but
  chatty answer still counts as knowledge;
* ``json``: exactly ``{"entity": "Vostrel", "answer": "1874"}`` (:func:`json_answer`), scored by
  strict exact match: the behaviour task.

Hallucination rate (:func:`answer_rates`): the fraction of questions answered with a confident
value that is wrong (neither correct nor an abstention such as "I don't know").
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

__all__ = ["SIZES", "IDK", "Fact", "Question", "KnowledgeBase", "make_knowledge_base", "make_questions", "one_hop_questions",
           "json_answer", "format_correct", "is_abstention", "knowledge_correct", "answer_rates"]

# Chapter 08 sizes (read with course_lib.profiles.sizes_for). n_entities organisations give
# 4 facts each; n_questions test questions per task (a third of them each: one-hop, two-hop,
# unanswerable); shots: the few-shot counts compared; k_values: retrieved chunks; steps, lr,
# batch_size, n_train: the two LoRA fine-tunings (chapter 05's helpers); rag_chunk, rag_k: the RAG
# set-up every technique that retrieves uses.
SIZES = {
    "smoke": {"n_entities": 12, "n_questions": 3, "shots": [0, 1], "k_values": [1, 3], "chunk_sizes": [1, 4],
              "rag_chunk": 1, "rag_k": 3, "n_train": 8, "steps": 2, "lr": 3e-3, "batch_size": 2},
    "cpu": {"n_entities": 60, "n_questions": 30, "shots": [0, 1, 3, 5], "k_values": [1, 3, 5], "chunk_sizes": [1, 2, 4],
            "rag_chunk": 1, "rag_k": 3, "n_train": 200, "steps": 24, "lr": 3e-3, "batch_size": 4},
    "gpu": {"n_entities": 200, "n_questions": 150, "shots": [0, 1, 3, 5], "k_values": [1, 3, 5, 10],
            "chunk_sizes": [1, 2, 4], "rag_chunk": 1, "rag_k": 5, "n_train": 2000, "steps": 200, "lr": 2e-3,
            "batch_size": 16},
}

IDK = "I don't know"

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
           "pl", "st", "tr", "qu", "th", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "n", "r", "l", "k", "s", "th", "m", "x"]
_FIRST_NAMES = ["Mira", "Tomas", "Ilse", "Rafe", "Noor", "Edda", "Kasim", "Lena", "Oren", "Vida", "Bram", "Sela"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).title()


@dataclass(frozen=True)
class Fact:
    """One fact: ``text`` is the sentence; ``subject``/``relation``/``value`` its parts."""

    id: int
    subject: str
    relation: str  # "city", "year", "leader" or "partner"
    value: str
    text: str


@dataclass(frozen=True)
class Question:
    """A question over the knowledge base. ``answer`` is the value, or :data:`IDK` when the
    knowledge base cannot answer it (``hops == 0``). ``fact_ids``: the facts it needs."""

    text: str
    entity: str  # the organisation the question is about
    answer: str
    hops: int
    fact_ids: tuple[int, ...]


@dataclass(frozen=True)
class KnowledgeBase:
    facts: list[Fact]
    entities: list[str]
    unknown_entities: list[str]  # invented names that are NOT in the knowledge base

    def fact(self, subject: str, relation: str) -> Fact:
        """The fact ``relation`` of ``subject``; KeyError if there is none."""
        for f in self.facts:
            if f.subject == subject and f.relation == relation:
                return f
        raise KeyError(f"No {relation!r} fact about {subject!r}.")

    def document(self) -> list[str]:
        """All fact sentences in order (organisation by organisation): the text RAG searches."""
        return [f.text for f in self.facts]


_SENTENCES = {"city": "{s} is based in the city of {v}.", "year": "{s} was founded in {v}.",
              "leader": "{s} is led by {v}.", "partner": "{s} works with the partner organisation {v}."}
_QUESTIONS = {"city": "In which city is {e} based?", "year": "In what year was {e} founded?",
              "leader": "Who leads {e}?"}
_TWO_HOP = {"city": "In which city is the partner organisation of {e} based?",
            "year": "In what year was the partner organisation of {e} founded?"}


def make_knowledge_base(n_entities: int = 80, seed: int = 0, n_unknown: int = 50) -> KnowledgeBase:
    """``n_entities`` invented organisations with 4 facts each (city, year, leader, partner),
    plus ``n_unknown`` invented names that have no facts. Same seed, same knowledge base.

    Raises:
        ValueError: fewer than 2 organisations (a partner must be another one).
    """
    if n_entities < 2 or n_unknown < 0:
        raise ValueError(f"Need n_entities >= 2 and n_unknown >= 0, got {n_entities} and {n_unknown}.")
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n_entities + n_unknown:
        name = _word(rng, rng.choice([2, 3]))
        if name not in names and len(name) >= 5:
            names.append(name)
    entities, unknown = names[:n_entities], names[n_entities:]
    facts: list[Fact] = []
    for i, e in enumerate(entities):
        partner = entities[(i + rng.randrange(1, n_entities)) % n_entities]
        values = {"city": _word(rng, 2), "year": str(rng.randrange(1800, 2021)),
                  "leader": f"{rng.choice(_FIRST_NAMES)} {_word(rng, 2)}", "partner": partner}
        for relation, value in values.items():
            facts.append(Fact(len(facts), e, relation, value, _SENTENCES[relation].format(s=e, v=value)))
    return KnowledgeBase(facts, entities, unknown)


def make_questions(kb: KnowledgeBase, n: int, seed: int = 0) -> list[Question]:
    """``n`` questions in a fixed, shuffled order: a third need one fact, a third two facts
    (through the partner), a third are about organisations not in ``kb`` (answer :data:`IDK`).

    Raises:
        ValueError: ``n`` not positive, or more questions than ``kb`` has organisations for.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    per_kind = -(-n // 3)
    if per_kind > min(len(kb.entities), len(kb.unknown_entities)):
        raise ValueError(f"{n} questions need {per_kind} organisations of each kind; the knowledge base has "
                         f"{len(kb.entities)} known and {len(kb.unknown_entities)} unknown ones.")
    rng = random.Random(seed)
    out: list[Question] = []
    for e in rng.sample(kb.entities, per_kind):
        rel = rng.choice(sorted(_QUESTIONS))
        f = kb.fact(e, rel)
        out.append(Question(_QUESTIONS[rel].format(e=e), e, f.value, 1, (f.id,)))
    for e in rng.sample(kb.entities, per_kind):
        rel = rng.choice(sorted(_TWO_HOP))
        link = kb.fact(e, "partner")
        f = kb.fact(link.value, rel)
        out.append(Question(_TWO_HOP[rel].format(e=e), e, f.value, 2, (link.id, f.id)))
    for e in rng.sample(kb.unknown_entities, per_kind):
        rel = rng.choice(sorted(_QUESTIONS))
        out.append(Question(_QUESTIONS[rel].format(e=e), e, IDK, 0, ()))
    rng.shuffle(out)
    return out[:n]


def one_hop_questions(kb: KnowledgeBase) -> list[Question]:
    """A one-hop question for every city, year and leader fact of ``kb``, in the test phrasing."""
    return [Question(_QUESTIONS[f.relation].format(e=f.subject), f.subject, f.value, 1, (f.id,))
            for f in kb.facts if f.relation in _QUESTIONS]


def json_answer(entity: str, answer: str) -> str:
    """The behaviour task's exact output: ``{"entity": "<entity>", "answer": "<answer>"}``."""
    return json.dumps({"entity": entity, "answer": answer})


def format_correct(prediction: str, question: Question) -> bool:
    """Behaviour, whatever the knowledge: the prediction is exactly ``json_answer(question.entity,
    value)`` for *some* string value (fixed keys in fixed order, the asked organisation, one line)."""
    try:
        parsed = json.loads(prediction)
    except ValueError:
        return False
    return (isinstance(parsed, dict) and isinstance(parsed.get("answer"), str)
            and prediction == json_answer(question.entity, parsed["answer"]))


_ABSTAIN = re.compile(r"(don'?t|do not|cannot|can'?t) (know|answer|find|say)|\bunknown\b|not (mentioned|given|"
                      r"provided|in the context)|no information", re.IGNORECASE)


def is_abstention(text: str) -> bool:
    """Does the answer decline to answer ("I don't know", "cannot answer", "not in the context"...)?"""
    return bool(_ABSTAIN.search(text))


def knowledge_correct(prediction: str, question: Question) -> bool:
    """Knowledge, whatever the format: for an answerable question, the prediction contains the
    answer as a whole word (case-insensitive) and does not abstain; for an unanswerable one, it
    abstains."""
    if question.answer == IDK:
        return is_abstention(prediction)
    found = re.search(rf"(?<!\w){re.escape(question.answer)}(?!\w)", prediction, re.IGNORECASE)
    return bool(found) and not is_abstention(prediction)


def answer_rates(predictions: list[str], questions: list[Question]) -> dict[str, float]:
    """Rates over all questions: ``correct`` (:func:`knowledge_correct`), ``abstained`` (declined
    an answerable question), ``hallucinated`` (gave a value that is wrong, or any value to an
    unanswerable question): ``correct + abstained + hallucinated = 1``.

    Raises:
        ValueError: lists of different lengths, or empty.
    """
    if len(predictions) != len(questions) or not questions:
        raise ValueError(f"Need one prediction per question (non-empty); got {len(predictions)} and {len(questions)}.")
    n = len(questions)
    correct = sum(knowledge_correct(p, q) for p, q in zip(predictions, questions))
    abstained = sum(is_abstention(p) and q.answer != IDK for p, q in zip(predictions, questions))
    return {"correct": correct / n, "abstained": abstained / n, "hallucinated": (n - correct - abstained) / n}
