"""Unstructured pruning: which weights to zero, by which criterion, in which pattern.

A *mask* is a boolean tensor shaped like a layer's weight in ``[out_features, in_features]``
layout (see :func:`course_lib.layers.linear_weight`): ``True`` keeps a weight, ``False`` prunes it.
Pruning ``sparsity`` s of n weights removes exactly ``round(s * n)`` of them, the rule
``torch.nn.utils.prune`` uses, so our masks and the library's agree.

Criteria (a score per weight; the lowest scores are pruned):

* **magnitude**: ``S_ij = |W_ij|``;
* **Wanda** (Sun et al., 2023): ``S_ij = |W_ij| * ||X_j||_2``, where ``||X_j||_2`` is the L2 norm
  of input feature j over all calibration tokens (:func:`course_lib.wanda.input_norms`).

Scopes (which weights compete with each other): ``"layer"`` (all weights of one layer),
``"row"`` (each output row on its own, as Wanda does), ``"global"`` (all layers at once), or an
**N:M pattern** (:func:`nm_mask`: N weights kept in every M consecutive inputs of a row).

Only the linear layers inside the decoder blocks are pruned: not the embedding (tied to
``lm_head`` in SmolLM2), not the norms, not biases.

Which functions modify the model: only those whose name ends in ``_`` (:func:`apply_masks_`,
:func:`prune_with_torch_`, :func:`global_magnitude_prune_`, :func:`make_pruning_permanent_`).
Every other function leaves the caller's model untouched (:func:`pruned_copy` returns a new one).

Related modules: :mod:`course_lib.wanda` (calibration: input norms, one pass or block by block),
:mod:`course_lib.sparse_kernels` (CSR and 2:4 kernels), :mod:`course_lib.pruning_explorer`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SIZES", "CRITERIA", "SCOPES", "check_sparsity", "n_to_prune", "wanda_scores", "score_mask",
           "magnitude_mask", "check_nm", "nm_mask", "prunable_layers", "pruning_masks", "apply_masks_",
           "pruned_copy", "layer_sparsity", "prune_with_torch_", "global_magnitude_prune_", "torch_masks",
           "make_pruning_permanent_", "masked_perplexities", "sparsity_sweep"]

# Chapter 02's sizes (read with course_lib.profiles.sizes_for(SIZES)).
# sweep_blocks: validation blocks per point of the perplexity-vs-sparsity sweep (and of the N:M,
# sequential-Wanda and structured comparisons); sweep_sparsities: the sweep's points (0.5 always
# in); sequential_calib_blocks: calibration blocks for the one-pass vs sequential Wanda comparison
# (sequential costs about half a forward pass per decoder block); explorer_blocks: validation blocks per
# explorer view; speed_blocks: blocks per timed forward pass; recovery_*: the fine-tune after
# structured pruning (and its dense control); mlp_fraction: MLP width removed by structured
# pruning; sample_tokens: explorer generation.
#
# gpu profile on a Colab T4, estimated (not measured) at 4 TFLOP/s fp32, 134.5 M parameters:
# - sweep: 7 sparsities x 4 methods + 4 N:M + 5 structured + 2 sequential = 39 perplexities of
#   128 blocks x 128 tokens: 39 x 2 x 134.5e6 x 16384 = 1.7e14 FLOP, about 45 s;
# - sequential Wanda: at most 30 passes of 32 blocks: 30 x 2 x 134.5e6 x 4096 = 3.3e13 FLOP, < 10 s;
# - recovery: 2 models x 200 steps x 16 x 128 tokens x 6 x 134.5e6 = 6.6e14 FLOP, about 3 min;
# - scorecard (6 models x 128 eval blocks) and timings (5 rounds): under 3 min; the explorer's
#   first view: seconds. Whole lesson: about 10 minutes, well within 20.
# Memory: the dense model, a working copy and a few pruned copies (0.54 GB each in fp32), plus the
# fine-tune's AdamW state (4 x 0.54 GB) and batch-16 activations: under 6 GB of the T4's 15 GB.
# The CSR comparison runs on the CPU in every profile and does not grow with it.
SIZES = {
    "smoke": {"sweep_blocks": 2, "sweep_sparsities": [0.5], "sequential_calib_blocks": 2,
              "explorer_blocks": 2, "speed_blocks": 2, "recovery_steps": 2, "recovery_lr": 5e-5,
              "recovery_batch": 2, "mlp_fraction": 0.25, "sample_tokens": 8},
    "cpu": {"sweep_blocks": 6, "sweep_sparsities": [0.1, 0.3, 0.5, 0.7], "sequential_calib_blocks": 4,
            "explorer_blocks": 4, "speed_blocks": 4, "recovery_steps": 10, "recovery_lr": 5e-5,
            "recovery_batch": 4, "mlp_fraction": 0.25, "sample_tokens": 24},
    "gpu": {"sweep_blocks": 128, "sweep_sparsities": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            "sequential_calib_blocks": 32, "explorer_blocks": 32, "speed_blocks": 16, "recovery_steps": 200,
            "recovery_lr": 5e-5, "recovery_batch": 16, "mlp_fraction": 0.25, "sample_tokens": 32},
}


# --------------------------------------------------------------------------- checks


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Return ``sparsity`` as a float if it is in [0, 1); else raise a ValueError saying so."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1), got {sparsity!r}.") from None
    if not 0 <= value < 1:
        raise ValueError(f"{what} must be in [0, 1) (a fraction of weights, e.g. 0.5 for half), "
                         f"got {sparsity!r}.")
    return value


def n_to_prune(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a sparsity removes: ``round(sparsity * n)`` (torch's rule)."""
    return round(check_sparsity(sparsity) * n)


