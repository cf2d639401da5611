"""Retrieval for RAG: chunks, a dense index (faiss) and a lexical baseline (BM25), recall@k.

* :func:`chunk_facts`: the knowledge base's sentences grouped into chunks of ``size``
  consecutive sentences (organisation by organisation, so ``size=4`` is one organisation per
  chunk); every chunk remembers the fact ids it holds.
* :class:`DenseIndex`: chunk embeddings (:func:`course_lib.embeddings.embed`, unit length) in a
  ``faiss.IndexFlatIP``: exact search by inner product = cosine similarity.
* :class:`BM25Index`: ``bm25s``'s Okapi BM25 over lower-cased word tokens (English stop words
  removed): a score from shared words, weighted by how rare they are.
* :func:`recall_at_k`: for the answerable questions, the fraction whose needed facts are *all*
  inside the top-k chunks: ``recall@k = (1/|A|) * sum_{q in A} [facts(q) ⊆ facts(top_k(q))]``.
  It scores the retriever alone, before the LLM reads anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .embeddings import embed
from .knowledge_base import IDK, KnowledgeBase, Question

__all__ = ["Chunk", "chunk_facts", "DenseIndex", "BM25Index", "all_facts_found", "recall_at_k", "retrieve",
           "recall_table", "stage_table"]


@dataclass(frozen=True)
class Chunk:
    text: str
    fact_ids: tuple[int, ...]


def chunk_facts(kb: KnowledgeBase, size: int = 1) -> list[Chunk]:
    """Consecutive groups of ``size`` fact sentences (the last group may be shorter)."""
    if size < 1:
        raise ValueError(f"Chunk size must be a positive number of sentences, got {size}.")
    facts = kb.facts
    return [Chunk(" ".join(f.text for f in facts[i:i + size]), tuple(f.id for f in facts[i:i + size]))
            for i in range(0, len(facts), size)]


def _check_k(k: int, chunks: list[Chunk]) -> None:
    if not 1 <= k <= len(chunks):
        raise ValueError(f"k must be between 1 and the number of chunks ({len(chunks)}), got {k}.")


class DenseIndex:
    """Exact cosine-similarity search over chunk embeddings with ``faiss.IndexFlatIP``."""

    name = "dense (MiniLM + faiss)"

    def __init__(self, encoder, chunks: list[Chunk]):
        import faiss

        if not chunks:
            raise ValueError("DenseIndex needs at least one chunk.")
        self.encoder, self.chunks = encoder, chunks
        vectors = embed(encoder, [c.text for c in chunks])
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        """Indices of the top-``k`` chunks for each query, best first."""
        _check_k(k, self.chunks)
        _, found = self.index.search(embed(self.encoder, queries), k)
        return [[int(i) for i in row] for row in found]


class BM25Index:
    """Okapi BM25 (``bm25s``) over the chunks' words."""

    name = "lexical (BM25)"

    def __init__(self, chunks: list[Chunk]):
        import bm25s

        if not chunks:
            raise ValueError("BM25Index needs at least one chunk.")
        self.chunks = chunks
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize([c.text for c in chunks], stopwords="en", show_progress=False),
                             show_progress=False)

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        """Indices of the top-``k`` chunks for each query, best first."""
        import bm25s

        _check_k(k, self.chunks)
        found, _ = self.retriever.retrieve(bm25s.tokenize(list(queries), stopwords="en", show_progress=False),
                                           k=k, show_progress=False, n_threads=1)
        return [[int(i) for i in row] for row in np.asarray(found)]


def all_facts_found(question: Question, found: list[int], chunks: list[Chunk]) -> bool:
    """Whether every fact ``question`` needs is in the chunks ``found`` (indices into ``chunks``)."""
    return set(question.fact_ids) <= {f for i in found for f in chunks[i].fact_ids}


def recall_at_k(retrieved: list[list[int]], chunks: list[Chunk], questions: list[Question]) -> float:
    """Fraction of the answerable questions whose needed facts all lie in their retrieved chunks
    (``retrieved[i]``: chunk indices for question i). Unanswerable questions are skipped."""
    if len(retrieved) != len(questions):
        raise ValueError(f"Need one list of retrieved chunks per question; got {len(retrieved)} and {len(questions)}.")
    hits = [all_facts_found(q, found, chunks) for found, q in zip(retrieved, questions) if q.answer != IDK]
    if not hits:
        raise ValueError("recall_at_k needs at least one answerable question.")
    return sum(hits) / len(hits)


def retrieve(index, questions: list[Question], k: int) -> tuple[list[list[str]], list[list[int]]]:
    """(contexts, chunk indices): the top-``k`` chunk texts for each question, for the prompt."""
    found = index.search([q.text for q in questions], k)
    return [[index.chunks[i].text for i in row] for row in found], found


def recall_table(indexes: dict, questions: list[Question], k_values: list[int]):
    """A pandas table of recall@k for each index (rows) and k (columns), split by hops."""
    import pandas as pd

    rows = []
    for label, index in indexes.items():
        for hops in (1, 2):
            subset = [q for q in questions if q.hops == hops]
            if not subset:
                continue
            row = {"retriever": label, "hops": hops}
            for k in k_values:
                row[f"recall@{k}"] = recall_at_k(index.search([q.text for q in subset], k), index.chunks, subset)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["retriever", "hops"])


def stage_table(index, questions: list[Question], k: int, predictions: list[str]):
    """Which RAG stage failed, per answerable question: ``retrieved`` (every needed fact in the
    top-``k`` chunks of ``index``) and ``answered`` (:func:`~course_lib.knowledge_base.knowledge_correct`
    of ``predictions[i]``, the answer given with those chunks in the prompt). Retrieved but not
    answered is the reader's failure; not retrieved, the retriever's."""
    import pandas as pd

    from .knowledge_base import knowledge_correct

    if len(predictions) != len(questions):
        raise ValueError(f"Need one prediction per question; got {len(predictions)} and {len(questions)}.")
    _, found = retrieve(index, questions, k)
    return pd.DataFrame([{"hops": q.hops, "retrieved": all_facts_found(q, ids, index.chunks),
                          "answered": knowledge_correct(p, q), "answer given": p}
                         for q, ids, p in zip(questions, found, predictions) if q.answer != IDK])
