import pytest
import torch

from course_lib.layer_removal import (STRATEGIES, block_influence, choose_layers, cosine_similarity_per_token,
                                      remove_layers)
from course_lib.layers import decoder_layers
from course_lib.tiny_models import tiny_gpt2, tiny_llama


def _blocks(vocab=100, n=3, length=12, seed=0):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def test_cosine_similarity_per_token():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    assert torch.allclose(cosine_similarity_per_token(x, y), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity_per_token(x, y[:1])


def test_block_influence_matches_hidden_states_by_hand():
    model = tiny_llama(vocab_size=100, num_layers=3)
    blocks = _blocks()
    bi = block_influence(model, blocks, batch_size=2, progress=False)
    assert bi.shape == (3,) and bi.dtype == torch.float64
    # Our hooks are removed. (transformers installs its own output-capturing hooks when a model is
    # called with output_hidden_states=True, so this is checked before that call below.)
    assert not any(layer._forward_hooks for layer in decoder_layers(model))
    # By hand: hidden_states[i] is layer i's input and hidden_states[i + 1] its output, except that
    # the last entry has the final norm applied, so check the first layers only.
    with torch.no_grad():
        hs = model(input_ids=blocks, output_hidden_states=True).hidden_states
    for i in range(2):
        expected = 1 - torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1).double().mean()
        assert bi[i].item() == pytest.approx(expected.item(), abs=1e-5)
    assert torch.allclose(block_influence(model, blocks, progress=False), bi)


def test_block_influence_of_an_identity_layer_is_zero():
    model = tiny_llama(vocab_size=100, num_layers=2)
    layer = decoder_layers(model)[1]
    with torch.no_grad():  # a block whose attention and MLP write nothing passes its input through
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    bi = block_influence(model, _blocks(), progress=False)
    assert bi[1].item() == pytest.approx(0.0, abs=1e-6) and bi[0] > 1e-3


def test_block_influence_works_on_gpt2_and_rejects_bad_input():
    model = tiny_gpt2(vocab_size=100, n_layer=3)
    blocks = _blocks()
    bi = block_influence(model, blocks, progress=False)
    assert bi.shape == (3,) and torch.isfinite(bi).all()
    assert not any(block._forward_hooks for block in decoder_layers(model))
    # By hand, as for Llama: hidden_states[i] enters block i, hidden_states[i + 1] leaves it (the
    # last entry has ln_f applied, so only the first blocks are checked).
    with torch.no_grad():
        hs = model(input_ids=blocks, output_hidden_states=True).hidden_states
    for i in range(2):
        expected = 1 - torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1).double().mean()
        assert bi[i].item() == pytest.approx(expected.item(), abs=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        block_influence(tiny_llama(vocab_size=100), torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        block_influence(tiny_llama(vocab_size=100), _blocks(), batch_size=0)


def test_choose_layers_strategies():
    influence = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.3, 0.8])
    assert choose_layers(influence, 2, "lowest") == [1, 3]
    assert choose_layers(influence, 2, "last") == [4, 5]
    random_pick = choose_layers(influence, 3, "random", seed=1)
    assert len(set(random_pick)) == 3 and random_pick == sorted(random_pick)
    assert random_pick == choose_layers(influence, 3, "random", seed=1)
    assert set(STRATEGIES) == {"lowest", "last", "random"}
    with pytest.raises(ValueError, match="Unknown strategy"):
        choose_layers(influence, 2, "highest")
    with pytest.raises(ValueError, match="at least one layer must remain"):
        choose_layers(influence, 6)
    with pytest.raises(ValueError, match="positive"):
        choose_layers(influence, 0)


def test_remove_layers_returns_a_working_smaller_copy():
    model = tiny_llama(vocab_size=100, num_layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept_layer = decoder_layers(model)[3]
    smaller = remove_layers(model, [0, 2])
    assert len(decoder_layers(model)) == 4 and model.config.num_hidden_layers == 4  # caller untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    layers = decoder_layers(smaller)
    assert len(layers) == 2 and smaller.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1]
    assert torch.equal(layers[1].mlp.up_proj.weight, kept_layer.mlp.up_proj.weight)
    assert smaller.lm_head.weight is smaller.model.embed_tokens.weight  # still tied
    # it runs and generates with a key/value cache of the new depth
    out = smaller.generate(input_ids=_blocks(n=1, length=5), max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert out.shape == (1, 8)


def test_remove_layers_matches_a_manual_forward(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(vocab_size=100, num_layers=3)
    smaller = remove_layers(model, [1])
    smaller.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = _blocks(n=2, length=7)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, smaller(input_ids=ids).logits, atol=1e-5)


def test_remove_layers_gpt2_and_bad_input():
    gpt2 = remove_layers(tiny_gpt2(vocab_size=100, n_layer=3), [2])
    assert gpt2.config.n_layer == 2 and len(gpt2.transformer.h) == 2
    model = tiny_llama(vocab_size=100, num_layers=3)
    with pytest.raises(ValueError, match="out of range"):
        remove_layers(model, [3])
    with pytest.raises(ValueError, match="out of range"):
        remove_layers(model, [-1])
    with pytest.raises(ValueError, match="repeat"):
        remove_layers(model, [1, 1])
    with pytest.raises(ValueError, match="at least one layer must remain"):
        remove_layers(model, [0, 1, 2])
    with pytest.raises(ValueError, match="No layers"):
        remove_layers(model, [])


def test_remove_layers_refuses_an_int_instead_of_a_list():
    model = tiny_llama(vocab_size=100, num_layers=3)
    for bad in (1, "1", 1.0):
        with pytest.raises(ValueError, match=r"list of layer indices.*pass \["):
            remove_layers(model, bad)


def test_block_influence_restores_the_mode_and_leaves_no_hooks():
    model = tiny_llama(vocab_size=100, num_layers=3).train()
    blocks = torch.randint(0, 100, (3, 8), generator=torch.Generator().manual_seed(0))
    influence = block_influence(model, blocks, batch_size=2, progress=False)
    assert model.training and influence.shape == (3,) and influence.device.type == "cpu"
    assert all(not layer._forward_hooks for layer in decoder_layers(model))
    with pytest.raises(ValueError, match="batch_size"):
        block_influence(model, blocks, batch_size=0)
