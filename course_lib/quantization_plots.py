"""Pictures of quantization: weight histograms, the bit-width ladder, and an explorer widget.

Every tensor is moved to the CPU (``.cpu()``) before NumPy or matplotlib sees it.
"""

from __future__ import annotations

import torch

from .int_quantization import INT_BITS, check_bits, check_float, fake_quantize, quantization_error

__all__ = ["plot_weight_histogram", "plot_ladder", "quantization_explorer"]


def plot_weight_histogram(w: torch.Tensor, w_hat: torch.Tensor | None = None, ax=None, bins: int = 200,
                          title: str = ""):
    """Histogram of ``w`` (and of ``w_hat`` on top, when given), log-scaled counts. Returns the axes."""
    import matplotlib.pyplot as plt

    check_float(w)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    values = w.detach().float().reshape(-1).cpu().numpy()
    low, high = values.min(), values.max()
    ax.hist(values, bins=bins, range=(low, high), color="#4c72b0", alpha=0.6, label="original")
    if w_hat is not None:
        ax.hist(w_hat.detach().float().reshape(-1).cpu().numpy(), bins=bins, range=(low, high), color="#dd8452",
                alpha=0.8, histtype="step", lw=1.2, label="quantized")
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return ax


def plot_ladder(table, baseline_perplexity: float, ax=None):
    """Perplexity against bits, one line per granularity, the float32 baseline dashed. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for granularity, group in table.groupby("granularity", sort=False):
        group = group.sort_values("bits")
        ax.plot(group["bits"], group["perplexity"], marker="o", label=granularity)
    ax.axhline(baseline_perplexity, color="grey", ls="--", label=f"float32 ({baseline_perplexity:.1f})")
    ax.set_yscale("log")
    ax.set_xticks(sorted(table["bits"].unique()))
    ax.set_xlabel("bits per weight (round to nearest, symmetric)")
    ax.set_ylabel("validation perplexity (log)")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def quantization_explorer(weight: torch.Tensor, bits: int = 4, group_size: int = 128, title: str = ""):
    """An ipywidgets explorer: sliders for bits and group size redraw the weight histogram and the error.

    Group size 0 means one scale per output channel (row); any other ``group_size`` must be one of
    16, 32, ..., 512 that divides the row (ValueError otherwise, never silently replaced). The first view is drawn when the
    function runs, so it also works without a live kernel. Returns the widget (display it); its
    ``view`` attribute holds the bits, group size, error and title of the picture shown.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    check_float(weight)
    check_bits(bits)
    w = weight.detach().float().cpu()  # a picture: computed on the CPU, whatever the model's device
    sizes = [s for s in (16, 32, 64, 128, 256, 512) if w.shape[-1] % s == 0]
    options = [("per channel", 0)] + [(str(s), s) for s in sizes]
    if group_size not in [0] + sizes:
        raise ValueError(f"group_size={group_size!r} is not offered for rows of {w.shape[-1]} inputs: "
                         f"choose 0 (one scale per output channel) or one of {sizes} (they divide the row).")
    bits_slider = widgets.IntSlider(value=bits, min=INT_BITS.start, max=INT_BITS.stop - 1, description="bits")
    group_slider = widgets.SelectionSlider(options=options, value=group_size, description="group size")
    out = widgets.Output()
    box = widgets.VBox([widgets.HBox([bits_slider, group_slider]), out])

    def redraw(*_):
        from IPython.display import display

        b, g = bits_slider.value, group_slider.value
        w_hat = fake_quantize(w, b, "channel") if g == 0 else fake_quantize(w, b, "group", g)
        err = quantization_error(w, w_hat)
        label = "per channel" if g == 0 else f"group {g}"
        fig, ax = plt.subplots(figsize=(8, 3))
        plot_weight_histogram(w, w_hat, ax=ax, title=f"{title} {b} bits, {label}: relative error "
                                                     f"{err['relative']:.3%}, SQNR {err['sqnr_db']:.1f} dB")
        box.view = {"bits": b, "group_size": g, "error": err, "title": ax.get_title()}
        out.clear_output(wait=True)
        with out:
            display(fig)
        plt.close(fig)

    bits_slider.observe(redraw, names="value")
    group_slider.observe(redraw, names="value")
    redraw()
    return box
