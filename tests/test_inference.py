import pytest
import torch

from course_lib.inference import batches, capture, eval_mode
from course_lib.layers import decoder_layers, linear_layers
from course_lib.tiny_models import tiny_llama


def test_eval_mode_restores_training_mode_even_when_the_block_raises():
    model = tiny_llama(vocab_size=64).train()
    with eval_mode(model):
        assert not model.training and not torch.is_grad_enabled()
    assert model.training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training
    with eval_mode(model.eval(), no_grad=False):
        assert torch.is_grad_enabled()
    assert not model.training


def test_batches_cover_every_row_once_and_reject_bad_input():
    rows = torch.arange(10).view(5, 2)
    got = list(batches(rows, 2, "cpu", progress=False))
    assert [len(b) for b in got] == [2, 2, 1] and torch.equal(torch.cat(got), rows)
    with pytest.raises(ValueError, match="must be a tensor"):
        list(batches([[1, 2]], 2))
    with pytest.raises(ValueError, match="at least one row"):
        list(batches(torch.empty(0, 2), 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(rows, 0))


def test_capture_sees_inputs_and_outputs_of_blocks_and_linears_and_removes_its_hooks():
    model = tiny_llama(vocab_size=64, num_layers=2).train()
    blocks = torch.randint(0, 64, (5, 8))
    layers = {f"block{i}": layer for i, layer in enumerate(decoder_layers(model))}
    up = {"up": linear_layers(model)["model.layers.0.mlp.up_proj"]}
    seen = []
    capture(model, {**layers, **up}, blocks, lambda name, x, y: seen.append((name, x.shape, y.shape)),
            batch_size=2, progress=False)
    assert model.training  # mode restored
    assert [s[0] for s in seen].count("block0") == 3  # 3 batches
    block0 = next(s for s in seen if s[0] == "block0")
    assert block0[1] == block0[2] == (2, 8, 64)  # decoder input (hidden_states) and output
    upshape = next(s for s in seen if s[0] == "up")
    assert upshape[1][-1] == 64 and upshape[2][-1] == 128
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="not part of the model"):
        capture(model, {"x": torch.nn.Linear(2, 2)}, blocks, lambda *a: None)
    with pytest.raises(ValueError, match="at least one module"):
        capture(model, {}, blocks, lambda *a: None)


def test_capture_removes_hooks_when_the_callback_raises():
    model = tiny_llama(vocab_size=64)

    def fail(name, x, y):
        raise KeyError("stop")

    with pytest.raises(KeyError):
        capture(model, {"b": decoder_layers(model)[0]}, torch.randint(0, 64, (2, 4)), fail, progress=False)
    assert all(not m._forward_hooks for m in model.modules())
