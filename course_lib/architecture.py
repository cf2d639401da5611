"""Anatomy of a decoder config: where the parameters and the key/value-cache bytes go.

Parameter counts from the config alone (no model built), for Llama-style configs (``LlamaConfig``:
SmolLM2, with grouped-query attention) and ``GPT2Config``. With ``V`` the vocabulary, ``d`` the
hidden size, ``L`` the layers, ``H`` query heads, ``K`` key/value heads, ``h`` the head size
(``d / H`` unless set), ``f`` the MLP size:

Llama, per layer::

    attention = d*H*h (q) + 2*d*K*h (k, v) + H*h*d (o)     (+ H*h + 2*K*h + d biases if attention_bias)
    mlp       = 3*d*f (gate, up, down)                     (+ 2*f + d biases if mlp_bias)
    norms     = 2*d (two RMSNorm weights)
    total     = V*d (embedding) + L*(attention + mlp + norms) + d (final norm) + [V*d if not tied]

GPT-2, per layer (``f = n_inner or 4d``, ``P`` positions, every linear layer has a bias)::

    attention = d*3d + 3d (c_attn) + d*d + d (c_proj);  mlp = d*f + f + f*d + d;  norms = 2*2d
    total     = V*d + P*d + L*(attention + mlp + norms) + 2d (ln_f) + [V*d if not tied]

Key/value cache per generated token: ``2 (K and V) * L * K * h * bytes_per_value``; with full
multi-head attention K = H, so grouped-query attention saves the factor H / K.

:func:`equal_budget_configs` builds deep-and-thin vs shallow-and-wide configs of (nearly) the same
parameter count, for the depth-versus-width experiment.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch

from .device import model_device, pick_device
from .layers import model_family

__all__ = ["SIZES", "ParameterBreakdown", "head_dim", "kv_heads", "parameter_breakdown", "measured_breakdown",
           "kv_cache_bytes_per_token", "measured_kv_cache_bytes", "describe_config", "scaled_config",
           "equal_budget_configs", "smaller_config", "model_from_config"]

SIZES = {
    # Chapter 06's own settings: depths of the equal-budget configurations (timed side by side with
    # the profile's timing_repeats rounds); validation blocks and layer counts of the layer-removal
    # sweep; healing steps, batch size and learning rate. The number of layers removed before
    # healing is chapter 04's depth student's, ``course_lib.distillation.SIZES[...]["remove_layers"]``
    # (read from there, not repeated here; the MLP width cut then removes as many parameters).
    #
    # gpu estimate (Colab T4, assumed 5 TFLOP/s sustained in fp32; FLOPs = 6 x params x tokens per
    # training step, 2 x params x tokens per forward pass): healing a ~81 M-parameter student
    # (15 of 30 layers removed, or the same count of MLP neurons) with the 134.5 M teacher's forward
    # pass, batch 16 x 128 = 2,048 tokens: (6 x 81 M + 2 x 134.5 M) x 2,048 = 1.55 TFLOP = 0.31 s a
    # step; two models x 1,000 steps = 10.3 min. The sweep (7 k x 3 strategies x 64 blocks) and the
    # speed table take about a minute more: about 13 min in all. Memory: student weights, gradients
    # and two AdamW states 16 B x 81 M = 1.3 GB, teacher 0.54 GB, logits 16 x 128 x 49,152 x 4 B =
    # 0.4 GB a copy (a few copies): under 5 GB of the T4's 15 GB.
    "smoke": {"depths": [6, 30], "sweep_blocks": 2, "sweep_k": [2, 6],
              "heal_steps": 2, "heal_batch_size": 2, "heal_lr": 2e-4},
    "cpu": {"depths": [6, 12, 30, 60], "sweep_blocks": 16, "sweep_k": [2, 4, 6, 8, 10],
            "heal_steps": 16, "heal_batch_size": 4, "heal_lr": 2e-4},
    "gpu": {"depths": [6, 12, 30, 60], "sweep_blocks": 64, "sweep_k": [1, 2, 4, 6, 8, 10, 12],
            "heal_steps": 1000, "heal_batch_size": 16, "heal_lr": 1e-4},
}


@dataclass(frozen=True)
class ParameterBreakdown:
    """Parameters by part. ``lm_head`` is 0 when the output layer is tied to the embedding."""

    embedding: int
    positions: int
    attention: int
    mlp: int
    norms: int
    lm_head: int

    @property
    def total(self) -> int:
        return self.embedding + self.positions + self.attention + self.mlp + self.norms + self.lm_head

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def head_dim(config) -> int:
    """Size of one attention head: ``config.head_dim`` if set, else ``hidden_size / num_attention_heads``."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else config.hidden_size // config.num_attention_heads


