"""What the first cell of every notebook does.

Every lesson, exercise and solution notebook starts with :data:`FIRST_CELL` (a test checks it).
On Colab the cell clones and installs the course first; everywhere it calls :func:`start`, which
prints the versions, the device, the run profile and where the model will come from, seeds the
random generators, and returns the active :class:`~course_lib.profiles.Profile`.
"""

from __future__ import annotations

import importlib.metadata
import platform
import random
import re
from dataclasses import replace

import numpy as np
import torch

from .device import pick_device
from .model_sources import DEFAULT_MODEL, resolve_model_source
from .noise import silence_library_noise
from .profiles import Profile, get_profile

__all__ = ["CHAPTERS", "REPO_URL", "REPO_BRANCH", "FIRST_CELL", "COLAB_BADGE_TAG", "first_cell", "github_repo",
           "colab_badge", "versions", "seed_everything", "start"]

# Chapter numbers are the same in notebooks/, exercises/ and solutions/.
CHAPTERS = {
    "00": "00_baseline_and_metrics",
    "01": "01_hyperparameter_search",
    "02": "02_pruning",
    "03": "03_quantization",
    "04": "04_distillation",
    "05": "05_lora_and_qlora",
    "06": "06_structural_redesign",
    "08": "08_context_optimization",
}

# The course's git repository: the one place it is written. The notebooks' first cell
# (COURSE_REPO_URL) and the lessons' "Open in Colab" badges are generated from it; change it with
# `make colab-links URL=https://github.com/OWNER/REPO`, which rewrites all of them (a test checks).
# Empty while the course has no public repository: the badge then says so instead of linking.
REPO_URL = ""
REPO_BRANCH = "main"

FIRST_CELL = '''\
# Setup: works in JupyterLab and on Colab. On Colab it fetches and installs the course first.
COURSE_REPO_URL = "{repo_url}"  # the course's git repository, used on Colab only
import os, sys
if "google.colab" in sys.modules:
    if not COURSE_REPO_URL:
        raise ValueError("COURSE_REPO_URL is empty: set it above to the course's git URL "
                         "(https://github.com/OWNER/REPO), then run this cell again.")
    if not os.path.isdir("/content/course/.git"):
        !git clone -q --depth 1 {COURSE_REPO_URL} /content/course
    if not os.path.isdir("/content/course/.git"):
        raise RuntimeError("git clone of COURSE_REPO_URL failed (message above); fix it and rerun this cell.")
    sys.path[:0] = [] if "/content/course" in sys.path else ["/content/course"]
    from course_lib.colab import install_on_colab
    install_on_colab("/content/course")  # once; restarts the runtime if an imported package changed

from course_lib.notebook_setup import start
profile = start("{chapter}")'''

COLAB_BADGE_TAG = "colab-badge"

_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "optuna", "torchao")


def first_cell(chapter: str, repo_url: str | None = None) -> str:
    """The exact source of a notebook's first cell for ``chapter`` (e.g. ``"03_quantization"``).

    ``repo_url`` defaults to :data:`REPO_URL`; it becomes the cell's ``COURSE_REPO_URL``.
    """
    url = REPO_URL if repo_url is None else repo_url
    if '"' in url or "\\" in url or "\n" in url:
        raise ValueError(f"repo_url {url!r} must be a plain URL (no quotes, backslashes or newlines).")
    return FIRST_CELL.replace("{repo_url}", url).replace("{chapter}", chapter)


def github_repo(repo_url: str) -> str:
    """``"OWNER/REPO"`` of ``https://github.com/OWNER/REPO`` (a trailing ``.git`` or ``/`` is allowed)."""
    found = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url)
    if not found:
        raise ValueError(f"{repo_url!r} is not a GitHub repository URL: Colab opens notebooks from "
                         "https://github.com/OWNER/REPO, so give that form.")
    return f"{found[1]}/{found[2]}"


def colab_badge(notebook: str, repo_url: str | None = None) -> str:
    """Markdown of a lesson's "Open in Colab" cell; ``notebook`` is its path in the repository.

    Link: ``https://colab.research.google.com/github/OWNER/REPO/blob/<REPO_BRANCH>/<notebook>``, plus
    one to the chapter's exercises. With an empty ``repo_url`` (default :data:`REPO_URL`) it says that
    the repository URL is not set yet, instead of a broken link.
    """
    url = REPO_URL if repo_url is None else repo_url
    if not url:
        return ("*Open in Colab:* no link yet: the course's repository URL is not set "
                "(`REPO_URL` in `course_lib/notebook_setup.py`; set it with "
                "`make colab-links URL=https://github.com/OWNER/REPO`). To run this notebook on Colab "
                "now, upload it and set `COURSE_REPO_URL` in its first code cell.")
    base = f"https://colab.research.google.com/github/{github_repo(url)}/blob/{REPO_BRANCH}"
    exercises = notebook.replace("notebooks/", "exercises/", 1)
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({base}/{notebook}) "
            f"(exercises: [open in Colab]({base}/{exercises}))")


def versions() -> dict[str, str]:
    """Installed versions of the libraries the course relies on ("missing" if not installed)."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch so that a notebook gives the same numbers on a rerun."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(chapter: str, seed: int = 0) -> Profile:
    """Print the environment, seed everything, and return the active run profile, with
    ``profile.chapter`` set to ``chapter`` (what the lesson passes to ``scorecard.record``)."""
    if chapter not in CHAPTERS.values():
        raise ValueError(f"Unknown chapter {chapter!r}; chapters are {', '.join(CHAPTERS.values())}.")
    silence_library_noise()
    seed_everything(seed)
    profile = replace(get_profile(), chapter=chapter)
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
