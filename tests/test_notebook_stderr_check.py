"""The root conftest.py fails a notebook cell that writes unexpected text to stderr."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, source: str) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(source)])
    nbformat.write(nb, tmp_path / "demo.ipynb")
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p",
                           "no:cacheprovider", "-q", "demo.ipynb"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_unexpected_stderr_fails_the_cell_and_names_it(tmp_path):
    result = _run(tmp_path, "import sys\nsys.stderr.write('UserWarning: something nobody explained\\n')")
    assert result.returncode != 0, result.stdout
    assert "demo.ipynb::Cell 1" in result.stdout and "something nobody explained" in result.stdout


def test_progress_bars_and_clean_cells_pass(tmp_path):
    result = _run(tmp_path, "import sys\nsys.stderr.write('training:  50%|#####     | 5/10 [00:01<00:01]\\n')\n"
                            "print('fine')")
    assert result.returncode == 0, result.stdout
