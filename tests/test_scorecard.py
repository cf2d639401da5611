import json

import pandas as pd
import pytest

from course_lib.profiles import get_profile
from course_lib.scorecard import (Record, load_records, measure, pareto_front, pareto_plot, results_dir,
                                  results_table, save_record)
from course_lib.tasks import make_task
from course_lib.tiny_models import tiny_llama


def _record(name, ppl, mb, tps, chapter="00_baseline_and_metrics", profile="smoke"):
    return Record(chapter=chapter, name=name, profile=profile, device="cpu", params=10, nonzero_params=10,
                  sparsity=0.0, footprint_bytes=int(mb * 1e6), naive_footprint_bytes=int(mb * 1e6),
                  perplexity=ppl, tokens_per_s=tps)


def test_measure_fills_every_field(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer))
    task = make_task("date-iso", 0, 2)
    record = measure(model, tokenizer, chapter="00_baseline_and_metrics", name="tiny",
                     task_examples=task.test, profile=get_profile("smoke"), progress=False)
    assert record.profile == "smoke" and record.perplexity > 1
    assert 0 <= record.accuracy <= 1 and record.tokens_per_s > 0 and record.latency_s > 0
    assert record.footprint_bytes >= record.naive_footprint_bytes > 0
    assert record.params == sum(p.numel() for p in model.parameters())
    assert record.peak_memory_bytes > 0
    assert "ppl" in record.summary()


def test_save_replaces_by_name_and_load_gathers_chapters(results_tmp):
    assert results_dir() == results_tmp
    save_record(_record("a", 30.0, 500, 10))
    path = save_record(_record("a", 25.0, 500, 10))
    save_record(_record("b", 40.0, 150, 20, chapter="03_quantization"))
    assert [r["perplexity"] for r in json.loads(path.read_text())["records"]] == [25.0]
    df = load_records("smoke")
    assert set(df["name"]) == {"a", "b"} and len(df) == 2
    assert load_records("cpu").empty
    table = results_table(df)
    assert table.loc[table["name"] == "b", "footprint_MB"].item() == pytest.approx(150)


def test_pareto_front():
    df = pd.DataFrame([
        {"name": "big-good", "x": 500, "y": 20},
        {"name": "small-bad", "x": 100, "y": 40},
        {"name": "dominated", "x": 600, "y": 45},
        {"name": "middle", "x": 300, "y": 25},
    ])
    front = set(df.loc[pareto_front(df, "x", "y", x_larger_is_better=False), "name"])
    assert front == {"big-good", "small-bad", "middle"}
    front_speed = set(df.loc[pareto_front(df, "x", "y", x_larger_is_better=True), "name"])
    assert front_speed == {"big-good", "dominated"}  # fastest, and best perplexity


def test_pareto_plot_draws_two_panels(results_tmp):
    for rec in (_record("a", 30.0, 500, 10), _record("b", 40.0, 150, 20), _record("c", 35.0, 300, 15)):
        save_record(rec)
    fig = pareto_plot(load_records("smoke"))
    assert len(fig.axes) == 2
    assert fig.axes[0].get_xlabel().startswith("footprint")
    # c (300 MB, ppl 35) is on the footprint front, so all three are labelled there; a dominated
    # model (bigger and worse than a) is labelled only when every label is asked for
    save_record(_record("d", 45.0, 600, 5))
    labels = lambda fig: {t.get_text() for t in fig.axes[0].texts}  # noqa: E731
    assert labels(pareto_plot(load_records("smoke"))) == {"a", "b", "c"}
    assert labels(pareto_plot(load_records("smoke"), annotate=True)) == {"a", "b", "c", "d"}
    assert labels(pareto_plot(load_records("smoke"), annotate=False)) == set()
    with pytest.raises(ValueError, match="annotate"):
        pareto_plot(load_records("smoke"), annotate="all")


def test_pareto_plot_caps_broken_models(results_tmp):
    for rec in (_record("good", 25.0, 500, 10), _record("broken", 2e9, 400, 12)):
        save_record(rec)
    fig = pareto_plot(load_records("smoke"))
    ymax = fig.axes[0].get_ylim()[1]
    assert ymax < 1e4  # the broken model does not stretch the axis to 1e9
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert any("broken (ppl 2e+09)" in t for t in labels)


def test_record_measures_saves_prints_and_takes_side_by_side_speeds(tokenizer, results_tmp, capsys):
    from course_lib.metrics import compare_speeds
    from course_lib.scorecard import record, records_table

    model = tiny_llama(vocab_size=len(tokenizer))
    speeds = compare_speeds({"tiny": model}, tokenizer, new_tokens=2, rounds=2)
    rec = record(model, tokenizer, chapter="00_baseline_and_metrics", name="tiny", speeds=speeds,
                 profile=get_profile("smoke"), progress=False)
    assert "00_baseline_and_metrics/tiny" in capsys.readouterr().out
    assert rec.tokens_per_s == speeds.loc["tiny", "tokens_per_s"] and rec.extra["timing_rounds"] == 2
    assert rec.machine["cores"] >= 1
    assert load_records("smoke")["name"].tolist() == ["tiny"]
    table = records_table([rec])
    assert list(table.columns) == ["perplexity", "accuracy", "footprint_MB", "article_estimate_MB", "params_M",
                                   "sparsity", "tokens_per_s", "latency_s"]
    assert list(records_table({"x": rec}, columns=["perplexity"]).columns) == ["perplexity"]
    with pytest.raises(ValueError, match="no row 'other'"):
        record(model, tokenizer, chapter="00_baseline_and_metrics", name="other", speeds=speeds)
    with pytest.raises(ValueError, match="Unknown columns"):
        records_table([rec], columns=["speed"])
    with pytest.raises(ValueError, match="non-empty"):
        records_table([])


def test_perplexities_of_variants_built_one_at_a_time(tokenizer):
    import torch

    from course_lib.metrics import perplexity
    from course_lib.scorecard import perplexities

    blocks = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    a, b = tiny_llama(vocab_size=97, seed=0), tiny_llama(vocab_size=97, seed=1)
    values = perplexities({"a": a, "b": lambda: b}, blocks, progress=False)
    assert list(values.index) == ["a", "b"] and values["b"] == perplexity(b, blocks, progress=False)
    with pytest.raises(ValueError, match="at least one model"):
        perplexities({}, blocks)


def test_results_belong_to_the_working_copy_the_notebook_runs_in(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_RESULTS_DIR", raising=False)
    clone = tmp_path / "second-clone"
    (clone / "benchmarks").mkdir(parents=True)
    (clone / "notebooks").mkdir()
    (clone / "pyproject.toml").write_text('[project]\nname = "llm-optimization-course"\n')
    monkeypatch.chdir(clone / "notebooks")
    assert results_dir() == clone / "benchmarks" / "results"  # not the copy course_lib came from
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    assert results_dir() == tmp_path / "cache" / "results"


def test_table_columns_are_fixed():
    from course_lib.scorecard import TABLE_COLUMNS, records_table

    table = records_table([_record("a", 30.0, 500, 10)])
    assert ["name", *table.columns] == TABLE_COLUMNS


def test_pareto_labels_stay_inside_the_axes(results_tmp):
    for i, (ppl, mb, tps) in enumerate([(25.0, 540, 10), (26.0, 160, 30), (40.0, 100, 29), (30.0, 300, 31)]):
        save_record(_record(f"a rather long model name {i}", ppl, mb, tps))
    fig = pareto_plot(load_records("smoke"), annotate=True)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        for text in ax.texts:
            extent = text.get_window_extent(renderer)
            assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1, text.get_text()
