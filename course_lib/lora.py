"""LoRA: train a small low-rank update of frozen weights instead of the weights themselves.

A linear layer ``y = x W^T`` with ``W`` of shape ``[out, in]`` is fine-tuned as

    W' = W + (alpha / r) * B @ A,      A: [r, in],  B: [out, r],  r << min(in, out)

``W`` stays frozen; only ``A`` and ``B`` train: ``r * (in + out)`` parameters instead of
``in * out``. (LoRA factors the *update* ``Delta W = (alpha / r) B A``, not ``W`` itself: ``W`` keeps
its full rank.) ``B`` starts at zero, so the model is exactly the pre-trained one at step 0 and the
update grows from there; ``A`` starts random (Kaiming-uniform, as in peft) so that the gradient
of ``B`` is not zero too. ``alpha / r`` keeps the size of the update comparable when ``r`` changes.

* :class:`LoRALinear`: the layer written from scratch (the lesson compares it with peft's).
* :func:`lora_config` / :func:`add_lora_`: peft's ``LoraConfig`` and ``get_peft_model`` with the
  course's checks (rank, target names, GPT-2's ``Conv1D`` needs ``fan_in_fan_out=True``).
* :func:`lora_parameter_table`: ``W`` against ``A`` and ``B`` for every projection.
* :func:`projection_names`: the kinds of linear layer by the shortest unambiguous path suffix
  (``q_proj`` on Llama; ``attn.c_proj`` and ``mlp.c_proj`` on GPT-2, which share a short name).
* :func:`trainable_parameters`, :func:`folder_size_bytes`, :func:`max_abs_logit_difference`.

Training and comparing runs (:func:`fine_tune`, the sweep) are in :mod:`course_lib.lora_training`,
QLoRA's 4-bit base in :mod:`course_lib.qlora`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .inference import eval_mode
from .layers import is_linear, linear_layers, linear_weight, model_family

__all__ = ["SIZES", "TARGET_PRESETS", "LoRALinear", "check_rank", "lora_parameter_count", "linear_module_names",
           "projection_names", "resolve_targets", "lora_config", "add_lora_", "lora_parameter_table",
           "trainable_parameters", "folder_size_bytes", "max_abs_logit_difference"]

# Chapter 05 sizes. Steps and batch are shared by LoRA, full fine-tuning and QLoRA (same budget).
# The sweep trains len(sweep_ranks) * len(sweep_lrs) adapters for each of the three alpha rules
# (course_lib.lora_training.ALPHA_RULES).
# cpu (2 cores, budget 10 min; the previous sizes took 12.4 min): main runs cut from 30 to 24 steps
# and the numbers adapter from 20 to 12 (the date task is learned within ~20 steps at lr 3e-3);
# the sweep grows from 2x3x6 = 36 to 3 rules x 2x3x4 = 72 short-answer steps (~1 s each at batch 4,
# sequences of ~50 tokens, from FACTS' 5 s for 8 x 128 tokens). Estimate to confirm on an idle machine.
# gpu (Colab T4; assumed 5 TFLOP/s fp32 sustained): a step of 16 examples x ~50 tokens = 800 tokens
# costs 6 * 134.5e6 * 800 = 6.5e11 FLOPs (full fine-tuning, 0.13 s) and about 4 * 134.5e6 * 800 =
# 4.3e11 (LoRA: no weight gradients, 0.09 s; QLoRA with on-the-fly dequantization, say 0.2 s).
# 300 steps each of LoRA, full, numbers and QLoRA: 27 + 39 + 27 + 60 s; sweep 3 rules x 3 ranks x 5
# rates x 100 steps = 4,500 LoRA steps = 405 s; evaluation (300-example exact match, 128-block
# perplexity: 2 * 134.5e6 * 16,384 = 4.4e12 FLOPs, ~1 s) a few minutes in generation latency:
# about 15 min in all. GPU memory: full fine-tuning 16 bytes x 134.5e6 = 2.2 GB plus logits
# (16 x 64 x 49,152 x 4 B = 0.2 GB) and the lesson's ~6 model copies (0.54 GB each): < 6 GB of 15.
SIZES = {
    "smoke": {"n_train": 64, "steps": 2, "batch_size": 2, "lr": 3e-3, "full_lr": 5e-5, "numbers_steps": 2,
              "sweep_ranks": [2, 8], "sweep_lrs": [2e-4, 2e-3], "sweep_steps": 1, "sweep_eval": 4},
    "cpu": {"n_train": 1000, "steps": 24, "batch_size": 4, "lr": 3e-3, "full_lr": 5e-5, "numbers_steps": 12,
            "sweep_ranks": [2, 16], "sweep_lrs": [3e-4, 3e-3, 3e-2], "sweep_steps": 4, "sweep_eval": 16},
    "gpu": {"n_train": 4000, "steps": 300, "batch_size": 16, "lr": 2e-3, "full_lr": 2e-5, "numbers_steps": 300,
            "sweep_ranks": [2, 8, 32], "sweep_lrs": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "sweep_steps": 100,
            "sweep_eval": 300},
}

# The original LoRA paper adapts the query and value projections; "attention" means every
# projection of the attention block. GPT-2 computes q, k and v in one layer (attn.c_attn) and its
# output projection attn.c_proj shares the short name c_proj with mlp.c_proj: the path says which.
TARGET_PRESETS = {
    "q,v": {"llama": ("q_proj", "v_proj"), "gpt2": ("attn.c_attn",)},
    "attention": {"llama": ("q_proj", "k_proj", "v_proj", "o_proj"), "gpt2": ("attn.c_attn", "attn.c_proj")},
}


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update, written from scratch:

        y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

    ``A`` ([r, in]) starts Kaiming-uniform (``a = sqrt(5)``, as ``nn.Linear`` and peft do), ``B``
    ([out, r]) starts at zero, so at initialisation the layer computes exactly ``base(x)``.
    The base layer is used, not copied: its parameters are set to ``requires_grad=False``.
    ``A`` and ``B`` are created on the base layer's device and in its dtype (a layer on a GPU gets
    its adapter on that GPU).

    Raises:
        ValueError: ``base`` is not an ``nn.Linear``, or ``r`` or ``alpha`` is not positive.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        check_rank(r)
        if not alpha > 0:
            raise ValueError(f"lora alpha must be positive, got {alpha}.")
        self.base, self.r, self.alpha = base, r, alpha
        self.scaling = alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        where = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.A = nn.Parameter(torch.empty(r, base.in_features, **where))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, **where))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """``W + (alpha / r) * B @ A``: one weight that computes the same as base plus update."""
        return self.base.weight + self.scaling * (self.B @ self.A)


def check_rank(r) -> None:
    """Raise a ValueError unless ``r`` is a positive integer (a bool is not a rank)."""
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer (e.g. 8), got {r!r}.")


def lora_parameter_count(in_features: int, out_features: int, r: int) -> int:
    """Parameters LoRA trains for one ``[out, in]`` weight: ``r * in`` (A) + ``out * r`` (B)."""
    check_rank(r)
    return r * (in_features + out_features)


# --------------------------------------------------------------------------- targets


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct short names of a model's linear layers (``q_proj``, ``c_attn``, ``lm_head``...)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if is_linear(m) and name})


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of targets: the module name equals the target or ends with ``"." + target``."""
    return name == target or name.endswith("." + target)


