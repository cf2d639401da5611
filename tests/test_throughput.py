"""Decoding throughput against batch size (chapter 00)."""

import math

import pandas as pd
import pytest

from course_lib.claims import INCONCLUSIVE
from course_lib.models import load_tokenizer
from course_lib.profiles import sizes_for
from course_lib.throughput import SIZES, achieved_bandwidth, batched_generation_speed, batching_verdict
from course_lib.tiny_models import tiny_llama


def test_batched_generation_speed_times_every_batch_size_on_the_models_device():
    tokenizer = load_tokenizer()
    model = tiny_llama(vocab_size=len(tokenizer))
    model.train()
    table = batched_generation_speed(model, tokenizer, (1, 3), new_tokens=4, rounds=2)
    assert list(table.index) == [1, 3] and set(table["device"]) == {"cpu"}
    assert (table["rounds"] == 2).all() and table["spread"].notna().all()
    assert math.isclose(table.loc[3, "tokens_per_s"], 3 * 4 / table.loc[3, "latency_s"])
    assert model.training  # eval mode only while timing
    one = batched_generation_speed(model, tokenizer, (1, 2), new_tokens=2, rounds=1)
    assert one["spread"].isna().all() and batching_verdict(one)[0] == INCONCLUSIVE
    with pytest.raises(ValueError, match="distinct positive"):
        batched_generation_speed(model, tokenizer, (1, 1))
    assert all(1 in sizes_for(SIZES, p).batch_sizes for p in ("smoke", "cpu", "gpu"))


def test_bandwidth_and_batching_verdict():
    assert achieved_bandwidth(540_000_000, 10.0) == pytest.approx(5.4)
    assert achieved_bandwidth(540_000_000, 40.0, batch_size=4) == pytest.approx(5.4)
    with pytest.raises(ValueError):
        achieved_bandwidth(0, 1.0)

    def table(tps_low, tps_high, spread=0.05):
        return pd.DataFrame({"tokens_per_s": [tps_low, tps_high], "spread": [spread, spread]}, index=[1, 8])

    assert batching_verdict(table(10, 70)) == (True, pytest.approx(70 / 80))   # nearly free extra sequences
    assert batching_verdict(table(10, 12))[0] is False                          # flat: not bandwidth-bound
    assert batching_verdict(table(10, 40, spread=0.3))[0] == INCONCLUSIVE       # 0.5 within the noise
