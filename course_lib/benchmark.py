"""Execute lesson notebooks in a run profile, time them, and write ``benchmarks/RESULTS.md``.

:func:`run_notebook` executes one notebook in a fresh kernel (with ``COURSE_PROFILE`` set), and
measures its wall time and the peak resident memory of the kernel process
(:class:`course_lib.metrics.PeakMemory` over child processes, sampled every 50 ms). :func:`write_results_markdown` turns the saved timings and every chapter's scorecard
records into one Markdown report. ``benchmarks/run.py`` is the command-line front end.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .metrics import PeakMemory

__all__ = ["machine_summary", "NotebookRun", "run_notebook", "save_runs", "drop_records_before", "markdown_table",
           "write_results_markdown"]


@dataclass
class NotebookRun:
    notebook: str
    profile: str
    ok: bool
    wall_s: float
    peak_rss_bytes: int
    error: str = ""
    date: str = ""


def run_notebook(path: str | Path, profile: str, timeout: int = 3600,
                 save_to: str | Path | None = None) -> NotebookRun:
    """Execute ``path`` top to bottom with ``COURSE_PROFILE=profile``; never raises on cell errors.

    The kernel runs in the notebook's folder. With ``save_to``, the executed notebook (with
    outputs) is written there for inspection.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("COURSE_PROFILE")
    os.environ["COURSE_PROFILE"] = profile
    error = ""
    start = time.perf_counter()
    try:
        with PeakMemory("cpu", interval=0.05, children=True) as memory:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}})
            try:
                client.execute()
            except (CellExecutionError, CellTimeoutError) as err:
                error = str(err).strip().splitlines()[-1][:500] if str(err).strip() else type(err).__name__
    finally:
        if old is None:
            os.environ.pop("COURSE_PROFILE", None)
        else:
            os.environ["COURSE_PROFILE"] = old
    wall = time.perf_counter() - start
    if save_to is not None:
        out = Path(save_to) / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    return NotebookRun(path.stem, profile, not error, wall, memory.peak_bytes, error,
                       dt.datetime.now().isoformat(timespec="seconds"))


def save_runs(runs: list[NotebookRun], folder: str | Path) -> Path:
    """Merge notebook timings into ``<folder>/<profile>/_notebooks.json`` (one entry per notebook)."""
    if not runs:
        raise ValueError("No notebook runs to save.")
    path = Path(folder) / runs[0].profile / "_notebooks.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    for run in runs:
        data[run.notebook] = asdict(run)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def drop_records_before(folder: str | Path, profile: str, chapter: str, since: str) -> list[str]:
    """Remove from ``<folder>/<profile>/<chapter>.json`` the records whose ``timestamp`` (ISO,
    seconds) is earlier than ``since``: after a successful run of the chapter's lesson, what it did
    not write again is a row of an older version of the lesson. Returns the names removed."""
    path = Path(folder) / profile / f"{chapter}.json"
    if not path.is_file():
        return []
    records = json.loads(path.read_text())["records"]
    keep = [r for r in records if r["timestamp"] >= since]
    path.write_text(json.dumps({"records": keep}, indent=1, sort_keys=True) + "\n")
    return [r["name"] for r in records if r["timestamp"] < since]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub Markdown table; floats are shown with 3 significant decimals, None as a dash."""
    def fmt(value):
        if value is None or (isinstance(value, float) and value != value):
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def machine_summary(machine: dict) -> str:
    """One line for a record's ``machine`` (:func:`course_lib.device.machine_info`), e.g.
    ``AMD EPYC (avx2, avx512f), 2 cores, 2 torch threads, torch 2.13.0+cpu``."""
    if not machine:
        return "machine not recorded"
    flags = f" ({', '.join(machine['cpu_flags'])})" if machine.get("cpu_flags") else ""
    gpu = f", GPU {machine['gpu']} (compute {machine.get('gpu_capability', '?')})" if machine.get("gpu") else ""
    return (f"{machine.get('cpu', '?')}{flags}, {machine.get('cores', '?')} cores, "
            f"{machine.get('torch_threads', '?')} torch threads, torch {machine.get('torch', '?')}{gpu}")


def write_results_markdown(folder: str | Path, out: str | Path, profiles=("cpu", "gpu")) -> Path:
    """Write the report: per profile, the notebooks' time and memory, then every scorecard record."""
    from .scorecard import load_records, pareto_plot, results_table

    folder, out = Path(folder), Path(out)
    parts = ["# Measured results", "",
             "Generated by `make bench` (`benchmarks/run.py`) from `benchmarks/results/`; do not edit by hand.",
             "Every number below was measured by executing the lesson notebooks in the stated profile.", ""]
    for profile in profiles:
        timings_path = folder / profile / "_notebooks.json"
        records = load_records(profile, folder)
        if not timings_path.is_file() and records.empty:
            continue
        parts += [f"## Profile `{profile}`", ""]
        if timings_path.is_file():
            runs = sorted(json.loads(timings_path.read_text()).values(), key=lambda r: r["notebook"])
            rows = [{"notebook": r["notebook"], "ok": "yes" if r["ok"] else f"FAILED: {r['error']}",
                     "wall time (min)": r["wall_s"] / 60, "kernel peak memory (GB)": r["peak_rss_bytes"] / 1e9,
                     "date": r["date"]} for r in runs]
            parts += ["### Lesson notebooks: time and memory", "",
                      markdown_table(rows, ["notebook", "ok", "wall time (min)", "kernel peak memory (GB)", "date"]), ""]
        if not records.empty:
            table = results_table(records)
            machines = sorted({machine_summary(m) for m in records["machine"]})
            parts += ["### Scorecard", "", "Measured on: " + "; ".join(f"`{m}`" for m in machines) + ".", "",
                      "Perplexity on the pydoc validation blocks; accuracy = exact match on the date task's test "
                      "split (where measured); footprint = true bytes (the article's estimate beside it); "
                      "speed = greedy generation after warm-up, median. **Speeds compare only within one "
                      "chapter** (models timed in the same run, side by side where the lesson says so): the "
                      "same model's tokens/s differs between chapters' runs by up to 2x on a shared machine.", ""]
            parts += [markdown_table(table.to_dict("records"), list(table.columns)), ""]
            figure = pareto_plot(records)
            image = out.parent / f"pareto_{profile}.png"
            figure.savefig(image, dpi=110, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(figure)
            parts += [f"![Pareto plot, {profile} profile]({image.name})", ""]
    out.write_text("\n".join(parts))
    return out
