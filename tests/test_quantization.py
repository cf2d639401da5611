"""Tests of course_lib.quantization and course_lib.checks.quantization (tiny models, fast)."""

import copy
import math

import pytest
import torch
from torch import nn

from course_lib.layers import linear_layers, linear_weight
from course_lib.metrics import perplexity
from course_lib.footprint import footprint_bytes
from course_lib.profiles import sizes_for
from course_lib.code_books import (CODE_BOOKS, code_book_dequantize, code_book_quantize,
                                   double_quant_bits_per_parameter, double_quantize_scales,
                                   fake_quantize_code_book, fp4_code_book, int4_code_book, nf4_code_book)
from course_lib.int_quantization import (GRANULARITIES, Grid, absmax_dequantize, absmax_quantize,
                                         fake_quantize, int_range, layer_error_table, make_grid,
                                         quantization_error, zero_point_dequantize, zero_point_quantize)
from course_lib.quantization import (SIZES, fake_quantize_model_, input_channel_absmax, ordering_verdict,
                                     rtn_ladder)
from course_lib.quantization_plots import plot_ladder, plot_weight_histogram, quantization_explorer
from course_lib.quantized_storage import (bits_per_parameter, linear_bits_per_weight, packed_footprint_bytes,
                                          packed_linear_bits)
from course_lib.torch_int8 import (StaticQuantLinear, dynamic_family_perplexity, dynamic_quantize_linears,
                                   static_quantize_linears)
from course_lib.tiny_models import tiny_gpt2, tiny_llama


@pytest.fixture
def w():
    torch.manual_seed(0)
    return torch.randn(16, 64) * 0.02


def test_sizes_table_has_every_profile():
    for profile in ("smoke", "cpu", "gpu"):
        assert sizes_for(SIZES, profile).ladder_eval_blocks >= 1


def test_int_range():
    assert int_range(8) == (-127, 127)
    assert int_range(4, symmetric=False) == (0, 15)
    assert int_range(3) == (-3, 3)


def test_absmax_round_trip_error_is_at_most_half_a_step(w):
    for bits in (8, 4, 3):
        q, scale = absmax_quantize(w, bits)
        assert q.dtype == torch.int8 and q.abs().max() == 2 ** (bits - 1) - 1  # the absmax hits the end
        assert torch.isclose(scale, w.abs().max() / (2 ** (bits - 1) - 1))
        assert (absmax_dequantize(q, scale) - w).abs().max() <= scale / 2 + 1e-7


def test_absmax_per_row_scales(w):
    q, scale = absmax_quantize(w, 8, dim=1)
    assert scale.shape == (16, 1)
    assert torch.allclose(scale.squeeze(1), w.abs().amax(dim=1) / 127)


def test_zero_point_uses_the_whole_range_and_keeps_zero_exact():
    x = torch.tensor([-0.1, 0.0, 0.2, 0.7])
    q, scale, zero = zero_point_quantize(x, 4)
    assert q.dtype == torch.uint8 and q.min() == 0 and q.max() == 15
    assert torch.isclose(scale, torch.tensor(0.8 / 15))
    assert zero_point_dequantize(q, scale, zero)[1] == 0  # zero maps to an exact code
    assert (zero_point_dequantize(q, scale, zero) - x).abs().max() <= scale / 2 + 1e-7


def test_asymmetric_beats_symmetric_on_skewed_weights():
    x = torch.rand(32, 64) * 0.1  # all positive: a symmetric grid wastes half its codes
    sym = quantization_error(x, fake_quantize(x, 4, "channel"))
    asym = quantization_error(x, fake_quantize(x, 4, "channel", symmetric=False))
    assert asym["mse"] < sym["mse"] / 2


def test_grid_round_trip_and_all_zero_slice():
    x = torch.zeros(2, 8)
    x[1] = torch.linspace(-1, 1, 8)
    grid = make_grid(x, 4, dim=1)
    assert isinstance(grid, Grid)
    assert torch.equal(grid.fake_quantize(x)[0], torch.zeros(8))  # all-zero row: no division by zero
    assert torch.equal(grid.dequantize(grid.quantize(x)), grid.fake_quantize(x))


