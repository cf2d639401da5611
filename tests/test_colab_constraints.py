"""The course on Colab: its installer, and its dependencies against Colab's own package versions.

Tests marked ``colab`` are slow (pip resolutions, a venv built from Colab's versions, a unit-test
run inside it): ``make test-colab-env`` runs them and ``make test`` calls it; deselect them with
``-m "not colab"``. The constraints file is ``constraints/colab-gpu-<date>.txt`` (newest date).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import colab
from course_lib.colab import (KEEP, MARKER, changed_versions, imported_distributions, install_on_colab,
                              installed_versions, keep_constraints, restart_runtime)
from course_lib.notebook_setup import REPO_URL, colab_badge, first_cell, github_repo

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = sorted((ROOT / "constraints").glob("colab-gpu-*.txt"))[-1]
# Colab's front end and runtime are built around these: installing the course must not change them.
MUST_KEEP = ("pandas", "numpy", "ipywidgets", "psutil", "torch", "huggingface-hub")


def _pins(text: str) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines; the commented torch line counts too
    (without its local ``+cu128`` tag, which PyPI does not serve)."""
    pins = {}
    for line in text.splitlines():
        found = re.fullmatch(r"#?\s*([A-Za-z0-9_.-]+)==([^\s+#]+)(\+\S+)?\s*", line)
        if found and (not line.startswith("#") or found[1] == "torch"):
            pins[re.sub(r"[-_.]+", "-", found[1]).lower()] = found[2]
    return pins


def test_constraints_file_is_dated_sourced_and_keeps_colabs_torch_commented():
    text = CONSTRAINTS.read_text()
    assert re.fullmatch(r"colab-gpu-\d{4}-\d{2}(-\d{2})?\.txt", CONSTRAINTS.name)
    assert "googlecolab/backend-info" in text and "Date of the snapshot" in text
    assert not re.search(r"^torch==", text, re.M) and re.search(r"^# torch==\S+", text, re.M)
    pins = _pins(text)
    for name in MUST_KEEP + ("transformers", "peft", "accelerate", "torchao", "datasets"):
        assert name in pins, f"{CONSTRAINTS.name} lacks {name}"


# --- the installer the first cell calls on Colab (no pip, no Colab: the pip step is a fake) ---

