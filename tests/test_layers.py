import pytest
import torch
from transformers.pytorch_utils import Conv1D

from course_lib.layers import decoder_layers, linear_layers, linear_weight, set_linear_weight
from course_lib.tiny_models import tiny_gpt2, tiny_llama


def test_llama_linear_layers_exclude_lm_head():
    model = tiny_llama(vocab_size=100, num_layers=2)
    layers = linear_layers(model)
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert not any("lm_head" in n for n in layers)
    assert "lm_head" in linear_layers(model, exclude=())


def test_gpt2_conv1d_weights_are_seen_as_out_in():
    model = tiny_gpt2(vocab_size=100, n_embd=64)
    layers = linear_layers(model)
    c_attn = layers["transformer.h.0.attn.c_attn"]
    assert isinstance(c_attn, Conv1D)
    w = linear_weight(c_attn)
    assert w.shape == (3 * 64, 64)  # [out, in]
    x = torch.randn(2, 64)
    assert torch.allclose(c_attn(x), x @ w.T + c_attn.bias, atol=1e-6)


def test_set_linear_weight_round_trip():
    for module in (torch.nn.Linear(4, 3), Conv1D(3, 4)):
        new = torch.arange(12, dtype=torch.float32).view(3, 4)
        set_linear_weight(module, new)
        assert torch.equal(linear_weight(module), new)
        with pytest.raises(ValueError, match="does not match"):
            set_linear_weight(module, torch.zeros(4, 3))


def test_no_linear_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no linear layers"):
        linear_layers(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.LayerNorm(3)))
    with pytest.raises(ValueError, match="not a linear layer"):
        linear_weight(torch.nn.ReLU())


def test_decoder_layers_for_both_families():
    assert len(decoder_layers(tiny_llama(vocab_size=100, num_layers=3))) == 3
    assert len(decoder_layers(tiny_gpt2(vocab_size=100, n_layer=2))) == 2
    with pytest.raises(ValueError, match="decoder blocks"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_is_linear():
    from course_lib.layers import is_linear

    assert is_linear(torch.nn.Linear(2, 2)) and is_linear(Conv1D(2, 2))
    assert not is_linear(torch.nn.Embedding(3, 2)) and not is_linear(torch.nn.LayerNorm(2))


def test_one_family_detector_for_models_and_configs():
    from transformers import BertConfig

    from course_lib.layers import FAMILIES, conv1d_type, model_family

    llama, gpt2 = tiny_llama(vocab_size=100), tiny_gpt2(vocab_size=100)
    assert model_family(llama) == model_family(llama.config) == "llama"
    assert model_family(gpt2) == model_family(gpt2.config) == "gpt2"
    assert set(FAMILIES) == {"llama", "gpt2"}
    assert conv1d_type() is Conv1D
    with pytest.raises(ValueError, match="model_type 'bert'"):
        model_family(BertConfig())  # a BERT config is refused, never counted as a Llama