def test_finer_granularity_and_more_bits_reduce_error():
    torch.manual_seed(1)
    x = torch.randn(32, 256) * torch.linspace(0.1, 3, 32).unsqueeze(1)  # rows of different scales
    x[0, 5] = 40.0  # one outlier
    errors = {g: quantization_error(x, fake_quantize(x, 4, g, 64))["mse"] for g in GRANULARITIES}
    assert errors["group"] < errors["channel"] < errors["tensor"]
    by_bits = [quantization_error(x, fake_quantize(x, b, "group", 64))["relative"] for b in (3, 4, 8)]
    assert by_bits[0] > by_bits[1] > by_bits[2]


def test_group_quantization_has_one_scale_per_group():
    x = torch.ones(2, 8)
    x[0, :4] = 100  # a big group must not affect the next one
    out = fake_quantize(x, 3, "group", 4)
    assert torch.allclose(out, x)


def test_fake_quantize_keeps_dtype_and_shape(w):
    out = fake_quantize(w.to(torch.bfloat16), 4, "channel")
    assert out.dtype == torch.bfloat16 and out.shape == w.shape
    assert fake_quantize(w[0], 4, "tensor").shape == (64,)


def test_quantization_error_fields(w):
    err = quantization_error(w, fake_quantize(w, 8, "channel"))
    assert set(err) == {"mse", "relative", "max_abs", "sqnr_db"}
    assert 30 < err["sqnr_db"] < 60  # about 6 dB per bit
    assert quantization_error(w, w)["sqnr_db"] == math.inf


@pytest.mark.parametrize("call, message", [
    (lambda w: fake_quantize(w, 9), "bits"),
    (lambda w: fake_quantize(w, 1), "bits"),
    (lambda w: fake_quantize(w, 4.0), "bits"),
    (lambda w: fake_quantize(w, 4, "group", 48), "does not divide"),
    (lambda w: fake_quantize(w, 4, "group", 0), "positive"),
    (lambda w: fake_quantize(w, 4, "row"), "granularity"),
    (lambda w: fake_quantize(w.to(torch.int32), 4), "floating-point"),
    (lambda w: absmax_quantize(w.numpy(), 4), "torch.Tensor"),
    (lambda w: code_book_quantize(w, nf4_code_book(), 48), "does not divide"),
    (lambda w: code_book_quantize(w, torch.tensor([1, 2]), 64), "floating-point"),
    (lambda w: quantization_error(w, w[:2]), "same shape"),
    (lambda w: nf4_code_book(offset=1.5), "offset"),
    (lambda w: bits_per_parameter(0, 64), "positive"),
    (lambda w: bits_per_parameter(4, 0), "positive"),
    (lambda w: double_quant_bits_per_parameter(block_size=0), "positive"),
])
def test_bad_input_raises_a_clear_value_error(w, call, message):
    with pytest.raises(ValueError, match=message):
        call(w)


def test_code_books_shapes_and_values():
    assert torch.allclose(int4_code_book()[[0, 7, -1]], torch.tensor([-1.0, 0.0, 1.0]))
    assert len(int4_code_book()) == 15
    fp4 = fp4_code_book()
    assert len(fp4) == 16 and fp4.max() == 1 and torch.isclose(fp4[fp4 > 0].min(), torch.tensor(0.0625 / 12))
    assert torch.isclose(fp4_code_book(standard=True)[fp4_code_book(standard=True) > 0].min(), torch.tensor(1 / 12))
    nf4 = nf4_code_book()
    assert len(nf4) == 16 and nf4.min() == -1 and nf4.max() == 1 and (nf4 == 0).sum() == 1
    assert (nf4 > 0).sum() == 8 and (nf4 < 0).sum() == 7
    assert set(CODE_BOOKS) == {"int4", "fp4", "nf4"}


def test_code_books_match_bitsandbytes():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    assert torch.allclose(nf4_code_book(), bnbf.get_4bit_type("nf4", device="cpu"), atol=1e-6)
    assert torch.allclose(fp4_code_book(), torch.sort(bnbf.get_4bit_type("fp4", device="cpu")).values)


