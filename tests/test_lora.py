"""Chapter 05: LoRA from scratch, peft helpers, fine-tuning comparisons, QLoRA guard, checkers."""

import copy
import math

import pytest
import torch
from torch import nn

from course_lib.claims import INCONCLUSIVE
from course_lib.lora import (SIZES, TARGET_PRESETS, LoRALinear, add_lora_, check_rank, folder_size_bytes,
                             linear_module_names, lora_config, lora_parameter_count, lora_parameter_table,
                             max_abs_logit_difference, projection_names, resolve_targets, trainable_parameters)
from course_lib.device import release_memory
from course_lib.metrics import answer_loss
from course_lib.lora_training import (ALPHA_RULES, FineTuneResult, best_per_rank, fine_tune, lora_sweep,
                                      step_time_claim, sweep_effects, sweep_verdict, forgetting_claim)
from course_lib.qlora import QUANT_TYPES, load_qlora_base, merge_into_base_
from course_lib.profiles import sizes_for
from course_lib.tasks import Example
from course_lib.tiny_models import tiny_gpt2, tiny_llama


class CharTokenizer:
    """A tiny tokenizer (one id per character) so that training tests need no real tokenizer."""

    pad_token_id = 0
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 200) for c in text]}


EXAMPLES = [Example(f"Q{i}:", f"{i}{i}") for i in range(8)]


def test_lora_linear_creates_A_and_B_on_the_base_layer_s_device_and_dtype():
    """A base layer on another device (here ``meta``) gets its adapter there, not on the CPU."""
    layer = LoRALinear(nn.Linear(12, 7, device="meta", dtype=torch.float16), r=4, alpha=8)
    assert layer.A.device.type == "meta" and layer.B.device.type == "meta"
    assert layer.A.dtype == layer.B.dtype == torch.float16
    x = torch.empty(2, 12, device="meta", dtype=torch.float16)
    assert layer(x).shape == (2, 7) and layer(x).device.type == "meta"


def test_gpt2_attention_means_both_attention_projections_and_the_table_separates_c_proj():
    gpt2 = tiny_gpt2(vocab_size=64, n_embd=32, n_layer=3)
    kinds = projection_names(gpt2)
    assert kinds["transformer.h.0.attn.c_proj"] == "attn.c_proj"
    assert kinds["transformer.h.2.mlp.c_proj"] == "mlp.c_proj" and kinds["transformer.h.1.attn.c_attn"] == "c_attn"
    assert set(projection_names(tiny_llama(vocab_size=64)).values()) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    table = lora_parameter_table(gpt2, r=4, targets="all-linear").set_index("projection")
    assert table.loc["attn.c_proj", "W params"] == 32 * 32 and table.loc["mlp.c_proj", "W params"] == 128 * 32
    assert table.loc["attn.c_proj", "layers"] == 3 and table.loc["mlp.c_proj", "layers"] == 3
    peft_model = add_lora_(copy.deepcopy(gpt2), r=4, targets="attention")
    expected = 3 * (lora_parameter_count(32, 96, 4) + lora_parameter_count(32, 32, 4))  # c_attn + attn.c_proj
    assert trainable_parameters(peft_model)["trainable"] == expected
    attention = lora_parameter_table(gpt2, r=4, targets="attention")
    assert attention.iloc[-1]["A + B params"] == expected and list(attention["projection"][:-1]) == ["c_attn", "attn.c_proj"]
    everything = add_lora_(copy.deepcopy(gpt2), r=4, targets="all-linear")
    assert trainable_parameters(everything)["trainable"] == lora_parameter_table(gpt2, r=4).iloc[-1]["A + B params"]


def test_check_rank_and_logit_difference_restore_the_training_mode():
    check_rank(3)
    with pytest.raises(ValueError, match="positive integer"):
        check_rank(0)
    a, b = tiny_llama(vocab_size=64).train(), tiny_llama(vocab_size=64, seed=1).eval()
    assert max_abs_logit_difference(a, b, torch.randint(0, 64, (1, 5))) > 0
    assert a.training and not b.training


