"""The "Claim check" table that ends every lesson.

Each row holds a claim from the source articles (or the published work they lean on), what we
measured on our model in this run, and a verdict computed from the measurement, never typed in.

The verdict logic lives here, so that a lesson's claim cell holds only its rows:

* :func:`rate_comparison` / :func:`rate_band`: two proportions (accuracy, agreement) over n items;
* :func:`speedup_verdict` and :func:`speed_claim`: a speed-up against the timing noise, from
  :func:`course_lib.metrics.compare_speeds`' table (one timing round: inconclusive);
* :func:`within_tolerance`: a gap at most a tolerance, given the noise;
* :func:`lower_is_better`: a measured ordering of several values, with a relative margin;
* :func:`all_hold`, :func:`negate`: combine verdicts.
"""

from __future__ import annotations

import math

__all__ = ["INCONCLUSIVE", "VERDICTS", "verdict", "rate_band", "rate_comparison", "speedup_verdict",
           "speedup", "speed_claim", "within_tolerance", "lower_is_better", "all_hold", "negate", "claim_table"]

INCONCLUSIVE = "inconclusive"
VERDICTS = {True: "✅ holds here", False: "❌ does not hold here", None: "➖ not measured here",
            INCONCLUSIVE: "❔ inconclusive here (within noise)"}


def _outcome(holds):
    """``holds`` as one of True, False, None, INCONCLUSIVE (numpy and pandas booleans become bool)."""
    if isinstance(holds, str):
        if holds != INCONCLUSIVE:
            raise ValueError(f"holds must be True, False, None or {INCONCLUSIVE!r}; got {holds!r}.")
        return INCONCLUSIVE
    return None if holds is None else bool(holds)


def verdict(holds) -> str:
    """The verdict text for a measured outcome: True, False, None (could not be measured on this
    machine) or :data:`INCONCLUSIVE` (measured, but the difference is within the noise)."""
    return VERDICTS[_outcome(holds)]


def rate_band(a: float, b: float, n: int, z: float = 2.0) -> float:
    """Noise band of the difference of two proportions ``a`` and ``b``, each over ``n`` trials:
    ``z * sqrt(a (1 - a) / n + b (1 - b) / n)`` (``z`` standard errors)."""
    if n < 1:
        raise ValueError(f"n must be a positive number of trials, got {n}.")
    if not (0 <= a <= 1 and 0 <= b <= 1):
        raise ValueError(f"a and b must be proportions in [0, 1]; got {a} and {b}.")
    return z * math.sqrt(a * (1 - a) / n + b * (1 - b) / n)


def rate_comparison(a: float, b: float, n: int, z: float = 2.0):
    """Is rate ``a`` higher than rate ``b``, both measured as proportions over ``n`` trials?

    The band is ``z`` standard errors of the difference of two proportions,

        band = z * sqrt(a (1 - a) / n + b (1 - b) / n),

    (treating the two samples as independent, which is conservative when both were measured on the
    same items). Returns True if ``a - b > band``, False if ``b - a > band``, else
    :data:`INCONCLUSIVE`: a verdict for :func:`claim_table`.
    """
    band = rate_band(a, b, n, z)
    if a - b > band:
        return True
    if b - a > band:
        return False
    return INCONCLUSIVE


def speedup_verdict(ratio: float, spread: float, threshold: float = 1.05):
    """Is a measured speed-up ``ratio`` (new speed / old speed) at least ``threshold``, given that
    repeated timings of one model vary by ``spread`` (relative, e.g. (max - min) / median)?

    True if ``ratio >= threshold`` and ``ratio - 1 > spread``; False if ``ratio < threshold`` and
    ``threshold - ratio > spread``; otherwise :data:`INCONCLUSIVE` (the gap is within the noise).
    A NaN ``spread`` (fewer than two timing rounds: no noise estimate) is always INCONCLUSIVE.
    """
    if spread != spread:  # NaN: one round, so nothing is known about the noise
        return INCONCLUSIVE
    if ratio <= 0 or spread < 0:
        raise ValueError(f"ratio must be positive and spread non-negative; got {ratio} and {spread}.")
    if ratio >= threshold and ratio - 1 > spread:
        return True
    if ratio < threshold and threshold - ratio > spread:
        return False
    return INCONCLUSIVE


