import copy

import pytest
import torch

from course_lib.layers import linear_layers
from course_lib.metrics import perplexity
from course_lib.pruning import pruned_copy, pruning_masks, score_mask, wanda_scores
from course_lib.tiny_models import tiny_gpt2, tiny_llama
from course_lib.wanda import input_norms, layers_by_block, sequential_wanda_masks

VOCAB = 300


def _blocks(n=4, length=16, seed=0):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def test_input_norms_by_hand():
    model = tiny_llama(vocab_size=VOCAB)
    blocks = _blocks()
    norms = input_norms(model, blocks, batch_size=3, progress=False)
    assert set(norms) == set(linear_layers(model))
    seen = []
    layer = model.model.layers[1].mlp.down_proj
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, 128)))
    with torch.no_grad():
        model(input_ids=blocks)
    handle.remove()
    assert torch.allclose(norms["model.layers.1.mlp.down_proj"], torch.cat(seen).norm(dim=0), rtol=1e-4)
    # q, k and v read the same input (and gate and up): the same norms
    assert torch.equal(norms["model.layers.0.self_attn.q_proj"], norms["model.layers.0.self_attn.v_proj"])
    assert not torch.equal(norms["model.layers.0.self_attn.q_proj"], norms["model.layers.1.self_attn.q_proj"])
    assert model.training is False
    with pytest.raises(ValueError, match="n_blocks"):
        input_norms(model, blocks.flatten())


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_layers_by_block_follows_the_decoder_order(make):
    model = make(vocab_size=VOCAB)
    groups = layers_by_block(model)
    assert len(groups) == 2 and sum(len(g) for g in groups) == len(linear_layers(model))
    assert all(".0." in name for name in groups[0]) and all(".1." in name for name in groups[1])


def _by_hand(model, blocks, sparsity):
    """Sequential Wanda written out: block 0 from the dense model, block 1 after block 0 is pruned."""
    first, second = layers_by_block(model)
    norms = input_norms(model, blocks, progress=False)
    masks = {n: score_mask(wanda_scores(m.weight, norms[n]), sparsity, "row") for n, m in first.items()}
    half = pruned_copy(model, masks)
    norms_after = input_norms(half, blocks, progress=False)
    masks.update({n: score_mask(wanda_scores(m.weight, norms_after[n]), sparsity, "row") for n, m in second.items()})
    return masks


def test_sequential_wanda_calibrates_each_block_after_the_previous_ones_are_pruned():
    model = tiny_llama(vocab_size=VOCAB)
    before = copy.deepcopy(model.state_dict())
    blocks = _blocks(6)
    sequential = sequential_wanda_masks(model, blocks, 0.5, batch_size=4, progress=False)
    one_pass = pruning_masks(model, 0.5, criterion="wanda", scope="row",
                             norms=input_norms(model, blocks, progress=False))
    expected = _by_hand(model, blocks, 0.5)
    assert set(sequential) == set(one_pass) == set(expected)
    assert all(torch.equal(sequential[n], expected[n]) for n in expected)
    # block 0 sees the same (dense) inputs either way; block 1 sees pruned inputs, so its masks differ
    assert all(torch.equal(sequential[n], one_pass[n]) for n in layers_by_block(model)[0])
    assert any(not torch.equal(sequential[n], one_pass[n]) for n in layers_by_block(model)[1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # model untouched
    ppl = perplexity(pruned_copy(model, sequential), blocks, progress=False)
    assert ppl > 0


def test_sequential_wanda_stops_each_pass_after_the_block_it_calibrates():
    model = tiny_llama(vocab_size=VOCAB)  # 2 decoder blocks
    calls = []
    model.lm_head.register_forward_hook(lambda *args: calls.append("lm_head"))
    model.model.layers[1].register_forward_hook(lambda *args: calls.append("block 1"))
    sequential_wanda_masks(model, _blocks(6), 0.5, batch_size=4, progress=False)  # the copy keeps the hooks
    # block 0's passes (2 batches) stop before block 1; block 1's passes stop before lm_head
    assert calls == ["block 1", "block 1"]