def kv_heads(config) -> int:
    """Key/value heads: ``num_key_value_heads`` (grouped-query attention), else the query heads."""
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def parameter_breakdown(config) -> ParameterBreakdown:
    """Parameter count by part, from the config alone (formulas in the module docstring)."""
    kind = model_family(config)
    d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    tied = bool(getattr(config, "tie_word_embeddings", True))
    if kind == "gpt2":
        f = config.n_inner or 4 * d
        attention = L * (d * 3 * d + 3 * d + d * d + d)
        mlp = L * (d * f + f + f * d + d)
        norms = L * 4 * d + 2 * d
        return ParameterBreakdown(V * d, config.n_positions * d, attention, mlp, norms, 0 if tied else V * d)
    H, K, h, f = config.num_attention_heads, kv_heads(config), head_dim(config), config.intermediate_size
    attention = d * H * h + 2 * d * K * h + H * h * d
    if getattr(config, "attention_bias", False):
        attention += H * h + 2 * K * h + d
    mlp = 3 * d * f + ((2 * f + d) if getattr(config, "mlp_bias", False) else 0)
    return ParameterBreakdown(V * d, 0, L * attention, L * mlp, L * 2 * d + d, 0 if tied else V * d)


def measured_breakdown(model) -> ParameterBreakdown:
    """The same parts counted from a model's real tensors (shared tensors once), by parameter name."""
    parts = dict(embedding=0, positions=0, attention=0, mlp=0, norms=0, lm_head=0)
    for name, p in model.named_parameters():  # named_parameters lists a tied tensor once
        if "embed_tokens" in name or ".wte." in name:
            key = "embedding"
        elif ".wpe." in name:
            key = "positions"
        elif "lm_head" in name:
            key = "lm_head"
        elif "norm" in name or ".ln_" in name:
            key = "norms"
        elif "self_attn" in name or ".attn." in name:
            key = "attention"
        elif "mlp" in name:
            key = "mlp"
        else:
            raise ValueError(f"Parameter {name!r} belongs to no known part (embedding, attention, mlp, "
                             "norms, lm_head); this helper knows Llama and GPT-2 names.")
        parts[key] += p.numel()
    return ParameterBreakdown(**parts)


def kv_cache_bytes_per_token(config, bytes_per_value: int = 2, num_kv_heads: int | None = None) -> int:
    """Key/value-cache bytes per token: ``2 * layers * kv_heads * head_dim * bytes_per_value``.

    ``num_kv_heads`` overrides the config's (pass ``config.num_attention_heads`` for what full
    multi-head attention would need). ``bytes_per_value``: 2 for fp16/bf16, 4 for fp32.
    """
    if bytes_per_value <= 0:
        raise ValueError(f"bytes_per_value must be positive, got {bytes_per_value}.")
    model_family(config)
    heads = kv_heads(config) if num_kv_heads is None else num_kv_heads
    if heads < 1:
        raise ValueError(f"num_kv_heads must be at least 1, got {heads}.")
    return 2 * config.num_hidden_layers * heads * head_dim(config) * bytes_per_value