def test_rslora_config_and_alpha_rules():
    assert lora_config(tiny_llama(vocab_size=64), r=4, rslora=True).use_rslora
    assert ALPHA_RULES == ("fixed", "proportional", "rslora")
    with pytest.raises(ValueError, match="alpha_rule"):
        lora_sweep(tiny_llama(vocab_size=64), CharTokenizer(), EXAMPLES, EXAMPLES, ranks=[1], lrs=[1e-3],
                   steps=1, batch_size=2, alpha_rule="sqrt")


def test_step_time_claim_respects_the_spread():
    steady = lambda t: FineTuneResult(step_seconds=[9.0] + [t] * 5)  # noqa: E731 (first step: warm-up, ignored)
    verdict, ratio, spread = step_time_claim(steady(1.0), steady(2.0))
    assert verdict is True and ratio == 2.0 and spread == 0.0
    assert step_time_claim(steady(2.0), steady(1.0))[0] is False
    noisy = FineTuneResult(step_seconds=[9.0, 1.0, 3.0, 1.0, 3.0, 2.0])  # spread (3 - 1) / 2 = 1
    assert step_time_claim(steady(1.5), noisy)[0] == INCONCLUSIVE
    assert step_time_claim(steady(1.0), FineTuneResult(step_seconds=[1.0, 2.0]))[0] == INCONCLUSIVE


def test_forgetting_is_judged_only_at_matched_accuracy():
    assert forgetting_claim(20.0, 30.0, 0.90, 0.92, n_test=100) is True
    assert forgetting_claim(30.0, 20.0, 0.90, 0.92, n_test=100) is False
    assert forgetting_claim(20.0, 20.1, 0.90, 0.92, n_test=100) == INCONCLUSIVE  # within the 2 % margin
    # full fine-tuning barely learned the task: its lower perplexity says nothing about forgetting
    assert forgetting_claim(30.0, 20.0, 0.95, 0.20, n_test=100) == INCONCLUSIVE


def test_fine_tune_records_one_time_per_step():
    run = fine_tune(add_lora_(tiny_llama(vocab_size=256), r=2), CharTokenizer(), EXAMPLES, steps=3, lr=1e-3,
                    batch_size=2, progress=False)
    assert len(run.step_seconds) == 3 and all(t > 0 for t in run.step_seconds)
    assert sum(run.step_seconds) <= run.seconds  # both from train()'s one clock
    row = run.cost_row("LoRA", accuracy=0.5, disk_bytes=2_000_000)
    assert row["method"] == "LoRA" and row["exact match"] == 0.5 and row["size on disk MB"] == 2.0
    assert row["weights + gradients + AdamW state MB"] == run.training_state_bytes / 1e6


def test_merge_into_base_reports_the_logit_change():
    model = add_lora_(tiny_llama(vocab_size=64), r=4, targets="all-linear")
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    merged, diff = merge_into_base_(model, torch.randint(0, 64, (2, 6)))
    assert diff < 1e-4 and not any("lora" in n for n, _ in merged.named_modules())
    with pytest.raises(ValueError, match="no adapter"):
        merge_into_base_(tiny_llama(vocab_size=64), torch.randint(0, 64, (1, 3)))
    assert QUANT_TYPES == ("nf4", "fp4")


def test_sizes_table_has_every_profile():
    for name in ("smoke", "cpu", "gpu"):
        sizes = sizes_for(SIZES, name)
        assert sizes.steps >= 1 and sizes.batch_size >= 1 and len(sizes.sweep_ranks) >= 2


# --------------------------------------------------------------------------- the layer


def test_lora_linear_starts_as_the_base_layer_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 12)
    assert torch.equal(layer(x), base(x))  # B = 0 at the start
    assert not base.weight.requires_grad and layer.A.requires_grad and layer.B.requires_grad
    assert layer.A.shape == (4, 12) and layer.B.shape == (7, 4) and layer.scaling == 2.0
    with torch.no_grad():
        layer.B.normal_()
    expected = base(x) + 2.0 * x @ layer.A.T @ layer.B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    merged = x @ layer.merged_weight().T + base.bias
    assert torch.allclose(merged, layer(x), atol=1e-5)


