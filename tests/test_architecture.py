import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from course_lib.architecture import (SIZES, ParameterBreakdown, describe_config, equal_budget_configs, head_dim,
                                     kv_cache_bytes_per_token, kv_heads, measured_breakdown,
                                     measured_kv_cache_bytes, model_from_config, parameter_breakdown, scaled_config,
                                     smaller_config)
from course_lib.profiles import sizes_for
from course_lib.tiny_models import tiny_gpt2, tiny_llama

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True)


def test_smollm2_formula_gives_the_real_count_to_the_parameter():
    config = LlamaConfig(**SMOLLM2)
    parts = parameter_breakdown(config)
    assert parts.total == 134_515_008
    assert parts.embedding == 49152 * 576 and parts.lm_head == 0
    assert parts.attention == 30 * (576 * 576 * 2 + 2 * 576 * 3 * 64)
    assert parts.mlp == 30 * 3 * 576 * 1536 and parts.norms == 30 * 2 * 576 + 576
    assert parts.as_dict()["total"] == parts.total
    assert head_dim(config) == 64 and kv_heads(config) == 3


@pytest.mark.parametrize("build", [
    lambda: tiny_llama(vocab_size=300, tie_embeddings=True),
    lambda: tiny_llama(vocab_size=300, tie_embeddings=False),
    lambda: tiny_llama(vocab_size=300, num_heads=4, num_kv_heads=4),
    lambda: tiny_gpt2(vocab_size=300),
])
def test_formula_matches_the_built_model_part_by_part(build):
    model = build()
    formula, measured = parameter_breakdown(model.config), measured_breakdown(model)
    assert formula == measured
    assert formula.total == sum(p.numel() for p in model.parameters())


def test_biases_and_untied_gpt2_are_counted():
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, attention_bias=True, mlp_bias=True)
    model = model_from_config(config)
    assert parameter_breakdown(config).total == sum(p.numel() for p in model.parameters())
    gpt2 = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=80,
                      tie_word_embeddings=False)
    model = model_from_config(gpt2)
    assert parameter_breakdown(gpt2).total == sum(p.numel() for p in model.parameters())
    assert isinstance(measured_breakdown(model), ParameterBreakdown)


def test_unknown_config_and_unknown_parameter_names_raise():
    with pytest.raises(ValueError, match="Unsupported model or config"):
        parameter_breakdown(object())

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mystery = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="no known part"):
        measured_breakdown(Odd())


def test_kv_cache_formula_matches_the_real_cache():
    for model in (tiny_llama(vocab_size=100, num_heads=4, num_kv_heads=2), tiny_gpt2(vocab_size=100)):
        assert measured_kv_cache_bytes(model, 10) == 10 * kv_cache_bytes_per_token(model.config, bytes_per_value=4)
    config = LlamaConfig(**SMOLLM2)
    assert kv_cache_bytes_per_token(config) == 2 * 30 * 3 * 64 * 2 == 23_040
    full = kv_cache_bytes_per_token(config, num_kv_heads=config.num_attention_heads)
    assert full == 3 * 23_040
    with pytest.raises(ValueError, match="bytes_per_value"):
        kv_cache_bytes_per_token(config, bytes_per_value=0)
    with pytest.raises(ValueError, match="num_kv_heads"):
        kv_cache_bytes_per_token(config, num_kv_heads=0)
    with pytest.raises(ValueError, match="n_tokens"):
        measured_kv_cache_bytes(tiny_llama(vocab_size=100), 0)


def test_equal_budget_configs_keep_the_budget_and_build():
    base = LlamaConfig(**SMOLLM2)
    configs = equal_budget_configs(base, [6, 30, 60])
    budget = parameter_breakdown(base).total
    for depth, config in zip([6, 30, 60], configs):
        row = describe_config(config)
        assert row["layers"] == depth and abs(row["params"] / budget - 1) < 0.01
        assert row["heads"] == 3 * row["kv_heads"] and config.hidden_size == 64 * row["heads"]
    assert describe_config(configs[1]) == describe_config(base)  # the model's own shape is found again
    small = LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=128)
    for config in equal_budget_configs(small, [1, 4]):
        model = model_from_config(config)
        assert sum(p.numel() for p in model.parameters()) == parameter_breakdown(config).total
    with pytest.raises(ValueError, match="positive"):
        equal_budget_configs(base, [0])
    with pytest.raises(ValueError, match="No width"):
        equal_budget_configs(small, [200], budget=10_000)
    with pytest.raises(ValueError, match="Llama"):
        equal_budget_configs(GPT2Config(), [2])


