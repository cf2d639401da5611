import math

import torch
import torch.nn.functional as F

from course_lib.checks import Case, check_function, compare_values
from course_lib.checks.baseline import (check_count_unique_parameters, check_perplexity_from_logits,
                                        reference_count_unique_parameters, reference_perplexity_from_logits)


def square(x):
    return x * x


def test_pass_and_fail_messages(capsys):
    cases = [Case((2,)), Case((3,), label="three")]
    assert check_function(square, square, cases)
    assert "✅" in capsys.readouterr().out
    result = check_function(lambda x: x + x, square, cases, name="sq",
                            diagnose=lambda got, exp, case: "you doubled instead of squaring")
    out = capsys.readouterr().out
    assert not result and "three" in out and "Hint: you doubled" in out


def test_checker_never_crashes(capsys):
    def todo(x):
        raise NotImplementedError

    def broken(x):
        return 1 / 0

    assert not check_function(todo, square, [Case((1,))])
    assert "not written yet" in capsys.readouterr().out
    assert not check_function(broken, square, [Case((1,))])
    assert "ZeroDivisionError" in capsys.readouterr().out
    assert not check_function(42, square, [Case((1,))])
    assert "expected a function" in capsys.readouterr().out
    assert not check_function(lambda x: "text", lambda x: torch.zeros(2), [Case((1,))])
    assert "torch.Tensor" in capsys.readouterr().out


def test_compare_values_describes_differences():
    assert compare_values(torch.ones(2), torch.ones(3)).startswith("expected shape")
    assert "max abs difference" in compare_values(torch.ones(2), torch.zeros(2))
    assert compare_values(torch.ones(2, dtype=torch.bool), torch.ones(2)) is not None
    assert "dtype" in compare_values(torch.ones(2), torch.ones(2, dtype=torch.bool))
    assert compare_values(1.0, 1.0 + 1e-9) is None
    assert compare_values("a", "b") == "expected 'b', got 'a'"


def test_perplexity_checker_accepts_the_reference_and_diagnoses_mistakes(capsys):
    assert check_perplexity_from_logits(reference_perplexity_from_logits)

    def unshifted(logits, ids):
        return math.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1)).item())

    def no_exp(logits, ids):
        return math.log(reference_perplexity_from_logits(logits, ids))

    capsys.readouterr()
    assert not check_perplexity_from_logits(unshifted)
    assert "input_ids[:, 1:]" in capsys.readouterr().out
    assert not check_perplexity_from_logits(no_exp)
    assert "exponential" in capsys.readouterr().out


def test_parameter_count_checker(capsys):
    assert check_count_unique_parameters(reference_count_unique_parameters)
    capsys.readouterr()
    double = lambda m: sum(p.numel() for _, p in m.named_parameters(remove_duplicate=False))  # noqa: E731
    assert not check_count_unique_parameters(double)
    assert "tied embedding twice" in capsys.readouterr().out


def test_perplexity_checker_separates_the_usual_mistakes(capsys):
    def nll(logits, ids):  # per predicted token, shifted as it should be
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1),
                               reduction="none").view(ids.shape[0], -1)

    mistakes = {
        "mean of per-row perplexities": (lambda lg, ids: nll(lg, ids).mean(1).exp().mean().item(), "one perplexity per row"),
        "first row only": (lambda lg, ids: nll(lg, ids)[0].mean().exp().item(), "only the first row"),
        "softmax over positions": (lambda lg, ids: math.exp(-F.log_softmax(lg[:, :-1].double(), dim=1).gather(
            -1, ids[:, 1:, None]).mean().item()), "dim=-1"),
        "base 2": (lambda lg, ids: 2 ** nll(lg, ids).mean().item(), "natural exponential"),
        "sum, not mean": (lambda lg, ids: nll(lg, ids).sum().item(), "average"),
    }
    for label, (fn, hint) in mistakes.items():
        capsys.readouterr()
        assert not check_perplexity_from_logits(fn), label
        assert hint in capsys.readouterr().out, label


def test_parameter_count_checker_refuses_counting_only_trainable_parameters(capsys):
    capsys.readouterr()
    assert not check_count_unique_parameters(lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad))
    assert "only trainable" in capsys.readouterr().out
    capsys.readouterr()
    assert not check_count_unique_parameters(
        lambda m: sum(p.numel() for n, p in m.named_parameters() if "embed" not in n))
    assert "embedding" in capsys.readouterr().out


def test_claim_table_computes_verdicts():
    import pytest

    from course_lib.claims import claim_table, verdict

    styled = claim_table([("A claim", "article", "measured 1.0", True), ("B", "paper", "n/a", None)])
    df = styled.data
    assert list(df["verdict"]) == [verdict(True), verdict(None)]
    assert verdict(False).startswith("❌")
    with pytest.raises(ValueError, match="claim, source, measured, holds"):
        claim_table([("too", "short")])
    with pytest.raises(ValueError, match="inconclusive"):
        verdict("maybe")