def test_lora_linear_matches_peft_with_the_same_A_and_B():
    model = tiny_llama(vocab_size=64)
    peft_model = add_lora_(copy.deepcopy(model), r=4, alpha=8, targets=["q_proj"])
    peft_layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
    mine = LoRALinear(copy.deepcopy(model.model.layers[0].self_attn.q_proj), r=4, alpha=8)
    with torch.no_grad():
        mine.A.copy_(peft_layer.lora_A["default"].weight)
        mine.B.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(2, 5, 64)
    assert torch.allclose(mine(x), peft_layer(x), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_rank_is_refused(bad):
    with pytest.raises(ValueError, match="positive integer"):
        LoRALinear(nn.Linear(4, 4), r=bad, alpha=8)
    with pytest.raises(ValueError, match="rank"):
        lora_config(tiny_llama(vocab_size=64), r=bad)


def test_lora_linear_refuses_other_layers_and_bad_alpha():
    with pytest.raises(ValueError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1), r=2, alpha=2)
    with pytest.raises(ValueError, match="alpha"):
        LoRALinear(nn.Linear(4, 4), r=2, alpha=0)


def test_parameter_count_formula():
    assert lora_parameter_count(576, 192, 8) == 8 * (576 + 192)
    with pytest.raises(ValueError):
        lora_parameter_count(4, 4, 0)


# --------------------------------------------------------------------------- targets and peft


def test_target_presets_and_names():
    llama, gpt2 = tiny_llama(vocab_size=64), tiny_gpt2(vocab_size=64)
    assert resolve_targets(llama, "q,v") == ["q_proj", "v_proj"]
    assert resolve_targets(llama, "all-linear") == ["down_proj", "gate_proj", "k_proj", "o_proj",
                                                     "q_proj", "up_proj", "v_proj"]
    assert resolve_targets(gpt2, "attention") == ["attn.c_attn", "attn.c_proj"]
    assert resolve_targets(gpt2, "all-linear") == ["attn.c_proj", "c_attn", "c_fc", "mlp.c_proj"]
    assert set(TARGET_PRESETS["attention"]) == {"llama", "gpt2"}
    assert "lm_head" in linear_module_names(llama) and "c_fc" in linear_module_names(gpt2)


def test_unknown_target_lists_the_model_s_linear_layers():
    with pytest.raises(ValueError, match=r"'qproj' matches no linear layer.*q_proj, up_proj, v_proj"):
        lora_config(tiny_llama(vocab_size=64), targets=["qproj"])
    with pytest.raises(ValueError, match="Unknown target preset"):
        resolve_targets(tiny_llama(vocab_size=64), "mlp-only")
    with pytest.raises(ValueError, match="empty"):
        resolve_targets(tiny_llama(vocab_size=64), [])


def test_gpt2_config_sets_fan_in_fan_out_and_peft_counts_match_the_formula():
    gpt2 = tiny_gpt2(vocab_size=64, n_embd=32)
    config = lora_config(gpt2, r=8, alpha=32, targets="q,v", dropout=0.1)
    assert config.fan_in_fan_out and list(config.target_modules) == ["attn.c_attn"]
    peft_model = add_lora_(copy.deepcopy(gpt2), config)
    counts = trainable_parameters(peft_model)
    assert counts["trainable"] == 2 * lora_parameter_count(32, 96, 8)  # two blocks, c_attn 32 -> 96
    assert counts["trainable"] == peft_model.get_nb_trainable_parameters()[0]
    assert not lora_config(tiny_llama(vocab_size=64)).fan_in_fan_out
    x = torch.randint(0, 64, (1, 6))
    assert max_abs_logit_difference(gpt2, peft_model, x) == 0.0  # B = 0: unchanged model


