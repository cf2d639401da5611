"""The "Claim check" table that ends every lesson.

Each row holds a claim from the source articles (or the published work they lean on), what we
measured on our model in this run, and a verdict computed from the measurement, never typed in.
"""

from __future__ import annotations

VERDICTS = {True: "✅ holds here", False: "❌ does not hold here", None: "➖ not measured here"}


def verdict(holds: bool | None) -> str:
    """The verdict text for a measured outcome (None: could not be measured on this machine)."""
    return VERDICTS[None if holds is None else bool(holds)]


def claim_table(rows):
    """A pandas table from ``(claim, source, measured, holds)`` tuples.

    ``holds`` is a bool computed from the measurement (or None); it becomes the verdict column.
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
