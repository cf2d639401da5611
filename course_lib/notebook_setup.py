"""What the first cell of every notebook does.

Every lesson, exercise and solution notebook starts with :data:`FIRST_CELL` (a test checks it).
On Colab the cell clones and installs the course first; everywhere it calls :func:`start`, which
prints the versions, the device, the run profile and where the model will come from, seeds the
random generators, and returns the active :class:`~course_lib.profiles.Profile`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import random
import warnings

import numpy as np
import torch

from .device import pick_device
from .model_sources import DEFAULT_MODEL, resolve_model_source
from .profiles import Profile, get_profile

# Chapter numbers are the same in notebooks/, exercises/ and solutions/.
CHAPTERS = {
    "00": "00_baseline_and_metrics",
    "01": "01_hyperparameter_search",
    "02": "02_pruning",
    "03": "03_quantization",
    "04": "04_distillation",
    "05": "05_lora_and_qlora",
    "06": "06_structural_redesign",
}

FIRST_CELL = '''\
# Setup: works in JupyterLab and on Colab. On Colab it fetches and installs the course first.
import os, sys
if "google.colab" in sys.modules and not os.path.isdir("/content/course"):
    # Set COURSE_REPO_URL to this course's git URL first, e.g. %env COURSE_REPO_URL=https://...
    !git clone -q --depth 1 {os.environ["COURSE_REPO_URL"]} /content/course
    %pip install -q -e /content/course
    sys.path.insert(0, "/content/course")

from course_lib.notebook_setup import start
profile = start("{chapter}")'''

_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "optuna", "torchao")


def first_cell(chapter: str) -> str:
    """The exact source of a notebook's first cell for ``chapter`` (e.g. ``"03_quantization"``)."""
    return FIRST_CELL.replace("{chapter}", chapter)


def versions() -> dict[str, str]:
    """Installed versions of the libraries the course relies on ("missing" if not installed)."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def quiet_library_noise() -> None:
    """Silence messages that say nothing to a learner (they stay in the library's logs)."""
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch so that a notebook gives the same numbers on a rerun."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(chapter: str, seed: int = 0) -> Profile:
    """Print the environment, seed everything, and return the active run profile."""
    if chapter not in CHAPTERS.values():
        raise ValueError(f"Unknown chapter {chapter!r}; chapters are {', '.join(CHAPTERS.values())}.")
    quiet_library_noise()
    seed_everything(seed)
    profile = get_profile()
    device = pick_device()
    try:
        source = resolve_model_source(DEFAULT_MODEL).description
    except ValueError as err:
        source = f"NOT AVAILABLE: {err}"
    line = ", ".join(f"{k} {v}" for k, v in versions().items())
    print(f"Chapter {chapter}")
    print(f"Versions: {line}")
    print(f"Device: {device}; run profile: {profile.name} (set COURSE_PROFILE=smoke|cpu|gpu to change)")
    print(f"Model {DEFAULT_MODEL}: {source}")
    return profile