def test_smaller_config_and_model_from_config():
    base = LlamaConfig(**SMOLLM2)
    six = smaller_config(base, num_hidden_layers=6)
    assert six.num_hidden_layers == 6 and base.num_hidden_layers == 30
    narrow = smaller_config(LlamaConfig(**SMOLLM2, head_dim=64), hidden_size=192, num_attention_heads=3,
                            num_key_value_heads=1)
    assert narrow.head_dim == 64
    with pytest.raises(ValueError, match="no field"):
        smaller_config(base, num_hiden_layers=6)
    config = smaller_config(tiny_llama(vocab_size=100).config, num_hidden_layers=1)
    a, b = model_from_config(config, seed=3), model_from_config(config, seed=3)
    assert not a.training and a.config.num_hidden_layers == 1
    assert torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)


def test_sizes_table_is_complete():
    for profile in ("smoke", "cpu", "gpu"):
        sizes = sizes_for(SIZES, profile)
        assert sizes.heal_steps >= 1 and all(k >= 1 for k in sizes.sweep_k)
        assert not hasattr(sizes, "timing_repeats")  # timings use the profile's timing_repeats


# --------------------------------------------------------------------------- exercise checkers

from course_lib.checks.architecture import (check_block_influence, check_parameter_count,  # noqa: E402
                                            reference_block_influence, reference_llama_parameter_count)


def test_parameter_count_checker_passes_the_reference_and_names_mistakes(capsys):
    assert check_parameter_count(reference_llama_parameter_count)
    assert "✅" in capsys.readouterr().out

    def untied_always(c):
        return parameter_breakdown(c).total + c.vocab_size * c.hidden_size

    assert not check_parameter_count(untied_always)
    assert "tied" in capsys.readouterr().out

    def no_gqa(c):
        d, h = c.hidden_size, c.head_dim
        return parameter_breakdown(c).total + c.num_hidden_layers * 2 * d * (c.num_attention_heads - c.num_key_value_heads) * h

    assert not check_parameter_count(no_gqa)
    assert "num_key_value_heads" in capsys.readouterr().out

    def no_norms(c):
        return parameter_breakdown(c).total - c.num_hidden_layers * 2 * c.hidden_size - c.hidden_size

    assert not check_parameter_count(no_norms)
    assert "RMSNorm" in capsys.readouterr().out
    assert not check_parameter_count(lambda c: "many")
    assert "whole number" in capsys.readouterr().out


def test_block_influence_checker(capsys):
    assert check_block_influence(reference_block_influence)
    assert "✅" in capsys.readouterr().out
    assert not check_block_influence(lambda a, b: 1 - reference_block_influence(a, b))
    assert "1 minus" in capsys.readouterr().out
    wrong_dim = lambda a, b: 1 - torch.nn.functional.cosine_similarity(a, b, dim=1).mean().item()  # noqa: E731
    assert not check_block_influence(wrong_dim)
    assert "dim=-1" in capsys.readouterr().out
    dots = lambda a, b: 1 - (a * b).sum(-1).mean().item()  # noqa: E731
    assert not check_block_influence(dots)
    assert "normalise" in capsys.readouterr().out


def test_scaled_config_keeps_the_proportions():
    base = LlamaConfig(**SMOLLM2)
    small = scaled_config(base, 192, 6)
    assert describe_config(small) | {"params": 0} == {"layers": 6, "hidden": 192, "heads": 3, "kv_heads": 1,
                                                     "mlp": 512, "params": 0}
    assert small.head_dim == 64 and base.hidden_size == 576
    assert model_from_config(scaled_config(tiny_llama(vocab_size=100).config, 32, 1)).config.hidden_size == 32
    with pytest.raises(ValueError, match="multiple of"):
        scaled_config(base, 100, 6)
    with pytest.raises(ValueError, match="LlamaConfig"):
        scaled_config(GPT2Config(), 192, 2)