def projection_names(model: nn.Module, exclude: tuple[str, ...] = ("lm_head",)) -> dict[str, str]:
    """``{full module name: kind}`` for every linear layer (except ``exclude``), where the kind is
    the shortest suffix of the path that names no other kind of layer: ``q_proj`` on Llama,
    ``attn.c_proj`` / ``mlp.c_proj`` on GPT-2 (the short name ``c_proj`` would merge them).

    The kind of layer ``model.layers.3.self_attn.q_proj`` is its path after the block index
    (``self_attn.q_proj``), shortened from the left while no other kind ends the same way.
    """
    def in_block(name):  # the path inside a decoder block: after the first numeric part
        parts = name.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        return ".".join(parts[digits[0] + 1:]) if digits else name

    full = {name: in_block(name) for name in linear_layers(model, exclude=exclude)}
    kinds = set(full.values())

    def shortest(kind):
        parts = kind.split(".")
        for start in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[start:])
            if not any(_matches(other, suffix) for other in kinds if other != kind):
                return suffix
        return kind

    short = {kind: shortest(kind) for kind in kinds}
    return {name: short[kind] for name, kind in full.items()}


def resolve_targets(model: nn.Module, targets="q,v") -> list[str]:
    """Module names LoRA adapts: a preset (``"q,v"``, ``"attention"``, ``"all-linear"``) or names.

    ``"all-linear"`` is every kind of linear layer except the output head (with tied embeddings
    the head *is* the embedding matrix), as in peft, named by :func:`projection_names`. A name
    matches a module whose full name equals it or ends with ``"." + name``, as in peft, so a path
    suffix (``"attn.c_proj"``) picks one of two layers that share a short name.

    Raises:
        ValueError: a name matches no linear layer (the message lists the model's linear layer
            names), or the preset is unknown.
    """
    if isinstance(targets, str):
        if targets == "all-linear":
            return sorted(set(projection_names(model).values()))
        if targets in TARGET_PRESETS:
            return list(TARGET_PRESETS[targets][model_family(model)])
        raise ValueError(f"Unknown target preset {targets!r}; use one of "
                         f"{sorted(TARGET_PRESETS) + ['all-linear']} or a list of module names.")
    targets = list(targets)
    if not targets:
        raise ValueError("targets is empty: name at least one linear layer, e.g. ['q_proj', 'v_proj'].")
    names = [name for name, m in model.named_modules() if is_linear(m)]
    for target in targets:
        if not any(_matches(n, target) for n in names):
            raise ValueError(
                f"Target module {target!r} matches no linear layer of {type(model).__name__}. "
                f"Its linear layer names are: {', '.join(linear_module_names(model))} (a path suffix "
                f"such as 'attn.c_proj' picks one of two layers with the same short name)."
            )
    return targets