def test_add_lora_leaves_a_deep_copy_s_original_alone_and_refuses_mixed_arguments():
    model = tiny_llama(vocab_size=64)
    before = trainable_parameters(model)
    add_lora_(copy.deepcopy(model), r=2)
    assert trainable_parameters(model) == before and before["percent"] == 100.0
    a1, a2 = (add_lora_(copy.deepcopy(model), r=2, seed=1).base_model.model.model.layers[0].self_attn
              .q_proj.lora_A["default"].weight for _ in range(2))
    assert torch.equal(a1, a2)  # the seed makes the initialisation of A reproducible
    with pytest.raises(ValueError, match="not both"):
        add_lora_(copy.deepcopy(model), lora_config(model), r=4)
    with pytest.raises(ValueError, match="dropout"):
        lora_config(model, dropout=1.0)


def test_parameter_table_totals():
    model = tiny_llama(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2)
    table = lora_parameter_table(model, r=4, targets="all-linear")
    total = table.iloc[-1]
    peft_model = add_lora_(copy.deepcopy(model), r=4, targets="all-linear")
    assert total["A + B params"] == trainable_parameters(peft_model)["trainable"]
    assert total["layers"] == 14 and table.iloc[0]["layers"] == 2


def test_merge_and_unload_matches_and_sizes_on_disk(tmp_path):
    model = tiny_llama(vocab_size=64)
    peft_model = add_lora_(copy.deepcopy(model), r=4, targets="all-linear")
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    x = torch.randint(0, 64, (2, 7))
    assert max_abs_logit_difference(peft_model, merged, x) < 1e-4
    assert max_abs_logit_difference(model, merged, x) > 1e-3
    peft_model.save_pretrained(tmp_path / "adapter")
    merged.save_pretrained(tmp_path / "full")
    adapter, full = folder_size_bytes(tmp_path / "adapter"), folder_size_bytes(tmp_path / "full")
    assert 0 < adapter < full
    assert folder_size_bytes(tmp_path / "adapter" / "adapter_model.safetensors") < adapter
    with pytest.raises(ValueError, match="does not exist"):
        folder_size_bytes(tmp_path / "missing")


# --------------------------------------------------------------------------- training and sweeps


