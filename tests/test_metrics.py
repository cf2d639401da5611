import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.layers import linear_layers
from course_lib import metrics
from course_lib.metrics import (PeakMemory, compare_speeds, exact_match, forward_seconds, generate_answers,
                                generation_speed, nll_sum, perplexity, relative_spread)
from course_lib.footprint import count_parameters, footprint_bytes, naive_footprint_bytes
from course_lib.tasks import Example
from course_lib.tiny_models import tiny_llama


def test_perplexity_matches_the_definition():
    model = tiny_llama(vocab_size=97)
    blocks = torch.randint(0, 97, (5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(blocks).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 97), blocks[:, 1:].reshape(-1))
    assert perplexity(model, blocks, batch_size=2, progress=False) == pytest.approx(math.exp(nll.item()), rel=1e-5)
    total, count = nll_sum(model, blocks, batch_size=3, progress=False)
    assert count == 5 * 11


def test_uniform_model_has_perplexity_equal_to_vocabulary():
    model = tiny_llama(vocab_size=50, tie_embeddings=False)
    torch.nn.init.zeros_(model.lm_head.weight)
    blocks = torch.randint(0, 50, (3, 8))
    assert perplexity(model, blocks, progress=False) == pytest.approx(50, rel=1e-5)


def test_perplexity_input_errors():
    model = tiny_llama(vocab_size=50)
    with pytest.raises(ValueError, match="block_size >= 2"):
        perplexity(model, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(model, torch.zeros(2, 4, dtype=torch.long), batch_size=0)


def test_tied_weights_count_once():
    tied, untied = tiny_llama(vocab_size=300), tiny_llama(vocab_size=300, tie_embeddings=False)
    embed = 300 * 64
    assert count_parameters(untied).total - count_parameters(tied).total == embed
    assert footprint_bytes(untied) - footprint_bytes(tied) == embed * 4
    # buffers (rotary inverse frequencies) are part of the footprint, not of the article's estimate
    assert footprint_bytes(tied) > naive_footprint_bytes(tied)


def test_sparsity_counts_zeros():
    model = tiny_llama(vocab_size=100)
    before = count_parameters(model)
    zeroed = 0
    with torch.no_grad():
        for layer in linear_layers(model).values():
            layer.weight[:, ::2] = 0
            zeroed += layer.weight[:, ::2].numel()
    after = count_parameters(model)
    assert after.total == before.total and before.nonzero - after.nonzero == zeroed
    assert after.sparsity == pytest.approx(1 - after.nonzero / after.total)


def test_four_bit_footprint_includes_quantization_state(tmp_path, tokenizer):
    from course_lib.models import load_model, save_model

    folder = save_model(tiny_llama(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256),
                        tokenizer, tmp_path / "m")
    fp32, _ = load_model(str(folder), device="cpu", verbose=False)
    nf4, _ = load_model(str(folder), quantization="nf4", device="cpu", verbose=False)
    linear_params = sum(m.weight.numel() for m in linear_layers(fp32).values())
    # 4 bits per weight plus one float32 absmax per block of 64: 4 + 32/64 = 4.5 bits
    expected_gap = linear_params * (32 / 64) / 8
    gap = footprint_bytes(nf4) - naive_footprint_bytes(nf4)
    assert gap >= expected_gap  # the article's estimate misses at least the absmax values
    assert count_parameters(nf4).total == count_parameters(fp32).total  # logical count
    assert sum(p.numel() for p in nf4.parameters()) < count_parameters(fp32).total  # numel() undercounts


def test_dynamic_int8_footprint_counts_packed_weights():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    assert naive_footprint_bytes(q) == 0  # no nn.Parameters left: the estimate sees nothing
    # int8 weights (1 byte each) plus float32 biases
    assert footprint_bytes(q) == 64 * 64 + 64 * 8 + 4 * (64 + 8)
    assert count_parameters(q).total == count_parameters(model).total


def test_generation_speed_produces_exact_token_count(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer))
    result = generation_speed(model, tokenizer, new_tokens=5, repeats=2, warmup=1)
    assert generation_speed(model, tokenizer, metrics.DEFAULT_PROMPT, new_tokens=5, repeats=1)["new_tokens"] == 5
    assert result["new_tokens"] == 5 and len(result["times_s"]) == 2
    assert result["tokens_per_s"] == pytest.approx(5 / result["latency_s"])
    with pytest.raises(ValueError):
        generation_speed(model, tokenizer, new_tokens=0)


def test_exact_match_and_generation(tokenizer, monkeypatch):
    model = tiny_llama(vocab_size=len(tokenizer))
    examples = [Example("Date: 1 May 2020\nISO:", "2020-05-01"), Example("Date: 2 May 2020\nISO:", "2020-05-02")]
    answers = generate_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens=3, progress=False)
    assert len(answers) == 2 and all("\n" not in a for a in answers)
    acc, preds = exact_match(model, tokenizer, examples, return_predictions=True, progress=False)
    assert 0 <= acc <= 1 and len(preds) == 2
    import course_lib.metrics as metrics
    monkeypatch.setattr(metrics, "generate_answers", lambda *a, **k: ["2020-05-01", "wrong"])
    assert exact_match(model, tokenizer, examples, progress=False) == 0.5
    with pytest.raises(ValueError):
        exact_match(model, tokenizer, [])