# --------------------------------------------------------------------------- issue fixes, chapter 06

def test_parameter_breakdown_of_a_bert_config_raises():
    from transformers import BertConfig

    with pytest.raises(ValueError, match="Unsupported model or config"):
        parameter_breakdown(BertConfig())
    with pytest.raises(ValueError, match="Unsupported model or config"):
        describe_config(BertConfig())


def test_measured_kv_cache_bytes_reads_the_cache_field_not_the_deprecated_name():
    """transformers >= 5.24 names the cache ``cache`` (``past_key_values`` warns); older versions,
    e.g. Colab's 5.9, have only ``past_key_values``. Both are read, the new name first."""
    model = tiny_llama(vocab_size=100)
    real = model(input_ids=torch.zeros(1, 4, dtype=torch.long), use_cache=True)
    cache = real.cache if "cache" in real else real.past_key_values  # whichever this version has
    expected = 4 * kv_cache_bytes_per_token(model.config, bytes_per_value=4)

    class NewOutput(dict):  # both names, the old one refusing to be read
        @property
        def cache(self):
            return self["cache"]

        @property
        def past_key_values(self):
            raise AssertionError("read the deprecated past_key_values")

    class OldOutput(dict):  # only the old name, as before transformers 5.24
        past_key_values = cache

    for output in (NewOutput(cache=cache), OldOutput(logits=None)):
        wrapper = torch.nn.Linear(1, 1)  # model_device() needs a parameter
        wrapper.forward = lambda _out=output, **kw: _out  # noqa: E731
        assert measured_kv_cache_bytes(wrapper, 4) == expected


def test_model_from_config_puts_the_model_on_the_course_device(monkeypatch):
    import course_lib.architecture as architecture

    config = smaller_config(tiny_llama(vocab_size=100).config, num_hidden_layers=1)
    monkeypatch.setattr(architecture, "pick_device", lambda device=None: torch.device(device or "meta"))
    assert next(model_from_config(config).parameters()).device.type == "meta"  # pick_device()'s choice
    assert next(model_from_config(config, device="cpu").parameters()).device.type == "cpu"


def test_parameter_count_checker_accepts_numpy_and_tensor_integers_and_names_more_mistakes(capsys):
    import numpy as np

    assert check_parameter_count(lambda c: np.int64(parameter_breakdown(c).total))
    assert check_parameter_count(lambda c: torch.tensor(parameter_breakdown(c).total))
    assert check_parameter_count(lambda c: float(parameter_breakdown(c).total))
    capsys.readouterr()
    assert not check_parameter_count(lambda c: np.int64(parameter_breakdown(c).total - c.vocab_size * c.hidden_size))
    assert "token embedding" in capsys.readouterr().out
    assert not check_parameter_count(lambda c: parameter_breakdown(c).total - c.hidden_size)
    assert "final norm" in capsys.readouterr().out
    assert not check_parameter_count(
        lambda c: parameter_breakdown(c).total - c.num_hidden_layers * c.hidden_size * c.intermediate_size)
    assert "three matrices" in capsys.readouterr().out

    def head_from_hidden(c):
        h = c.hidden_size // c.num_attention_heads
        d, L, H, K = c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
        total = c.vocab_size * d + L * (2 * d * H * h + 2 * d * K * h + 3 * d * c.intermediate_size + 2 * d) + d
        return total + (0 if c.tie_word_embeddings else c.vocab_size * d)

    assert not check_parameter_count(head_from_hidden)
    assert "config.head_dim" in capsys.readouterr().out
    assert not check_parameter_count(lambda c: True)
    assert "whole number" in capsys.readouterr().out


def test_reference_solutions_are_the_library_formulas():
    config = LlamaConfig(**SMOLLM2)
    assert reference_llama_parameter_count(config) == parameter_breakdown(config).total
    x = torch.randn(1, 3, 4)
    assert reference_block_influence(x, 2 * x) == pytest.approx(0.0, abs=1e-12)
    assert reference_block_influence(x, -x) == pytest.approx(2.0)
