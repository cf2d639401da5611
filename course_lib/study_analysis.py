"""Reading search results against their noise: which sampler won, what a pruner saved, and
whether the chosen trial is really the best one on a validation set of this size.

* :func:`sampler_summary`, :func:`lead_verdict`, :func:`sampler_verdict`: a sampler's lead
  only counts if it is larger than the spread across seeds;
* :func:`best_change_by_seed`, :func:`pruner_verdict`: a pruner's saving and its cost to the
  best result, decided seed by seed;
* :func:`example_losses_by_trial`, :func:`bootstrap_best_share`, :func:`best_trial_verdict`: is
  the chosen trial really the best, or could another draw of validation examples of the same
  size pick another one?
* :func:`plot_best_so_far`: best-so-far curves per sampler.

Introduced in chapter 01 (hyperparameter search).
"""

from __future__ import annotations

import math

import numpy as np

from .claims import INCONCLUSIVE, all_hold

__all__ = ["sampler_summary", "lead_verdict", "sampler_verdict", "best_change_by_seed", "pruner_verdict",
           "example_losses_by_trial", "bootstrap_best_share", "best_trial_verdict", "plot_best_so_far"]


def sampler_summary(df):
    """The final best value of every study of :func:`compare_samplers`, one row per sampler: a
    column per seed, then ``mean`` over seeds and ``spread`` = max - min over seeds (how much
    the result of one study moves with the seed alone)."""
    if df.empty:
        raise ValueError("sampler_summary needs the rows of compare_samplers, got an empty table.")
    table = df.sort_values("trial").groupby(["sampler", "seed"], sort=False)["best_so_far"].last().unstack()
    table.columns = [f"seed {c}" for c in table.columns]
    values = table.copy()
    table["mean"] = values.mean(axis=1)
    table["spread"] = values.max(axis=1) - values.min(axis=1)
    return table


def lead_verdict(summary, better: str, worse: str):
    """Does sampler ``better`` reach a lower mean best value than ``worse``, by more than the noise?

    The noise is the larger of the two samplers' spreads across seeds (:func:`sampler_summary`):
    a lead only counts if it is larger. True if ``mean[worse] - mean[better]`` exceeds it, False
    if ``mean[better] - mean[worse]`` does, else ``claims.INCONCLUSIVE`` (also with fewer than
    two seeds, when there is no spread to compare with).
    """
    for name in (better, worse):
        if name not in summary.index:
            raise ValueError(f"No sampler {name!r} in the summary; it has {list(summary.index)}.")
    seeds = [c for c in summary.columns if str(c).startswith("seed ")]
    if len(seeds) < 2:
        return INCONCLUSIVE
    lead = summary.loc[worse, "mean"] - summary.loc[better, "mean"]
    noise = max(summary.loc[better, "spread"], summary.loc[worse, "spread"])
    if lead > noise:
        return True
    if -lead > noise:
        return False
    return INCONCLUSIVE


def sampler_verdict(summary, sampler: str = "tpe", rivals=("random", "grid")):
    """Does ``sampler`` beat every one of ``rivals`` beyond the noise? :func:`lead_verdict` for each
    rival, combined with ``claims.all_hold`` (False if it loses to one, INCONCLUSIVE if any lead
    is within the noise)."""
    if not rivals:
        raise ValueError("sampler_verdict needs at least one rival sampler.")
    return all_hold(*(lead_verdict(summary, sampler, rival) for rival in rivals))


def best_change_by_seed(df, pruner: str = "hyperband"):
    """Per seed, the relative change of the best value that ``pruner``'s study found against the
    unpruned study of the same seed (rows of :func:`compare_pruners`): ``best / best_none - 1``
    (positive: the pruned search ended worse). A pandas Series indexed by seed."""
    for name in (pruner, "none"):
        if name not in set(df.pruner):
            raise ValueError(f"No {name!r} studies in the table; it has {sorted(set(df.pruner))}.")
    best = df.pivot_table(index="seed", columns="pruner", values="best")
    return best[pruner] / best["none"] - 1


