"""Installing the course on Google Colab, called by every notebook's first cell.

The first cell clones the repository (it cannot import ``course_lib`` before that), then calls
:func:`install_on_colab`. This module therefore uses the standard library only.

Contract of :func:`install_on_colab`:

* installs the clone with pip (``pip install -e <clone>``) while pinning the packages Colab's own
  runtime is built around (:data:`KEEP`: torch, pandas, numpy, ipywidgets) to the versions already
  installed, so the install can never replace them (pip fails loudly instead);
* writes a marker file only after pip succeeded, so running the cell again after a failure
  retries the install, and running it after a success skips it (the marker holds a hash of
  ``pyproject.toml``: a changed dependency list installs again);
* compares every distribution's version before and after: when one that provides an already
  imported module changed, Python still holds the old code, so it prints which and restarts the
  runtime (Colab restarts a killed kernel; run the cell again) or, when asked not to, tells the
  learner to restart.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

__all__ = ["KEEP", "MARKER", "install_on_colab", "installed_versions", "changed_versions",
           "imported_distributions", "keep_constraints", "restart_runtime"]

# Colab's runtime is built around these: the course uses Colab's versions, never its own.
KEEP = ("torch", "pandas", "numpy", "ipywidgets")
MARKER = ".colab-installed"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """``{canonical distribution name: version}`` of everything importable in this Python."""
    return {_canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}


def changed_versions(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``{name: (old, new)}`` for distributions present before whose version is different after."""
    return {name: (old, after[name]) for name, old in before.items()
            if name in after and after[name] != old}


def imported_distributions(names, modules=None) -> list[str]:
    """Those of ``names`` (distribution names) that provide a module already in ``modules``.

    ``modules`` defaults to ``sys.modules``; a module counts by its top-level package.
    """
    modules = sys.modules if modules is None else modules
    wanted = {_canonical(n) for n in names}
    top_level = {m.split(".")[0] for m in modules}
    found = set()
    for module, dists in importlib.metadata.packages_distributions().items():
        if module in top_level:
            found |= {_canonical(d) for d in dists} & wanted
    return sorted(found)


def keep_constraints(versions: dict[str, str], keep=KEEP) -> str:
    """pip constraint lines ``name==version`` pinning each of ``keep`` that is installed."""
    return "".join(f"{n}=={versions[_canonical(n)]}\n" for n in keep if _canonical(n) in versions)


def restart_runtime() -> None:
    """Colab's way to restart the runtime: end the kernel process; Colab starts a fresh one."""
    os.kill(os.getpid(), 9)


def _pip_install(repo: Path, constraints: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "-e", str(repo), "-c", str(constraints)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Installing the course failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}\n"
                           "Fix the cause above and run this cell again; it retries the install.")


def install_on_colab(repo: str | Path, pip_install: Callable[[Path, Path], None] = _pip_install,
                     restart: Callable[[], None] | None = restart_runtime) -> list[str]:
    """Install the clone at ``repo`` once (see the module docstring); return what changed.

    Returns the ``"name old -> new"`` lines of distributions that changed version. When one of
    them was already imported, calls ``restart`` after printing why, or with ``restart=None``
    prints "restart the runtime now". ``pip_install(repo, constraints_file)`` does the install.
    """
    repo = Path(repo)
    if not (repo / "pyproject.toml").is_file():
        raise ValueError(f"{repo} is not a clone of the course (no pyproject.toml): clone COURSE_REPO_URL there.")
    stamp = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()
    marker = repo / MARKER
    if marker.is_file() and marker.read_text().strip() == stamp:
        return []
    before = installed_versions()
    constraints = repo / ".colab-keep.txt"
    constraints.write_text(keep_constraints(before))
    print("Installing the course with pip (a minute or two; Colab's torch, pandas, numpy and ipywidgets stay)...")
    pip_install(repo, constraints)
    changed = changed_versions(before, installed_versions())
    marker.write_text(stamp + "\n")
    lines = [f"{n} {old} -> {new}" for n, (old, new) in sorted(changed.items())]
    print(f"Course installed from {repo}" + (f"; changed: {', '.join(lines)}" if lines else ""))
    stale = imported_distributions(changed)
    if stale:
        why = f"Already imported, and now a different version on disk: {', '.join(stale)}."
        if restart is None:
            print(f"{why} RESTART THE RUNTIME NOW (Runtime > Restart session), then run this cell again.")
        else:
            print(f"{why} Restarting the runtime; when it is back, run this cell again.", flush=True)
            restart()
    return lines
