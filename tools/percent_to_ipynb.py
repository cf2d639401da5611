"""Authoring aid: turn a percent-format draft (``# %%`` cells) into a clean notebook.

    python tools/percent_to_ipynb.py draft.py notebooks/02_pruning.ipynb

Cells start with ``# %%`` (code) or ``# %% [markdown]`` (markdown; each line's leading ``# `` is
removed). ``# %% tags=solution`` adds tags. The notebook written is the committed source; the
draft need not be kept. Outputs are empty and the kernel is "python3". A code cell that is
exactly ``FIRST_CELL`` becomes the course's shared first cell for the target chapter.
"""

import re
import sys
from pathlib import Path

import nbformat

_HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?:\s+tags=(?P<tags>[\w,-]+))?\s*$")


def convert(text: str, chapter: str | None = None) -> nbformat.NotebookNode:
    cells, kind, tags, lines = [], None, [], []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        meta = {"tags": tags} if tags else {}
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body, metadata=meta))
        else:
            if body.strip() == "FIRST_CELL":
                from course_lib.notebook_setup import first_cell

                body = first_cell(chapter)
            cells.append(nbformat.v4.new_code_cell(body, metadata=meta))

    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            flush()
            kind = "markdown" if match.group("md") else "code"
            tags = match.group("tags").split(",") if match.group("tags") else []
            lines = []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    return nb


if __name__ == "__main__":
    src, dst = map(Path, sys.argv[1:3])
    nbformat.write(convert(src.read_text(), chapter=dst.stem), dst)
    print(f"wrote {dst}")
