"""Checkers that exercises call on the learner's code.

``check_function(learner, reference, cases)`` runs both on every case and prints a clear pass,
or a specific hint on the first case that fails. It never raises: a wrong answer, a wrong type
or an exception in the learner's code becomes a message. Chapter checkers live in the modules
of this package named after the chapter's topic (``course_lib.checks.baseline`` ...).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["Case", "CheckResult", "compare_values", "check_function"]


@dataclass
class Case:
    """One input to try: ``fn(*args, **kwargs)``; ``label`` says what it is in messages."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


@dataclass
class CheckResult:
    """True/False result of a check. The message was printed already, so Jupyter shows nothing."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:  # printed already by the checker
        pass


def compare_values(got, expected, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """None when ``got`` matches ``expected``; otherwise a sentence saying how it differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__}"
        if tuple(got.shape) != tuple(expected.shape):
            return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if expected.dtype == torch.bool or not expected.is_floating_point():
            if got.dtype != expected.dtype:
                return f"expected dtype {expected.dtype}, got {got.dtype}"
            wrong = int((got != expected).sum())
            return None if wrong == 0 else f"{wrong} of {expected.numel()} entries differ"
        if not got.is_floating_point():
            return f"expected a floating-point tensor ({expected.dtype}), got {got.dtype}"
        got_f = got.detach().to(torch.float64)
        exp_f = expected.detach().to(torch.float64)
        if torch.allclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True):
            return None
        diff = (got_f - exp_f).abs()
        return f"values differ: max abs difference {diff.max().item():.3g} ({int((diff > atol + rtol * exp_f.abs()).sum())} entries off)"
    if isinstance(expected, float) or isinstance(got, float):
        try:
            got_f = float(got)
        except (TypeError, ValueError):
            return f"expected a number, got {type(got).__name__}"
        if math.isclose(got_f, float(expected), rel_tol=rtol, abs_tol=atol):
            return None
        return f"expected {float(expected):.6g}, got {got_f:.6g}"
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)) and len(got) == len(expected):
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare_values(g, e, atol, rtol)
            if problem:
                return f"item {i}: {problem}"
        return None
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def check_function(learner: Callable, reference: Callable, cases: Sequence[Case], *, name: str | None = None,
                   diagnose: Callable[[object, object, Case], str | None] | None = None,
                   compare: Callable[[object, object], str | None] = compare_values) -> CheckResult:
    """Compare ``learner`` with ``reference`` on every case; print the verdict; never raise.

    Args:
        diagnose: ``diagnose(got, expected, case)`` returns a specific hint for a wrong answer
            (for example "you forgot to shift the labels"), or None.
        compare: returns None when equal, else a description of the difference.
    """
    name = name or getattr(learner, "__name__", "your function")
    if not callable(learner):
        return _report(False, f"❌ {name}: expected a function, got {type(learner).__name__}.")
    for i, case in enumerate(cases, 1):
        label = case.label or f"case {i}"
        expected = reference(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        try:
            got = learner(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        except NotImplementedError:
            return _report(False, f"⏳ {name}: not written yet. Replace the `raise NotImplementedError` "
                                  "with your code and run this cell again.")
        except Exception as err:  # the learner's bug must not crash the checker
            return _report(False, f"❌ {name} raised {type(err).__name__} on {label}: {err}")
        try:
            problem = compare(got, expected)
        except Exception as err:
            problem = f"could not compare your result ({type(err).__name__}: {err})"
        if problem:
            hint = None
            if diagnose is not None:
                try:
                    hint = diagnose(got, expected, case)
                except Exception:
                    hint = None
            message = f"❌ {name}, {label}: {problem}."
            if hint:
                message += f"\n   Hint: {hint}"
            return _report(False, message)
    return _report(True, f"✅ {name}: correct on all {len(cases)} test cases.")


def _report(passed: bool, message: str) -> CheckResult:
    print(message)
    return CheckResult(passed, message)
