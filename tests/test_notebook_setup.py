import logging
import random
from pathlib import Path

import pytest
import torch

from course_lib.notebook_setup import (CHAPTERS, first_cell, seed_everything, start,
                                       versions)


def test_start_prints_environment_and_returns_the_profile(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    profile = start("00_baseline_and_metrics")
    out = capsys.readouterr().out
    assert profile.name == "smoke" and profile.chapter == "00_baseline_and_metrics"
    for words in ("Versions:", "torch", "Device:", "run profile: smoke", "Model smollm2-135m:"):
        assert words in out
    with pytest.raises(ValueError, match="Unknown chapter"):
        start("99_magic")


def test_versions_and_first_cell():
    found = versions()
    assert found["torch"].startswith("2.") and "python" in found
    cell = first_cell("03_quantization")
    assert 'start("03_quantization")' in cell and "google.colab" in cell
    lessons = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
    assert CHAPTERS == {p.stem[:2]: p.stem for p in lessons}  # one entry per lesson


def test_seed_everything_makes_runs_repeatable():
    seed_everything(3)
    a = (random.random(), torch.rand(2))
    seed_everything(3)
    b = (random.random(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_start_silences_the_known_library_noise(capsys):
    import warnings

    start("00_baseline_and_metrics")
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    assert any(not f.filter(logging.LogRecord("x", logging.WARNING, "", 0, "MatMul8bitLt: inputs will be cast from "
                                              "float32 to float16", None, None)) for f in logger.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        start("00_baseline_and_metrics")
        warnings.warn("some future change", FutureWarning)
    assert not caught
