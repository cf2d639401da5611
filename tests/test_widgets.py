import ipywidgets as widgets
import pytest

from course_lib.widgets import interactive_view


def test_interactive_view_draws_on_change_with_a_busy_sign():
    slider = widgets.IntSlider(value=1, min=0, max=5)
    seen = []

    def draw(n):
        seen.append((n, box.status.value, slider.disabled))  # what the learner sees while it draws
        print(n)

    box = interactive_view({"n": slider}, draw, busy="working", draw_now=False)
    assert seen == []
    box.redraw()
    assert seen == [(1, "working", True)]
    slider.value = 3
    assert seen[-1] == (3, "working", True)
    assert box.status.value.startswith("done in") and not slider.disabled
    printed = []
    interactive_view({"n": widgets.IntSlider(value=4)}, lambda n: printed.append(n))  # draws while building
    assert printed == [4]


def test_interactive_view_reports_a_failing_draw_and_bad_controls():
    slider = widgets.IntSlider(value=1)

    def draw(n):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        interactive_view({"n": slider}, draw)
    box = interactive_view({"n": slider}, draw, draw_now=False)
    with pytest.raises(RuntimeError):
        box.redraw()
    assert "boom" in box.status.value and not slider.disabled
    with pytest.raises(ValueError, match="controls is empty"):
        interactive_view({}, draw)
    with pytest.raises(ValueError, match="not value widgets"):
        interactive_view({"n": 3}, draw)
