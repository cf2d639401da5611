"""Set the course's repository URL everywhere it appears: ``make colab-links URL=https://github.com/OWNER/REPO``.

Rewrites, from that one URL:

* ``REPO_URL`` in ``course_lib/notebook_setup.py`` (the single source);
* the first code cell of every notebook in notebooks/, solutions/ and exercises/ (its ``COURSE_REPO_URL``);
* the "Open in Colab" cell (tagged ``colab-badge``, the first cell) of every lesson in notebooks/.

``--check`` rewrites nothing and exits 1 listing what is out of date. Notebooks are written with
nbformat and keep no outputs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_lib.notebook_setup import COLAB_BADGE_TAG, colab_badge, first_cell, github_repo  # noqa: E402

SETUP = ROOT / "course_lib" / "notebook_setup.py"
NOTEBOOK_DIRS = ("notebooks", "solutions", "exercises")
URL_LINE = re.compile(r'^REPO_URL = "[^"\n]*"$', re.M)


def set_repo_url(text: str, url: str) -> str:
    """``notebook_setup.py``'s text with its one ``REPO_URL = "..."`` line set to ``url``."""
    if len(URL_LINE.findall(text)) != 1:
        raise ValueError(f"{SETUP} must hold exactly one line REPO_URL = \"...\"; fix it by hand first.")
    return URL_LINE.sub(f'REPO_URL = "{url}"', text)


def badge_cell_index(nb) -> int | None:
    """Index of the cell tagged ``colab-badge``, or None."""
    found = [i for i, c in enumerate(nb.cells) if COLAB_BADGE_TAG in c.metadata.get("tags", [])]
    if len(found) > 1:
        raise ValueError(f"{len(found)} cells are tagged {COLAB_BADGE_TAG!r}; keep one.")
    return found[0] if found else None


def updated_notebook(path: Path, url: str):
    """The notebook at ``path`` with its first code cell (and, for a lesson, its badge) from ``url``."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code:
        raise ValueError(f"{path} has no code cell; its first code cell must be the setup cell.")
    code[0].source = first_cell(path.stem, url)
    if path.parent.name == "notebooks":
        text = colab_badge(f"notebooks/{path.name}", url)
        at = badge_cell_index(nb)
        if at is None:
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(text, metadata={"tags": [COLAB_BADGE_TAG]}))
        else:
            nb.cells[at].source = text
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="https://github.com/OWNER/REPO (\"\" clears it: no links)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is stale")
    args = parser.parse_args(argv)
    url = args.url.strip().rstrip("/")
    if url:
        github_repo(url)  # raises ValueError naming the expected form
    stale = []
    setup_text = SETUP.read_text()
    if set_repo_url(setup_text, url) != setup_text:
        stale.append(SETUP)
        if not args.check:
            SETUP.write_text(set_repo_url(setup_text, url))
    for path in sorted(p for d in NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb")):
        before = path.read_text()
        nb = updated_notebook(path, url)
        if nbformat.writes(nb) + "\n" != before:  # nbformat.write ends the file with a newline
            stale.append(path)
            if not args.check:
                nbformat.write(nb, path)
    for path in stale:
        print(("stale: " if args.check else "rewrote: ") + str(path.relative_to(ROOT)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
