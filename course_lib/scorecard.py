"""One scorecard for the whole course.

:func:`measure` runs the shared protocol on a model and returns a :class:`Record`:

* validation perplexity on the first ``profile.eval_blocks`` pydoc validation blocks of
  ``profile.block_size`` tokens (:func:`course_lib.metrics.perplexity`);
* exact-match accuracy on a task's test split, when one is given;
* true footprint and the article's ``numel() * element_size()`` estimate;
* parameter count, non-zeros and sparsity;
* greedy generation latency and tokens/s (``profile.gen_tokens`` new tokens, one warm-up,
  median of ``profile.timing_repeats``);
* peak memory during the perplexity evaluation (process RSS on CPU, allocated bytes on CUDA).

The record also says which machine made it (:func:`course_lib.device.machine_info`: CPU model and
flags, GPU, threads), because speeds only compare on one machine.

:func:`record` is what a lesson calls: measure, save and print one line, in one call (with
speeds from a side-by-side :func:`course_lib.metrics.compare_speeds` table when the lesson has
one). :func:`records_table` shows several records with fixed column names;
:func:`perplexities` scores several variants on the same blocks.

:func:`save_record` stores a record in ``<results>/<profile>/<chapter>.json`` (one file per
chapter, a record per model name, replaced when measured again). :func:`load_records` gathers
every chapter into one pandas table; :func:`pareto_plot` draws footprint and speed against
perplexity.

The results folder (:func:`results_dir`) is ``$COURSE_RESULTS_DIR`` if set, else
``benchmarks/results`` of the course working copy the notebook runs in (found from the current
folder upwards, never from where ``course_lib`` is installed), else ``results`` in the course
cache folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from torch import nn

from .data import token_blocks
from .device import machine_info, model_device
from .metrics import PeakMemory, exact_match, generation_speed, perplexity
from .footprint import count_parameters, footprint_bytes, naive_footprint_bytes
from .profiles import Profile, get_profile

__all__ = ["Record", "measure", "record", "records_table", "perplexities", "results_dir", "save_record",
           "load_records", "results_table", "pareto_front", "pareto_plot", "TABLE_COLUMNS"]


@dataclass
class Record:
    """One measured model. Sizes in bytes, times in seconds; None where not measured."""

    chapter: str
    name: str
    profile: str
    device: str
    params: int
    nonzero_params: int
    sparsity: float
    footprint_bytes: int
    naive_footprint_bytes: int
    perplexity: float | None = None
    accuracy: float | None = None
    tokens_per_s: float | None = None
    latency_s: float | None = None
    peak_memory_bytes: int | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    timestamp: str = field(default_factory=lambda: dt.datetime.now().isoformat(timespec="seconds"))

    def summary(self) -> str:
        """A one-line, human-readable summary."""
        parts = [f"{self.chapter}/{self.name}:"]
        if self.perplexity is not None:
            parts.append(f"ppl {self.perplexity:.2f}")
        if self.accuracy is not None:
            parts.append(f"acc {self.accuracy:.1%}")
        parts.append(f"footprint {self.footprint_bytes / 1e6:.1f} MB")
        parts.append(f"params {self.params / 1e6:.1f} M (sparsity {self.sparsity:.1%})")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        return " ".join(parts)


def measure(model, tokenizer, *, chapter: str, name: str, task_examples=None,
            profile: Profile | None = None, perplexity_blocks=None, speed: bool = True,
            notes: str = "", extra: dict | None = None, progress: bool = True) -> Record:
    """Measure a model with the course protocol (see the module docstring).

    Args:
        chapter: the chapter's notebook name, e.g. ``"03_quantization"``.
        name: what this model is, e.g. ``"nf4"``; unique within the chapter.
        task_examples: a task's test examples for exact-match accuracy (skipped when None).
        perplexity_blocks: override the validation blocks (only for models with another
            tokenizer; the default keeps every chapter comparable).
        speed: measure generation speed (skip for models that cannot generate).
    """
    profile = profile or get_profile()
    device = model_device(model)
    if perplexity_blocks is None:
        perplexity_blocks = token_blocks(tokenizer, "validation", profile.block_size, profile.eval_blocks)
    with PeakMemory(device) as peak:
        ppl = perplexity(model, perplexity_blocks, batch_size=profile.eval_batch_size, progress=progress)
    acc = None
    if task_examples is not None:
        acc = exact_match(model, tokenizer, list(task_examples), batch_size=profile.eval_batch_size * 2,
                          progress=progress)
    counts = count_parameters(model)
    tps = latency = None
    if speed:
        timing = generation_speed(model, tokenizer, new_tokens=profile.gen_tokens,
                                  repeats=profile.timing_repeats)
        tps, latency = timing["tokens_per_s"], timing["latency_s"]
    return Record(
        chapter=chapter, name=name, profile=profile.name, device=str(device),
        params=counts.total, nonzero_params=counts.nonzero, sparsity=counts.sparsity,
        footprint_bytes=footprint_bytes(model), naive_footprint_bytes=naive_footprint_bytes(model),
        perplexity=ppl, accuracy=acc, tokens_per_s=tps, latency_s=latency,
        peak_memory_bytes=peak.peak_bytes, notes=notes, extra=dict(extra or {}), machine=machine_info(device),
    )


def record(model, tokenizer, *, chapter: str, name: str, speeds=None, quiet: bool = False,
           **measure_kwargs) -> Record:
    """Measure ``model`` with :func:`measure`, save the record (:func:`save_record`) and print its
    one-line summary: what every lesson does for each model it reports.

    ``speeds``: a :func:`course_lib.metrics.compare_speeds` table holding a row ``name``. Its
    side-by-side timing then replaces the record's own (``tokens_per_s``, ``latency_s``), its
    ``spread``, ``rounds`` (and forward timings, if any) go to ``extra``, and ``measure`` skips
    its separate timing, so that the scorecard and the lesson's comparison show the same numbers.
    Other keyword arguments go to :func:`measure`.
    """
    if speeds is not None:
        if name not in speeds.index:
            raise ValueError(f"The speed table has no row {name!r}; it has {list(speeds.index)}. "
                             "Time the model under the same name it is recorded with.")
        measure_kwargs["speed"] = False
    result = measure(model, tokenizer, chapter=chapter, name=name, **measure_kwargs)
    if speeds is not None:
        row = speeds.loc[name]
        result.tokens_per_s, result.latency_s = float(row["tokens_per_s"]), float(row["latency_s"])
        timing = {"timing": "side by side (compare_speeds)", "timing_spread": float(row["spread"]),
                  "timing_rounds": int(row["rounds"])}
        if "forward_s" in row:
            timing.update(forward_s=float(row["forward_s"]), forward_spread=float(row["forward_spread"]))
        result.extra.update(timing)
    save_record(result)
    if not quiet:
        print(result.summary())
    return result


TABLE_COLUMNS = ["name", "perplexity", "accuracy", "footprint_MB", "article_estimate_MB", "params_M",
                 "sparsity", "tokens_per_s", "latency_s"]


def records_table(records, columns=None):
    """Records (a list of :class:`Record`, or a dict of them) as a pandas table with the course's
    fixed column names (:data:`TABLE_COLUMNS`, or a subset given as ``columns``): MB instead of
    bytes, millions of parameters, indexed by name."""
    import pandas as pd

    items = list(records.values()) if isinstance(records, dict) else list(records)
    if not items or not all(isinstance(r, Record) for r in items):
        raise ValueError("records_table needs a non-empty list (or dict) of scorecard Records.")
    columns = list(columns or TABLE_COLUMNS)
    unknown = [c for c in columns if c not in TABLE_COLUMNS]
    if unknown:
        raise ValueError(f"Unknown columns {unknown}; choose from {TABLE_COLUMNS}.")
    rows = [{"name": r.name, "perplexity": r.perplexity, "accuracy": r.accuracy,
             "footprint_MB": r.footprint_bytes / 1e6, "article_estimate_MB": r.naive_footprint_bytes / 1e6,
             "params_M": r.params / 1e6, "sparsity": r.sparsity, "tokens_per_s": r.tokens_per_s,
             "latency_s": r.latency_s} for r in items]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)[columns if "name" in columns else ["name"] + columns]
    return table.set_index("name")


def perplexities(models: dict, blocks, batch_size: int = 8, progress: bool = True):
    """Perplexity of each model of ``{label: model}`` on the same ``blocks``
    (:func:`course_lib.metrics.perplexity`), as a pandas Series indexed by label. A value may also
    be a function of no arguments that returns the model, so that only one variant at a time is
    held in memory."""
    import pandas as pd
    from tqdm.auto import tqdm

    if not models:
        raise ValueError("perplexities needs at least one model, e.g. {'dense': model}.")
    values = {}
    for label, model in tqdm(models.items(), desc="variants", disable=not progress or len(models) < 2):
        model = model if isinstance(model, nn.Module) else model()
        values[label] = perplexity(model, blocks, batch_size=batch_size, progress=False)
    return pd.Series(values, name="perplexity")


# --------------------------------------------------------------------------- storage


def _course_checkout(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that is a working copy of the course."""
    for folder in (start, *start.parents):
        project = folder / "pyproject.toml"
        if project.is_file() and (folder / "benchmarks").is_dir() and \
                'name = "llm-optimization-course"' in project.read_text():
            return folder
    return None


