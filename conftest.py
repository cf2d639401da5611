"""Checks that apply when pytest executes the notebooks (nbval).

A notebook cell that passes but writes to stderr shows the learner a pink box: a warning, a
deprecation notice, a library's log line. Every such output must either be silenced as noise
(``course_lib.noise``) or be explained by the lesson. Cells whose stderr is not in
:data:`EXPECTED_STDERR` fail, with the notebook, the cell and the text in the message.
Set ``COURSE_ALLOW_STDERR=1`` to turn the check off (e.g. while drafting a chapter).
"""

import os
import re

import pytest

# Text a lesson may write to stderr, each with the reason it is fine.
EXPECTED_STDERR = [
    # tqdm's text progress bars (when ipywidgets cannot render, e.g. under nbval): progress, not a warning
    re.compile(r"^[^\n]*\d+%\|[^\n]*\|[^\n]*$|^[^\n]*: *\d+it \[[^\n]*\]$"),
    re.compile(r"^\s*$"),
]


def _unexpected(text: str) -> list[str]:
    lines = re.split(r"[\r\n]+", text)
    return [line for line in lines if not any(p.search(line) for p in EXPECTED_STDERR)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.passed or os.environ.get("COURSE_ALLOW_STDERR"):
        return
    outputs = getattr(item, "test_outputs", None)
    if not outputs:
        return
    stderr = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream"
                     and o.get("name") == "stderr")
    bad = _unexpected(stderr)
    if bad:
        report.outcome = "failed"
        shown = "\n".join(bad[:15])
        report.longrepr = (f"{item.nodeid}: the cell wrote to stderr, which the learner sees as a warning box.\n"
                           f"Silence it in course_lib.noise if it is noise, or explain it in the lesson "
                           f"(and add it to EXPECTED_STDERR in conftest.py with the reason):\n{shown}")
