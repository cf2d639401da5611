"""Write the practice notebooks in ``exercises/`` from the notebooks in ``solutions/``.

``solutions/`` is the single source. In a solution notebook:

* code between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` lines is replaced by a stub, indented
  like the marker: ``# TODO: <hint>`` and ``raise NotImplementedError(...)``; the hint is the
  text after ``# BEGIN SOLUTION:`` if given;
* a cell tagged ``solution`` is replaced by an empty answer cell (code or markdown);
* the text `` (with solutions)`` is removed from markdown cells (titles).

Everything else is copied unchanged, outputs cleared.

    python -m course_lib.exercise_builder solutions exercises          # write
    python -m course_lib.exercise_builder solutions exercises --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

__all__ = ["BEGIN", "END", "STUB_ERROR", "strip_solutions", "make_exercise", "render", "build", "main"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
STUB_ERROR = 'raise NotImplementedError("Exercise: write this part, then run the check below.")'
_BEGIN_RE = re.compile(r"^(\s*)# BEGIN SOLUTION(?::\s*(.*))?\s*$")


def strip_solutions(source: str) -> str:
    """Replace every ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` region by a TODO stub.

    Raises:
        ValueError: a region is not closed, or an END has no BEGIN.
    """
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), 1):
        match = _BEGIN_RE.match(line)
        if match:
            if inside:
                raise ValueError(f"line {number}: nested {BEGIN}.")
            inside, indent = True, match.group(1)
            hint = match.group(2) or "your code here"
            out += [f"{indent}# TODO: {hint}", f"{indent}{STUB_ERROR}"]
        elif line.strip() == END:
            if not inside:
                raise ValueError(f"line {number}: {END} without {BEGIN}.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} is never closed by {END}.")
    return "\n".join(out)


def make_exercise(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The exercise version of a solution notebook (a new notebook; the input is not changed)."""
    exercise = nbformat.from_dict(notebook)
    exercise = nbformat.v4.upgrade(exercise) if exercise.nbformat < 4 else exercise
    for cell in exercise.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "solution" in tags:
            cell.source = "# Your answer here" if cell.cell_type == "code" else "*Your answer here.*"
            cell.metadata["tags"] = [t for t in tags if t != "solution"] + ["answer"]
        elif cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
        elif cell.cell_type == "markdown":
            cell.source = cell.source.replace(" (with solutions)", "")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return exercise


def render(notebook: nbformat.NotebookNode) -> str:
    """The notebook as the exact text written to disk."""
    return nbformat.writes(notebook) + "\n"


def build(solutions: Path, exercises: Path, check: bool = False) -> list[str]:
    """Write (or with ``check``, compare) every exercise notebook. Returns the stale/written names."""
    solutions, exercises = Path(solutions), Path(exercises)
    changed = []
    sources = sorted(solutions.glob("*.ipynb"))
    for src in sources:
        text = render(make_exercise(nbformat.read(src, as_version=4)))
        dst = exercises / src.name
        if not dst.is_file() or dst.read_text() != text:
            changed.append(dst.name)
            if not check:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(text)
    extra = sorted({p.name for p in exercises.glob("*.ipynb")} - {p.name for p in sources})
    if extra:
        changed += [f"{name} (no solution notebook)" for name in extra]
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("solutions", type=Path)
    parser.add_argument("exercises", type=Path)
    parser.add_argument("--check", action="store_true", help="only report stale exercises; exit 1 if any")
    args = parser.parse_args(argv)
    changed = build(args.solutions, args.exercises, check=args.check)
    if args.check:
        for name in changed:
            print(f"stale: exercises/{name}  (run: make exercises)")
        return 1 if changed else 0
    for name in changed:
        print(f"wrote exercises/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