def results_dir() -> Path:
    """Where records are stored: ``$COURSE_RESULTS_DIR``, else ``benchmarks/results`` of the course
    working copy that contains the current folder (a notebook runs in its own folder), else the
    course cache folder's ``results``. Never the copy ``course_lib`` was installed from: running
    a second clone must not write into the first."""
    if os.environ.get("COURSE_RESULTS_DIR"):
        return Path(os.environ["COURSE_RESULTS_DIR"]).expanduser()
    checkout = _course_checkout(Path.cwd().resolve())
    if checkout is not None:
        return checkout / "benchmarks" / "results"
    from .model_sources import cache_dir

    return cache_dir() / "results"


def save_record(record: Record, folder: str | Path | None = None) -> Path:
    """Add (or replace, by name) ``record`` in ``<folder>/<profile>/<chapter>.json``; return the path."""
    folder = Path(folder) if folder is not None else results_dir()
    path = folder / record.profile / f"{record.chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text())["records"] if path.is_file() else []
    records = [r for r in records if r["name"] != record.name] + [asdict(record)]
    path.write_text(json.dumps({"records": records}, indent=1, sort_keys=True) + "\n")
    return path


def load_records(profile: str | None = None, folder: str | Path | None = None):
    """All saved records of a profile (default: the active one) as a pandas DataFrame."""
    import pandas as pd

    folder = Path(folder) if folder is not None else results_dir()
    profile = profile or get_profile().name
    known = {f.name for f in fields(Record)}
    rows = []
    for path in sorted((folder / profile).glob("*.json")):
        if path.name.startswith("_"):  # not a chapter's records (e.g. _notebooks.json, timings)
            continue
        for r in json.loads(path.read_text())["records"]:
            rows.append({k: v for k, v in r.items() if k in known})
    columns = [f.name for f in fields(Record)]
    return pd.DataFrame(rows, columns=columns)


