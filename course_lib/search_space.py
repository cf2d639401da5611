"""A hyperparameter search space: ranges and choices, checked before anything trains.

A space maps names to :class:`Range` (a numeric interval, optionally log-scaled or integer) or
:class:`Choice` (a finite set of options): ``{"lr": Range(1e-5, 1e-2, log=True), "lora_rank":
Choice([4, 8])}``. :func:`validate_space` names the first problem; :func:`suggest` asks an Optuna
trial for one value of each; :func:`grid_values` gives the grid a ``GridSampler`` walks;
:func:`space_to_dict` / :func:`space_from_dict` send a space to worker processes as JSON.
Introduced in chapter 01 (hyperparameter search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Range", "Choice", "validate_space", "suggest", "grid_values", "grid_size", "space_to_dict",
           "space_from_dict"]


@dataclass(frozen=True)
class Range:
    """A numeric interval ``[low, high]`` for one hyperparameter.

    ``log=True`` samples ``log(x)`` uniformly (right for learning rates, which matter by factors
    of ten, not by additive steps); ``integer=True`` gives integers (``trial.suggest_int``).
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Choice:
    """A finite set of options (``trial.suggest_categorical``)."""

    options: tuple

    def __init__(self, options):
        object.__setattr__(self, "options", tuple(options))


def validate_space(space: dict) -> None:
    """Raise a ValueError naming the first problem in a search space, before anything trains.

    A space maps names to :class:`Range` or :class:`Choice`. Problems: an empty space; a range
    with ``low >= high`` (empty or inverted: swap the bounds, or fix the value instead of
    searching it); a non-finite bound; ``log=True`` with ``low <= 0``; an integer range with
    non-integer bounds; a choice without options.
    """
    if not isinstance(space, dict) or not space:
        raise ValueError("The search space is empty: give at least one hyperparameter, "
                         "e.g. {'lr': Range(1e-5, 1e-2, log=True)}.")
    for name, dist in space.items():
        if isinstance(dist, Range):
            if not (math.isfinite(dist.low) and math.isfinite(dist.high)):
                raise ValueError(f"Search range {name!r} has a non-finite bound: [{dist.low}, {dist.high}].")
            if dist.low > dist.high:
                raise ValueError(f"Search range {name!r} is inverted: low={dist.low} > high={dist.high}. "
                                 f"Swap them: Range({dist.high}, {dist.low}).")
            if dist.low == dist.high:
                raise ValueError(f"Search range {name!r} is empty: low == high == {dist.low}. Widen it, or "
                                 "pass the value in `fixed` instead of searching it.")
            if dist.log and dist.low <= 0:
                raise ValueError(f"Search range {name!r} is log-scaled but low={dist.low} <= 0; "
                                 "a log scale needs positive bounds.")
            if dist.integer and (int(dist.low) != dist.low or int(dist.high) != dist.high):
                raise ValueError(f"Integer range {name!r} needs integer bounds, got [{dist.low}, {dist.high}].")
        elif isinstance(dist, Choice):
            if not dist.options:
                raise ValueError(f"Choice {name!r} has no options: give at least one.")
        else:
            raise ValueError(f"Search space entry {name!r} must be a Range or a Choice, got {type(dist).__name__}.")


def suggest(trial, space: dict) -> dict:
    """Ask ``trial`` for one value of every hyperparameter in ``space`` (Optuna's suggest API)."""
    params = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            params[name] = trial.suggest_categorical(name, list(dist.options))
        elif dist.integer:
            params[name] = trial.suggest_int(name, int(dist.low), int(dist.high), log=dist.log)
        else:
            params[name] = trial.suggest_float(name, float(dist.low), float(dist.high), log=dist.log)
    return params


def grid_values(space: dict, points: int | dict = 3) -> dict[str, list]:
    """The grid a ``GridSampler`` walks: ``points`` evenly spaced values per range (log-spaced when
    ``log=True``; integers rounded and deduplicated), every option of a choice.

    ``points`` is one count for all ranges or a ``{name: count}`` dict. The grid has
    ``grid_size(grid)`` = the product of the axis lengths points.
    """
    validate_space(space)
    grid = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            grid[name] = list(dist.options)
            continue
        n = points[name] if isinstance(points, dict) else points
        if n < 2:
            raise ValueError(f"A grid needs at least 2 points per range; {name!r} got {n}.")
        if dist.log:
            lo, hi = math.log(dist.low), math.log(dist.high)
            values = [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
            values[0], values[-1] = dist.low, dist.high  # exactly, not exp(log(x)) rounded
        else:
            values = [dist.low + (dist.high - dist.low) * i / (n - 1) for i in range(n)]
        if dist.integer:
            values = sorted({int(round(v)) for v in values})
        grid[name] = values
    return grid


def grid_size(grid: dict[str, list]) -> int:
    """Number of points of a grid: the product of its axis lengths."""
    return math.prod(len(v) for v in grid.values())


def space_to_dict(space: dict) -> dict:
    """A JSON-ready description of a space (for worker processes); :func:`space_from_dict` inverts it."""
    out = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            out[name] = {"options": list(dist.options)}
        else:
            out[name] = {"low": dist.low, "high": dist.high, "log": dist.log, "integer": dist.integer}
    return out


def space_from_dict(data: dict) -> dict:
    """Rebuild a space written by :func:`space_to_dict` (and validate it)."""
    space = {name: Choice(d["options"]) if "options" in d else Range(d["low"], d["high"], d["log"], d["integer"])
             for name, d in data.items()}
    validate_space(space)
    return space