def test_fine_tune_trains_only_the_adapter_and_reports_costs():
    model = add_lora_(tiny_llama(vocab_size=256), r=4, targets="q,v")
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = answer_loss(model, CharTokenizer(), EXAMPLES, batch_size=3)
    run = fine_tune(model, CharTokenizer(), EXAMPLES, steps=20, lr=1e-2, batch_size=4, progress=False)
    release_memory()
    assert isinstance(run, FineTuneResult) and len(run.losses) == 20
    assert answer_loss(model, CharTokenizer(), EXAMPLES) < before
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    # tiny_llama: hidden 64, 4 heads of 16, 2 kv heads -> v_proj 64 -> 32; 2 layers, r = 4
    assert run.trainable_params == 2 * (4 * (64 + 64) + 4 * (64 + 32)) == 1792
    assert 0 < run.trainable_percent < 10 and run.seconds_per_step > 0
    with pytest.raises(ValueError):
        answer_loss(model, CharTokenizer(), [])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fine_tune_state_bytes_match_a_real_adamw_step(method):
    """The reported gradient and optimizer bytes are those a real AdamW step allocates."""
    from course_lib.footprint import footprint_bytes
    from course_lib.training import task_batches

    model = tiny_llama(vocab_size=256)  # tied embeddings: the shared matrix must count once
    if method == "lora":
        model = add_lora_(model, r=4, targets="q,v")
    else:
        model.requires_grad_(True)
    run = fine_tune(model, CharTokenizer(), EXAMPLES, steps=1, lr=1e-3, batch_size=4, progress=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    model(**next(task_batches(CharTokenizer(), EXAMPLES, 4))).loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
    optimizer.step()
    moments = sum(state[k].numel() * state[k].element_size()
                  for state in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq"))
    assert len(optimizer.state) == len(params)
    assert run.gradient_bytes == grads and run.optimizer_state_bytes == moments
    assert run.weights_bytes == footprint_bytes(model)
    assert run.training_state_bytes == footprint_bytes(model) + grads + moments
    if method == "full":  # everything trains: 4 (weights) + 4 (gradient) + 8 (two moments) bytes each
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary inv_freq
        assert run.training_state_bytes == 16 * run.total_params + buffers


def test_lora_sweep_and_effects():
    base = tiny_llama(vocab_size=256)
    snapshot = {n: p.clone() for n, p in base.named_parameters()}
    results = lora_sweep(base, CharTokenizer(), EXAMPLES, EXAMPLES[:4], ranks=[1, 4], lrs=[1e-5, 1e-2],
                         steps=3, batch_size=4, alpha=4)
    assert len(results) == 4 and set(results["rank"]) == {1, 4} and not results["diverged"].any()
    assert all(torch.equal(p, snapshot[n]) for n, p in base.named_parameters())  # base untouched
    assert results.loc[results["rank"] == 4, "trainable"].iloc[0] == 4 * results.loc[results["rank"] == 1, "trainable"].iloc[0]
    assert set(results["scaling"]) == {4.0, 1.0}  # alpha fixed: alpha / r shrinks with r
    effects = sweep_effects(results)
    assert set(effects) == {"lr effect", "rank effect"}
    with pytest.raises(ValueError, match="two ranks"):
        sweep_effects(results[results["rank"] == 1])
    with pytest.raises(ValueError):
        lora_sweep(base, CharTokenizer(), EXAMPLES, EXAMPLES, ranks=[], lrs=[1e-3], steps=1, batch_size=2)


@pytest.mark.parametrize("rule, scalings", [("proportional", {4.0}), ("rslora", {4.0, 2.0})])
def test_lora_sweep_decouples_alpha_from_the_rank(rule, scalings):
    results = lora_sweep(tiny_llama(vocab_size=256), CharTokenizer(), EXAMPLES, EXAMPLES[:2], ranks=[1, 4],
                         lrs=[1e-3], steps=1, batch_size=4, alpha=4, alpha_rule=rule)
    assert set(results["scaling"]) == scalings and set(results["alpha rule"]) == {rule}
    if rule == "proportional":
        assert results.set_index("rank").loc[4, "alpha"] == 16


def test_lora_sweep_keeps_a_diverged_run_and_effects_ignore_it(monkeypatch):
    import pandas as pd

    import course_lib.lora_training as lora_training

    def diverging(*args, **kwargs):  # what train() raises when the loss becomes inf or NaN
        raise FloatingPointError("Loss became nan at step 3; lower the learning rate.")

    monkeypatch.setattr(lora_training, "fine_tune", diverging)
    results = lora_sweep(tiny_llama(vocab_size=256), CharTokenizer(), EXAMPLES, EXAMPLES[:2], ranks=[2],
                         lrs=[10.0], steps=4, batch_size=4, alpha=4)
    assert results["diverged"].all() and results["held-out answer loss"].iloc[0] == float("inf")
    table = pd.DataFrame({"rank": [1, 1, 8, 8, 8], "lr": [1e-3, 1e-2, 1e-3, 1e-2, 1e-1],
                          "held-out answer loss": [1.0, 0.1, 1.0, 0.05, float("inf")]})
    effects = sweep_effects(table)
    # one grid step off the best rate: rank 1 x10, rank 8 x20 (the diverged 1e-1 is left out)
    assert effects["lr effect"] == pytest.approx((math.log(10) + math.log(20)) / 2)
    assert effects["rank effect"] == pytest.approx(math.log(2))  # best of rank 1 (0.1) vs best of rank 8 (0.05)
    assert list(best_per_rank(table)["lr"]) == [1e-2, 1e-2]


def test_effects_judge_each_rank_at_its_best_rate_not_the_grid_s_worst():
    """A grid whose lowest rate barely trains must not decide the verdict by itself."""
    import pandas as pd

    table = pd.DataFrame({"rank": [2] * 4 + [16] * 4, "lr": [1e-5, 1e-4, 1e-3, 3e-3] * 2,
                          "held-out answer loss": [5.0, 0.60, 0.50, 0.55, 5.0, 0.24, 0.20, 0.22]})
    effects = sweep_effects(table)
    assert effects["rank effect"] == pytest.approx(math.log(0.5 / 0.2))
    assert effects["lr effect"] == pytest.approx((math.log(1.2) + math.log(1.1)) / 2)  # 1e-5: two steps away
    assert effects["lr effect"] < effects["rank effect"]
    assert sweep_verdict(effects) is False
    assert sweep_verdict({"lr effect": 3.0, "rank effect": 1.0}) is True
    assert sweep_verdict({"lr effect": 1.5, "rank effect": 1.0}) == INCONCLUSIVE
    with pytest.raises(ValueError, match="factor"):
        sweep_verdict(effects, factor=0.5)
    with pytest.raises(ValueError, match="diverged"):
        best_per_rank(table.assign(**{"held-out answer loss": float("inf")}))


def test_qlora_refuses_an_unsupported_device_and_quant_type():
    with pytest.raises(ValueError, match="CUDA GPU or the CPU"):
        load_qlora_base(device="meta")
    with pytest.raises(ValueError, match="4 bits"):
        load_qlora_base(quant_type="int8")
    quantized = tiny_llama(vocab_size=64).to("meta")
    quantized.is_loaded_in_4bit = True
    with pytest.raises(ValueError, match="CUDA GPU or the CPU"):
        add_lora_(quantized, r=2)


@pytest.mark.real_model
def test_qlora_on_the_real_model_trains_lora_over_nf4(tokenizer):
    pytest.importorskip("bitsandbytes")
    model, _ = load_qlora_base(device="cpu")
    peft_model = add_lora_(model, r=4, targets="q,v")
    examples = [Example("Write the number in English words.\nNumber: 7\nWords:", "seven")] * 2
    run = fine_tune(peft_model, tokenizer, examples, steps=1, lr=1e-3, batch_size=2, progress=False)
    assert run.trainable_params == 30 * (lora_parameter_count(576, 576, 4) + lora_parameter_count(576, 192, 4))
    assert type(peft_model.base_model.model.model.layers[0].self_attn.k_proj).__name__ == "Linear4bit"


# --------------------------------------------------------------------------- exercise checkers


def test_lora_forward_checker_passes_the_reference_and_explains_mistakes(capsys):
    from course_lib.checks.lora import check_lora_forward, reference_lora_forward

    assert check_lora_forward(reference_lora_forward)
    assert not check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T + x @ A.T @ B.T)
    assert "left the scaling out" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T + (r / alpha) * x @ A.T @ B.T)
    assert "not r / alpha" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, alpha, r: x @ W.T)
    assert "only the frozen layer" in capsys.readouterr().out


