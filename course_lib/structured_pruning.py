"""Structured pruning: remove whole MLP neurons and attention heads, leaving a smaller dense model.

Unstructured pruning zeroes single weights but keeps every matrix at its full shape, so a dense
matrix multiplication does the same work. Structured pruning deletes whole rows and columns: an
MLP neuron is a row of ``gate_proj``/``up_proj`` (``c_fc`` in GPT-2) and a column of
``down_proj`` (``c_proj``); an attention head is ``head_dim`` rows of ``q_proj`` and columns of
``o_proj``. Every matrix shrinks, so every multiplication does less work, on any hardware.

**Importance of a unit** (a neuron or a head) is the size of what it writes into the residual
stream. A unit owns a set D of input columns of its block's output projection W
(``down_proj``: one column per neuron; ``o_proj``: ``head_dim`` columns per head). With
``||X_d||_2`` the norm of input feature d over all calibration tokens (the Wanda statistic,
:func:`course_lib.wanda.input_norms`)::

    score(unit) = sqrt( sum over d in D of ||X_d||_2^2 * ||W[:, d]||_2^2 )

For a neuron (a single column) this is exactly the L2 norm, over the calibration tokens, of the
neuron's contribution to the block's output; for a head it leaves out the cross terms between
the head's dimensions. The **weight-only** score drops the activations:
``sqrt( sum over d in D of ||W[:, d]||_2^2 )``, the Frobenius norm of the unit's output columns.

Every layer keeps the same number of units, ``n - round(fraction * n)``, so the model's config
still describes it (``intermediate_size``, ``num_attention_heads``...) and it saves and reloads
with ``save_pretrained`` / ``from_pretrained``.

No function here modifies the caller's model: :func:`prune_mlp_neurons` and
:func:`prune_attention_heads` return a new model (a deep copy with smaller layers and an updated
config).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import conv1d_type, decoder_layers, linear_weight
from .pruning import check_sparsity, n_to_prune
from .wanda import input_norms

__all__ = ["HEAD_UNITS", "mlp_neuron_scores", "mlp_weight_scores", "attention_head_scores",
           "attention_head_weight_scores", "prune_mlp_neurons", "prune_attention_heads"]

# (input projections, output projection, config attribute holding the width) per MLP family
_MLP_LAYOUTS = (
    (("gate_proj", "up_proj"), "down_proj", "intermediate_size"),  # Llama, Mistral, Qwen2...
    (("c_fc",), "c_proj", "n_inner"),  # GPT-2 (Conv1D)
)
HEAD_UNITS = ("query_heads", "kv_groups")


# --------------------------------------------------------------------------- finding the parts


def _mlp_layout(layer: nn.Module) -> tuple[nn.Module, tuple[str, ...], str, str]:
    mlp = getattr(layer, "mlp", None)
    for inputs, output, config_key in _MLP_LAYOUTS:
        if mlp is not None and all(hasattr(mlp, a) for a in (*inputs, output)):
            return mlp, inputs, output, config_key
    raise ValueError(
        f"{type(layer).__name__} has no MLP this module knows: expected mlp.gate_proj/up_proj/"
        "down_proj (Llama) or mlp.c_fc/c_proj (GPT-2)."
    )


def _attention(layer: nn.Module) -> nn.Module:
    attn = getattr(layer, "self_attn", None)
    if attn is not None and all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return attn
    if hasattr(getattr(layer, "attn", None), "c_attn"):
        raise ValueError(
            "Attention-head pruning supports Llama-style attention (q_proj, k_proj, v_proj, o_proj) "
            "only. GPT-2's config derives the head size from n_embd / n_head, so a GPT-2 with fewer "
            "heads of the same size cannot be described by its config (and transformers 5 removed "
            "GPT-2's prune_heads). Prune MLP neurons with prune_mlp_neurons instead."
        )
    raise ValueError(f"{type(layer).__name__} has no Llama-style self_attn (q_proj, k_proj, v_proj, o_proj).")


def _head_shape(model: nn.Module) -> tuple[int, int, int]:
    """(query heads, key-value heads, head_dim) from the config."""
    config = model.config
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, head_dim


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {module: name for name, module in model.named_modules()}


def _check_float(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        packed = hasattr(p, "quant_state") or hasattr(p, "SCB") or hasattr(p, "tensor_impl")  # bnb, torchao
        if not p.is_floating_point() or packed:
            raise ValueError(f"Parameter {name} is quantized ({type(p).__name__}, {p.dtype}); structured "
                             "pruning needs a floating-point model. Prune first, quantize afterwards.")


# --------------------------------------------------------------------------- scores


def _unit_scores(weight_out_in: torch.Tensor, unit_size: int, norms: torch.Tensor | None) -> torch.Tensor:
    """sqrt( sum over a unit's columns d of ||X_d||^2 * ||W[:, d]||^2 ), units of ``unit_size`` columns."""
    col = weight_out_in.detach().float().pow(2).sum(0)
    if norms is not None:
        col = col * norms.to(col.device).float().pow(2)
    return col.view(-1, unit_size).sum(1).sqrt()


def _output_norms(model: nn.Module, outputs: dict[str, nn.Module], calib_blocks, batch_size: int,
                  progress: bool, norms: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Input norms of the output projections, measured now or looked up in precomputed ``norms``."""
    if norms is None:
        if calib_blocks is None:
            raise ValueError("Give calib_blocks (token blocks of calibration text) or precomputed norms.")
        return input_norms(model, calib_blocks, modules=outputs, batch_size=batch_size, progress=progress)
    missing = [name for name in outputs if name not in norms]
    if missing:
        raise ValueError(f"norms has no entry for {missing[0]}; compute it with input_norms(model, calib_blocks).")
    return {name: norms[name] for name in outputs}


def mlp_neuron_scores(model: nn.Module, calib_blocks: torch.Tensor | None, batch_size: int = 8,
                      progress: bool = True, norms: dict[str, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Importance of every MLP neuron, per decoder layer, from calibration text.

    ``score_j = ||a_j||_2 * ||W_down[:, j]||_2``, where ``a_j`` is neuron j's activation (the input
    of ``down_proj`` / ``c_proj``) over all calibration tokens: the L2 norm of the neuron's
    contribution to the block's output. Returns ``{layer index: tensor [intermediate_size]}``.

    Args:
        norms: input norms already measured by :func:`course_lib.wanda.input_norms` on this
            model (keyed by module name); then ``calib_blocks`` is not read again.
    """
    names, outputs = _module_names(model), {}
    for layer in decoder_layers(model):
        mlp, _, output, _ = _mlp_layout(layer)
        outputs[names[getattr(mlp, output)]] = getattr(mlp, output)
    found = _output_norms(model, outputs, calib_blocks, batch_size, progress, norms)
    return {i: _unit_scores(linear_weight(module), 1, found[name]) for i, (name, module) in enumerate(outputs.items())}


def mlp_weight_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Weight-only importance of every MLP neuron: ``score_j = ||W_down[:, j]||_2``."""
    scores = {}
    for i, layer in enumerate(decoder_layers(model)):
        mlp, _, output, _ = _mlp_layout(layer)
        scores[i] = _unit_scores(linear_weight(getattr(mlp, output)), 1, None)
    return scores


def attention_head_scores(model: nn.Module, calib_blocks: torch.Tensor | None, batch_size: int = 8,
                          progress: bool = True, norms: dict[str, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Importance of every query head, per decoder layer, from calibration text.

    ``score_h = sqrt( sum over the head's head_dim input columns d of o_proj of ||X_d||^2 ||W_o[:, d]||^2 )``.
    Returns ``{layer index: tensor [num_attention_heads]}``. Llama-style attention only.
    ``norms``: as in :func:`mlp_neuron_scores`.
    """
    _, _, head_dim = _head_shape(model)
    names, outputs = _module_names(model), {}
    for layer in decoder_layers(model):
        o_proj = _attention(layer).o_proj
        outputs[names[o_proj]] = o_proj
    found = _output_norms(model, outputs, calib_blocks, batch_size, progress, norms)
    return {i: _unit_scores(linear_weight(module), head_dim, found[name])
            for i, (name, module) in enumerate(outputs.items())}


def attention_head_weight_scores(model: nn.Module) -> dict[int, torch.Tensor]:
    """Weight-only importance of every query head: the Frobenius norm of its ``o_proj`` columns."""
    _, _, head_dim = _head_shape(model)
    return {i: _unit_scores(linear_weight(_attention(layer).o_proj), head_dim, None)
            for i, layer in enumerate(decoder_layers(model))}


# --------------------------------------------------------------------------- surgery


def _sliced(module: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Module:
    """A new layer of the same kind keeping output features ``rows`` and input features ``cols``."""
    weight = linear_weight(module).detach()
    bias = module.bias.detach() if module.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    out_features, in_features = weight.shape
    requires_grad = module.weight.requires_grad
    if isinstance(module, conv1d_type()):
        new = conv1d_type()(out_features, in_features)
        new.weight = nn.Parameter(weight.T.contiguous().clone(), requires_grad=requires_grad)
    else:
        new = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        new.weight = nn.Parameter(weight.contiguous().clone(), requires_grad=requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.clone(), requires_grad=module.bias.requires_grad)
    return new.to(device=weight.device, dtype=weight.dtype)


def _keep(n: int, fraction: float, what: str) -> int:
    keep = n - n_to_prune(n, fraction)
    if keep < 1:
        raise ValueError(f"Removing a fraction {fraction} of {n} {what} leaves none; use a smaller fraction.")
    return keep


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, in their original order."""
    return torch.topk(scores.float(), k).indices.sort().values


def _checked_scores(scores: dict[int, torch.Tensor], n_layers: int, width: int, what: str) -> None:
    missing = [i for i in range(n_layers) if i not in scores]
    if missing:
        raise ValueError(f"scores has no entry for decoder layer(s) {missing}; give one tensor per layer.")
    for i in range(n_layers):
        if tuple(scores[i].shape) != (width,):
            raise ValueError(f"scores[{i}] has shape {tuple(scores[i].shape)}; expected ({width},), one per {what}.")


def prune_mlp_neurons(model: nn.Module, fraction: float,
                      scores: dict[int, torch.Tensor] | None = None) -> nn.Module:
    """A new, smaller dense model without the lowest-scoring ``fraction`` of every MLP's neurons.

    Every decoder layer keeps its ``n - round(fraction * n)`` highest-scoring neurons (the rows of
    ``gate_proj``/``up_proj`` or ``c_fc`` and the columns of ``down_proj`` or ``c_proj``), and the
    config's ``intermediate_size`` (GPT-2: ``n_inner``) is updated, so the result saves and
    reloads with ``save_pretrained``. The caller's model is not modified.

    Args:
        scores: ``{layer index: tensor [intermediate_size]}`` (:func:`mlp_neuron_scores`);
            None uses :func:`mlp_weight_scores`.

    Raises:
        ValueError: ``fraction`` outside [0, 1) or removing every neuron; scores of the wrong
            shape; layers of different widths; a quantized model.
    """
    fraction = check_sparsity(fraction, "fraction")
    _check_float(model)
    layers = decoder_layers(model)
    widths = {linear_weight(getattr(m, out)).shape[1] for m, _, out, _ in map(_mlp_layout, layers)}
    if len(widths) != 1:
        raise ValueError(f"The decoder layers have MLPs of different widths {sorted(widths)}; this "
                         "function keeps the same number of neurons in every layer.")
    width = widths.pop()
    scores = mlp_weight_scores(model) if scores is None else scores
    _checked_scores(scores, len(layers), width, "MLP neuron")
    keep = _keep(width, fraction, "MLP neurons")
    new = copy.deepcopy(model)
    for i, layer in enumerate(decoder_layers(new)):
        mlp, inputs, output, config_key = _mlp_layout(layer)
        idx = _top(scores[i], keep).to(linear_weight(getattr(mlp, output)).device)
        for name in inputs:
            setattr(mlp, name, _sliced(getattr(mlp, name), rows=idx))
        setattr(mlp, output, _sliced(getattr(mlp, output), cols=idx))
    setattr(new.config, config_key, keep)
    return new


def prune_attention_heads(model: nn.Module, fraction: float, scores: dict[int, torch.Tensor] | None = None,
                          unit: str = "query_heads") -> nn.Module:
    """A new, smaller dense model without the lowest-scoring attention heads of every layer.

    Grouped-query attention (GQA) shares each key-value head among a group of
    ``G = num_attention_heads / num_key_value_heads`` consecutive query heads, and the model
    pairs query head h with key-value head ``h // G``. Two ways keep that valid:

    * ``unit="query_heads"`` (default): remove the same number, ``round(fraction * G)``, of the
      lowest-scoring query heads **from every group**; keys and values stay. SmolLM2 (G = 3)
      can lose 1 or 2 query heads per group.
    * ``unit="kv_groups"``: remove ``round(fraction * num_key_value_heads)`` whole groups: their
      key and value heads and all their query heads. A group's score is
      ``sqrt(sum of its query heads' squared scores)``.

    Removed query heads take their ``q_proj`` rows and ``o_proj`` columns with them; the config's
    ``num_attention_heads``/``num_key_value_heads`` are updated and ``head_dim`` is written
    explicitly. Llama-style attention only (GPT-2 raises, see :func:`_attention`). The caller's
    model is not modified.

    Args:
        scores: ``{layer index: tensor [num_attention_heads]}`` (:func:`attention_head_scores`);
            None uses :func:`attention_head_weight_scores`.

    Raises:
        ValueError: ``fraction`` outside [0, 1) or removing every head of a group, an unknown
            ``unit``, scores of the wrong shape, a quantized or GPT-2 model.
    """
    fraction = check_sparsity(fraction, "fraction")
    if unit not in HEAD_UNITS:
        raise ValueError(f"unit must be one of {HEAD_UNITS}, got {unit!r}.")
    _check_float(model)
    layers = decoder_layers(model)
    for layer in layers:
        _attention(layer)
    heads, kv, head_dim = _head_shape(model)
    group = heads // kv
    scores = attention_head_weight_scores(model) if scores is None else scores
    _checked_scores(scores, len(layers), heads, "query head")
    if unit == "query_heads":
        keep_per_group, keep_groups = _keep(group, fraction, "query heads per key-value group"), kv
    else:
        keep_per_group, keep_groups = group, _keep(kv, fraction, "key-value groups")
    new = copy.deepcopy(model)
    for i, layer in enumerate(decoder_layers(new)):
        attn = _attention(layer)
        by_group = scores[i].detach().float().cpu().view(kv, group)  # index bookkeeping on the CPU
        if unit == "query_heads":
            groups = torch.arange(kv)
            kept = [g * group + _top(by_group[g], keep_per_group) for g in groups.tolist()]
        else:
            groups = _top(by_group.pow(2).sum(1).sqrt(), keep_groups)
            kept = [g * group + torch.arange(group) for g in groups.tolist()]
        head_idx = torch.cat(kept)
        q_rows = (head_idx[:, None] * head_dim + torch.arange(head_dim)).flatten()
        kv_rows = (groups[:, None] * head_dim + torch.arange(head_dim)).flatten()
        device = attn.q_proj.weight.device
        attn.q_proj = _sliced(attn.q_proj, rows=q_rows.to(device))
        attn.k_proj = _sliced(attn.k_proj, rows=kv_rows.to(device))
        attn.v_proj = _sliced(attn.v_proj, rows=kv_rows.to(device))
        attn.o_proj = _sliced(attn.o_proj, cols=q_rows.to(device))
        attn.num_key_value_groups = keep_per_group
    new.config.num_attention_heads = keep_groups * keep_per_group
    new.config.num_key_value_heads = keep_groups
    new.config.head_dim = head_dim
    return new

