"""What a bitsandbytes model holds, measured at a stated moment: before and after its first forward pass.

bitsandbytes 0.50 changes its layers' storage on the first forward pass on some CPUs: with
AVX512-BF16 it repacks 4-bit weights (block scales to bf16, the double-quantization state
dropped), and ``Linear8bitLt`` moves its row scales from ``weight.SCB`` to ``state.SCB``. So a
footprint means nothing without saying *when* it was measured: :func:`footprint_around_first_forward`
measures both moments and says whether they differ.
"""

from __future__ import annotations

import torch

from .device import machine_info, model_device
from .footprint import footprint_bytes
from .inference import eval_mode
from .quantized_storage import linear_bits_per_weight

__all__ = ["footprint_around_first_forward"]


def footprint_around_first_forward(model, input_ids: torch.Tensor) -> dict:
    """``footprint_bytes`` and :func:`course_lib.quantized_storage.linear_bits_per_weight` of
    ``model`` just before and just after one forward pass over ``input_ids`` (moved to the model's
    device), plus ``changed`` (did the footprint move?) and the CPU flags that decide it
    (``machine_info()["cpu_flags"]`` when known). Call it on a freshly loaded model: once a
    forward pass has run, "before" is already "after"."""
    before = {"footprint_before": footprint_bytes(model), "bits_before": linear_bits_per_weight(model)}
    with eval_mode(model):
        model(input_ids=input_ids.to(model_device(model)))
    after = {"footprint_after": footprint_bytes(model), "bits_after": linear_bits_per_weight(model)}
    info = machine_info(model_device(model))
    return {**before, **after, "changed": before["footprint_before"] != after["footprint_after"],
            "cpu_flags": info.get("cpu_flags", info.get("cpu", "unknown"))}