def pruner_verdict(df, pruner: str = "hyperband", tolerance: float = 0.05, min_saved: float = 0.2):
    """Does ``pruner`` save more than ``min_saved`` of the training steps without losing the best
    result (a best value at most ``tolerance`` worse than the unpruned search's)? Decided per seed,
    because one seed can lose while another wins:

    * saving: True if every seed saved more than ``min_saved``, False if none did;
    * best result: True if no seed lost more than ``tolerance`` (:func:`best_change_by_seed`),
      False if every seed did;
    * anything mixed is ``claims.INCONCLUSIVE``; the two parts combine with ``claims.all_hold``.
    """
    def every_seed(flags):
        flags = [bool(f) for f in flags]
        return True if all(flags) else False if not any(flags) else INCONCLUSIVE

    saved = df[df.pruner == pruner]["compute_saved"]
    if saved.empty:
        raise ValueError(f"No {pruner!r} studies in the table; it has {sorted(set(df.pruner))}.")
    change = best_change_by_seed(df, pruner)
    kept = every_seed(change <= tolerance)
    return all_hold(every_seed(saved > min_saved), kept)


def plot_best_so_far(df, ax=None, ylabel: str = "best validation loss so far"):
    """Best-so-far curves per sampler: the mean over seeds as a line, min-max over seeds shaded."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for name, group in df.groupby("sampler", sort=False):
        by_trial = group.groupby("trial")["best_so_far"]
        mean, low, high = by_trial.mean(), by_trial.min(), by_trial.max()
        line, = ax.plot(mean.index, mean.values, label=f"{name} (mean of {group['seed'].nunique()} seeds)")
        ax.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax.figure


def example_losses_by_trial(study) -> dict[int, list[float]]:
    """``{trial number: per-example validation losses}`` of a study's completed trials that
    recorded them (``TaskObjective(record_example_losses=True)``); a ValueError if none did."""
    from optuna.trial import TrialState

    losses = {t.number: list(t.user_attrs["val_losses"]) for t in study.get_trials(deepcopy=False)
              if t.state == TrialState.COMPLETE and "val_losses" in t.user_attrs}
    if not losses:
        raise ValueError("No completed trial recorded per-example losses: build the objective with "
                         "record_example_losses=True (or the worker spec with 'record_example_losses': True).")
    return losses


def bootstrap_best_share(example_losses: dict, n_resamples: int = 2000, seed: int = 0) -> dict:
    """For each candidate of ``{label: per-example losses}`` (all on the same validation
    examples), the share of ``n_resamples`` bootstrap resamples in which its mean loss is the
    lowest. A resample draws ``n`` example indices with replacement (``n`` = the validation size)
    and scores every candidate on the *same* draw (paired). A share near 1 for one candidate: the
    validation set separates it from the rest; shares spread over several: its size does not.
    """
    if len(example_losses) < 2:
        raise ValueError(f"Bootstrapping which candidate is best needs at least two, got {len(example_losses)}.")
    labels = list(example_losses)
    lengths = {len(example_losses[k]) for k in labels}
    if len(lengths) != 1 or lengths.pop() < 2:
        raise ValueError("Every candidate needs losses on the same validation examples (at least two).")
    table = np.array([example_losses[k] for k in labels], dtype=float)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, table.shape[1], size=(n_resamples, table.shape[1]))
    means = table[:, draws].mean(axis=2)  # [candidates, resamples]
    wins = np.bincount(means.argmin(axis=0), minlength=len(labels))
    return {label: wins[i] / n_resamples for i, label in enumerate(labels)}


def best_trial_verdict(shares: dict, chosen, confident: float = 0.9, doubtful: float = 0.5):
    """Is ``chosen`` the best beyond the validation noise? True if it wins at least ``confident``
    of the bootstrap resamples (:func:`bootstrap_best_share`), False if it wins fewer than
    ``doubtful`` (another candidate is as likely the best), else ``claims.INCONCLUSIVE``."""
    if chosen not in shares:
        raise ValueError(f"{chosen!r} is not among the candidates {list(shares)}.")
    if not 0 <= doubtful <= confident <= 1 or math.isnan(shares[chosen]):
        raise ValueError(f"Need 0 <= doubtful <= confident <= 1, got {doubtful} and {confident}.")
    if shares[chosen] >= confident:
        return True
    if shares[chosen] < doubtful:
        return False
    return INCONCLUSIVE
