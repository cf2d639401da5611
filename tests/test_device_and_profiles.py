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


def test_profile_follows_the_one_device_decision(monkeypatch):
    import course_lib.profiles as profiles

    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "pick_device", lambda: torch.device("cuda"))
    assert profile_name() == "gpu"
    monkeypatch.setattr(profiles, "pick_device", lambda: torch.device("cpu"))
    assert profile_name() == "cpu"  # e.g. COURSE_DEVICE=cpu on a GPU machine: cpu sizes


def test_every_profile_and_chapter_block_request_fits_the_smallest_corpus():
    """The pydoc text differs between Python versions: every block count must fit the smallest."""
    import importlib
    import pkgutil

    import course_lib
    from course_lib.data import MIN_BLOCKS_128
    from course_lib.profiles import PROFILES

    smallest = min(MIN_BLOCKS_128["validation"], MIN_BLOCKS_128["calibration"])
    for p in PROFILES.values():
        assert p.block_size == 128
        assert p.eval_blocks <= MIN_BLOCKS_128["validation"], p
        assert p.calib_blocks <= MIN_BLOCKS_128["calibration"], p
    too_big = []
    for info in pkgutil.iter_modules(course_lib.__path__):
        module = importlib.import_module(f"course_lib.{info.name}")
        table = getattr(module, "SIZES", None)
        if not isinstance(table, dict):
            continue
        for profile, sizes in table.items():
            for key, value in sizes.items():
                if key.endswith("_blocks") and isinstance(value, int) and value > smallest:
                    too_big.append(f"{info.name}.SIZES[{profile!r}][{key!r}] = {value} > {smallest}")
    assert not too_big, too_big


def test_machine_info_names_the_machine():
    from course_lib.device import machine_info

    info = machine_info("cpu")
    assert info["cpu"] and info["cores"] >= 1 and info["torch_threads"] >= 1
    assert isinstance(info["cpu_flags"], list) and "gpu" not in info


def test_release_memory_and_torch_threads():
    from course_lib.device import release_memory, torch_threads

    release_memory()
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="positive int"):
        with torch_threads(0):
            pass


def test_profile_objects_and_environment_variables(monkeypatch):
    from course_lib.device import DEVICE_ENV
    from course_lib.profiles import PROFILE_ENV, PROFILES, Profile

    assert all(isinstance(p, Profile) and p.as_dict()["name"] == n for n, p in PROFILES.items())
    monkeypatch.setenv(PROFILE_ENV, "CPU ")
    assert profile_name() == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert pick_device() == torch.device("cpu")
