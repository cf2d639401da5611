"""course_lib: the small, tested helper library of the LLM optimization course.

Modules, each introduced in the chapter that teaches it:

* ``device``, ``profiles``, ``models``, ``data``, ``tasks``, ``metrics``, ``scorecard``,
  ``training``, ``layers``, ``tiny_models``: chapter 00 (baseline and metrics);
* ``checks``: exercise checkers; ``exercise_builder``: writes ``exercises/`` from ``solutions/``.

Import what you need from its module, e.g. ``from course_lib.models import load_model``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
