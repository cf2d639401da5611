"""The pruning explorer: prune a working copy, show perplexity, a sample and where the zeros are.

* :func:`explorer_view` prunes a working copy in place from the original's weights and measures it;
* :func:`sparsity_grid` / :func:`plot_layer_sparsity` show each layer's sparsity as a grid
  (one row per projection, one column per decoder layer), so no line hides another;
* :func:`pruning_explorer` wires a sparsity slider and a criterion choice to them with
  :func:`course_lib.widgets.interactive_view` (busy sign, old view cleared); views already
  computed are kept, so going back to a setting is instant.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from .device import model_device
from .inference import eval_mode
from .metrics import perplexity
from .pruning import apply_masks_, check_sparsity, layer_sparsity, pruning_masks

__all__ = ["explorer_view", "sparsity_grid", "plot_layer_sparsity", "pruning_explorer"]

PROMPT = "The three most important ideas in computer science are"


def explorer_view(work: nn.Module, model: nn.Module, tokenizer, blocks: torch.Tensor, sparsity: float,
                  method: dict, norms: dict[str, torch.Tensor] | None = None, prompt: str = PROMPT,
                  sample_tokens: int = 16, batch_size: int = 8) -> dict:
    """Prune ``work`` in place from ``model``'s weights (``method``: :func:`pruning_masks` keyword
    arguments) and return ``{"perplexity", "layer_sparsity", "sample"}`` (a greedy continuation
    of ``prompt``). ``model`` is not changed; ``work`` must be a copy of it (on the same device).
    """
    apply_masks_(work, pruning_masks(model, sparsity, norms=norms, **method), source=model)
    enc = tokenizer(prompt, return_tensors="pt").to(model_device(work))
    with eval_mode(work):
        out = work.generate(**enc, max_new_tokens=sample_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return {"perplexity": perplexity(work, blocks, batch_size=batch_size, progress=False),
            "layer_sparsity": layer_sparsity(work),
            "sample": tokenizer.decode(out[0, enc["input_ids"].shape[1]:].cpu(), skip_special_tokens=True)}


def sparsity_grid(sparsity_by_layer: dict[str, float]):
    """``{layer name: sparsity}`` as a pandas table: one row per projection, named by what follows
    the decoder-layer index (``self_attn.q_proj``, ``mlp.down_proj``; in GPT-2 ``attn.c_proj`` and
    ``mlp.c_proj`` stay apart), one column per decoder layer.

    Raises:
        ValueError: a name has no decoder-layer index (``...layers.<i>.<projection>``).
    """
    import pandas as pd

    cells = {}
    for name, value in sparsity_by_layer.items():
        match = re.search(r"\.(\d+)\.(.+)$", name)
        if not match:
            raise ValueError(f"Layer name {name!r} has no decoder-layer index like 'model.layers.3.mlp.up_proj'.")
        cells.setdefault(match.group(2), {})[int(match.group(1))] = float(value)
    return pd.DataFrame(cells).T.sort_index(axis=1)


def plot_layer_sparsity(sparsity_by_layer: dict[str, float], ax=None):
    """A heat map of :func:`sparsity_grid`: weights pruned (%) for every projection (rows) of every
    decoder layer (columns). Returns the axes."""
    import matplotlib.pyplot as plt

    grid = sparsity_grid(sparsity_by_layer)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.35 * len(grid) + 1.2))
    image = ax.imshow(100 * grid.to_numpy(), aspect="auto", vmin=0, vmax=100, cmap="viridis")
    ax.set_yticks(range(len(grid)), grid.index)
    ax.set_xlabel("decoder layer")
    ax.figure.colorbar(image, ax=ax, label="weights pruned (%)")
    return ax


def pruning_explorer(model: nn.Module, tokenizer, blocks: torch.Tensor, methods: dict[str, dict],
                     norms: dict[str, torch.Tensor] | None = None, sparsity: float = 0.5,
                     sample_tokens: int = 16, batch_size: int = 8):
    """An ipywidgets explorer: a sparsity slider and a criterion choice; each change prunes a
    working copy of ``model`` (:func:`explorer_view`, the precomputed ``norms`` reused) and shows
    perplexity on ``blocks``, a sample generation and the per-layer sparsity grid. Views are cached
    by (criterion, sparsity). ``model`` is not changed. Returns the widget
    (:func:`course_lib.widgets.interactive_view`); ``widget.last_view`` holds the latest view.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from .widgets import interactive_view

    check_sparsity(sparsity)
    if not methods:
        raise ValueError("methods is empty: give at least one {label: pruning_masks keyword arguments}.")
    work, cache = copy.deepcopy(model), {}
    controls = {"sparsity": widgets.FloatSlider(value=sparsity, min=0.0, max=0.9, step=0.05, description="sparsity",
                                                continuous_update=False, readout_format=".0%"),
                "criterion": widgets.Dropdown(options=list(methods), description="criterion")}

    def draw(sparsity, criterion):
        key = (criterion, round(sparsity, 4))
        if key not in cache:
            cache[key] = explorer_view(work, model, tokenizer, blocks, sparsity, methods[criterion], norms,
                                       sample_tokens=sample_tokens, batch_size=batch_size)
        view = box.last_view = cache[key]
        print(f"{criterion} at {sparsity:.0%}: perplexity {view['perplexity']:.2f} on {len(blocks)} blocks")
        print(f"sample: {view['sample']!r}")
        ax = plot_layer_sparsity(view["layer_sparsity"])
        display(ax.figure)
        plt.close(ax.figure)

    box = interactive_view(controls, draw, draw_now=False)
    box.redraw()
    return box