def results_table(df):
    """A readable view: MB instead of bytes, rounded, sorted by chapter."""
    view = df.copy()
    view["footprint_MB"] = view["footprint_bytes"] / 1e6
    view["article_estimate_MB"] = view["naive_footprint_bytes"] / 1e6
    view["params_M"] = view["params"] / 1e6
    cols = ["chapter", "name", "perplexity", "accuracy", "footprint_MB", "article_estimate_MB",
            "params_M", "sparsity", "tokens_per_s", "latency_s"]
    return view[cols].sort_values(["chapter", "name"]).reset_index(drop=True).round(3)


# --------------------------------------------------------------------------- plots


def pareto_front(df, x: str, y: str, x_larger_is_better: bool) -> list[int]:
    """Indices of rows not dominated by another row (lower ``y`` is better; ``x`` as stated)."""
    rows = df[[x, y]].dropna()
    front = []
    for i, (xi, yi) in rows.iterrows():
        dominated = False
        for j, (xj, yj) in rows.iterrows():
            better_x = xj >= xi if x_larger_is_better else xj <= xi
            strictly = (xj != xi) or (yj != yi)
            if j != i and better_x and yj <= yi and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return front


def _label_inside(ax, xs, text: str, x: float, y: float) -> None:
    """Annotate a point so that the label stays inside the axes: labels of points in the right
    third of the x range are written to the left of the point."""
    lo, hi = float(xs.min()), float(xs.max())
    right = hi > lo and (x - lo) / (hi - lo) > 0.66
    ax.annotate(text, (x, y), fontsize=7, xytext=(-3 if right else 3, 3), textcoords="offset points",
                ha="right" if right else "left", annotation_clip=True)