def test_code_book_quantization_matches_bitsandbytes(w):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    for name in ("nf4", "fp4"):
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type=name)
        theirs = bnbf.dequantize_4bit(packed, state)
        mine = fake_quantize_code_book(w, CODE_BOOKS[name](), 64)
        assert torch.allclose(mine, theirs, atol=1e-6), name


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.037])
def test_code_book_ties_fall_like_bitsandbytes(scale):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    # values on exact FP4 midpoints (x 12: 10 is between 8 and 12, 5 between 4 and 6...), times a
    # block absmax of `scale`: with absmax 1.0 any rounding of w / absmax gives the same ties
    x = torch.tensor([12, 10, -10, 5, -5, 2.5, -2.5, 0, 7, -7, 1.5, -1.5] * 4 + [-0.5859375 / 0.703125 * 12] * 16) / 12
    x = (x * scale).reshape(1, 64)
    packed, state = bnbf.quantize_4bit(x, blocksize=64, quant_type="fp4")
    theirs = bnbf.dequantize_4bit(packed, state)
    assert torch.equal(fake_quantize_code_book(x, fp4_code_book(), 64), theirs)
    # dividing by the absmax (instead of multiplying by its reciprocal, as bitsandbytes does)
    # lets some ties fall the other way when the absmax is not 1: the test above can fail
    code, absmax = fp4_code_book(), x.abs().amax(dim=1, keepdim=True)
    divided = torch.bucketize(x / absmax, (code[1:] + code[:-1]) / 2).to(torch.uint8)
    assert torch.equal(code_book_dequantize(divided, absmax.squeeze(1), code, x.shape), theirs) == (scale == 1.0)


def test_code_book_quantize_indices_and_absmax(w):
    idx, absmax = code_book_quantize(w, nf4_code_book(), 64)
    assert idx.dtype == torch.uint8 and idx.shape == (16, 64) and int(idx.max()) <= 15
    assert torch.allclose(absmax, w.reshape(-1, 64).abs().amax(dim=1))
    back = code_book_dequantize(idx, absmax, nf4_code_book(), w.shape)
    assert back.shape == w.shape and torch.allclose(back.abs().reshape(-1, 64).amax(dim=1), absmax)


def test_nf4_beats_int4_and_fp4_on_normal_weights():
    torch.manual_seed(2)
    x = torch.randn(256, 256)
    err = {n: quantization_error(x, fake_quantize_code_book(x, f(), 64))["mse"] for n, f in CODE_BOOKS.items()}
    assert err["nf4"] < err["int4"] and err["nf4"] < err["fp4"]


def test_double_quantization_of_scales():
    torch.manual_seed(3)
    absmax = torch.rand(1000) * 0.1 + 0.05
    restored, bits = double_quantize_scales(absmax, 256)
    assert restored.shape == absmax.shape and bits == 8 + 32 / 256
    assert (restored - absmax).abs().max() < 0.01 * absmax.mean()


def test_storage_formulas():
    assert bits_per_parameter(4, 64, scale_bits=32) == 4.5
    assert bits_per_parameter(4, 128) == 4.125
    assert bits_per_parameter(8, None) == 8
    assert bits_per_parameter(4, 64, 16, 16) == 4.5
    assert abs(double_quant_bits_per_parameter() - (4 + 8 / 64 + 32 / (64 * 256))) < 1e-12


