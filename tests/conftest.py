"""Shared fixtures. Tests never touch the network: the hub is declared offline here."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    """The course tokenizer (SmolLM2), from the converted offline copy or the hub cache."""
    from course_lib.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def real_model():
    """The real SmolLM2-135M in float32 on the CPU (loaded once per test session)."""
    from course_lib.models import load_model

    return load_model(device="cpu", verbose=False)


@pytest.fixture
def results_tmp(tmp_path, monkeypatch):
    """Route scorecard records to a temporary folder."""
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"
