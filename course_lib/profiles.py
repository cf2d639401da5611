"""Run profiles: how big every experiment is.

Three profiles, chosen automatically from the course's one device decision
(:func:`course_lib.device.pick_device`: a CUDA device gives ``gpu``, anything else ``cpu``) and
overridden by the environment variable ``COURSE_PROFILE``:

* ``smoke``: continuous integration. The fewest steps that still run every code path; the
  numbers it produces are not meant to be read.
* ``cpu``: a laptop without a GPU. Each lesson finishes within about 10 minutes on 2 cores.
* ``gpu``: Colab's T4 or any CUDA device. Full settings.

:class:`Profile` holds the sizes of the shared measurement protocol (the same in every chapter,
so the capstone can compare chapters). A chapter's own sizes live in its module as a table
``{"smoke": {...}, "cpu": {...}, "gpu": {...}}`` read with :func:`sizes_for`.
Notebooks never hard-code a size.

Every block count a profile asks for must exist in the smallest corpus split on every supported
Python: the pydoc text differs between Python versions (see
:data:`course_lib.data.MIN_BLOCKS_128`), and a test checks every profile and chapter table.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from types import SimpleNamespace

from .device import pick_device

__all__ = ["PROFILE_ENV", "PROFILE_NAMES", "Profile", "PROFILES", "profile_name", "get_profile", "sizes_for"]

PROFILE_ENV = "COURSE_PROFILE"
PROFILE_NAMES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class Profile:
    """Sizes of the course-wide measurement protocol (see ``course_lib.scorecard``)."""

    name: str
    block_size: int  # tokens per block for perplexity and language-model training
    eval_blocks: int  # validation blocks for perplexity
    eval_batch_size: int
    calib_blocks: int  # calibration blocks (pruning, quantization, layer importance)
    gen_tokens: int  # new tokens per generation-speed measurement
    timing_repeats: int  # timed repeats after one warm-up; the median is reported
    task_test_size: int  # held-out examples for exact-match accuracy
    train_batch_size: int
    chapter: str = ""  # set by notebook_setup.start(): the chapter a lesson records its results under

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", block_size=128, eval_blocks=4, eval_batch_size=4, calib_blocks=4,
                     gen_tokens=8, timing_repeats=1, task_test_size=8, train_batch_size=2),
    "cpu": Profile("cpu", block_size=128, eval_blocks=48, eval_batch_size=8, calib_blocks=32,
                   gen_tokens=32, timing_repeats=3, task_test_size=100, train_batch_size=8),
    # eval_blocks and calib_blocks at most course_lib.data.MIN_BLOCKS_128 (133 validation,
    # 144 calibration blocks on Python 3.10; a test checks it)
    "gpu": Profile("gpu", block_size=128, eval_blocks=128, eval_batch_size=32, calib_blocks=128,
                   gen_tokens=32, timing_repeats=5, task_test_size=300, train_batch_size=16),
}


def profile_name() -> str:
    """The active profile's name: ``$COURSE_PROFILE`` if set, else ``gpu`` when the course's device
    (:func:`course_lib.device.pick_device`, so ``COURSE_DEVICE=cpu`` on a GPU machine gives
    ``cpu``) is a CUDA device, else ``cpu``."""
    name = os.environ.get(PROFILE_ENV)
    if name is None or name == "":
        return "gpu" if pick_device().type == "cuda" else "cpu"
    name = name.strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV}={os.environ[PROFILE_ENV]!r} is not a profile. "
            f"Use one of {', '.join(PROFILE_NAMES)} (or unset it to choose automatically)."
        )
    return name


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, or the active one (see :func:`profile_name`)."""
    if name is None:
        name = profile_name()
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}. Use one of {', '.join(PROFILE_NAMES)}.")
    return PROFILES[name]


def sizes_for(table: dict[str, dict], profile: str | Profile | None = None) -> SimpleNamespace:
    """Pick a chapter's sizes for the active (or given) profile.

    ``table`` maps every profile name to a dict of sizes, all with the same keys, e.g.
    ``{"smoke": {"steps": 2}, "cpu": {"steps": 60}, "gpu": {"steps": 300}}``.
    Returns them as attributes: ``sizes_for(table).steps``.

    Raises:
        ValueError: a profile is missing from the table, or the profiles disagree on the keys.
    """
    missing = [p for p in PROFILE_NAMES if p not in table]
    if missing:
        raise ValueError(f"Size table has no entry for profile(s) {missing}; give all of {PROFILE_NAMES}.")
    keys = {p: set(table[p]) for p in PROFILE_NAMES}
    if len({frozenset(k) for k in keys.values()}) != 1:
        raise ValueError(f"Size table's profiles have different keys: {keys}")
    name = profile.name if isinstance(profile, Profile) else (profile or profile_name())
    if name not in table:
        raise ValueError(f"Unknown profile {name!r}. Use one of {', '.join(PROFILE_NAMES)}.")
    return SimpleNamespace(**table[name])