def test_packed_linear_bits_counts_every_layer_with_its_own_row_length():
    model = tiny_llama(vocab_size=300)  # 2 blocks: q, o 64x64; k, v 32x64; gate, up 128x64; down 64x128
    numel, rows = 2 * (2 * 4096 + 2 * 2048 + 3 * 8192), 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)
    assert (numel, rows) == (73728, 1024)
    assert packed_linear_bits(model, 4, "channel") == (73728 * 4 + 1024 * 16, 73728)  # a scale per output row
    # (the first layer's row length, 64, for every layer would give 73728 * (4 + 16 / 64) = 313344 bits)
    assert packed_linear_bits(model, 4, "channel")[0] == 311296 != 313344
    assert packed_linear_bits(model, 4, "tensor") == (73728 * 4 + 14 * 16, 73728)  # a scale per layer
    assert packed_linear_bits(model, 4, 32) == (73728 * 4.5, 73728)  # 4 + 16/32
    assert packed_linear_bits(model, 3, 32, scale_bits=16, zero_point_bits=16) == (73728 * 4, 73728)
    assert packed_linear_bits(model, 8, "channel", exclude=("mlp", "lm_head")) == (2 * 12288 * 8 + 2 * 192 * 16, 2 * 12288)
    with pytest.raises(ValueError, match="does not divide"):
        packed_linear_bits(model, 4, 128)  # divides down_proj's 128 inputs, not the others' 64
    for bad in (None, 0, "row", True):
        with pytest.raises(ValueError, match="group_size"):
            packed_linear_bits(model, 4, bad)
    with pytest.raises(ValueError, match="positive"):
        packed_linear_bits(model, 0, 32)


def test_packed_footprint_of_a_fake_quantized_model():
    model = tiny_llama(vocab_size=300)
    weights = sum(linear_weight(m).numel() for m in linear_layers(model).values())
    full = footprint_bytes(model)
    assert packed_footprint_bytes(model, 32, group_size=1, scale_bits=0) == full
    assert packed_footprint_bytes(model, 4, 32, scale_bits=16) == full - weights * 4 + weights * 4.5 / 8
    rows = sum(linear_weight(m).shape[0] for m in linear_layers(model).values())  # per channel: a scale per row
    assert packed_footprint_bytes(model, 8) == full - weights * 4 + weights + rows * 2
    assert packed_footprint_bytes(model, 8, "channel") == packed_footprint_bytes(model, 8)
    assert packed_footprint_bytes(model, 8, "tensor") == full - weights * 4 + weights + 14 * 2
    with pytest.raises(ValueError, match="ambiguous"):
        packed_footprint_bytes(model, 8, None)
    with pytest.raises(ValueError, match="positive"):
        packed_footprint_bytes(model, 0)


def test_linear_bits_per_weight_float_and_bitsandbytes():
    model = tiny_llama(vocab_size=300)
    assert linear_bits_per_weight(model) == 32
    bnb = pytest.importorskip("bitsandbytes")
    lin = nn.Linear(256, 128, bias=False)
    q = bnb.nn.Linear4bit(256, 128, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4", blocksize=64,
                                 compress_statistics=False)
    holder = nn.Sequential(q.to("cpu"))
    bits = linear_bits_per_weight(holder, exclude=())
    assert 4.5 <= bits < 4.6  # 4 bits + a float32 absmax per 64 weights + the 16-value code book


def test_fake_quantize_model_changes_only_the_copy_and_linear_weights():
    model = tiny_llama(vocab_size=300)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = fake_quantize_model_(copy.deepcopy(model), lambda w: fake_quantize(w, 3, "channel"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    changed = [k for k, v in quantized.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("proj" in k for k in changed)  # embedding, norms (and tied head) untouched
    levels = torch.unique(quantized.model.layers[0].mlp.up_proj.weight[0]).numel()
    assert levels <= 7  # 3-bit symmetric: codes -3..3


def test_fake_quantize_model_works_on_gpt2_conv1d_and_checks_the_quantizer():
    model = tiny_gpt2(vocab_size=300)
    fake_quantize_model_(model, lambda w: fake_quantize(w, 4, "group", 32))
    assert torch.unique(linear_weight(model.transformer.h[0].mlp.c_fc)[0, :32]).numel() <= 15
    with pytest.raises(ValueError, match="shape"):
        fake_quantize_model_(model, lambda w: w[:1])


def test_rtn_ladder_table_and_plot():
    model = tiny_llama(vocab_size=300)
    blocks = torch.randint(0, 300, (2, 16))
    table = rtn_ladder(model, blocks, bits=(8, 3), group_size=32, progress=False)
    assert list(table.columns) == ["bits", "granularity", "perplexity", "bits_per_weight"]
    assert len(table) == 6 and set(table["granularity"]) == {"tensor", "channel", "group 32"}
    base = perplexity(model, blocks, progress=False)
    eight = table[table.bits == 8].perplexity
    assert ((eight - base).abs() / base < 0.01).all()
    assert table.loc[(table.bits == 3) & (table.granularity == "group 32"), "bits_per_weight"].item() == 3.5
    per_channel = table.loc[(table.bits == 8) & (table.granularity == "channel"), "bits_per_weight"].item()
    assert per_channel == 8 + 1024 * 16 / 73728  # every layer's own rows (see the packed_linear_bits test)
    assert plot_ladder(table, base).get_ylabel().startswith("validation perplexity")
    with pytest.raises(ValueError, match="granularities"):
        rtn_ladder(model, blocks, granularities=("rows",))


def test_input_channel_absmax_finds_the_largest_input():
    model = tiny_llama(vocab_size=300)
    layer = model.model.layers[0].mlp.down_proj
    blocks = torch.randint(0, 300, (3, 16))
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].abs().amax(dim=(0, 1))))
    with torch.no_grad():
        model(blocks)
    handle.remove()
    assert torch.allclose(input_channel_absmax(model, layer, blocks, batch_size=2), seen[0])
    with pytest.raises(ValueError, match="not a part of model"):
        input_channel_absmax(model, nn.Linear(4, 4), blocks)


