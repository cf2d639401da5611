from pathlib import Path

import nbformat
import pytest

from course_lib.exercise_builder import STUB_ERROR, build, make_exercise, strip_solutions

ROOT = Path(__file__).resolve().parents[1]


def test_strip_keeps_indentation_and_hint():
    source = "def f(x):\n    # BEGIN SOLUTION: square x\n    y = x * x\n    return y\n    # END SOLUTION\nprint(f)"
    assert strip_solutions(source) == f"def f(x):\n    # TODO: square x\n    {STUB_ERROR}\nprint(f)"


def test_strip_rejects_broken_markers():
    with pytest.raises(ValueError, match="never closed"):
        strip_solutions("# BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="without"):
        strip_solutions("x = 1\n# END SOLUTION")
    with pytest.raises(ValueError, match="nested"):
        strip_solutions("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION")


def test_make_exercise_on_a_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 00 · Title: exercises (with solutions)"),
        nbformat.v4.new_code_cell("x = 1\n# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION"),
        nbformat.v4.new_markdown_cell("Because...", metadata={"tags": ["solution"]}),
    ]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi")]
    ex = make_exercise(nb)
    assert ex.cells[0].source == "# 00 · Title: exercises"
    assert "answer = 42" not in ex.cells[1].source and ex.cells[1].outputs == []
    assert ex.cells[2].source == "*Your answer here.*" and ex.cells[2].metadata["tags"] == ["answer"]
    assert "answer = 42" in nb.cells[1].source  # the solution notebook is untouched


def test_exercises_are_in_sync_with_solutions():
    stale = build(ROOT / "solutions", ROOT / "exercises", check=True)
    assert stale == [], f"exercises/ is stale: {stale}. Run: make exercises"


def test_every_solution_has_a_marked_region():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        text = path.read_text()
        assert "# BEGIN SOLUTION" in text, f"{path.name} has no exercise region"


def test_render_and_command_line(tmp_path, capsys):
    from course_lib.exercise_builder import main, render

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1\n# BEGIN SOLUTION\ny = 2\n# END SOLUTION")])
    src, dst = tmp_path / "solutions", tmp_path / "exercises"
    src.mkdir()
    (src / "00_baseline_and_metrics.ipynb").write_text(render(nb))
    assert render(nb).endswith("\n") and nbformat.reads(render(nb), as_version=4).cells[0].source == nb.cells[0].source
    assert main([str(src), str(dst), "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main([str(src), str(dst)]) == 0
    assert main([str(src), str(dst), "--check"]) == 0
    (dst / "orphan.ipynb").write_text(render(nb))
    assert main([str(src), str(dst), "--check"]) == 1
