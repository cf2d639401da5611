"""Tests of course_lib.gptq on synthetic layers and a tiny Llama (fast)."""

import copy

import pytest
import torch

from course_lib.gptq import gptq_quantize_model_, gptq_quantize_weight, layer_hessians
from course_lib.gptq import first_block_inputs
from course_lib.layers import linear_layers, linear_weight
from course_lib.int_quantization import fake_quantize
from course_lib.tiny_models import tiny_gpt2, tiny_llama


def _correlated_inputs(n=1000, d=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) @ torch.randn(d, d, generator=gen) * 0.3
    x[:, 3] *= 20  # an outlier input channel
    return x


def test_identity_hessian_gives_round_to_nearest():
    torch.manual_seed(0)
    W = torch.randn(24, 128)
    for group in (32, 64, None):
        got = gptq_quantize_weight(W, torch.eye(128), 4, group, block_size=32)
        expected = fake_quantize(W, 4, "channel") if group is None else fake_quantize(W, 4, "group", group)
        assert torch.allclose(got, expected), group


def test_gptq_reduces_the_layer_output_error_and_stays_on_the_grid():
    torch.manual_seed(1)
    W = torch.randn(32, 128)
    X = _correlated_inputs()
    H = 2 * X.T @ X / len(X)
    for bits in (4, 3):
        for symmetric in (True, False):
            Q = gptq_quantize_weight(W, H, bits, 32, symmetric=symmetric)
            R = fake_quantize(W, bits, "group", 32, symmetric=symmetric)
            err = lambda A: ((X @ (W - A).T) ** 2).mean().item()  # noqa: E731
            assert err(Q) < 0.7 * err(R), (bits, symmetric)
            levels = max(torch.unique(Q[r, :32]).numel() for r in range(32))
            assert levels <= 2 ** bits  # every group still has at most 2**bits values


def test_gptq_does_not_modify_inputs_and_handles_dead_inputs():
    W = torch.randn(8, 64)
    X = _correlated_inputs(200, 64)
    X[:, 10] = 0  # an input that is always zero
    H = 2 * X.T @ X / len(X)
    W0, H0 = W.clone(), H.clone()
    Q = gptq_quantize_weight(W, H, 4, 32)
    assert torch.equal(W, W0) and torch.equal(H, H0)
    assert torch.all(Q[:, 10] == 0) and torch.isfinite(Q).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=9), "bits"),
    (dict(group_size=48), "does not divide"),
    (dict(hessian=torch.eye(32)), r"\[64, 64\]"),
    (dict(damp=1.5), "damp"),
    (dict(weight=torch.ones(8, 64, dtype=torch.int64)), "floating-point"),
    (dict(block_size=48, group_size=32), "block_size"),
])
def test_bad_input(kwargs, message):
    args = dict(weight=torch.randn(8, 64), hessian=torch.eye(64), bits=4, group_size=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        gptq_quantize_weight(**args)


def test_layer_hessians_share_one_matrix_per_input():
    model = tiny_llama(vocab_size=300)
    blocks = torch.randint(0, 300, (4, 16))
    inputs = first_block_inputs(model, blocks, batch_size=2)
    assert len(inputs) == 2 and inputs[0][0].shape == (2, 16, 64)
    H = layer_hessians(model.model.layers[0], inputs)
    assert set(H) == set(linear_layers(model.model.layers[0], exclude=()))
    assert H["self_attn.q_proj"] is H["self_attn.k_proj"] is H["self_attn.v_proj"]
    assert H["mlp.gate_proj"] is H["mlp.up_proj"]
    assert H["mlp.down_proj"].shape == (128, 128)
    # H = 2 X^T X / n for the hidden states entering the block's attention, after its RMSNorm
    x = torch.cat([model.model.layers[0].input_layernorm(h).reshape(-1, 64) for h, _ in inputs])
    assert torch.allclose(H["self_attn.q_proj"], 2 * x.T @ x / len(x), rtol=1e-4, atol=1e-5)


def test_gptq_model_beats_rtn_on_a_tiny_llama():
    model = tiny_llama(vocab_size=300)
    blocks = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(blocks).logits
    gptq = gptq_quantize_model_(copy.deepcopy(model), blocks, 3, 32, batch_size=4, progress=False)
    rtn = copy.deepcopy(model)
    for m in linear_layers(rtn).values():
        m.weight.data = fake_quantize(m.weight.data, 3, "group", 32)
    with torch.no_grad():
        err_gptq = (gptq(blocks).logits - reference).pow(2).mean()
        err_rtn = (rtn(blocks).logits - reference).pow(2).mean()
    assert err_gptq < err_rtn
    assert torch.equal(gptq.lm_head.weight, model.lm_head.weight)  # head and embedding untouched
    assert not torch.equal(linear_weight(gptq.model.layers[1].mlp.down_proj), model.model.layers[1].mlp.down_proj.weight)


def test_gptq_model_on_gpt2_and_max_layers():
    model = tiny_gpt2(vocab_size=300)
    blocks = torch.randint(0, 300, (4, 16))
    out = gptq_quantize_model_(copy.deepcopy(model), blocks, 4, 32, max_layers=1, progress=False)
    assert not torch.equal(linear_weight(out.transformer.h[0].mlp.c_fc), linear_weight(model.transformer.h[0].mlp.c_fc))
    assert torch.equal(linear_weight(out.transformer.h[1].mlp.c_fc), linear_weight(model.transformer.h[1].mlp.c_fc))
    with pytest.raises(ValueError, match="calibration_blocks"):
        gptq_quantize_model_(model, blocks[0], 4)