# --------------------------------------------------------------------------- scores and masks


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Wanda's importance of every weight: ``S_ij = |W_ij| * ||X_j||_2``.

    Args:
        weight: ``[out_features, in_features]``.
        norms: ``[in_features]``, the L2 norm of each input feature over the calibration tokens
            (:func:`course_lib.wanda.input_norms`).
    """
    if weight.ndim != 2 or norms.shape != (weight.shape[1],):
        raise ValueError(f"Need a weight [out, in] and norms [in]; got {tuple(weight.shape)} and "
                         f"{tuple(norms.shape)}. norms has one entry per input feature (column).")
    return weight.detach().abs().float() * norms.to(weight.device).float()[None, :]


def score_mask(scores: torch.Tensor, sparsity: float, scope: str = "layer") -> torch.Tensor:
    """Keep-mask pruning the lowest scores.

    ``scope="layer"``: exactly ``round(sparsity * numel)`` weights of the whole tensor are pruned;
    ``scope="row"``: exactly ``round(sparsity * in_features)`` in every row (output feature).
    Ties are broken as ``torch.topk`` breaks them, as ``torch.nn.utils.prune`` does.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D [out, in] tensor, got shape {tuple(scores.shape)}.")
    mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if scope == "layer":
        k = n_to_prune(scores.numel(), sparsity)
        if k:
            mask.view(-1)[torch.topk(scores.reshape(-1), k, largest=False).indices] = False
    elif scope == "row":
        k = n_to_prune(scores.shape[1], sparsity)
        if k:
            mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    else:
        raise ValueError(f"scope must be 'layer' or 'row' for one tensor (use pruning_masks for "
                         f"'global'), got {scope!r}.")
    return mask


def magnitude_mask(weight: torch.Tensor, sparsity: float, scope: str = "layer") -> torch.Tensor:
    """Keep-mask that prunes the smallest ``|W_ij|``: :func:`score_mask` of ``weight.abs()``."""
    return score_mask(weight.detach().abs(), sparsity, scope)


def check_nm(n: int, m: int) -> tuple[int, int]:
    """Validate an N:M pattern (N weights kept of every M): integers with 0 < N < M."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)):
        raise ValueError(f"N and M must be integers, got {n!r} and {m!r}.")
    if not 0 < n < m:
        raise ValueError(f"An N:M pattern keeps N of every M weights and needs 0 < N < M; got {n}:{m} "
                         "(e.g. 2:4 keeps 2 of every 4).")
    return n, m


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep-mask with exactly ``n`` kept weights in every group of ``m`` consecutive inputs of a row.

    Groups run along the input dimension (``scores[i, m*g : m*(g+1)]``), the layout that sparse
    tensor cores (``torch.sparse.to_sparse_semi_structured``) use for 2:4. Sparsity is ``1 - n/m``.
    """
    n, m = check_nm(n, m)
    if scores.ndim != 2 or scores.shape[1] % m:
        raise ValueError(f"scores must be [out, in] with in divisible by M={m}; got {tuple(scores.shape)}.")
    groups = scores.reshape(scores.shape[0], -1, m)
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return mask.reshape(scores.shape)


CRITERIA = ("magnitude", "wanda")
SCOPES = ("layer", "row", "global")


