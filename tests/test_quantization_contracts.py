"""Contracts of chapter 03's modules: modes and global state restored, bad input refused,
GPTQ's Hessian sharing, and the library-noise filters (tiny models, fast)."""

import copy
import logging
import warnings

import pytest
import torch

from course_lib.claims import INCONCLUSIVE
from course_lib.code_books import check_code, double_quantize_scales
from course_lib.gptq import check_hessian, first_block_inputs, gptq_quantize_model_, layer_hessians
from course_lib.int_quantization import INT_BITS, check_bits, check_float, check_group, fake_quantize
from course_lib.noise import NOISE, MessageFilter, silence_library_noise
from course_lib.quantization import GROUP_SIZE, input_channel_absmax, ordering_verdict
from course_lib.quantized_storage import PER_CHANNEL, PER_TENSOR, packed_linear_bits
from course_lib.quantization_plots import quantization_explorer
from course_lib.tiny_models import tiny_llama
from course_lib.torch_int8 import dynamic_quantize_linears, quantized_engine, static_quantize_linears


def test_input_checks_are_public_and_clear():
    check_float(torch.ones(2))
    with pytest.raises(ValueError, match="floating-point"):
        check_float(torch.ones(2, dtype=torch.int64))
    for bits in INT_BITS:
        check_bits(bits)
    for bad in (1, 9, 4.0, True):
        with pytest.raises(ValueError, match="bits must be"):
            check_bits(bad if bad is not True else "4")
    with pytest.raises(ValueError, match="does not divide"):
        check_group(576, 128)
    with pytest.raises(ValueError, match="positive integer"):
        check_group(64, True)  # a bool is not a group size
    assert torch.equal(check_code(torch.tensor([1.0, -1.0])), torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        check_hessian(torch.eye(3), 4)


@pytest.mark.parametrize("block_size", [0, -3, True, 2.5])
def test_double_quantize_scales_refuses_a_bad_block_size(block_size):
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        double_quantize_scales(torch.rand(512) + 0.1, block_size=block_size)


def test_input_channel_absmax_runs_in_eval_mode_and_restores_train_mode():
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=300)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.9  # dropout would change the down_proj inputs in train mode
    blocks = torch.randint(0, 300, (2, 16))
    expected = input_channel_absmax(model.eval(), model.model.layers[0].mlp.down_proj, blocks)
    model.train()
    got = input_channel_absmax(model, model.model.layers[0].mlp.down_proj, blocks)
    assert model.training  # the caller's mode is back
    assert torch.equal(got, expected) and got.device.type == "cpu"


def test_static_quantization_restores_the_global_quantized_engine():
    model = tiny_llama(vocab_size=300)
    names = [n for n, m in model.named_modules() if n.endswith("q_proj")]
    before = torch.backends.quantized.engine
    other = "qnnpack" if before != "qnnpack" else "x86"
    try:
        torch.backends.quantized.engine = other
        static_quantize_linears(model, names, torch.randint(0, 300, (2, 8)), backend="x86", progress=False)
        assert torch.backends.quantized.engine == other
        with pytest.raises(RuntimeError), quantized_engine("x86"):
            assert torch.backends.quantized.engine == "x86"
            raise RuntimeError("boom")
        assert torch.backends.quantized.engine == other
        with pytest.raises(ValueError, match="not available"):
            static_quantize_linears(model, names, None, backend="no-such-engine")
    finally:
        torch.backends.quantized.engine = before


def test_uncalibrated_static_quantization_says_so_in_one_sentence(capsys):
    model = tiny_llama(vocab_size=300)
    names = [n for n, m in model.named_modules() if n.endswith("q_proj")]
    static_quantize_linears(model, names, None)
    assert "never saw data" in capsys.readouterr().out
    static_quantize_linears(model, names, torch.randint(0, 300, (2, 8)), progress=False)
    assert "never saw data" not in capsys.readouterr().out