def speedup(table, new: str, old: str, timing: str = "generation") -> tuple[float, float]:
    """``(ratio, noise)`` of model ``new`` against model ``old`` in a
    :func:`course_lib.metrics.compare_speeds` table: ``ratio = old time / new time`` (above 1:
    ``new`` is faster), ``noise`` = the larger of the two models' relative spreads (NaN with one
    round). ``timing`` is ``"generation"`` (``latency_s``, ``spread``) or ``"forward"``
    (``forward_s``, ``forward_spread``)."""
    columns = {"generation": ("latency_s", "spread"), "forward": ("forward_s", "forward_spread")}
    if timing not in columns:
        raise ValueError(f"timing must be 'generation' or 'forward'; got {timing!r}.")
    time_col, spread_col = columns[timing]
    missing = [m for m in (new, old) if m not in table.index]
    if missing or time_col not in table.columns:
        raise ValueError(f"The speed table has no {missing or time_col!r}: it has models {list(table.index)} and "
                         f"columns {list(table.columns)} (forward timings need compare_speeds(forward_input=...)).")
    ratio = float(table.loc[old, time_col]) / float(table.loc[new, time_col])
    noise = max(float(table.loc[new, spread_col]), float(table.loc[old, spread_col]))
    return ratio, noise


def speed_claim(table, new: str, old: str, threshold: float = 1.05, timing: str = "generation"):
    """Is ``new`` at least ``threshold`` times as fast as ``old``, beyond the noise? The verdict of
    :func:`speedup_verdict` on :func:`speedup` of a side-by-side timing table (INCONCLUSIVE with
    fewer than two rounds)."""
    ratio, noise = speedup(table, new, old, timing)
    return speedup_verdict(ratio, noise, threshold)


def lower_is_better(values: dict, order: list, margin: float = 0.0):
    """Do the measured ``values`` (e.g. perplexities by method) increase in the given ``order``,
    each by more than ``margin`` (relative)? True if every step ``values[b] > values[a] * (1 +
    margin)``, False if some step goes the other way by more than the margin, otherwise
    :data:`INCONCLUSIVE` (a step within the margin)."""
    missing = [k for k in order if k not in values]
    if missing or len(order) < 2:
        raise ValueError(f"order needs at least two keys of values; missing {missing}, values has {list(values)}.")
    steps = []
    for a, b in zip(order, order[1:]):
        lo, hi = float(values[a]), float(values[b])
        steps.append(True if hi > lo * (1 + margin) else False if lo > hi * (1 + margin) else INCONCLUSIVE)
    return all_hold(*steps)


def within_tolerance(gap: float, tolerance: float, noise: float):
    """Is a measured relative ``gap`` (e.g. 1 - merged speed / base speed) at most ``tolerance``,
    when repeated measurements vary by ``noise`` (relative)?

    True if ``gap + noise <= tolerance`` (within tolerance even at the noisy extreme); False if
    ``gap - noise > tolerance``; otherwise :data:`INCONCLUSIVE`.
    """
    if noise < 0 or tolerance < 0:
        raise ValueError(f"tolerance and noise must be non-negative; got {tolerance} and {noise}.")
    if gap + noise <= tolerance:
        return True
    if gap - noise > tolerance:
        return False
    return INCONCLUSIVE


def all_hold(*verdicts):
    """Combine the verdicts of a claim's parts: False if any part is False, else
    :data:`INCONCLUSIVE` if any part is, else True. (A part that is None was not measured: the
    whole claim is then None, unless a part is False.)"""
    verdicts = [_outcome(v) for v in verdicts]
    if any(v is False for v in verdicts):
        return False
    if any(v is None for v in verdicts):
        return None
    if any(v == INCONCLUSIVE for v in verdicts):
        return INCONCLUSIVE
    return True


def negate(holds):
    """The verdict of the opposite claim: True <-> False; None and :data:`INCONCLUSIVE` stay."""
    holds = _outcome(holds)
    return (not holds) if isinstance(holds, bool) else holds


def claim_table(rows):
    """A pandas table from ``(claim, source, measured, holds)`` tuples.

    ``holds`` is computed from the measurement: a bool, None (not measured) or
    :data:`INCONCLUSIVE` (see :func:`rate_comparison`); it becomes the verdict column.
    Text is left-aligned and wraps, so long claims stay readable in JupyterLab.
    """
    import pandas as pd

    records = []
    for row in rows:
        if len(row) != 4:
            raise ValueError(f"Each claim row is (claim, source, measured, holds); got {len(row)} items: {row!r}")
        claim, source, measured, holds = row
        records.append({"claim": claim, "source": source, "measured here": measured, "verdict": verdict(holds)})
    table = pd.DataFrame(records, columns=["claim", "source", "measured here", "verdict"])
    return table.style.hide(axis="index").set_properties(**{"text-align": "left", "white-space": "pre-wrap"})