def test_static_quantize_linears_prepare_calibrate_convert():
    model = tiny_llama(vocab_size=300)
    names = [n for n in linear_layers(model) if "mlp" in n]
    blocks = torch.randint(0, 300, (4, 16))
    qmodel = static_quantize_linears(model, names, blocks, batch_size=2, progress=False)
    wrapped = qmodel.get_submodule(names[0])
    assert isinstance(wrapped, StaticQuantLinear)
    assert type(wrapped[1]).__module__.startswith("torch.ao.nn.quantized")  # an int8 kernel now
    assert isinstance(model.get_submodule(names[0]), nn.Linear)  # the caller's model is untouched
    base, quant = perplexity(model, blocks, progress=False), perplexity(qmodel, blocks, progress=False)
    assert abs(quant - base) / base < 0.05
    uncalibrated = static_quantize_linears(model, names, None, progress=False)  # the article's mistake
    assert uncalibrated.get_submodule(names[0])[0].scale.item() == 1.0  # observers saw nothing: default scale
    assert wrapped[0].scale.item() < 0.5  # calibrated: fitted to the real input range
    with pytest.raises(ValueError, match="names is empty"):
        static_quantize_linears(model, [], blocks)
    with pytest.raises(ValueError, match="nn.Linear"):
        StaticQuantLinear(nn.ReLU())


def test_plots_and_explorer(w):
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_weight_histogram(w, fake_quantize(w, 3, "channel"), title="t")
    assert len(ax.patches) > 0 and ax.get_yscale() == "log"
    widget = quantization_explorer(w, bits=3, group_size=32)
    sliders, out = widget.children
    bits_slider, group_slider = sliders.children
    assert bits_slider.value == 3 and group_slider.value == 32
    assert widget.view["bits"] == 3 and "group 32" in widget.view["title"]  # drawn without interaction
    first = widget.view["error"]["relative"]
    bits_slider.value = 6  # moving a slider redraws
    assert "6 bits" in widget.view["title"] and widget.view["error"]["relative"] < first
    group_slider.value = 0
    assert "per channel" in widget.view["title"]


def test_layer_error_table_rows_and_values():
    torch.manual_seed(4)
    x = torch.randn(8, 128) * 0.05
    x[2, 7] = 1.0  # an outlier
    table = layer_error_table(x, bits=(8, 3), group_sizes=(64, 32))
    assert list(table.columns) == ["bits", "scale per", "scheme", "relative error %", "SQNR dB"]
    assert len(table) == 2 * 4 * 2
    assert list(table["scale per"][:8:2]) == ["tensor", "channel", "group 64", "group 32"]
    row = table[(table.bits == 3) & (table["scale per"] == "group 32") & (table.scheme == "zero point")]
    expected = quantization_error(x, fake_quantize(x, 3, "group", 32, symmetric=False))
    assert row["relative error %"].item() == pytest.approx(100 * expected["relative"])
    assert row["SQNR dB"].item() == pytest.approx(expected["sqnr_db"])
    three = table[(table.bits == 3) & (table.scheme == "absmax")].set_index("scale per")["relative error %"]
    assert three["group 32"] < three["channel"] < three["tensor"]  # the outlier spoils less and less
    with pytest.raises(ValueError, match="does not divide"):
        layer_error_table(x, bits=(4,), group_sizes=(48,))


