"""Chapter 03 (quantization): the whole-model experiments.

This module holds what the lesson does to a whole model: fake-quantize every linear layer
(:func:`fake_quantize_model_`), the round-to-nearest bit-width ladder (:func:`rtn_ladder`), the
input-channel maxima that reveal activation outliers (:func:`input_channel_absmax`) and the
ordering verdict of the 4-bit claim rows (:func:`ordering_verdict`). The other pieces of the
chapter live in modules of their own, one concept each; import a helper from its module:

* :mod:`course_lib.int_quantization`: integer grids (absmax, zero point; tensor/channel/group);
* :mod:`course_lib.code_books`: INT4/FP4/NF4 code books, block-wise quantization, double quantization;
* :mod:`course_lib.quantized_storage`: bits per weight by formula, packed and measured footprints;
* :mod:`course_lib.torch_int8`: PyTorch's dynamic and static int8 (CPU kernels);
* :mod:`course_lib.bnb_storage`: what bitsandbytes layers hold before and after a forward pass;
* :mod:`course_lib.qat`: quantization-aware training with a straight-through estimator;
* :mod:`course_lib.quantization_plots`: histograms, the ladder plot, the explorer widget.

Nothing here modifies the caller's tensors or model, except functions ending in ``_``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .claims import INCONCLUSIVE, lower_is_better
from .inference import capture
from .int_quantization import GRANULARITIES, check_bits, fake_quantize
from .layers import linear_layers, linear_weight, set_linear_weight
from .metrics import perplexity
from .quantized_storage import PER_CHANNEL, PER_TENSOR, packed_linear_bits

# Chapter sizes (see course_lib.profiles.sizes_for). Perplexities of the ladder and the 4-bit
# data types use `ladder_eval_blocks` validation blocks (fewer than the scorecard's
# profile.eval_blocks); scorecard records use the shared protocol. `cpu_eval_blocks` and
# `static_calib_blocks` feed PyTorch's int8 models, which run on the CPU whatever the device:
# they do not grow with the gpu profile. Every *_blocks <= data.MIN_BLOCKS_128 (133).
#
# gpu profile (Colab T4, 16 GB; we assume 4 TFLOP/s fp32 sustained, the low end): a forward pass
# over one 128-token block costs 2 * 134.5e6 * 128 = 34 GFLOP. Ladder 9 cells x 64 blocks + code
# books 3 x 64 + GPTQ 2 x 64 + QAT eval 2 x 64 = 960 block-forwards = 33 TFLOP, about 8 s; QAT
# training 6 * 134.5e6 * (qat_steps 40 x 8 x 128 tokens) = 0.26 PFLOP, about 66 s (plus the fake
# quantization of every weight each step); the scorecard (profile.eval_blocks 128 x 8 models)
# 35 TFLOP, about 9 s. The CPU-bound int8 parts stay at the cpu sizes: 3 families + 2 static
# models + torchao x 16 blocks at ~0.3 s a block on a 2-core CPU = about 30 s. With model loads
# (6 x ~10 s) and generation timing, the lesson is estimated at 5-10 minutes on a T4. Memory:
# at most fp32 model + a copy + QAT optimizer state (Adam, 2 x 538 MB) + activations of batch 8
# = about 4 GB GPU, well within 15 GB.
#
# cpu profile (2 cores, the 10-minute budget): the reference cpu run of this lesson took 8.5 min
# before QAT was added (benchmarks/RESULTS.md). QAT adds qat_steps 10 x batch 4: a full
# fine-tuning step costs about 8.6 s at batch 8 (FACTS.md), so about 4.5 s at batch 4 plus
# rounding every weight each step, about 50 s; its perplexity on 16 blocks about 5 s. The CPU
# timing group adds one model (fp32 on CPU is the same model on a CPU machine). Estimate: 9.5 to
# 10 minutes; not yet run on an idle machine.
SIZES = {
    "smoke": {"ladder_eval_blocks": 2, "cpu_eval_blocks": 2, "static_calib_blocks": 2, "torchao_eval_blocks": 1,
              "gptq_layers": 2, "qat_steps": 2, "qat_batch_size": 2, "qat_train_blocks": 4},
    "cpu": {"ladder_eval_blocks": 16, "cpu_eval_blocks": 16, "static_calib_blocks": 8, "torchao_eval_blocks": 4,
            "gptq_layers": None, "qat_steps": 10, "qat_batch_size": 4, "qat_train_blocks": 40},
    "gpu": {"ladder_eval_blocks": 64, "cpu_eval_blocks": 16, "static_calib_blocks": 8, "torchao_eval_blocks": 4,
            "gptq_layers": None, "qat_steps": 40, "qat_batch_size": 8, "qat_train_blocks": 128},
}

# Group size for whole-model experiments on SmolLM2: 64 divides both its hidden size (576) and
# its MLP size (1536); the papers' 128 does not divide 576 (= 4.5 x 128).
GROUP_SIZE = 64

__all__ = ["SIZES", "GROUP_SIZE", "fake_quantize_model_", "rtn_ladder", "input_channel_absmax", "ordering_verdict"]


# --------------------------------------------------------------------------- whole models


@torch.no_grad()
def fake_quantize_model_(model: nn.Module, quantizer: Callable[[torch.Tensor], torch.Tensor],
                         exclude: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Replace, **in place**, the weight of every linear layer (outside ``exclude``) by
    ``quantizer(weight)``, where ``weight`` is ``[out, in]``. Returns ``model``.

    Example: ``fake_quantize_model_(copy.deepcopy(model), lambda w: fake_quantize(w, 4, "group", 128))``.
    The weights stay float32 ("fake" quantization): the model computes what the quantized model
    would, but its footprint does not shrink (see :func:`packed_footprint_bytes`).
    """
    for module in linear_layers(model, exclude=exclude).values():
        w = linear_weight(module)
        w_hat = quantizer(w.detach())
        if not isinstance(w_hat, torch.Tensor) or w_hat.shape != w.shape:
            raise ValueError(f"quantizer must return a tensor of the weight's shape {tuple(w.shape)}.")
        set_linear_weight(module, w_hat)
    return model