def _counter(count_layer, keep=lambda name, targets: name.rsplit(".", 1)[-1] in targets):
    """A learner's count_lora_parameters built from a per-layer formula and a layer filter."""
    from course_lib.layers import is_linear, linear_weight

    def count(model, r, targets):
        return sum(count_layer(r, *linear_weight(m).shape) for n, m in model.named_modules()
                   if is_linear(m) and keep(n, targets))
    return count


@pytest.mark.parametrize("mistake, learner, hint", [
    ("no Conv1D", lambda model, r, targets: sum(
        r * (m.in_features + m.out_features) for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets), "Conv1D"),
    ("counted W", _counter(lambda r, o, i: o * i), "frozen weights"),
    ("forgot B", _counter(lambda r, o, i: r * i), "one of the two matrices"),
    ("forgot A", _counter(lambda r, o, i: r * o), "one of the two matrices"),
    ("r*in*out", _counter(lambda r, o, i: r * o * i), "r * in * out multiplies"),
    ("every linear layer", _counter(lambda r, o, i: r * (i + o), keep=lambda n, t: True), "every linear layer"),
    ("counted lm_head", _counter(lambda r, o, i: r * (i + o),
                                 keep=lambda n, t: n.rsplit(".", 1)[-1] in list(t) + ["lm_head"]), "lm_head"),
    ("one layer per kind", lambda model, r, targets: sum({
        n.rsplit(".", 1)[-1]: r * sum(linear_weight_shape(m)) for n, m in model.named_modules()
        if n.rsplit(".", 1)[-1] in targets and hasattr(m, "weight") and m.weight.ndim == 2}.values()),
     "one layer of each kind"),
    ("only the first target", _counter(lambda r, o, i: r * (i + o), keep=lambda n, t: n.rsplit(".", 1)[-1] == t[0]),
     "only one of the targets"),
])
def test_count_checker_names_each_real_mistake(capsys, mistake, learner, hint):
    from course_lib.checks.lora import check_count_lora_parameters

    assert not check_count_lora_parameters(learner)
    out = capsys.readouterr().out
    assert hint in out, (mistake, out)
    assert "check which layers" not in out