def test_dynamic_quantize_linears_on_a_copy():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = tiny_llama(vocab_size=300)
    names = [n for n in linear_layers(model) if n.endswith("down_proj")]
    partial = dynamic_quantize_linears(model, names)
    assert all(isinstance(partial.get_submodule(n), DynamicLinear) for n in names)
    assert isinstance(partial.model.layers[0].mlp.up_proj, nn.Linear)  # only the named layers
    assert isinstance(model.get_submodule(names[0]), nn.Linear)  # the caller's model is untouched
    everything = dynamic_quantize_linears(model)
    assert isinstance(everything.lm_head, DynamicLinear)  # None: every nn.Linear, as the plain call does
    with pytest.raises(ValueError, match="names is empty"):
        dynamic_quantize_linears(model, [])
    with pytest.raises(ValueError, match="not an nn.Linear"):
        dynamic_quantize_linears(model, ["model.norm"])


def test_dynamic_family_perplexity_quantizes_one_family_at_a_time():
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    model = tiny_llama(vocab_size=300)
    blocks = torch.randint(0, 300, (2, 16))
    result = dynamic_family_perplexity(model, {"attention": ("self_attn",), "MLP down": ("down_proj",)}, blocks,
                                       batch_size=2)
    assert list(result) == ["attention", "MLP down"]
    downs = {n: default_dynamic_qconfig for n in linear_layers(model) if "down_proj" in n}
    by_hand = quantize_dynamic(copy.deepcopy(model), downs, dtype=torch.qint8)
    assert result["MLP down"] == pytest.approx(perplexity(by_hand, blocks, batch_size=2, progress=False))
    base = perplexity(model, blocks, progress=False)
    assert result["attention"] != base and abs(result["attention"] / base - 1) < 0.05
    with pytest.raises(ValueError, match="no linear layer"):
        dynamic_family_perplexity(model, {"conv": ("conv",)}, blocks)


def test_ordering_verdict_needs_every_measurement_to_agree():
    from course_lib.claims import INCONCLUSIVE

    few, many = {"nf4": 30.0, "fp4": 31.0, "int4": 32.0}, {"nf4": 29.0, "fp4": 33.0, "int4": 32.5}
    assert ordering_verdict("nf4", "fp4", few, many) is True
    assert ordering_verdict("fp4", "nf4", few, many) is False
    assert ordering_verdict("fp4", "int4", few, many) == INCONCLUSIVE  # 31 < 32 but 33 > 32.5
    assert ordering_verdict("fp4", "int4", few) is True
    assert ordering_verdict("nf4", "fp4", {"nf4": 1.0, "fp4": 1.0}) == INCONCLUSIVE  # a tie
    with pytest.raises(ValueError, match="missing"):
        ordering_verdict("nf4", "int8", few)
    with pytest.raises(ValueError, match="at least one"):
        ordering_verdict("nf4", "fp4")


@pytest.mark.real_model
def test_real_layer_nf4_by_hand_matches_bitsandbytes(real_model):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    model, _ = real_model
    weight = model.model.layers[3].mlp.down_proj.weight.detach()
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    theirs = bnbf.dequantize_4bit(packed, state)
    assert torch.allclose(fake_quantize_code_book(weight, nf4_code_book(), 64), theirs, atol=1e-6)


# --------------------------------------------------------------------------- exercise checkers


