import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from course_lib.layers import decoder_layers, linear_weight
from course_lib.footprint import count_parameters
from course_lib.structured_pruning import (HEAD_UNITS, attention_head_scores, attention_head_weight_scores,
                                           mlp_neuron_scores, mlp_weight_scores, prune_attention_heads,
                                           prune_mlp_neurons)
from course_lib.tiny_models import tiny_gpt2, tiny_llama

VOCAB = 300


def _blocks(n=4, length=16, seed=0):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_mlp_scores_are_contribution_norms():
    model = tiny_llama(vocab_size=VOCAB, intermediate_size=32)
    blocks = _blocks()
    scores = mlp_neuron_scores(model, blocks, batch_size=3, progress=False)
    assert set(scores) == {0, 1} and scores[0].shape == (32,)
    # by hand for layer 1: the neuron's contribution a_j * W_down[:, j] over all tokens
    acts = []
    down = model.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda m, args: acts.append(args[0].reshape(-1, 32)))
    _logits(model, blocks)
    handle.remove()
    a = torch.cat(acts)
    expected = torch.stack([(a[:, j:j + 1] * down.weight[:, j]).norm() for j in range(32)])
    assert torch.allclose(scores[1], expected, rtol=1e-4)
    weight = mlp_weight_scores(model)
    assert torch.allclose(weight[0], model.model.layers[0].mlp.down_proj.weight.norm(dim=0))
    # precomputed norms of every linear layer give the same scores without a calibration pass
    from course_lib.wanda import input_norms

    norms = input_norms(model, blocks, progress=False)
    again = mlp_neuron_scores(model, None, norms=norms)
    assert all(torch.allclose(again[i], scores[i]) for i in scores)
    with pytest.raises(ValueError, match="calib_blocks"):
        mlp_neuron_scores(model, None)
    with pytest.raises(ValueError, match="no entry"):
        mlp_neuron_scores(model, None, norms={})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prune_mlp_neurons_gives_a_smaller_model_and_leaves_the_original(family, tmp_path):
    model = tiny_llama(vocab_size=VOCAB, intermediate_size=32) if family == "llama" else tiny_gpt2(vocab_size=VOCAB)
    before = _state(model)
    width = 32 if family == "llama" else 4 * 64
    pruned = prune_mlp_neurons(model, 0.25)
    assert _same_state(model, before)  # the caller's model is untouched
    keep = width - round(0.25 * width)
    for layer in decoder_layers(pruned):
        mlp = layer.mlp
        if family == "llama":
            assert mlp.gate_proj.weight.shape == (keep, 64) and mlp.down_proj.weight.shape == (64, keep)
        else:
            assert isinstance(mlp.c_fc, Conv1D) and linear_weight(mlp.c_fc).shape == (keep, 64)
            assert linear_weight(mlp.c_proj).shape == (64, keep)
    key = "intermediate_size" if family == "llama" else "n_inner"
    assert getattr(pruned.config, key) == keep
    assert count_parameters(pruned).total < count_parameters(model).total
    ids = _blocks(2, 8)
    assert _logits(pruned, ids).shape == _logits(model, ids).shape
    # saves and reloads with the updated config, same outputs
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(reloaded, ids), _logits(pruned, ids), atol=1e-5)


def test_pruning_neurons_that_contribute_nothing_changes_nothing():
    model = tiny_llama(vocab_size=VOCAB, intermediate_size=32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, :8] = 0  # neurons 0..7 write nothing
    scores = mlp_neuron_scores(model, _blocks(), progress=False)
    pruned = prune_mlp_neurons(model, 0.25, scores=scores)
    ids = _blocks(2, 8, seed=1)
    assert torch.allclose(_logits(pruned, ids), _logits(model, ids), atol=1e-5)
    assert prune_mlp_neurons(model, 0.0).config.intermediate_size == 32


def test_prune_mlp_neurons_bad_input():
    model = tiny_llama(vocab_size=VOCAB, intermediate_size=32)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            prune_mlp_neurons(model, bad)
    with pytest.raises(ValueError, match="no entry"):
        prune_mlp_neurons(model, 0.5, scores={0: torch.ones(32)})
    with pytest.raises(ValueError, match="shape"):
        prune_mlp_neurons(model, 0.5, scores={0: torch.ones(31), 1: torch.ones(32)})
    with pytest.raises(ValueError, match="leaves none"):
        prune_mlp_neurons(tiny_llama(vocab_size=VOCAB, intermediate_size=2), 0.9)
    with pytest.raises(ValueError, match="decoder blocks"):
        prune_mlp_neurons(torch.nn.Linear(3, 3), 0.5)


def test_head_scores_match_o_proj_columns():
    model = tiny_llama(vocab_size=VOCAB)  # 4 query heads of 16, 2 key-value heads
    scores = attention_head_scores(model, _blocks(), progress=False)
    assert scores[0].shape == (4,)
    from course_lib.wanda import input_norms

    again = attention_head_scores(model, None, norms=input_norms(model, _blocks(), progress=False))
    assert all(torch.allclose(again[i], scores[i]) for i in scores)
    weight = attention_head_weight_scores(model)
    o = model.model.layers[0].self_attn.o_proj.weight
    assert torch.allclose(weight[0], torch.stack([o[:, h * 16:(h + 1) * 16].norm() for h in range(4)]))


@pytest.mark.parametrize("unit,heads,kv", [("query_heads", 2, 2), ("kv_groups", 2, 1)])
def test_prune_attention_heads_keeps_gqa_valid(unit, heads, kv, tmp_path):
    assert unit in HEAD_UNITS
    model = tiny_llama(vocab_size=VOCAB)
    before = _state(model)
    pruned = prune_attention_heads(model, 0.5, scores=attention_head_scores(model, _blocks(), progress=False),
                                   unit=unit)
    assert _same_state(model, before)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (heads, kv)
    attn = pruned.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (heads * 16, 64) and attn.k_proj.weight.shape == (kv * 16, 64)
    assert attn.o_proj.weight.shape == (64, heads * 16)
    ids = _blocks(2, 8)
    out = pruned.generate(ids[:1], max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert out.shape[1] == 11
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(reloaded, ids), _logits(pruned, ids), atol=1e-5)


def test_removing_a_silent_head_changes_nothing():
    model = tiny_llama(vocab_size=VOCAB)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, 16:32] = 0  # query head 1 (group 0) writes nothing
    pruned = prune_attention_heads(model, 0.5)  # weight scores: head 1 is the lowest of group 0
    ids = _blocks(2, 8, seed=2)
    assert not torch.allclose(_logits(pruned, ids), _logits(model, ids))  # group 1 lost a live head
    only_silent = prune_attention_heads(model, 0.5, scores={i: torch.tensor([1.0, 0.0, 1.0, 1.0]) for i in range(2)},
                                        unit="query_heads")
    # removing head 1 only is impossible (same count per group); check the silent one went first
    assert torch.equal(only_silent.model.layers[0].self_attn.q_proj.weight[:16],
                       model.model.layers[0].self_attn.q_proj.weight[:16])


def test_prune_attention_heads_bad_input():
    model = tiny_llama(vocab_size=VOCAB)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_attention_heads(model, 1.0)
    with pytest.raises(ValueError, match="unit"):
        prune_attention_heads(model, 0.5, unit="layers")
    with pytest.raises(ValueError, match="GPT-2"):
        prune_attention_heads(tiny_gpt2(vocab_size=VOCAB), 0.25)
    with pytest.raises(ValueError, match="leaves none"):
        prune_attention_heads(model, 0.9, unit="kv_groups")