def _fake_clone(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp_path


def test_install_writes_its_marker_only_after_success_and_retries_after_a_failure(tmp_path, capsys):
    repo, calls = _fake_clone(tmp_path), []

    def failing(repo_dir, constraints):
        calls.append(constraints.read_text())
        raise RuntimeError("no network")

    with pytest.raises(RuntimeError, match="no network"):
        install_on_colab(repo, pip_install=failing, restart=None)
    assert not (repo / MARKER).exists()
    assert "numpy==" in calls[0] and "torch==" in calls[0]  # Colab's own versions are pinned
    install_on_colab(repo, pip_install=lambda r, c: calls.append("ok"), restart=None)
    assert calls[-1] == "ok" and (repo / MARKER).is_file()
    install_on_colab(repo, pip_install=lambda r, c: calls.append("again"), restart=None)
    assert calls[-1] == "ok", "a successful install must not run again"
    (repo / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    install_on_colab(repo, pip_install=lambda r, c: calls.append("changed"), restart=None)
    assert calls[-1] == "changed", "a changed pyproject.toml installs again"
    with pytest.raises(ValueError, match="COURSE_REPO_URL"):
        install_on_colab(tmp_path / "missing", pip_install=failing)


def test_install_restarts_when_an_imported_package_changed(tmp_path, monkeypatch, capsys):
    repo = _fake_clone(tmp_path)
    numpy_version = installed_versions()["numpy"]
    snapshots = iter([{"numpy": numpy_version, "not-imported-dist": "1"},
                      {"numpy": "0.0.1", "not-imported-dist": "2"}] * 2)
    monkeypatch.setattr(colab, "installed_versions", lambda: next(snapshots))
    restarted = []
    lines = install_on_colab(repo, pip_install=lambda r, c: None, restart=lambda: restarted.append(1))
    assert lines == ["not-imported-dist 1 -> 2", f"numpy {numpy_version} -> 0.0.1"]
    assert restarted == [1] and "numpy" in capsys.readouterr().out
    (repo / MARKER).unlink()
    install_on_colab(repo, pip_install=lambda r, c: None, restart=None)
    assert "RESTART THE RUNTIME NOW" in capsys.readouterr().out


def test_installer_helpers():
    before = {"a": "1", "b": "2"}
    assert changed_versions(before, {"a": "1", "b": "3", "c": "9"}) == {"b": ("2", "3")}
    assert imported_distributions(["numpy", "not-a-dist"], modules={"numpy.linalg": None}) == ["numpy"]
    assert imported_distributions(["numpy"], modules={}) == []
    assert keep_constraints({"torch": "2.11.0", "pandas": "2.2.2"}) == "torch==2.11.0\npandas==2.2.2\n"
    assert set(KEEP) == {"torch", "pandas", "numpy", "ipywidgets"}
    assert callable(restart_runtime)  # ends the process: not called here


def test_first_cell_and_badge_come_from_the_repository_url():
    cell = first_cell("02_pruning", "https://github.com/owner/course")
    assert 'COURSE_REPO_URL = "https://github.com/owner/course"' in cell and 'start("02_pruning")' in cell
    assert first_cell("02_pruning") == first_cell("02_pruning", REPO_URL)
    with pytest.raises(ValueError, match="plain URL"):
        first_cell("02_pruning", 'x"; import os')
    assert github_repo("https://github.com/owner/course.git") == "owner/course"
    with pytest.raises(ValueError, match="GitHub repository URL"):
        github_repo("git@github.com:owner/course.git")
    badge = colab_badge("notebooks/02_pruning.ipynb", "https://github.com/owner/course")
    assert "colab.research.google.com/github/owner/course/blob/main/notebooks/02_pruning.ipynb" in badge
    assert "/blob/main/exercises/02_pruning.ipynb" in badge
    empty = colab_badge("notebooks/02_pruning.ipynb", "")
    assert "not set" in empty and "REPO_URL" in empty and "](" not in empty


def test_lora_works_beside_a_torchao_older_than_peft_supports(monkeypatch):
    """Colab's torchao 0.10 makes peft (>= 0.19) raise ImportError in its LoRA dispatcher."""
    import peft.tuners.lora.torchao as peft_torchao

    from course_lib.lora import add_lora_
    from course_lib.tiny_models import tiny_llama

    def too_old():
        raise ImportError("Found an incompatible version of torchao. Found version 0.10.0")

    monkeypatch.setattr(peft_torchao, "is_torchao_available", too_old)
    model = add_lora_(tiny_llama(vocab_size=64), r=2, targets="q,v")
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert peft_torchao.is_torchao_available() is False


def test_wikitext_without_datasets_says_how_to_install(monkeypatch):
    from course_lib import data, model_sources

    monkeypatch.setattr(model_sources, "hub_offline", lambda: False)
    monkeypatch.setattr(model_sources, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    data.load_text.cache_clear()
    with pytest.raises(ValueError, match=r"\[wikitext\]"):
        data.load_text("validation", "wikitext2")
    data.load_text.cache_clear()


# --- the course's requirements against Colab's versions (slow: marked colab) ---

@pytest.fixture(scope="module")
def course_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    return next(out.glob("*.whl"))


@pytest.mark.colab
@pytest.mark.parametrize("python", [None, "3.12"], ids=["this-python", "python-3.12"])
def test_course_resolves_against_colab_without_changing_colabs_packages(python, course_wheel, tmp_path):
    pins = _pins(CONSTRAINTS.read_text())
    constraints = tmp_path / "constraints.txt"  # the file plus Colab's torch, which the course must accept
    constraints.write_text(CONSTRAINTS.read_text() + f"\ntorch=={pins['torch']}\n")
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(tmp_path / "report.json"), "-c", str(constraints), f"{course_wheel}[lab,wikitext]"]
    if python:
        cmd += ["--python-version", python, "--only-binary=:all:"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"pip could not resolve the course on Colab's versions:\n{done.stderr[-4000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    chosen = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
              for i in report["install"]}
    for name in MUST_KEEP:
        assert chosen.get(name) == pins[name], f"{name}: Colab has {pins[name]}, pip chose {chosen.get(name)}"


@pytest.mark.colab
def test_unit_tests_pass_in_a_venv_built_from_colabs_versions(tmp_path):
    """`make colab-venv` builds .venv-colab (cached on pyproject.toml and the constraints file);
    the unit tests run there except the real-model ones (the offline GGUF model is the same file
    either way; they cost minutes) and the second-device ones (a test-only torch device)."""
    subprocess.run(["make", "-s", "colab-venv"], cwd=ROOT, check=True)
    python = ROOT / ".venv-colab" / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COURSE_PROFILE": "smoke",
           "MPLBACKEND": "Agg", "COURSE_RESULTS_DIR": str(tmp_path / "results")}
    versions = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, env=env)
    pins = _pins(CONSTRAINTS.read_text())
    frozen = _pins(versions.stdout)
    for name in ("pandas", "numpy", "ipywidgets", "psutil", "transformers", "peft", "accelerate", "torchao"):
        assert frozen.get(name) == pins[name], f".venv-colab has {name} {frozen.get(name)}, Colab {pins[name]}"
    done = subprocess.run([str(python), "-m", "pytest", "tests", "-m", "not real_model and not colab",
                           "-k", "not second_device", "-p", "no:cacheprovider", "-q"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"unit tests fail on Colab's versions:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"


def test_restart_runtime_ends_the_kernel_process(monkeypatch):
    from course_lib import colab

    killed = []
    monkeypatch.setattr(colab.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    colab.restart_runtime()
    assert killed == [(colab.os.getpid(), 9)]


def test_first_cell_template_names_the_branch_and_the_chapter():
    from course_lib.notebook_setup import FIRST_CELL, REPO_BRANCH, first_cell

    assert "{chapter}" in FIRST_CELL and REPO_BRANCH == "main"
    assert 'start("02_pruning")' in first_cell("02_pruning")
