import json

import nbformat

from course_lib.benchmark import (NotebookRun, drop_records_before, machine_summary, markdown_table, run_notebook, save_runs,
                                  write_results_markdown)
from course_lib.scorecard import Record, save_record


def test_run_notebook_times_a_notebook_and_reports_errors(tmp_path):
    good = tmp_path / "good.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nprint(os.environ['COURSE_PROFILE'])\nx = bytearray(50_000_000)")]), good)
    run = run_notebook(good, "smoke", timeout=120, save_to=tmp_path / "out")
    assert run.ok and run.wall_s > 0 and run.peak_rss_bytes > 50_000_000
    executed = nbformat.read(tmp_path / "out" / "good.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"].strip() == "smoke"

    bad = tmp_path / "bad.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")]), bad)
    run = run_notebook(bad, "smoke", timeout=120)
    assert not run.ok and "ZeroDivisionError" in run.error


def test_report_gathers_timings_and_records(tmp_path):
    results = tmp_path / "results"
    save_runs([NotebookRun("00_baseline_and_metrics", "cpu", True, 90.0, 2_000_000_000, "", "today")], results)
    path = save_runs([NotebookRun("03_quantization", "cpu", False, 30.0, 1, "boom", "today")], results)
    assert set(json.loads(path.read_text())) == {"00_baseline_and_metrics", "03_quantization"}
    save_record(Record(chapter="00_baseline_and_metrics", name="fp32 baseline", profile="cpu", device="cpu",
                       params=10, nonzero_params=10, sparsity=0.0, footprint_bytes=538_000_000,
                       naive_footprint_bytes=538_000_000, perplexity=23.4, tokens_per_s=11.0,
                       machine={"cpu": "Test CPU", "cpu_flags": ["avx2"], "cores": 2, "torch_threads": 2,
                                "torch": "2.x"}), results)
    report = write_results_markdown(results, tmp_path / "RESULTS.md").read_text()
    assert "| 00_baseline_and_metrics | yes | 1.5 |" in report
    assert "FAILED: boom" in report and "fp32 baseline" in report and "23.4" in report
    assert "Measured on: `Test CPU (avx2), 2 cores, 2 torch threads, torch 2.x`." in report
    assert (tmp_path / "pareto_cpu.png").is_file()
    assert "gpu" not in report.split("Profile")[-1][:10]


def test_markdown_table_formats():
    text = markdown_table([{"a": 1.23456, "b": None, "c": "x|y"}], ["a", "b", "c"])
    assert text.splitlines()[2] == "| 1.23 | – | x\\|y |"


def test_machine_summary_names_cpu_flags_threads_and_gpu():
    gpu = {"cpu": "Xeon", "cpu_flags": [], "cores": 2, "torch_threads": 1, "torch": "2.x", "gpu": "Tesla T4",
           "gpu_capability": "7.5"}
    assert machine_summary(gpu) == "Xeon, 2 cores, 1 torch threads, torch 2.x, GPU Tesla T4 (compute 7.5)"
    assert machine_summary({}) == "machine not recorded"


def test_drop_records_before_removes_only_older_rows(tmp_path):
    def rec(name, when):
        return Record(chapter="02_pruning", name=name, profile="cpu", device="cpu", params=1, nonzero_params=1,
                      sparsity=0.0, footprint_bytes=4, naive_footprint_bytes=4, timestamp=when)

    for name, when in (("renamed long ago", "2026-11-23T10:00:00"), ("this run", "2026-12-04T05:31:20")):
        save_record(rec(name, when), tmp_path)
    assert drop_records_before(tmp_path, "cpu", "02_pruning", "2026-12-04T05:30:00") == ["renamed long ago"]
    kept = json.loads((tmp_path / "cpu" / "02_pruning.json").read_text())["records"]
    assert [r["name"] for r in kept] == ["this run"]
    assert drop_records_before(tmp_path, "cpu", "03_quantization", "2026-12-04T05:30:00") == []