def test_dynamic_quantization_returns_a_cpu_model_and_leaves_the_original():
    model = tiny_llama(vocab_size=300)
    reference = copy.deepcopy(model.state_dict())
    quantized = dynamic_quantize_linears(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    assert type(quantized.model.layers[0].mlp.up_proj).__module__.startswith("torch.ao.nn.quantized")


def test_explorer_refuses_a_group_size_that_does_not_divide_the_row():
    weight = torch.randn(8, 96)
    with pytest.raises(ValueError, match="group_size=64"):
        quantization_explorer(weight, bits=4, group_size=64)
    assert quantization_explorer(weight, bits=4, group_size=32).view["group_size"] == 32
    assert quantization_explorer(weight, bits=4, group_size=0).view["group_size"] == 0


def test_ordering_verdict_reads_every_measurement_with_a_margin():
    a, b = {"nf4": 10.0, "fp4": 11.0}, {"nf4": 10.0, "fp4": 10.05}
    assert ordering_verdict("nf4", "fp4", a) is True
    assert ordering_verdict("fp4", "nf4", a) is False
    assert ordering_verdict("nf4", "fp4", a, b) is True
    assert ordering_verdict("nf4", "fp4", a, b, margin=0.01) == INCONCLUSIVE  # 0.5 % is within 1 %
    assert ordering_verdict("nf4", "fp4", a, {"nf4": 12.0, "fp4": 11.0}) == INCONCLUSIVE  # they disagree
    with pytest.raises(ValueError):
        ordering_verdict("nf4", "int4", a)
    with pytest.raises(ValueError, match="at least one measurement"):
        ordering_verdict("nf4", "fp4")


def _expected_sharing(hessians):
    assert hessians["self_attn.q_proj"] is hessians["self_attn.k_proj"] is hessians["self_attn.v_proj"]
    assert hessians["mlp.gate_proj"] is hessians["mlp.up_proj"]
    distinct = {id(hessians[n]) for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")}
    assert len(distinct) == 4


def test_layer_hessians_share_only_between_layers_reading_the_same_tensor_every_time():
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=300).eval()
    inputs = first_block_inputs(model, torch.randint(0, 300, (4, 16)), batch_size=2)
    for _ in range(100):  # a freed buffer's address is reused now and then: never a reason to share
        _expected_sharing(layer_hessians(model.model.layers[0], inputs))


class _SameBufferBlock(torch.nn.Module):
    """Two layers whose inputs share address and shape but not content (a buffer rewritten in place)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        buffer = x.clone()
        y = self.a(buffer)
        return self.b(buffer.view_as(buffer).copy_(y * 3))  # same data_ptr and shape, new values


def test_layer_hessians_do_not_match_layers_by_address():
    hessians = layer_hessians(_SameBufferBlock(), [(torch.randn(2, 5, 8), {})])
    assert hessians["a"] is not hessians["b"]
    assert not torch.allclose(hessians["a"], hessians["b"])


def test_gptq_without_calibration_blocks_raises():
    model = tiny_llama(vocab_size=300)
    with pytest.raises(ValueError, match="calibration_blocks is empty"):
        gptq_quantize_model_(model, torch.zeros(0, 16, dtype=torch.long), 4, 32, progress=False)
    with pytest.raises(ValueError, match=r"\[n_blocks, block_size\]"):
        gptq_quantize_model_(model, [[1, 2, 3]], 4, 32, progress=False)


def test_gptq_restores_the_train_mode():
    model = tiny_llama(vocab_size=300).train()
    gptq_quantize_model_(model, torch.randint(0, 300, (2, 16)), 4, 32, max_layers=1, progress=False)
    assert model.training


def test_silence_library_noise_filters_logging_and_warnings_once():
    silence_library_noise()
    silenced = silence_library_noise()  # twice: nothing installed twice
    assert len(silenced) == len(NOISE)
    for kind, target, _pattern, why in NOISE:
        assert why  # every filter says why it is noise
        if kind == "logging":
            assert sum(isinstance(f, MessageFilter) for f in logging.getLogger(target).filters) >= 1
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")
        logger.warning("something else that matters")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["something else that matters"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        warnings.warn("torch.quantize_per_tensor, torch.quantize_per_channel and other quantized tensor creation "
                      "functions that produce tensors are deprecated", UserWarning)
        warnings.warn("a warning that teaches", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning that teaches"]


def test_message_filter_matches_anywhere_in_the_message():
    record = logging.LogRecord("x", logging.WARNING, "f", 1, "prefix %s", ("Failed to load a.so",), None)
    assert MessageFilter(r"Failed to load .*\.so").filter(record) is False
    assert MessageFilter("unrelated").filter(record) is True


def test_checkers_tell_apart_the_mistakes_learners_make():
    from course_lib.checks import quantization as checks

    def absmax_with(rounding, divisor=lambda bits: 2 ** (bits - 1) - 1):
        def fn(w, bits):
            scale = w.abs().max() / divisor(bits)
            return rounding(w / scale).to(torch.int8), scale
        return fn

    def group_with(rounding):
        def fn(w, bits, g):
            rows = w.reshape(-1, g)
            scale = rows.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
            return (rounding(rows / scale) * scale).reshape(w.shape)
        return fn

    half_up = lambda x: torch.floor(x + 0.5)  # noqa: E731
    wrong = {
        "half up": (checks.check_absmax_quantize, absmax_with(half_up), "even integer"),
        "floor": (checks.check_absmax_quantize, absmax_with(torch.floor), "torch.floor"),
        "truncation": (checks.check_absmax_quantize, absmax_with(torch.trunc), "truncates"),
        "off-by-one range": (checks.check_absmax_quantize, absmax_with(torch.round, lambda b: 2 ** (b - 1)), "2**(bits-1) - 1"),
        "group, half up": (checks.check_groupwise_fake_quantize, group_with(half_up), None),
        "group, per tensor": (checks.check_groupwise_fake_quantize,
                              lambda w, bits, g: fake_quantize(w, bits, "tensor"), "whole tensor"),
    }
    for label, (check, fn, hint) in wrong.items():
        result = check(fn)
        assert not result, f"{label} passed the checker"
        if hint:
            assert hint in result.message, (label, result.message)
    assert checks.check_absmax_quantize(absmax_with(torch.round))
    assert checks.check_groupwise_fake_quantize(group_with(torch.round))


def test_chapter_group_size_divides_the_course_model_and_layouts_count_scales():
    assert 576 % GROUP_SIZE == 0 and 1536 % GROUP_SIZE == 0  # SmolLM2's hidden and MLP sizes
    model = tiny_llama(vocab_size=300)
    per_tensor, n = packed_linear_bits(model, 4, PER_TENSOR)
    per_channel, _ = packed_linear_bits(model, 4, PER_CHANNEL)
    rows = sum(m.weight.shape[0] for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in name)
    assert per_channel - per_tensor == 16 * (rows - len([1 for name, m in model.named_modules()
                                                          if isinstance(m, torch.nn.Linear) and "lm_head" not in name]))
    assert per_tensor > 4 * n
