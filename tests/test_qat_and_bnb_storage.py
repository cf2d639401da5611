"""Tests of course_lib.qat (straight-through QAT) and course_lib.bnb_storage (tiny models, fast)."""

import pytest
import torch
from torch.nn.utils import parametrize

from course_lib.bnb_storage import footprint_around_first_forward
from course_lib.int_quantization import fake_quantize
from course_lib.qat import StraightThroughQuantizer, qat_train_
from course_lib.tiny_models import tiny_llama


def test_straight_through_value_is_rounded_and_gradient_is_identity():
    w = torch.randn(4, 32, requires_grad=True)
    out = StraightThroughQuantizer(3, 16)(w)
    assert torch.allclose(out, fake_quantize(w.detach(), 3, "group", 16))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_qat_trains_and_leaves_the_weights_on_the_grid():
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=300).eval()
    blocks = torch.randint(0, 300, (6, 16))
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    losses = qat_train_(model, blocks, bits=3, group_size=16, steps=5, batch_size=2, lr=1e-3)
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))
    assert not model.training  # the mode it had
    w = model.model.layers[0].mlp.up_proj.weight.detach()
    assert not parametrize.is_parametrized(model.model.layers[0].mlp.up_proj)
    assert torch.allclose(fake_quantize(w, 3, "group", 16), w, atol=1e-6)  # on the 3-bit grid
    assert not torch.allclose(w, fake_quantize(before, 3, "group", 16))  # training moved the weights
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # lm_head not quantized


@pytest.mark.parametrize("steps, n_blocks", [(0, 4), (2, 1)])
def test_qat_refuses_bad_sizes(steps, n_blocks):
    with pytest.raises(ValueError):
        qat_train_(tiny_llama(vocab_size=300), torch.randint(0, 300, (n_blocks, 8)), 3, 16, steps, batch_size=2)


class _GrowsOnFirstForward(torch.nn.Module):
    """Stands in for a bitsandbytes layer that repacks its state on the first forward pass."""

    def __init__(self):
        super().__init__()
        self.lm = tiny_llama(vocab_size=300)

    def forward(self, input_ids):
        if not hasattr(self, "repacked"):
            self.register_buffer("repacked", torch.zeros(1000))
        return self.lm(input_ids=input_ids)


def test_footprint_around_first_forward_sees_a_change_and_its_absence():
    ids = torch.randint(0, 300, (1, 8))
    plain = footprint_around_first_forward(tiny_llama(vocab_size=300), ids)
    assert plain["changed"] is False and plain["footprint_before"] == plain["footprint_after"]
    grows = footprint_around_first_forward(_GrowsOnFirstForward(), ids)
    assert grows["changed"] is True and grows["footprint_after"] - grows["footprint_before"] == 4000
    assert "cpu_flags" in grows