# --------------------------------------------------------------------------- peft


def lora_config(model: nn.Module, r: int = 8, alpha: float = 16, targets="q,v", dropout: float = 0.0,
                rslora: bool = False):
    """A peft ``LoraConfig`` for ``model`` (causal LM), after checking every argument.

    ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with ``rslora=True`` (rank-stabilized LoRA,
    Kalajievski 2023: the update's size then no longer shrinks as ``r`` grows). For GPT-2 (``Conv1D`` layers, weight stored ``[in, out]``) it sets
    ``fan_in_fan_out=True`` so that peft transposes correctly; for ``nn.Linear`` models False.

    Raises:
        ValueError: ``r`` not a positive integer, ``alpha`` not positive, ``dropout`` outside
            [0, 1), or a target that matches nothing (see :func:`resolve_targets`).
    """
    from peft import LoraConfig

    check_rank(r)
    if not alpha > 0:
        raise ValueError(f"lora alpha must be positive, got {alpha}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora dropout must be in [0, 1), got {dropout}.")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=resolve_targets(model, targets),
                      fan_in_fan_out=model_family(model) == "gpt2", task_type="CAUSAL_LM", use_rslora=bool(rslora))


def _ignore_torchao_too_old_for_peft() -> None:
    """Colab ships torchao 0.10; peft >= 0.19 raises ImportError on every LoRA layer when the installed
    torchao is older than it supports (its ``is_torchao_available``). The course never puts LoRA on
    torchao tensors, so only in that case peft's LoRA dispatcher is told that torchao is absent."""
    import peft.tuners.lora.torchao as peft_torchao

    try:
        peft_torchao.is_torchao_available()
    except ImportError:
        peft_torchao.is_torchao_available = lambda: False


