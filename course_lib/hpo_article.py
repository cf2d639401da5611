"""Why the source article's ``GridSearchCV(Trainer, param_grid, cv=3).fit(X, y)`` cannot run.

scikit-learn's ``GridSearchCV`` tunes an *estimator*: it first clones it with
``sklearn.base.clone``, which calls ``estimator.get_params(deep=False)``, then sets each grid
point with ``set_params(**point)`` and trains with ``fit(X, y)``. ``transformers.Trainer`` has
none of these, and the grid's keys are ``TrainingArguments`` fields, not ``Trainer`` arguments.
:func:`article_grid_search_errors` makes each of those calls and returns the errors as raised,
so the lesson shows the real reason whether or not scikit-learn is installed.
Introduced in chapter 01 (hyperparameter search).
"""

from __future__ import annotations

import importlib.util

__all__ = ["NOT_RUN", "article_grid_search_errors", "any_attempt_ran_cleanly"]

NOT_RUN = "not run"


def _attempt(label: str, fn) -> tuple[str, str]:
    try:
        fn()
        return label, "no error"
    except Exception as err:  # shown to the learner as raised
        return label, f"{type(err).__name__}: {err}"


def article_grid_search_errors(param_grid: dict, with_sklearn: bool | None = None) -> list[tuple[str, str]]:
    """``(attempt, outcome)`` pairs: what ``GridSearchCV`` calls on ``Trainer``, each called here.

    1. ``Trainer.get_params(deep=False)``: the first call of ``clone``, made by every ``fit``;
    2. ``Trainer.set_params(**point)``: how a grid point is set;
    3. ``Trainer(**point)``: the grid's keys as constructor arguments;
    4. the article's line itself, when scikit-learn is installed (``with_sklearn=None``: if it
       can be imported); otherwise its outcome starts with :data:`NOT_RUN` and says why.

    An outcome is ``"no error"`` or ``"ExceptionType: message"``.
    """
    from transformers import Trainer

    if not isinstance(param_grid, dict) or not param_grid or not all(param_grid.values()):
        raise ValueError("param_grid must be a non-empty dict of non-empty value lists, "
                         "e.g. {'learning_rate': [1e-5, 1e-4]}.")
    point = {name: values[0] for name, values in param_grid.items()}
    attempts = [
        _attempt("Trainer.get_params(deep=False)  # sklearn.base.clone(estimator) calls this first",
                 lambda: Trainer.get_params(deep=False)),
        _attempt(f"Trainer.set_params(**{point})  # how GridSearchCV sets a grid point",
                 lambda: Trainer.set_params(**point)),
        _attempt(f"Trainer(**{point})  # the grid's keys as Trainer arguments", lambda: Trainer(**point)),
    ]
    label = "GridSearchCV(Trainer, param_grid, cv=3).fit(X_train, y_train)  # the article's line"
    if with_sklearn is None:
        with_sklearn = importlib.util.find_spec("sklearn") is not None
    if not with_sklearn:
        attempts.append((label, f"{NOT_RUN}: scikit-learn is not installed here; the lines above are the calls "
                                "it would make, and the first one fails"))
        return attempts

    def article():
        from sklearn.model_selection import GridSearchCV

        GridSearchCV(Trainer, param_grid, cv=3).fit([[0.0]] * 6, [0, 1] * 3)

    attempts.append(_attempt(label, article))
    return attempts


def any_attempt_ran_cleanly(attempts: list[tuple[str, str]]) -> bool:
    """True if some attempt that was run raised no error (the article's route would then have a
    working step); attempts marked :data:`NOT_RUN` do not count."""
    ran = [outcome for _, outcome in attempts if not outcome.startswith(NOT_RUN)]
    if not ran:
        raise ValueError("No attempt was run: nothing to judge.")
    return any(outcome == "no error" for outcome in ran)