def _solutions():
    def absmax_q(w, bits):
        scale = w.abs().max() / (2 ** (bits - 1) - 1)
        return torch.round(w / scale).to(torch.int8), scale

    def group_fq(w, bits, group_size):
        rows = w.reshape(-1, group_size)
        scale = rows.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
        return (torch.round(rows / scale) * scale).reshape(w.shape)

    def nf4():
        pos = torch.special.ndtri(torch.linspace(0.9677083, 0.5, 9, dtype=torch.float64)[:-1])
        neg = -torch.special.ndtri(torch.linspace(0.9677083, 0.5, 8, dtype=torch.float64)[:-1])
        v = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)])
        return torch.sort(v / v.abs().max()).values.float()

    def code_q(w, code, block_size):
        blocks = w.reshape(-1, block_size)
        absmax = blocks.abs().amax(dim=1, keepdim=True)
        idx = (blocks / absmax).unsqueeze(-1).sub(code).abs().argmin(-1)
        return (code[idx] * absmax).reshape(w.shape)

    return absmax_q, group_fq, nf4, code_q


def test_checkers_accept_correct_answers(capsys):
    from course_lib.checks import quantization as checks

    absmax_q, group_fq, nf4, code_q = _solutions()
    assert checks.check_absmax_quantize(absmax_q)
    assert checks.check_absmax_dequantize(lambda q, s: q.float() * s)
    assert checks.check_groupwise_fake_quantize(group_fq)
    assert checks.check_nf4_code_book(nf4)
    assert checks.check_blockwise_code_book_quantize(code_q)
    assert capsys.readouterr().out.count("✅") == 5


def test_checkers_give_specific_hints(capsys):
    from course_lib.checks import quantization as checks

    def wrong_qmax(w, bits):
        scale = w.abs().max() / (2 ** bits - 1)
        return torch.round(w / scale).to(torch.int8), scale

    def truncates(w, bits):
        scale = w.abs().max() / (2 ** (bits - 1) - 1)
        return (w / scale).to(torch.int8), scale

    def max_not_abs(w, bits):
        scale = w.max() / (2 ** (bits - 1) - 1)
        return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale

    def per_row(w, bits, group_size):
        return fake_quantize(w, bits, "channel")

    def no_rescale(w, code, block_size):
        blocks = w.reshape(-1, block_size)
        absmax = blocks.abs().amax(dim=1, keepdim=True)
        return code[(blocks / absmax).unsqueeze(-1).sub(code).abs().argmin(-1)].reshape(w.shape)

    def symmetric_nf4():
        pos = torch.special.ndtri(torch.linspace(0.9677083, 0.5, 9)[:-1])
        v = torch.cat([pos, -pos])
        return torch.sort(v / v.abs().max()).values

    cases = [(checks.check_absmax_quantize, wrong_qmax, "2**(bits-1) - 1"),
             (checks.check_absmax_quantize, truncates, "torch.round"),
             (checks.check_absmax_quantize, max_not_abs, "magnitude"),
             (checks.check_absmax_dequantize, lambda q, s: q.float() / s, "multiplies"),
             (checks.check_groupwise_fake_quantize, per_row, "one scale per row"),
             (checks.check_nf4_code_book, symmetric_nf4, "exact zero"),
             (checks.check_blockwise_code_book_quantize, no_rescale, "multiply them back")]
    for checker, wrong, hint in cases:
        result = checker(wrong)
        assert not result and hint in result.message, (wrong.__name__, result.message)
    capsys.readouterr()


def test_checkers_reference_functions():
    from course_lib.checks.quantization import (reference_absmax_dequantize, reference_absmax_quantize,
                                                reference_blockwise_code_book_quantize,
                                                reference_groupwise_fake_quantize, reference_nf4_code_book)

    x = torch.linspace(-1, 1, 64).reshape(2, 32)
    q, scale = reference_absmax_quantize(x, 8)
    assert scale.shape == () and torch.allclose(reference_absmax_dequantize(q, scale), x, atol=scale.item() / 2)
    assert reference_groupwise_fake_quantize(x, 8, 16).shape == x.shape
    assert len(reference_nf4_code_book()) == 16
    assert reference_blockwise_code_book_quantize(x, reference_nf4_code_book(), 32).shape == x.shape
