"""Unstructured pruning: which weights to zero, by which criterion, in which pattern.

A *mask* is a boolean tensor shaped like a layer's weight in ``[out_features, in_features]``
layout (see :func:`course_lib.layers.linear_weight`): ``True`` keeps a weight, ``False`` prunes it.
Pruning ``sparsity`` s of n weights removes exactly ``round(s * n)`` of them, the rule
``torch.nn.utils.prune`` uses, so our masks and the library's agree.

Criteria (a score per weight; the lowest scores are pruned):

* **magnitude**: ``S_ij = |W_ij|``;
* **Wanda** (Sun et al., 2023): ``S_ij = |W_ij| * ||X_j||_2``, where ``||X_j||_2`` is the L2 norm
  of input feature j over all calibration tokens (:func:`input_norms`).

Scopes (which weights compete with each other): ``"layer"`` (all weights of one layer),
``"row"`` (each output row on its own, as Wanda does), ``"global"`` (all layers at once), or an
**N:M pattern** (:func:`nm_mask`: N weights kept in every M consecutive inputs of a row).

Only the linear layers inside the decoder blocks are pruned: not the embedding (tied to
``lm_head`` in SmolLM2), not the norms, not biases.

Which functions modify the model: only those whose name ends in ``_`` (:func:`apply_masks_`,
:func:`prune_with_torch_`, :func:`global_magnitude_prune_`, :func:`make_pruning_permanent_`).
Every other function leaves the caller's model untouched (:func:`pruned_copy` returns a new one).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from .device import model_device

SIZES = {
    # sweep_blocks: validation blocks per point of the perplexity-vs-sparsity sweep (and of the
    # N:M and structured comparisons); sweep_sparsities: the sweep's sparsities (0.5 always in);
    # explorer_blocks: validation blocks per explorer update; speed_blocks: blocks per timed
    # forward pass; recovery_*: the fine-tune after structured pruning (and its dense control);
    # mlp_fraction: MLP width removed by structured pruning; sample_tokens: explorer generation.
    "smoke": {"sweep_blocks": 2, "sweep_sparsities": [0.5], "explorer_blocks": 2, "speed_blocks": 2,
              "recovery_steps": 2, "recovery_lr": 5e-5, "recovery_batch": 2, "mlp_fraction": 0.25,
              "sample_tokens": 8},
    "cpu": {"sweep_blocks": 6, "sweep_sparsities": [0.1, 0.3, 0.5, 0.7], "explorer_blocks": 6,
            "speed_blocks": 4, "recovery_steps": 10, "recovery_lr": 5e-5, "recovery_batch": 4,
            "mlp_fraction": 0.25, "sample_tokens": 24},
    "gpu": {"sweep_blocks": 128, "sweep_sparsities": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            "explorer_blocks": 32, "speed_blocks": 16, "recovery_steps": 200, "recovery_lr": 5e-5,
            "recovery_batch": 16, "mlp_fraction": 0.25, "sample_tokens": 32},
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


# --------------------------------------------------------------------------- calibration


@torch.no_grad()
def input_norms(model: nn.Module, blocks: torch.Tensor, modules: dict[str, nn.Module] | None = None,
                batch_size: int = 8, progress: bool = True) -> dict[str, torch.Tensor]:
    """The L2 norm of every input feature of each layer over the calibration tokens.

    ``||X_j||_2 = sqrt( sum over all tokens t of x_{t,j}^2 )``, where ``x_t`` is what the layer
    receives for token t when ``model`` reads ``blocks`` (``[n_blocks, block_size]`` token ids).

    Args:
        modules: the layers to watch by name (default: every linear layer but ``lm_head``).

    Returns:
        ``{name: tensor [in_features]}`` in float32. The model is not changed (hooks are removed).
    """
    from .layers import linear_layers

    if blocks.ndim != 2:
        raise ValueError(f"blocks must be a [n_blocks, block_size] tensor of token ids, got shape "
                         f"{tuple(blocks.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    modules = linear_layers(model) if modules is None else modules
    sums: dict[str, torch.Tensor] = {}
    last: list = [None, None]  # (input, its squared norms): q/k/v and gate/up share one input

    def make_hook(name):
        def hook(module, args):
            x = args[0]
            if x is not last[0]:
                norm = torch.linalg.vector_norm(x.detach().reshape(-1, x.shape[-1]).float(), dim=0)
                last[:] = [x, norm.to(torch.float64).pow(2)]
            sums[name] = sums[name] + last[1] if name in sums else last[1]
        return hook

    handles = [m.register_forward_pre_hook(make_hook(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        starts = range(0, len(blocks), batch_size)
        for start in tqdm(starts, desc="calibration", disable=not progress or len(starts) < 2, leave=False):
            model(input_ids=blocks[start:start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
        last.clear()
        model.train(was_training)
    return {name: sums[name].sqrt().float() for name in modules}


# --------------------------------------------------------------------------- scores and masks


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Wanda's importance of every weight: ``S_ij = |W_ij| * ||X_j||_2``.

    Args:
        weight: ``[out_features, in_features]``.
        norms: ``[in_features]``, the L2 norm of each input feature over the calibration tokens
            (:func:`input_norms`).
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
    :func:`input_norms`). The model is not changed.
    """
    from .layers import linear_weight

    if (sparsity is None) == (nm is None):
        raise ValueError("Give exactly one of sparsity (unstructured) or nm=(N, M) (e.g. nm=(2, 4)).")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    if criterion == "wanda" and norms is None:
        raise ValueError("criterion='wanda' needs norms: compute them with input_norms(model, calib_blocks).")
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
    another's zeros, and the caller's model is untouched.
    Returns ``{label: perplexity}`` in the order of ``configs``.
    """
    import copy

    from .metrics import perplexity

    if not configs:
        raise ValueError("configs is empty: give {label: pruning_masks keyword arguments}, "
                         "e.g. {'2:4': {'nm': (2, 4)}}.")
    work = copy.deepcopy(model)
    results = {}
    for label, kwargs in tqdm(configs.items(), desc="pruned perplexity", disable=not progress):
        apply_masks_(work, pruning_masks(model, norms=norms, **kwargs), source=model)
        results[label] = perplexity(work, blocks, batch_size=batch_size, progress=False)
    del work
    return results


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


# --------------------------------------------------------------------------- sparse storage on CPU


@torch.no_grad()
def csr_comparison(weight: torch.Tensor, sparsities=(0.5, 0.9), tokens: int = 128,
                   min_run_time: float = 0.2) -> list[dict]:
    """Does a sparse format make an unstructured-pruned layer smaller or faster on this CPU?

    For each sparsity, ``weight`` (``[out, in]``) is magnitude-pruned and ``W @ X`` (X: ``[in,
    tokens]``) is timed with ``torch.utils.benchmark`` for the dense matrix and for its CSR form
    (``Tensor.to_sparse_csr``). Bytes: dense ``out * in * element_size``; CSR stores the values,
    one int64 column index per non-zero and ``out + 1`` int64 row pointers.
    Returns rows ``{"sparsity", "dense_ms", "csr_ms", "dense_MB", "csr_MB"}``.
    """
    from torch.utils.benchmark import Timer

    if weight.ndim != 2:
        raise ValueError(f"weight must be [out, in], got shape {tuple(weight.shape)}.")
    x = torch.randn(weight.shape[1], tokens, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    rows = []
    for sparsity in sparsities:
        w = (weight.detach() * magnitude_mask(weight, sparsity)).contiguous()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
            csr = w.to_sparse_csr()
        timings = {}
        for label, matrix in (("dense", w), ("csr", csr)):
            timer = Timer("m @ x", globals={"m": matrix, "x": x}, num_threads=torch.get_num_threads())
            timings[label] = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
        csr_bytes = sum(t.numel() * t.element_size() for t in (csr.values(), csr.col_indices(), csr.crow_indices()))
        rows.append({"sparsity": sparsity, "dense_ms": timings["dense"], "csr_ms": timings["csr"],
                     "dense_MB": w.numel() * w.element_size() / 1e6, "csr_MB": csr_bytes / 1e6})
    return rows


# --------------------------------------------------------------------------- 2:4 sparse kernels (GPU)


def semi_structured_support(device: str | torch.device | None = None) -> tuple[bool, str]:
    """Can ``torch.sparse.to_sparse_semi_structured`` run here? Returns ``(ok, reason)``.

    The 2:4 sparse tensor-core kernels (cuSPARSELt or CUTLASS) need a CUDA GPU of compute
    capability 8.0 or newer (Ampere: A100, RTX 30xx, L4...). A CPU has none, and Colab's T4
    (capability 7.5) predates them.
    """
    from .device import pick_device

    device = pick_device(device)
    if device.type != "cuda":
        return False, f"2:4 sparse kernels need a CUDA GPU; this run uses {device.type}."
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, (f"2:4 sparse kernels need compute capability >= 8.0 (Ampere or newer); "
                       f"{torch.cuda.get_device_name(device)} has {major}.{minor}.")
    return True, f"{torch.cuda.get_device_name(device)} (capability {major}.{minor}) has 2:4 sparse kernels."


@torch.no_grad()
def semi_structured_benchmark(shapes=((1536, 576), (576, 1536), (11008, 4096)), tokens: int = 4096,
                              repeats: int = 20, device: str | torch.device | None = None) -> list[dict]:
    """Time ``x @ W.T`` with a dense 2:4-pruned fp16 weight against the same weight converted by
    ``torch.sparse.to_sparse_semi_structured``, for each ``(out, in)`` shape, ``tokens`` rows of x.

    Returns rows ``{"shape", "dense_ms", "sparse_ms", "speedup", "max_abs_diff"}`` (median of
    ``repeats`` after a warm-up). The default shapes are SmolLM2's MLP and a LLaMA-7B MLP.

    Raises:
        ValueError: no GPU with 2:4 kernels here (see :func:`semi_structured_support`).
    """
    from torch.sparse import to_sparse_semi_structured

    from .device import pick_device

    ok, reason = semi_structured_support(device)
    if not ok:
        raise ValueError(f"Cannot run the 2:4 sparse benchmark: {reason}")
    device = pick_device(device)
    rows = []
    for out_features, in_features in shapes:
        weight = torch.randn(out_features, in_features, dtype=torch.float16, device=device)
        weight = weight * nm_mask(weight.abs(), 2, 4)
        x = torch.randn(tokens, in_features, dtype=torch.float16, device=device)
        sparse = to_sparse_semi_structured(weight)
        times = {}
        for label, w in (("dense", weight), ("sparse", sparse)):
            torch.nn.functional.linear(x, w)  # warm-up
            samples = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.nn.functional.linear(x, w)
                end.record()
                torch.cuda.synchronize(device)
                samples.append(start.elapsed_time(end))
            times[label] = sorted(samples)[len(samples) // 2]
        diff = (torch.nn.functional.linear(x, sparse) - torch.nn.functional.linear(x, weight)).abs().max().item()
        rows.append({"shape": (out_features, in_features), "dense_ms": times["dense"], "sparse_ms": times["sparse"],
                     "speedup": times["dense"] / times["sparse"], "max_abs_diff": diff})
    return rows


# --------------------------------------------------------------------------- explorer


@torch.no_grad()
def explorer_view(work: nn.Module, model: nn.Module, tokenizer, blocks: torch.Tensor, sparsity: float,
                  method: dict, norms: dict[str, torch.Tensor] | None = None,
                  prompt: str = "The three most important ideas in computer science are",
                  sample_tokens: int = 16, batch_size: int = 8) -> dict:
    """Prune ``work`` in place from ``model``'s weights (``method``: :func:`pruning_masks` keyword
    arguments) and return ``{"perplexity", "layer_sparsity", "sample"}`` (a greedy continuation
    of ``prompt``). ``model`` is not changed; ``work`` must be a copy of it.
    """
    from .metrics import perplexity

    apply_masks_(work, pruning_masks(model, sparsity, norms=norms, **method), source=model)
    enc = tokenizer(prompt, return_tensors="pt").to(model_device(work))
    out = work.generate(**enc, max_new_tokens=sample_tokens, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)
    return {"perplexity": perplexity(work, blocks, batch_size=batch_size, progress=False),
            "layer_sparsity": layer_sparsity(work),
            "sample": tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)}


def plot_layer_sparsity(sparsity_by_layer: dict[str, float], ax=None):
    """One line per projection type (q_proj, gate_proj...): sparsity against decoder layer index."""
    import re

    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    lines: dict[str, list[tuple[int, float]]] = {}
    for name, value in sparsity_by_layer.items():
        match = re.search(r"\.(\d+)\.(?:.*\.)?([^.]+)$", name)
        if match:
            lines.setdefault(match.group(2), []).append((int(match.group(1)), value))
    for kind, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker=".", label=kind)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("weights pruned (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4)
    return ax


def pruning_explorer(model: nn.Module, tokenizer, blocks: torch.Tensor, methods: dict[str, dict],
                     norms: dict[str, torch.Tensor] | None = None, sparsity: float = 0.5,
                     sample_tokens: int = 16, batch_size: int = 8):
    """An ipywidgets explorer: a sparsity slider and a method choice; each change prunes a working
    copy of ``model`` and shows perplexity on ``blocks``, the per-layer sparsity plot and a sample
    generation. The first view is computed when it is built (so it also runs non-interactively).
    ``model`` is not changed. Returns the widget; ``widget.last_view`` holds the latest view.
    """
    import copy

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    check_sparsity(sparsity)
    if not methods:
        raise ValueError("methods is empty: give at least one {label: pruning_masks keyword arguments}.")
    work = copy.deepcopy(model)
    slider = widgets.FloatSlider(value=sparsity, min=0.0, max=0.9, step=0.05, description="sparsity",
                                 continuous_update=False, readout_format=".0%")
    choice = widgets.Dropdown(options=list(methods), description="criterion")
    output = widgets.Output()
    box = widgets.VBox([widgets.HBox([slider, choice]), output])

    def show(_=None):
        view = explorer_view(work, model, tokenizer, blocks, slider.value, methods[choice.value], norms,
                             sample_tokens=sample_tokens, batch_size=batch_size)
        box.last_view = view
        with output:
            output.clear_output(wait=True)
            print(f"{choice.value} at {slider.value:.0%}: perplexity {view['perplexity']:.2f}")
            print(f"sample: {view['sample']!r}")
            fig, ax = plt.subplots(figsize=(8, 3))
            plot_layer_sparsity(view["layer_sparsity"], ax)
            display(fig)
            plt.close(fig)

    slider.observe(show, names="value")
    choice.observe(show, names="value")
    show()
    return box
