"""PyTorch's own int8: dynamic quantization (``quantize_dynamic``) and eager static post-training
quantization (prepare -> calibrate -> convert). Both run on the CPU only: PyTorch's int8 kernels
(x86/fbgemm, onednn, qnnpack) are CPU kernels, so these functions work on a CPU copy of the model
and give back a CPU model, on purpose.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from .inference import batches
from .layers import linear_layers
from .metrics import perplexity

_SAID: set[str] = set()  # the sentences already printed in this process


def _say_deprecation(caught) -> None:
    """PyTorch's 10-line deprecation notice, said once in one sentence (it teaches where the API went)."""
    if "deprecated" not in _SAID and any("torch.ao.quantization is deprecated" in str(w.message) for w in caught):
        _SAID.add("deprecated")
        print("PyTorch warns that torch.ao.quantization is deprecated: its successor is torchao's quantize_().")


__all__ = ["dynamic_quantize_linears", "dynamic_family_perplexity", "StaticQuantLinear", "quantized_engine",
           "static_quantize_linears"]


def dynamic_quantize_linears(model: nn.Module, names=None) -> nn.Module:
    """PyTorch's dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``) on a CPU copy.

    ``names``: the qualified names of the ``nn.Linear`` layers to quantize; None quantizes every
    ``nn.Linear`` (including ``lm_head``, as the plain call does). Weights become int8 (one scale
    per tensor); each input is quantized on the fly with one scale per input tensor. The
    caller's model is not modified.
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    if names is None:
        spec = {nn.Linear}
    else:
        names = list(names)
        if not names:
            raise ValueError("names is empty: give the qualified names of the nn.Linear layers, or None for all.")
        for name in names:
            if not isinstance(model.get_submodule(name), nn.Linear):
                raise ValueError(f"{name} is a {type(model.get_submodule(name)).__name__}, not an nn.Linear.")
        spec = {name: default_dynamic_qconfig for name in names}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = quantize_dynamic(copy.deepcopy(model).cpu().eval(), spec, dtype=torch.qint8, inplace=True)
    _say_deprecation(caught)
    return quantized


def dynamic_family_perplexity(model: nn.Module, families: dict[str, tuple[str, ...]], blocks: torch.Tensor,
                              batch_size: int = 8) -> dict[str, float]:
    """Perplexity on ``blocks`` with dynamic int8 applied to one family of layers at a time.

    ``families`` maps a label to name fragments, e.g. ``{"MLP down": ("down_proj",)}``: the
    family is every linear layer (outside ``lm_head``) whose name contains one of them. Each
    family is quantized on its own copy (:func:`dynamic_quantize_linears`). Returns
    ``{label: perplexity}``.
    """
    result = {}
    for label, parts in families.items():
        chosen = [n for n in linear_layers(model) if any(p in n for p in parts)]
        if not chosen:
            raise ValueError(f"family {label!r}: no linear layer name contains any of {parts}.")
        quantized = dynamic_quantize_linears(model, chosen)
        result[label] = perplexity(quantized, blocks, batch_size=batch_size, progress=False)
        del quantized
    return result


# --------------------------------------------------------------------------- PyTorch static PTQ


class StaticQuantLinear(nn.Sequential):
    """``QuantStub -> Linear -> DeQuantStub``: a float Linear that PyTorch's eager static
    post-training quantization can convert to an int8 ``quantized.Linear`` (activations and weights
    int8, activation scale fixed from calibration)."""

    def __init__(self, linear: nn.Linear):
        from torch.ao.quantization import DeQuantStub, QuantStub

        if not isinstance(linear, nn.Linear):
            raise ValueError(f"StaticQuantLinear wraps an nn.Linear, got {type(linear).__name__}.")
        super().__init__(QuantStub(), linear, DeQuantStub())


@contextmanager
def quantized_engine(backend: str):
    """A ``with`` block in which ``torch.backends.quantized.engine == backend``; the engine that was
    set before is put back afterwards, also when the block raises (the engine is global state)."""
    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"Quantized backend {backend!r} is not available here; "
                         f"supported: {torch.backends.quantized.supported_engines}.")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield backend
    finally:
        torch.backends.quantized.engine = before


def static_quantize_linears(model: nn.Module, names, calibration_blocks: torch.Tensor | None,
                            backend: str = "x86", batch_size: int = 8, progress: bool = True) -> nn.Module:
    """Eager-mode static post-training quantization of the named ``nn.Linear`` layers, on a CPU copy.

    The three steps, each once: **prepare** (wrap each layer in :class:`StaticQuantLinear`, attach
    ``get_default_qconfig(backend)``: observers record activation ranges), **calibrate** (run the
    copy on ``calibration_blocks``, on the CPU), **convert** (replace observed layers by int8 kernels).
    ``calibration_blocks=None`` skips calibration, as the source article's code does: the
    observers have then seen nothing and the activation scales are PyTorch's defaults (shown, not
    advised); PyTorch's warning about it is caught and said in one printed sentence. The work runs
    under :func:`quantized_engine` (``backend``), so the global engine is restored afterwards; run
    the returned model under the same engine if you changed it. The caller's model is not modified.
    """
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    names = list(names)
    if not names:
        raise ValueError("names is empty: give the qualified names of the nn.Linear layers to quantize.")
    with quantized_engine(backend):
        qmodel = copy.deepcopy(model).cpu().eval()
        for name in names:
            wrapped = StaticQuantLinear(qmodel.get_submodule(name))
            wrapped.qconfig = get_default_qconfig(backend)
            qmodel.set_submodule(name, wrapped)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepare(qmodel, inplace=True)  # 1. prepare: observers, once
        _say_deprecation(caught)
        if calibration_blocks is not None:  # 2. calibrate on real text (CPU: int8 kernels are CPU kernels)
            with torch.no_grad():
                for batch in batches(calibration_blocks, batch_size, "cpu", desc="calibrating", progress=progress):
                    qmodel(input_ids=batch)
        with warnings.catch_warnings(record=True) as caught:  # 3. convert: int8 weights and kernels
            warnings.simplefilter("always")
            convert(qmodel, inplace=True)
    _say_deprecation(caught)
    if any("observer" in str(w.message).lower() for w in caught):
        print("PyTorch warned that its observers never saw data: the activation scales are its defaults.")
    return qmodel
