import copy

import matplotlib.pyplot as plt
import pytest
import torch

from course_lib.pruning import global_magnitude_prune_, layer_sparsity
from course_lib.pruning_explorer import explorer_view, plot_layer_sparsity, pruning_explorer, sparsity_grid
from course_lib.tiny_models import tiny_gpt2, tiny_llama


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sparsity_grid_keeps_gpt2s_two_c_proj_apart():
    """GPT-2 has attn.c_proj and mlp.c_proj: grouped by the last name part they were merged."""
    model = global_magnitude_prune_(tiny_gpt2(vocab_size=300), 0.5)
    sparsity = layer_sparsity(model)
    grid = sparsity_grid(sparsity)
    assert sorted(grid.index) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert list(grid.columns) == [0, 1]
    assert grid.loc["attn.c_proj", 1] == pytest.approx(sparsity["transformer.h.1.attn.c_proj"])
    assert grid.loc["mlp.c_proj", 1] == pytest.approx(sparsity["transformer.h.1.mlp.c_proj"])
    ax = plot_layer_sparsity(sparsity)
    assert ax.images[0].get_array().shape == (4, 2)  # one cell per projection and layer: none hidden
    plt.close("all")
    with pytest.raises(ValueError, match="decoder-layer index"):
        sparsity_grid({"lm_head": 0.5})


def test_explorer_view_and_widget(tokenizer):
    model = tiny_llama()  # the course vocabulary, to generate with the real tokenizer
    before = _weights(model)
    blocks = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    work = copy.deepcopy(model)
    view = explorer_view(work, model, tokenizer, blocks, 0.5, {"criterion": "magnitude", "scope": "global"},
                         sample_tokens=3)
    assert view["perplexity"] > 0 and isinstance(view["sample"], str)
    assert sum(view["layer_sparsity"].values()) / len(view["layer_sparsity"]) == pytest.approx(0.5, abs=0.05)
    assert sparsity_grid(view["layer_sparsity"]).shape == (7, 2)  # q, k, v, o, gate, up, down x 2 layers
    widget = pruning_explorer(model, tokenizer, blocks, {"magnitude": {"criterion": "magnitude"}},
                              sparsity=0.3, sample_tokens=2)
    first = widget.last_view["perplexity"]
    slider = widget.children[0].children[0]
    slider.value = 0.8
    assert widget.last_view["perplexity"] != first
    assert widget.status.value.startswith("done in")
    slider.value = 0.3  # cached: the very same view object comes back
    assert widget.last_view["perplexity"] == first
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plt.close("all")
    with pytest.raises(ValueError, match="methods is empty"):
        pruning_explorer(model, tokenizer, blocks, {})