def linear_weight_shape(module):
    from course_lib.layers import linear_weight

    return tuple(linear_weight(module).shape)


def test_count_checker_passes_the_reference(capsys):
    from course_lib.checks.lora import check_count_lora_parameters, reference_count_lora_parameters

    assert check_count_lora_parameters(reference_count_lora_parameters)
    assert "✅" in capsys.readouterr().out
    llama = tiny_llama(vocab_size=64, hidden_size=32, num_layers=2)  # q_proj 32 -> 32 in each of 2 blocks
    assert reference_count_lora_parameters(llama, 4, ["q_proj"]) == 2 * lora_parameter_count(32, 32, 4)
    peft_model = add_lora_(copy.deepcopy(llama), r=4, targets=["q_proj", "v_proj"])
    assert reference_count_lora_parameters(llama, 4, ["q_proj", "v_proj"]) == trainable_parameters(peft_model)["trainable"]


def test_reference_lora_forward_is_the_layer_s_forward():
    from course_lib.checks.lora import reference_lora_forward

    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4, bias=False), r=2, alpha=4)
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(3, 6)
    expected = layer(x).detach()
    assert torch.allclose(reference_lora_forward(x, layer.base.weight, layer.A, layer.B, 4, 2).detach(), expected, atol=1e-6)


def test_merge_checker_passes_the_reference_and_explains_mistakes(capsys):
    from course_lib.checks.lora import check_merge_lora, reference_merge_lora

    assert check_merge_lora(reference_merge_lora)
    assert not check_merge_lora(lambda W, A, B, alpha, r: W + B @ A)
    assert "alpha / r before" in capsys.readouterr().out
    assert not check_merge_lora(lambda W, A, B, alpha, r: (alpha / r) * B @ A)
    assert "update alone" in capsys.readouterr().out
    # the reference agrees with peft's own merge on a real LoRA layer
    model = add_lora_(tiny_llama(vocab_size=64), r=4, alpha=8, targets=["v_proj"])
    layer = model.base_model.model.model.layers[0].self_attn.v_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    by_hand = reference_merge_lora(layer.base_layer.weight, layer.lora_A["default"].weight,
                                   layer.lora_B["default"].weight, 8, 4)
    layer.merge()
    assert torch.allclose(by_hand, layer.base_layer.weight, atol=1e-6)


def test_merging_into_an_nf4_base_moves_the_logits(tmp_path):
    """Merging into a 4-bit base re-quantizes W + (alpha / r) B A: the outputs change, unlike a float merge."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama(vocab_size=128, hidden_size=128, intermediate_size=256).save_pretrained(tmp_path)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = add_lora_(AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=nf4, device_map="cpu"),
                      r=4, targets="all-linear", seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    merged, diff = merge_into_base_(model, torch.randint(0, 128, (2, 8)))
    assert type(merged.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert diff > 1e-3  # the float merge of the same kind of adapter stays below 1e-4 (test above)
