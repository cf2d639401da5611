import pytest
import torch

from course_lib.device import model_device, pick_device
from course_lib.profiles import PROFILE_NAMES, get_profile, profile_name, sizes_for


def test_pick_device_defaults_to_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected


def test_pick_device_env_override_and_errors(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    with pytest.raises(ValueError, match="Unknown device"):
        pick_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")


def test_model_device():
    assert model_device(torch.nn.Linear(2, 2)).type == "cpu"
    assert model_device(torch.nn.ReLU()).type == "cpu"


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    assert profile_name() == "smoke" and get_profile().name == "smoke"
    monkeypatch.setenv("COURSE_PROFILE", " CPU ")
    assert profile_name() == "cpu"
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        profile_name()
    monkeypatch.delenv("COURSE_PROFILE")
    assert profile_name() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (get_profile(n) for n in PROFILE_NAMES)
    assert smoke.eval_blocks < cpu.eval_blocks < gpu.eval_blocks
    assert smoke.block_size == cpu.block_size == gpu.block_size  # one protocol


def test_sizes_for_picks_and_validates(monkeypatch):
    table = {"smoke": {"steps": 2}, "cpu": {"steps": 60}, "gpu": {"steps": 300}}
    assert sizes_for(table, "cpu").steps == 60
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    assert sizes_for(table).steps == 2
    assert sizes_for(table, get_profile("gpu")).steps == 300
    with pytest.raises(ValueError, match="no entry"):
        sizes_for({"smoke": {}, "cpu": {}})
    with pytest.raises(ValueError, match="different keys"):
        sizes_for({"smoke": {"a": 1}, "cpu": {"a": 1}, "gpu": {"b": 1}})


def test_synchronize_is_safe_on_cpu():
    from course_lib.device import synchronize

    assert synchronize("cpu") is None