@torch.no_grad()
def measured_kv_cache_bytes(model, n_tokens: int = 16) -> int:
    """Bytes of the key/value cache after one forward pass over ``n_tokens`` tokens (real tensors):
    the sum of ``numel * element_size`` of every layer's keys and values.

    The cache is read from the output's ``cache`` field (transformers >= 5.24; its old name
    ``past_key_values`` is deprecated and warns) and from ``past_key_values`` only on versions
    whose outputs have no ``cache`` field. The token ids are created on the model's device.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}.")
    ids = torch.zeros(1, n_tokens, dtype=torch.long, device=model_device(model))
    output = model(input_ids=ids, use_cache=True)
    cache = output.cache if "cache" in output else output.past_key_values
    if cache is None:
        raise ValueError(f"{type(model).__name__} returned no key/value cache for use_cache=True.")
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            total += t.numel() * t.element_size()
    return total


def describe_config(config) -> dict:
    """The shape of a config in one row: layers, hidden, heads, kv heads, MLP size, parameters."""
    kind = model_family(config)
    mlp = (config.n_inner or 4 * config.hidden_size) if kind == "gpt2" else config.intermediate_size
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
            "heads": config.num_attention_heads, "kv_heads": kv_heads(config), "mlp": mlp,
            "params": parameter_breakdown(config).total}


def scaled_config(config, hidden_size: int, num_layers: int):
    """A Llama config of another width and depth that keeps ``config``'s proportions.

    The head size, the number of query heads per key/value head and the vocabulary stay;
    ``num_attention_heads = hidden_size / head_dim``; the MLP size keeps the ratio
    ``intermediate_size / hidden_size``, rounded to a multiple of 64. Example: SmolLM2's config
    at hidden 192 and 6 layers has 3 query heads, 1 key/value head and an MLP of 512.

    Raises:
        ValueError: not a Llama config, or ``hidden_size`` not a multiple of head_dim x group.
    """
    if model_family(config) != "llama":
        raise ValueError("scaled_config builds Llama-style configs; give a LlamaConfig.")
    h = head_dim(config)
    group = config.num_attention_heads // kv_heads(config)
    if hidden_size < 1 or hidden_size % (h * group) or num_layers < 1:
        raise ValueError(f"hidden_size must be a positive multiple of head_dim x (query heads per key/value "
                         f"head) = {h * group} and num_layers positive; got {hidden_size} and {num_layers}.")
    heads = hidden_size // h
    ratio = config.intermediate_size / config.hidden_size
    return _with(config, hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=heads,
                 num_key_value_heads=heads // group, head_dim=h,
                 intermediate_size=max(64, round(ratio * hidden_size / 64) * 64))


def equal_budget_configs(config, depths: list[int], budget: int | None = None) -> list:
    """Llama configs with the given depths and (nearly) the parameter count ``budget``.

    For each depth ``L``, every hidden size ``d`` that :func:`scaled_config` accepts is tried,
    with the MLP size ``f`` (a multiple of 64) solved so that the total is as close as possible
    to ``budget``; of those, the one whose ratio ``f / d`` is closest to ``config``'s (on a log
    scale) is kept. Head size, heads per key/value head and vocabulary stay those of ``config``.
    Default budget: ``config``'s own parameter count.

    Raises:
        ValueError: not a Llama-style config, a depth below 1, or no width fits the budget.
    """
    if model_family(config) != "llama":
        raise ValueError("equal_budget_configs builds Llama-style configs; give a LlamaConfig.")
    budget = budget or parameter_breakdown(config).total
    step = head_dim(config) * (config.num_attention_heads // kv_heads(config))
    ratio = config.intermediate_size / config.hidden_size
    out = []
    for depth in depths:
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"Depths must be positive integers, got {depth!r}.")
        best, best_score = None, None
        for d in range(step, 16 * config.hidden_size + 1, step):
            trial = scaled_config(config, d, depth)
            per_unit = 3 * d * depth  # parameters per unit of MLP size
            rest = parameter_breakdown(trial).total - per_unit * trial.intermediate_size
            f = round((budget - rest) / per_unit / 64) * 64
            if f < 64:
                continue
            score = abs(math.log(f / d / ratio))
            if best_score is None or score < best_score:
                best, best_score = _with(trial, intermediate_size=f), score
        if best is None:
            raise ValueError(f"No width gives {depth} layers a budget of {budget:,} parameters; "
                             "use fewer layers or a larger budget.")
        out.append(best)
    return out


def _with(config, **changes):
    new = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


def smaller_config(config, **changes):
    """A copy of ``config`` with some fields changed, e.g. ``smaller_config(c, num_hidden_layers=6)``.

    The article's ``BertConfig(num_hidden_layers=6, ...)`` for our causal LM. Raises ValueError on
    a field the config does not have (a typo would otherwise be silently stored).
    """
    unknown = [k for k in changes if not hasattr(config, k)]
    if unknown:
        raise ValueError(f"{type(config).__name__} has no field(s) {unknown}; check the spelling.")
    new = _with(config, **changes)
    if "hidden_size" in changes and "head_dim" not in changes and getattr(new, "head_dim", None):
        new.head_dim = new.hidden_size // new.num_attention_heads
    return new


def model_from_config(config, seed: int = 0, device: str | torch.device | None = None):
    """A freshly initialised causal LM (random weights from ``torch.manual_seed(seed)``, float32,
    eval mode) for ``config``, on ``device``: the course's device
    (:func:`course_lib.device.pick_device`) unless given, so that a student built here trains next
    to a teacher loaded by :func:`course_lib.models.load_model`. The weights are drawn on the CPU
    (the same seed gives the same weights on every device) and then moved."""
    from transformers import AutoModelForCausalLM

    target = pick_device(device)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32).eval().to(target)