def _bits_per_weight(model, bits, group_size, scale_bits, zero_point_bits) -> float:
    packed, numel = packed_linear_bits(model, bits, group_size, scale_bits, zero_point_bits)
    return packed / numel


def rtn_ladder(model: nn.Module, blocks: torch.Tensor, bits=(8, 4, 3), granularities=GRANULARITIES,
               group_size: int = 128, symmetric: bool = True, batch_size: int = 8, progress: bool = True):
    """Perplexity of round-to-nearest fake quantization at every ``bits`` x ``granularity``.

    Each cell quantizes a fresh copy of ``model`` (the caller's model is untouched) with
    :func:`fake_quantize` and measures :func:`course_lib.metrics.perplexity` on ``blocks``.
    Returns a pandas DataFrame: ``bits, granularity, perplexity, bits_per_weight`` (the whole
    model's :func:`packed_linear_bits` per weight, with 16-bit scales, and 16-bit zero points
    when asymmetric).
    """
    import pandas as pd

    for b in bits:
        check_bits(b)
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise ValueError(f"Unknown granularities {unknown}; use {GRANULARITIES}.")
    layout = {"tensor": PER_TENSOR, "channel": PER_CHANNEL, "group": group_size}
    zero_bits = 0 if symmetric else 16
    rows = []
    cells = [(b, g) for b in bits for g in granularities]
    for b, g in tqdm(cells, desc="bit-width ladder", disable=not progress):
        quantized = fake_quantize_model_(copy.deepcopy(model),
                                         lambda w: fake_quantize(w, b, g, group_size, symmetric))
        ppl = perplexity(quantized, blocks, batch_size=batch_size, progress=False)
        del quantized
        rows.append({"bits": b, "granularity": g if g != "group" else f"group {group_size}", "perplexity": ppl,
                     "bits_per_weight": _bits_per_weight(model, b, layout[g], 16, zero_bits)})
    return pd.DataFrame(rows)


def input_channel_absmax(model: nn.Module, module: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """``max |x[..., j]|`` over every token of ``blocks``, for each input channel ``j`` of ``module``.

    Runs ``model`` on ``blocks`` through :func:`course_lib.inference.capture` (evaluation mode, no
    gradients, batches on the model's device; the model's mode is restored afterwards) and returns
    a float32 vector of length ``in_features`` **on the CPU** (ready to plot). Large, rare values
    (outlier channels) are what break per-tensor activation scales.
    """
    if not any(m is module for m in model.modules()):
        raise ValueError("module is not a part of model: pass a layer of this model, "
                         "e.g. model.get_submodule('model.layers.0.mlp.down_proj').")
    found: list[torch.Tensor] = []

    def keep(_name, x, _output):
        x = x.float()
        found.append(x.reshape(-1, x.shape[-1]).abs().amax(dim=0))

    capture(model, {"layer": module}, blocks, keep, batch_size=batch_size, progress=False)
    if not found:
        raise ValueError("module was never called when the model ran: it is not on the forward path.")
    return torch.stack(found).amax(dim=0).cpu()


# --------------------------------------------------------------------------- claim helpers


def ordering_verdict(lower: str, higher: str, *measurements: dict, margin: float = 0.0):
    """Is ``lower``'s value below ``higher``'s in **every** measurement (e.g. perplexities on two
    different sets of blocks)? Each measurement is judged by
    :func:`course_lib.claims.lower_is_better` (``values[higher] > values[lower] * (1 + margin)``).
    True if it holds in all, False if the opposite holds in all, otherwise (they disagree, or a
    step lies within the margin) :data:`course_lib.claims.INCONCLUSIVE`.
    """
    if not measurements:
        raise ValueError("give at least one measurement: a dict of values by name.")
    outcomes = [lower_is_better(m, [lower, higher], margin) for m in measurements]
    if all(o is True for o in outcomes):
        return True
    if all(o is False for o in outcomes):
        return False
    return INCONCLUSIVE