def pareto_plot(df, annotate: bool | str = "front", max_perplexity: float | None = None):
    """Two panels: footprint (MB) vs perplexity and tokens/s vs perplexity, Pareto fronts drawn.

    ``annotate``: ``"front"`` (default) labels the models on each panel's Pareto front and the
    capped ones, so that a plot of many models stays readable (the rest are in the table);
    ``True`` labels every model, ``False`` none.

    Perplexity is on a log axis, capped at ``max_perplexity`` (default: 20 x the best one) so
    that one broken model (perplexity 1e9 after removing the wrong layers) does not flatten the
    plot: such points are drawn as triangles on the top edge, labelled with their real value.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    data = df.dropna(subset=["perplexity"]).copy()
    data["footprint_MB"] = data["footprint_bytes"] / 1e6
    cap = max_perplexity or (20 * data["perplexity"].min() if len(data) else 1.0)
    data["shown"] = data["perplexity"].clip(upper=cap)
    panels = [("footprint_MB", "footprint (MB, true)", False), ("tokens_per_s", "generation tokens/s", True)]
    if annotate not in (True, False, "front"):
        raise ValueError(f"annotate must be True, False or 'front'; got {annotate!r}.")
    for ax, (x, label, larger_better) in zip(axes, panels):
        on_front = set(pareto_front(data, x, "perplexity", larger_better))
        for chapter, group in data.groupby("chapter"):
            inside, above = group[group["perplexity"] <= cap], group[group["perplexity"] > cap]
            points = ax.scatter(inside[x], inside["shown"], label=chapter, s=40)
            ax.scatter(above[x], above["shown"], marker="^", s=60, color=points.get_facecolor()[0]
                       if len(inside) else None)
            if annotate:
                for index, r in group.iterrows():
                    wanted = annotate is True or index in on_front or r["perplexity"] > cap
                    if r[x] == r[x] and wanted:  # not NaN
                        text = r["name"] if r["perplexity"] <= cap else f"{r['name']} (ppl {r['perplexity']:.3g})"
                        _label_inside(ax, data[x], text, r[x], r["shown"])
        front = data.loc[sorted(on_front)].sort_values(x)
        if len(front) > 1:
            ax.step(front[x], front["shown"], where="post", color="grey", lw=1, ls="--", label="Pareto front")
        ax.margins(x=0.08, y=0.1)
        ax.set_xlabel(label)
        ax.set_ylabel("validation perplexity (lower is better)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_title("Smaller and better: down and left")
    axes[1].set_title("Faster and better: down and right")
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