def test_peak_memory_sees_a_large_allocation():
    """In a fresh process: a long-running process may reuse memory it already holds, so the
    same allocation need not raise its resident memory at all (see PeakMemory's docstring)."""
    import subprocess
    import sys

    code = ("import torch\nfrom course_lib.metrics import PeakMemory\n"
            "with PeakMemory('cpu', interval=0.001) as peak:\n"
            "    big = torch.ones(64, 1024, 1024)\n    big += 1\n    del big\n"
            "print(peak.increase_bytes)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) > 128 * 2**20  # 256 MiB allocated
    assert PeakMemory("cpu").__enter__().__exit__() is False


def test_parameter_count_is_a_record():
    from course_lib.footprint import ParameterCount

    counts = count_parameters(torch.nn.Linear(3, 2, bias=False))
    assert isinstance(counts, ParameterCount) and counts.total == 6 and counts.sparsity == pytest.approx(0.0)


def test_forward_seconds():
    model = tiny_llama(vocab_size=97)
    blocks = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    assert 0 < forward_seconds(model, blocks, repeats=2) < 5
    with pytest.raises(ValueError, match="repeats"):
        forward_seconds(model, blocks, repeats=0)


def test_relative_spread():
    assert relative_spread([2.0, 3.0, 4.0]) == pytest.approx(2.0 / 3.0)
    assert math.isnan(relative_spread([1.5]))  # one timing says nothing about the noise
    with pytest.raises(ValueError, match="at least one"):
        relative_spread([])


def test_compare_speeds_interleaves_rotates_and_takes_medians(monkeypatch):
    """Fake timers: check the order of calls, the medians and the spreads exactly."""
    calls = []
    latencies = {"a": iter([9.0, 2.0, 4.0, 3.0]), "b": iter([9.0, 1.0, 1.0, 1.0])}  # warm-up first
    forwards = {"a": iter([9.0, 0.5, 0.5, 0.5]), "b": iter([9.0, 0.2, 0.4, 0.3])}
    models = {"a": tiny_llama(vocab_size=8, seed=0), "b": tiny_llama(vocab_size=8, seed=1)}
    label = {id(v): k for k, v in models.items()}

    def fake_generation_speed(model, tokenizer, new_tokens, repeats, warmup):
        calls.append(("gen", label[id(model)]))
        latency = next(latencies[label[id(model)]])
        return {"latency_s": latency, "tokens_per_s": new_tokens / latency, "new_tokens": new_tokens}

    def fake_forward_seconds(model, input_ids, repeats, warmup):
        calls.append(("fwd", label[id(model)]))
        return next(forwards[label[id(model)]])

    monkeypatch.setattr(metrics, "generation_speed", fake_generation_speed)
    monkeypatch.setattr(metrics, "forward_seconds", fake_forward_seconds)
    table = compare_speeds(models, tokenizer=None, new_tokens=6, rounds=3, forward_input=torch.zeros(1, 2))
    order = [name for kind, name in calls if kind == "gen"]
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then round i starts at i mod n
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "latency_s"] == 3.0 and table.loc["a", "tokens_per_s"] == 2.0
    assert table.loc["a", "spread"] == pytest.approx((4.0 - 2.0) / 3.0) and table.loc["b", "spread"] == 0
    assert table.loc["b", "forward_s"] == pytest.approx(0.3)
    assert table.loc["b", "forward_spread"] == pytest.approx((0.4 - 0.2) / 0.3)
    with pytest.raises(ValueError, match="rounds"):
        compare_speeds(models, None, rounds=0)
    with pytest.raises(ValueError, match="at least one model"):
        compare_speeds({}, None)


def test_compare_speeds_on_real_generation(tokenizer):
    base = tiny_llama(vocab_size=len(tokenizer))
    table = compare_speeds({"base": base}, tokenizer, new_tokens=3, rounds=2)
    assert list(table.columns) == ["latency_s", "tokens_per_s", "spread", "rounds", "device"]
    assert table.loc["base", "tokens_per_s"] == pytest.approx(3 / table.loc["base", "latency_s"])
    assert table.loc["base", "rounds"] == 2 and table.loc["base", "device"] == "cpu"


def test_compare_speeds_refuses_models_on_different_devices(monkeypatch):
    a, b = tiny_llama(vocab_size=97), tiny_llama(vocab_size=97)
    monkeypatch.setattr(metrics, "model_device", lambda m: torch.device("cuda" if m is b else "cpu"))
    with pytest.raises(ValueError, match="one device"):
        compare_speeds({"a": a, "b": b}, None)


def test_perplexity_refuses_lists_empty_blocks_and_foreign_token_ids():
    model = tiny_llama(vocab_size=97)
    with pytest.raises(ValueError, match="tensor of token ids"):
        perplexity(model, [[1, 2, 3]])
    with pytest.raises(ValueError, match="tensor of token ids"):
        perplexity(model, torch.empty(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        perplexity(model, torch.tensor([[1, 2, 500]]))


def test_int8_footprint_is_the_same_before_and_after_a_forward_pass(tmp_path, tokenizer):
    """bitsandbytes moves Linear8bitLt's row scales from weight.SCB to state.SCB on the first
    forward pass: the footprint must count them either way."""
    from course_lib.models import load_model, save_model

    folder = save_model(tiny_llama(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256),
                        tokenizer, tmp_path / "m")
    int8, _ = load_model(str(folder), quantization="int8", device="cpu", verbose=False)
    rows = sum(m.weight.shape[0] for m in linear_layers(int8).values())
    before = footprint_bytes(int8)
    assert before - naive_footprint_bytes(int8) >= 4 * rows  # one float32 scale per row
    int8(torch.tensor([[1, 2, 3]]))
    assert footprint_bytes(int8) == before



def test_peak_memory_of_child_processes():
    import subprocess
    import sys

    code = "import time; x = bytearray(200_000_000); time.sleep(1.0)"
    with PeakMemory("cpu", interval=0.02, children=True) as peak:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert peak.peak_bytes > 200_000_000  # the child's buffer, not this process's memory