def add_lora_(model: nn.Module, config=None, adapter_name: str = "default", seed: int | None = None,
              **config_kwargs):
    """Wrap ``model`` in a peft ``PeftModel`` with a new LoRA adapter, **modifying it in place**.

    peft replaces the targeted layers inside ``model`` by LoRA layers and freezes everything
    else; pass ``copy.deepcopy(model)`` to keep the original. ``config`` is a ``LoraConfig``
    (default: ``lora_config(model, **config_kwargs)``). ``seed`` seeds torch first, so that the
    random initialisation of ``A`` is the same on every run.

    Raises:
        ValueError: a quantized model on a device bitsandbytes does not support, or the
            config's errors (see :func:`lora_config`).
    """
    from peft import get_peft_model

    from .device import model_device
    from .models import check_quantization_supported

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        check_quantization_supported("nf4" if getattr(model, "is_loaded_in_4bit", False) else "int8",
                                     model_device(model))
    if config is None:
        config = lora_config(model, **config_kwargs)
    elif config_kwargs:
        raise ValueError("Give either a LoraConfig or keyword arguments for lora_config, not both.")
    else:
        resolve_targets(model, list(config.target_modules))
        check_rank(config.r)
    if seed is not None:
        torch.manual_seed(seed)
    _ignore_torchao_too_old_for_peft()
    return get_peft_model(model, config, adapter_name=adapter_name)


# --------------------------------------------------------------------------- counting and comparing


def lora_parameter_table(model: nn.Module, r: int = 8, targets="all-linear"):
    """Per kind of projection (:func:`projection_names`, so GPT-2's ``attn.c_proj`` and
    ``mlp.c_proj`` are separate rows): the shape of ``W`` (``[out, in]``), its parameters, LoRA's
    ``r * (in + out)``, the ratio, and how many layers have it. A pandas DataFrame with a total row.
    A layer is counted when its name matches one of the targets as peft matches it.
    """
    import pandas as pd

    names = resolve_targets(model, targets)
    modules = dict(model.named_modules())
    rows: dict[str, dict] = {}
    for full_name, kind in projection_names(model, exclude=()).items():
        if not any(_matches(full_name, t) for t in names):
            continue
        out_f, in_f = linear_weight(modules[full_name]).shape
        row = rows.setdefault(kind, {"projection": kind, "W shape [out, in]": f"{out_f} x {in_f}",
                                     "W params": out_f * in_f, "A + B params": lora_parameter_count(in_f, out_f, r),
                                     "layers": 0})
        row["layers"] += 1
    table = pd.DataFrame(list(rows.values()))
    table["LoRA / W"] = (table["A + B params"] / table["W params"]).map(lambda v: f"{v:.2%}")
    total = {"projection": "total", "W shape [out, in]": "", "layers": int(table["layers"].sum()),
             "W params": int((table["W params"] * table["layers"]).sum()),
             "A + B params": int((table["A + B params"] * table["layers"]).sum())}
    total["LoRA / W"] = f"{total['A + B params'] / total['W params']:.2%}"
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def trainable_parameters(model: nn.Module) -> dict:
    """``{"trainable", "total", "percent"}``: parameters with ``requires_grad`` and all parameters,
    each distinct tensor counted once (a 4-bit bitsandbytes weight counts its packed bytes, as in
    peft's ``print_trainable_parameters``, so use it on float models for parameter counts)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable": trainable, "total": total, "percent": 100 * trainable / total if total else 0.0}


def folder_size_bytes(path: str | Path) -> int:
    """Bytes of all files under ``path`` (a file: its size)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; save the model or adapter there first.")
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def max_abs_logit_difference(model_a: nn.Module, model_b: nn.Module, input_ids: torch.Tensor) -> float:
    """``max |logits_a - logits_b|`` over every position and vocabulary entry, each model in eval
    mode (:func:`course_lib.inference.eval_mode`) with ``input_ids`` moved to its device."""
    from .device import model_device

    outputs = []
    for model in (model_a, model_b):
        with eval_mode(model):
            outputs.append(model(input_ids=input_ids.to(model_device(model))).logits.float().cpu())
    return (outputs[0] - outputs[1]).abs().max().item()