def prunable_layers(model: nn.Module, include: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """The linear layers pruning acts on: all but ``lm_head`` (tied to the embedding), optionally
    only those whose name contains one of ``include`` (e.g. ``("mlp",)``).

    Raises:
        ValueError: the model has no linear layers, or none matches ``include``.
    """
    from .layers import linear_layers

    layers = linear_layers(model)
    if include is not None:
        layers = {k: v for k, v in layers.items() if any(part in k for part in include)}
        if not layers:
            raise ValueError(f"No linear layer name contains any of {include}.")
    return layers


def pruning_masks(model: nn.Module, sparsity: float | None = None, *, criterion: str = "magnitude",
                  scope: str = "row", nm: tuple[int, int] | None = None,
                  norms: dict[str, torch.Tensor] | None = None,
                  include: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks ``{layer name: bool [out, in]}`` for the model's prunable linear layers.

    Give either ``sparsity`` (unstructured, in ``scope`` "layer", "row" or "global": all layers'
    scores ranked together) or ``nm=(N, M)`` (N kept of every M consecutive inputs of a row).
    ``criterion`` is "magnitude" (``|W|``) or "wanda" (``|W| * ||X||``, needs ``norms`` from
    :func:`course_lib.wanda.input_norms`). The model is not changed.
    """
    from .layers import linear_weight

    if (sparsity is None) == (nm is None):
        raise ValueError("Give exactly one of sparsity (unstructured) or nm=(N, M) (e.g. nm=(2, 4)).")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    if criterion == "wanda" and norms is None:
        raise ValueError("criterion='wanda' needs norms: compute them with course_lib.wanda.input_norms(model, calib_blocks).")
    if sparsity is not None:
        sparsity = check_sparsity(sparsity)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    layers = prunable_layers(model, include)
    scores = {}
    for name, module in layers.items():
        weight = linear_weight(module).detach()
        if criterion == "wanda":
            if name not in norms:
                raise ValueError(f"norms has no entry for layer {name}; compute norms on this model.")
            scores[name] = wanda_scores(weight, norms[name])
        else:
            scores[name] = weight.abs().float()
    if nm is not None:
        return {name: nm_mask(s, *nm) for name, s in scores.items()}
    if scope != "global":
        return {name: score_mask(s, sparsity, scope) for name, s in scores.items()}
    shapes = {name: s.shape for name, s in scores.items()}
    flat = torch.cat([scores.pop(name).reshape(-1) for name in shapes])
    keep = torch.ones(flat.shape, dtype=torch.bool, device=flat.device)
    k = n_to_prune(flat.numel(), sparsity)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = False
    del flat
    masks, start = {}, 0
    for name, shape in shapes.items():
        masks[name] = keep[start:start + shape.numel()].view(shape)
        start += shape.numel()
    return masks


# --------------------------------------------------------------------------- applying masks


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor], source: nn.Module | None = None) -> nn.Module:
    """In place: set every masked layer's weight to ``W * mask`` and return ``model``.

    With ``source`` (a model of the same shape), ``W`` is taken from ``source`` instead, so one
    working copy can be re-pruned many times without copying the whole model again.
    """
    from .layers import linear_weight, set_linear_weight

    modules = dict(model.named_modules())
    originals = dict(source.named_modules()) if source is not None else modules
    for name, mask in masks.items():
        if name not in modules:
            raise ValueError(f"The model has no layer named {name}.")
        weight = linear_weight(originals[name])
        if mask.shape != weight.shape:
            raise ValueError(f"Mask for {name} has shape {tuple(mask.shape)}, weight is {tuple(weight.shape)}.")
        set_linear_weight(modules[name], weight * mask.to(weight.device))
    return model


def pruned_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A new model with the masked weights set to zero; the caller's model is untouched."""
    import copy

    return apply_masks_(copy.deepcopy(model), masks)


@torch.no_grad()
def layer_sparsity(model: nn.Module, include: tuple[str, ...] | None = None) -> dict[str, float]:
    """Fraction of exactly-zero weights in each prunable linear layer."""
    from .layers import linear_weight

    return {name: 1 - torch.count_nonzero(linear_weight(m)).item() / linear_weight(m).numel()
            for name, m in prunable_layers(model, include).items()}


# --------------------------------------------------------------------------- torch.nn.utils.prune


def _stored(module: nn.Module, mask_out_in: torch.Tensor) -> torch.Tensor:
    """A ``[out, in]`` mask in the layout the module stores its weight (Conv1D: ``[in, out]``)."""
    from .layers import conv1d_type

    return mask_out_in.T if isinstance(module, conv1d_type()) else mask_out_in


def prune_with_torch_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """In place, with ``torch.nn.utils.prune.custom_from_mask``: each masked layer's ``weight``
    becomes ``weight_orig * weight_mask``, recomputed before every forward pass (so training
    cannot revive pruned weights). Undo the re-parametrisation with :func:`make_pruning_permanent_`.
    """
    from torch.nn.utils import prune

    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise ValueError(f"The model has no layer named {name}.")
        prune.custom_from_mask(modules[name], "weight", _stored(modules[name], mask.to(torch.float32)))
    return model


def global_magnitude_prune_(model: nn.Module, sparsity: float, include: tuple[str, ...] | None = None) -> nn.Module:
    """In place, with ``torch.nn.utils.prune.global_unstructured`` and ``L1Unstructured``: zero the
    ``round(sparsity * N)`` smallest-magnitude weights among all N weights of the prunable layers.
    """
    from torch.nn.utils import prune

    sparsity = check_sparsity(sparsity)
    params = [(m, "weight") for m in prunable_layers(model, include).values()]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def torch_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The keep-masks ``torch.nn.utils.prune`` holds (``weight_mask`` buffers), as ``[out, in]`` bools."""
    return {name: _stored(m, m.weight_mask).bool() for name, m in model.named_modules()
            if hasattr(m, "weight_mask")}


def make_pruning_permanent_(model: nn.Module) -> int:
    """In place: ``torch.nn.utils.prune.remove`` on every re-parametrised weight, so ``weight`` is a
    plain parameter again (with its zeros) and ``weight_orig``/``weight_mask`` are gone.
    Returns how many layers were made permanent."""
    from torch.nn.utils import prune

    count = 0
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
            count += 1
    return count


# --------------------------------------------------------------------------- sweeps


def masked_perplexities(model: nn.Module, blocks: torch.Tensor, configs: dict,
                        norms: dict[str, torch.Tensor] | None = None, batch_size: int = 8,
                        progress: bool = True) -> dict:
    """Perplexity on ``blocks`` of ``model`` pruned by each of several configurations.

    ``configs`` maps a label to :func:`pruning_masks` keyword arguments (with ``sparsity`` or
    ``nm``), e.g. ``{"Wanda 2:4": {"nm": (2, 4), "criterion": "wanda"}}``; ``norms`` is passed to
    every one. One working copy of the model is re-pruned from the original's weights
    (:func:`apply_masks_` with ``source``) for each configuration, so no configuration sees
    another's zeros, and the caller's model is untouched. Scored by
    :func:`course_lib.scorecard.perplexities`. Returns ``{label: perplexity}`` in the order of ``configs``.
    """
    import copy

    from .scorecard import perplexities

    if not configs:
        raise ValueError("configs is empty: give {label: pruning_masks keyword arguments}, "
                         "e.g. {'2:4': {'nm': (2, 4)}}.")
    work = copy.deepcopy(model)
    variants = {label: (lambda kw=kwargs: apply_masks_(work, pruning_masks(model, norms=norms, **kw), source=model))
                for label, kwargs in configs.items()}
    found = perplexities(variants, blocks, batch_size=batch_size, progress=progress)
    del work
    return {label: float(found[label]) for label in configs}


def sparsity_sweep(model: nn.Module, blocks: torch.Tensor, sparsities, methods: dict[str, dict],
                   norms: dict[str, torch.Tensor] | None = None, batch_size: int = 8,
                   progress: bool = True) -> list[dict]:
    """Perplexity of ``model`` pruned at each sparsity by each method.

    ``methods`` maps a label to :func:`pruning_masks` keyword arguments without ``sparsity``, e.g.
    ``{"Wanda, per row": {"criterion": "wanda", "scope": "row"}}``. Every point is computed by
    :func:`masked_perplexities` (one working copy, re-pruned from the original's weights); the
    caller's model is untouched. Returns rows ``{"method", "sparsity", "perplexity"}``.
    """
    sparsities = [check_sparsity(s) for s in sparsities]
    configs = {(label, s): {**methods[label], "sparsity": s} for label in methods for s in sparsities}
    found = masked_perplexities(model, blocks, configs, norms=norms, batch_size=batch_size, progress=progress)
    return [{"method": label, "sparsity": s, "perplexity": ppl} for (label, s), ppl in found.items()]