def test_rate_comparison_uses_the_noise_band():
    import pytest

    from course_lib.claims import INCONCLUSIVE, rate_band, rate_comparison, verdict

    # band = 2 * sqrt(2 * 0.25 / 100) = 0.1414: 0.5 vs 0.4 is inside, 0.6 vs 0.4 outside
    assert rate_comparison(0.5, 0.4, 100) == INCONCLUSIVE
    assert rate_comparison(0.6, 0.4, 400) is True and rate_comparison(0.4, 0.6, 400) is False
    assert rate_comparison(0.051, 0.051, 6000) == INCONCLUSIVE
    assert verdict(INCONCLUSIVE).startswith("❔")
    assert rate_band(0.5, 0.5, 100) == pytest.approx(2 * (0.5 / 100) ** 0.5)
    with pytest.raises(ValueError, match="positive"):
        rate_comparison(0.5, 0.5, 0)
    with pytest.raises(ValueError, match="proportions"):
        rate_comparison(51.0, 5.0, 100)


def test_speedup_verdict_and_combining_verdicts():
    import pytest

    from course_lib.claims import INCONCLUSIVE, all_hold, negate, speedup_verdict, within_tolerance

    assert speedup_verdict(1.19, 0.05) is True  # 19 % faster, timings vary by 5 %
    assert speedup_verdict(1.19, 0.25) == INCONCLUSIVE  # ... but they vary by 25 %
    assert speedup_verdict(0.98, 0.02) is False and speedup_verdict(0.98, 0.10) == INCONCLUSIVE
    assert speedup_verdict(1.07, 0.01) is True and speedup_verdict(1.03, 0.01) is False
    with pytest.raises(ValueError, match="positive"):
        speedup_verdict(0.0, 0.1)
    assert all_hold(True, True) is True and all_hold(True, INCONCLUSIVE) == INCONCLUSIVE
    assert all_hold(INCONCLUSIVE, False) is False and all_hold(True, None) is None
    assert negate(True) is False and negate(INCONCLUSIVE) == INCONCLUSIVE and negate(None) is None
    assert within_tolerance(0.02, 0.05, 0.01) is True  # even 3 % is inside 5 %
    assert within_tolerance(0.12, 0.05, 0.03) is False  # even 9 % is outside
    assert within_tolerance(0.04, 0.05, 0.23) == INCONCLUSIVE  # noise larger than the tolerance
    with pytest.raises(ValueError, match="non-negative"):
        within_tolerance(0.0, 0.05, -0.1)
    # comparisons of numpy/pandas numbers give numpy booleans, which are not `False` by identity
    import numpy as np

    assert all_hold(True, np.float64(1.0) > 2.0) is False and negate(np.True_) is False


def test_one_timing_round_is_inconclusive_and_speed_claims_read_the_table():
    import math

    import pandas as pd
    import pytest

    from course_lib.claims import INCONCLUSIVE, lower_is_better, speed_claim, speedup, speedup_verdict

    assert speedup_verdict(1.56, math.nan) == INCONCLUSIVE  # one round: no spread, no verdict
    table = pd.DataFrame({"latency_s": [1.0, 0.5], "spread": [0.1, 0.2], "forward_s": [2.0, 1.95],
                          "forward_spread": [0.01, 0.02]}, index=["dense", "pruned"])
    assert speedup(table, "pruned", "dense") == (2.0, 0.2)
    assert speed_claim(table, "pruned", "dense") is True
    assert speed_claim(table, "pruned", "dense", timing="forward") is False  # 1.026x: below 1.05 beyond the noise
    one_round = table.assign(spread=math.nan)
    assert speed_claim(one_round, "pruned", "dense") == INCONCLUSIVE
    with pytest.raises(ValueError, match="no"):
        speed_claim(table, "missing", "dense")
    with pytest.raises(ValueError, match="timing"):
        speedup(table, "pruned", "dense", timing="prefill")
    assert lower_is_better({"nf4": 29.9, "fp4": 32.6, "int4": 33.6}, ["nf4", "fp4", "int4"]) is True
    assert lower_is_better({"nf4": 29.9, "fp4": 32.6, "int4": 33.6}, ["nf4", "fp4", "int4"], 0.05) == INCONCLUSIVE
    assert lower_is_better({"a": 40.0, "b": 30.0}, ["a", "b"], 0.05) is False
    with pytest.raises(ValueError, match="order"):
        lower_is_better({"a": 1.0}, ["a", "b"])


def test_check_result_is_truthy_and_silent_in_jupyter():
    from course_lib.checks import CheckResult

    result = CheckResult(True, "✅ fine")
    assert result and not CheckResult(False, "no")
    assert result._ipython_display_() is None  # printed already; Jupyter shows nothing more


def test_verdict_texts_and_the_unique_parameter_reference():
    from course_lib.checks.baseline import reference_count_unique_parameters
    from course_lib.claims import INCONCLUSIVE, VERDICTS, verdict
    from course_lib.tiny_models import COURSE_VOCAB_SIZE, tiny_llama

    assert set(VERDICTS) == {True, False, None, INCONCLUSIVE}
    assert verdict(INCONCLUSIVE) == VERDICTS[INCONCLUSIVE]
    model = tiny_llama()  # tied embeddings: the output head is the embedding matrix
    assert model.config.vocab_size == COURSE_VOCAB_SIZE
    assert reference_count_unique_parameters(model) == sum(
        p.numel() for n, p in model.named_parameters() if "lm_head" not in n)
