"""One way to wire an interactive explorer: controls, a draw function, a busy sign.

:func:`interactive_view` puts ipywidgets controls (sliders, dropdowns...) above an output area
and calls ``draw(**values)`` inside that area whenever a control changes. While ``draw`` runs,
the old view is cleared, the controls are disabled and a status line says it is working; when it
ends the status line says how long it took (or the error). Works with ipywidgets 7.7 (Colab)
and 8: it only uses ``Label``, ``Output``, ``HBox``, ``VBox``, ``observe`` and ``clear_output``.

Example::

    view = interactive_view({"sparsity": widgets.FloatSlider(0.5, min=0, max=0.9)},
                            lambda sparsity: print(f"{sparsity:.0%}"))
    display(view)
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["interactive_view"]


def interactive_view(controls: dict, draw: Callable[..., None], busy: str = "⏳ computing...",
                     draw_now: bool = True):
    """A ``VBox`` of ``controls``, a status line and an output area redrawn by ``draw``.

    Args:
        controls: ``{keyword: widget}``; each widget has a ``value`` and becomes the keyword
            argument of the same name of ``draw``.
        draw: ``draw(**{keyword: widget.value})`` prints or displays the view (it runs inside
            the output area, so ``print``, ``display`` and ``plt.show`` land there).
        busy: the status text while ``draw`` runs.
        draw_now: draw the first view while building (so the cell also shows it when run
            non-interactively, e.g. under nbval).

    Returns:
        the box, with ``box.redraw()`` (draw again now) and ``box.status`` (the status Label).

    Raises:
        ValueError: ``controls`` is empty or holds something without a ``value``.
    """
    import ipywidgets as widgets

    if not controls:
        raise ValueError("controls is empty: give {keyword: widget}, e.g. {'sparsity': FloatSlider()}.")
    no_value = [key for key, w in controls.items() if not hasattr(w, "value") or not hasattr(w, "observe")]
    if no_value:
        raise ValueError(f"These controls are not value widgets (ipywidgets with .value): {no_value}.")
    status = widgets.Label(value="")
    output = widgets.Output()
    box = widgets.VBox([widgets.HBox(list(controls.values())), status, output])

    def redraw(_change=None):
        for w in controls.values():
            w.disabled = True
        status.value = busy
        output.clear_output(wait=False)  # the old view goes at once: nobody reads a stale one
        start = time.perf_counter()
        try:
            with output:
                draw(**{key: w.value for key, w in controls.items()})
            status.value = f"done in {time.perf_counter() - start:.1f} s"
        except Exception as err:
            status.value = f"failed: {type(err).__name__}: {err}"
            raise
        finally:
            for w in controls.values():
                w.disabled = False

    for w in controls.values():
        w.observe(redraw, names="value")
    box.redraw = redraw
    box.status = status
    if draw_now:
        redraw()
    return box
