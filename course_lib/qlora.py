"""QLoRA: a 4-bit base ready for LoRA adapters, and what merging into that base costs.

QLoRA (Dettmers et al., 2023) stores the frozen base model's linear layers in 4-bit NormalFloat
(NF4, a scale per block of 64 weights, chapter 03), dequantizes them on the fly in every forward
and backward pass, and trains a LoRA adapter (:mod:`course_lib.lora`) in higher precision on
top. Gradients flow *through* the 4-bit weights but never *into* them.

* :func:`load_qlora_base`: the model in NF4 (bitsandbytes), prepared with peft's
  ``prepare_model_for_kbit_training``, on the chosen device.
* :func:`merge_into_base_`: merge the adapter into the base and measure how far the merged
  model's logits moved. On a float base merging is exact up to rounding; on an NF4 base the merged
  weight ``W + (alpha / r) B A`` is quantized to 4 bits again, so the update is rounded away in part.
"""

from __future__ import annotations

import warnings

import torch

from .device import pick_device

__all__ = ["QUANT_TYPES", "load_qlora_base", "merge_into_base_"]

QUANT_TYPES = ("nf4", "fp4")


def load_qlora_base(name: str = "smollm2-135m", device=None, quant_type: str = "nf4"):
    """QLoRA's base: the model with its linear layers in 4 bits (bitsandbytes ``nf4`` or ``fp4``,
    compute in float32: the course runs on CPUs, where bfloat16 matrix products are not faster
    everywhere; the paper computes in bfloat16 on GPUs), prepared with peft's
    ``prepare_model_for_kbit_training`` (no gradient checkpointing: the model is small), on
    ``pick_device(device)``. Returns ``(model, tokenizer)``; add LoRA with
    :func:`course_lib.lora.add_lora_`.

    Raises:
        ValueError: ``quant_type`` is not a 4-bit type, a device bitsandbytes does not support (the
            message says to use the CPU or a CUDA GPU), or bitsandbytes is not installed (the
            message gives the pip command).
    """
    from peft import prepare_model_for_kbit_training

    from .models import check_quantization_supported, load_model

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"QLoRA stores the base in 4 bits: quant_type is one of {QUANT_TYPES}, got {quant_type!r}.")
    device = pick_device(device)
    check_quantization_supported(quant_type, device)
    model, tokenizer = load_model(name, quantization=quant_type, device=device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, tokenizer


def merge_into_base_(peft_model, input_ids: torch.Tensor):
    """Merge a peft model's adapter into its base (``merge_and_unload``, **the peft model is used
    up**) and return ``(merged model, max |logits(adapter on top) - logits(merged)|)`` on
    ``input_ids`` (moved to the model's device; eval mode, no gradients).

    A difference near float rounding (about 1e-5) means the merge is exact; on a 4-bit base it is
    larger because the merged weight is quantized again.

    Raises:
        ValueError: ``peft_model`` is not a peft model (it has no ``merge_and_unload``).
    """
    from .device import model_device
    from .inference import eval_mode

    if not hasattr(peft_model, "merge_and_unload"):
        raise ValueError(f"{type(peft_model).__name__} has no adapter to merge: pass the model add_lora_ returned.")
    with eval_mode(peft_model):
        before = peft_model(input_ids=input_ids.to(model_device(peft_model))).logits.float().cpu()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = peft_model.merge_and_unload()
    if any("rounding errors" in str(w.message) for w in caught):
        print("peft warns that merging into a 4-bit layer re-quantizes the merged weight (rounding): the "
              "difference below measures how much.")
    with eval_mode(merged):
        after = merged(input_ids=input_ids.to(model_device(merged))).logits.float().cpu()
    return merged, (before - after).abs().max().item()
