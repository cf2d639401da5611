"""The "Claim check" table that ends every lesson.

Each row holds a claim from the source articles (or the published work they lean on), what we
measured on our model in this run, and a verdict computed from the measurement, never typed in.
"""

from __future__ import annotations

import math

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
    """
    if ratio <= 0 or spread < 0:
        raise ValueError(f"ratio must be positive and spread non-negative; got {ratio} and {spread}.")
    if ratio >= threshold and ratio - 1 > spread:
        return True
    if ratio < threshold and threshold - ratio > spread:
        return False
    return INCONCLUSIVE


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
