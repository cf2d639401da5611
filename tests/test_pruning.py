import copy

import pytest
import torch
from torch.nn.utils import prune

from course_lib.layers import linear_layers, linear_weight
from course_lib.pruning import (CRITERIA, SCOPES, SIZES, apply_masks_, check_nm, check_sparsity,
                                global_magnitude_prune_, layer_sparsity, magnitude_mask, masked_perplexities,
                                make_pruning_permanent_, n_to_prune, nm_mask, prunable_layers,
                                prune_with_torch_, pruned_copy, pruning_masks, score_mask, sparsity_sweep,
                                torch_masks, wanda_scores)
from course_lib.wanda import input_norms
from course_lib.profiles import sizes_for
from course_lib.tiny_models import tiny_gpt2, tiny_llama

VOCAB = 300


def _blocks(n=4, length=16, seed=0):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sizes_table_is_complete():
    for profile in ("smoke", "cpu", "gpu"):
        sizes = sizes_for(SIZES, profile)
        assert all(0 < s < 1 for s in sizes.sweep_sparsities) and sizes.recovery_steps >= 1
        assert 0.5 in sizes.sweep_sparsities  # the lesson compares N:M with the 50 % point
        assert 1 <= sizes.sequential_calib_blocks <= 133 and sizes.explorer_blocks <= sizes.sweep_blocks
    assert CRITERIA == ("magnitude", "wanda") and SCOPES == ("layer", "row", "global")


def test_sparsity_checks():
    assert check_sparsity(0) == 0.0 and check_sparsity(0.5) == 0.5
    for bad in (-0.01, 1, 1.2, "half", None):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            check_sparsity(bad)
    assert n_to_prune(10, 0.25) == round(2.5) and n_to_prune(7, 0.5) == 4 and n_to_prune(5, 0) == 0
    assert check_nm(2, 4) == (2, 4)
    for n, m in ((4, 4), (5, 4), (0, 4), (2.0, 4)):
        with pytest.raises(ValueError, match="N"):
            check_nm(n, m)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7])
def test_magnitude_mask_matches_torch_prune_and_is_exact(sparsity):
    weight = torch.randn(12, 20, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(weight, sparsity)
    assert mask.dtype == torch.bool
    assert (~mask).sum() == round(sparsity * 240)
    layer = torch.nn.Linear(20, 12)
    with torch.no_grad():
        layer.weight.copy_(weight)
    prune.l1_unstructured(layer, name="weight", amount=sparsity)
    assert torch.equal(mask, layer.weight_mask.bool())
    # the pruned weights are the smallest ones
    if sparsity:
        assert weight.abs()[~mask].max() <= weight.abs()[mask].min()


def test_row_scope_prunes_every_row_equally():
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    mask = magnitude_mask(weight, 0.4, scope="row")
    assert ((~mask).sum(1) == 4).all()
    with pytest.raises(ValueError, match="scope"):
        score_mask(weight, 0.5, scope="global")
    with pytest.raises(ValueError, match="2-D"):
        score_mask(weight.flatten(), 0.5)


def test_wanda_scores_and_mask():
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]])
    norms = torch.tensor([10.0, 1.0, 0.1])
    scores = wanda_scores(weight, norms)
    assert torch.allclose(scores, torch.tensor([[10.0, 2.0, 0.3], [40.0, 5.0, 0.05]]))
    # magnitude would prune column 0 of row 0; Wanda keeps it because its input is large
    assert score_mask(scores, 1 / 3, scope="row").tolist() == [[True, True, False], [True, True, False]]
    assert magnitude_mask(weight, 1 / 3, scope="row").tolist() == [[False, True, True], [True, True, False]]
    with pytest.raises(ValueError, match="one entry per input"):
        wanda_scores(weight, torch.ones(2))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_n_in_every_group(n, m):
    scores = torch.rand(5, 16, generator=torch.Generator().manual_seed(3))
    mask = nm_mask(scores, n, m)
    groups = mask.view(5, -1, m)
    assert (groups.sum(-1) == n).all()
    kept_min = torch.where(groups, scores.view(5, -1, m), torch.inf).amin(-1)
    pruned_max = torch.where(~groups, scores.view(5, -1, m), -torch.inf).amax(-1)
    assert (kept_min >= pruned_max).all()
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(torch.rand(2, 6), 2, 4)
    with pytest.raises(ValueError, match="0 < N < M"):
        nm_mask(scores, 4, 4)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_pruning_masks_scopes_and_patterns(make):
    model = make(vocab_size=VOCAB)
    before = _weights(model)
    layers = prunable_layers(model)
    assert not any("lm_head" in name for name in layers)
    total = sum(linear_weight(m).numel() for m in layers.values())
    for scope in ("layer", "row", "global"):
        masks = pruning_masks(model, 0.5, scope=scope)
        assert set(masks) == set(layers)
        pruned = sum(int((~mk).sum()) for mk in masks.values())
        if scope == "global":
            assert pruned == round(0.5 * total)
        else:
            assert all((~mk).float().mean().item() == pytest.approx(0.5, abs=0.02) for mk in masks.values())
    nm = pruning_masks(model, nm=(2, 4), criterion="wanda", norms=input_norms(model, _blocks(), progress=False))
    assert all(mk.float().mean() == 0.5 for mk in nm.values())
    mlp_only = pruning_masks(model, 0.5, include=("mlp",))
    assert mlp_only and all("mlp" in name for name in mlp_only)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_pruning_masks_bad_input():
    model = tiny_llama(vocab_size=VOCAB)
    with pytest.raises(ValueError, match="exactly one"):
        pruning_masks(model)
    with pytest.raises(ValueError, match="exactly one"):
        pruning_masks(model, 0.5, nm=(2, 4))
    with pytest.raises(ValueError, match="input_norms"):
        pruning_masks(model, 0.5, criterion="wanda")
    with pytest.raises(ValueError, match="criterion"):
        pruning_masks(model, 0.5, criterion="random")
    with pytest.raises(ValueError, match="scope"):
        pruning_masks(model, 0.5, scope="column")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pruning_masks(model, 1.0)
    with pytest.raises(ValueError, match="0 < N < M"):
        pruning_masks(model, nm=(4, 2))
    with pytest.raises(ValueError, match="no linear layers"):
        pruning_masks(torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.LayerNorm(4)), 0.5)
    with pytest.raises(ValueError, match="No linear layer"):
        prunable_layers(model, include=("conv",))


def test_wanda_beats_magnitude_when_inputs_differ_in_scale():
    model = tiny_llama(vocab_size=VOCAB)
    with torch.no_grad():  # input 0 of down_proj: huge activations, small weights. Wanda keeps it.
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[0] *= 1000
            layer.mlp.down_proj.weight[:, 0] *= 0.1
    norms = input_norms(model, _blocks(), progress=False)
    wanda = pruning_masks(model, 0.5, criterion="wanda", norms=norms)
    name = "model.layers.0.mlp.down_proj"
    assert wanda[name][:, 0].all()
    assert not pruning_masks(model, 0.5, criterion="magnitude")[name][:, 0].all()


def test_copies_and_in_place_application():
    model = tiny_gpt2(vocab_size=VOCAB)  # Conv1D: masks are [out, in], weights stored [in, out]
    before = _weights(model)
    masks = pruning_masks(model, 0.5, scope="layer")
    pruned = pruned_copy(model, masks)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    sparsity = layer_sparsity(pruned)
    assert all(v == pytest.approx(0.5, abs=1e-3) for v in sparsity.values())
    assert all(v == 0 for v in layer_sparsity(model).values())
    work = copy.deepcopy(model)
    apply_masks_(work, pruning_masks(model, 0.3, scope="row"), source=model)
    apply_masks_(work, masks, source=model)  # re-pruning from the source, not from the pruned copy
    assert all(torch.equal(a, b) for a, b in zip(work.state_dict().values(), pruned.state_dict().values()))
    with pytest.raises(ValueError, match="no layer named"):
        apply_masks_(work, {"nope": torch.ones(1, dtype=torch.bool)})


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_torch_prune_wrappers(make):
    model = make(vocab_size=VOCAB)
    ours = pruning_masks(model, 0.4, scope="global")
    global_magnitude_prune_(model, 0.4)
    theirs = torch_masks(model)
    assert set(theirs) == set(ours)
    agree = sum(int((theirs[k] == ours[k]).sum()) for k in ours) / sum(m.numel() for m in ours.values())
    assert agree > 0.999  # identical up to ties
    layer = next(iter(prunable_layers(model).values()))
    assert hasattr(layer, "weight_orig") and hasattr(layer, "weight_mask")
    assert make_pruning_permanent_(model) == len(ours)
    assert not hasattr(layer, "weight_orig") and "weight" in dict(layer.named_parameters())
    assert sum(layer_sparsity(model).values()) / len(ours) == pytest.approx(0.4, abs=0.05)
    # custom masks through the library: weight = weight_orig * mask, kept during training
    other = make(vocab_size=VOCAB)
    masks = pruning_masks(other, nm=(2, 4))
    prune_with_torch_(other, masks)
    assert all(torch.equal(torch_masks(other)[k], masks[k]) for k in masks)
    with pytest.raises(ValueError, match="no layer named"):
        prune_with_torch_(other, {"nope": torch.ones(1)})


def test_sparsity_sweep_does_not_touch_the_model():
    model = tiny_llama(vocab_size=VOCAB)
    before = _weights(model)
    norms = input_norms(model, _blocks(), progress=False)
    rows = sparsity_sweep(model, _blocks(2, 16, seed=5), [0.0, 0.5],
                          {"magnitude": {"criterion": "magnitude"}, "wanda": {"criterion": "wanda"}},
                          norms=norms, progress=False)
    assert [(r["method"], r["sparsity"]) for r in rows] == [("magnitude", 0.0), ("magnitude", 0.5),
                                                             ("wanda", 0.0), ("wanda", 0.5)]
    assert rows[0]["perplexity"] == pytest.approx(rows[2]["perplexity"])  # 0 % is the dense model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_masked_perplexities_match_pruned_copies():
    from course_lib.metrics import perplexity

    model = tiny_llama(vocab_size=VOCAB)
    before = _weights(model)
    norms = input_norms(model, _blocks(), progress=False)
    blocks = _blocks(2, 16, seed=5)
    configs = {"wanda 2:4": {"nm": (2, 4), "criterion": "wanda"},
               "magnitude 60% per layer": {"sparsity": 0.6, "scope": "layer"},
               "none": {"sparsity": 0.0}}
    found = masked_perplexities(model, blocks, configs, norms=norms, progress=False)
    assert list(found) == list(configs)
    for label, kwargs in configs.items():
        by_hand = perplexity(pruned_copy(model, pruning_masks(model, norms=norms, **kwargs)), blocks, progress=False)
        assert found[label] == pytest.approx(by_hand, rel=1e-5)
    # "none" comes after two pruned points: the working copy is restored from the model's weights
    assert found["none"] == pytest.approx(perplexity(model, blocks, progress=False), rel=1e-5)
    assert found["wanda 2:4"] != pytest.approx(found["none"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="configs is empty"):
        masked_perplexities(model, blocks, {})


# --------------------------------------------------------------------------- exercise checkers


def test_magnitude_mask_checker(capsys):
    from course_lib.checks.pruning import check_magnitude_mask, reference_magnitude_mask

    assert check_magnitude_mask(reference_magnitude_mask)
    capsys.readouterr()
    assert not check_magnitude_mask(lambda w, s: ~reference_magnitude_mask(w, s))
    assert "inverted" in capsys.readouterr().out
    assert not check_magnitude_mask(lambda w, s: score_mask(w, s))  # forgot abs()
    assert "abs()" in capsys.readouterr().out

    def floor_count(w, s):
        mask = torch.ones(w.shape, dtype=torch.bool)
        mask.view(-1)[torch.topk(w.abs().flatten(), int(s * w.numel()), largest=False).indices] = False
        return mask

    assert not check_magnitude_mask(floor_count)
    assert "round(sparsity" in capsys.readouterr().out
    assert not check_magnitude_mask(lambda w, s: magnitude_mask(w, s, scope="row"))
    assert "every row" in capsys.readouterr().out


def test_wanda_score_checker(capsys):
    from course_lib.checks.pruning import check_wanda_score, reference_wanda_score

    assert check_wanda_score(reference_wanda_score)
    capsys.readouterr()
    assert not check_wanda_score(lambda w, x: w * x.norm(dim=0))
    assert "abs()" in capsys.readouterr().out
    assert not check_wanda_score(lambda w, x: w.abs() * x.norm(dim=0)[:, None] if w.shape[0] == w.shape[1]
                                 else reference_wanda_score(w, x))
    assert "norms[None, :]" in capsys.readouterr().out
    assert not check_wanda_score(lambda w, x: w.abs() * x.abs().mean(0))
    assert "mean absolute" in capsys.readouterr().out
    assert not check_wanda_score(lambda w, x: w.abs())
    assert "input norms" in capsys.readouterr().out


def test_nm_mask_checker(capsys):
    from course_lib.checks.pruning import check_nm_mask, reference_nm_mask

    scores = torch.rand(2, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reference_nm_mask(scores, 2, 4).sum(1), torch.tensor([4, 4]))
    assert check_nm_mask(reference_nm_mask)
    capsys.readouterr()
    assert not check_nm_mask(lambda s, n, m: nm_mask(-s, n, m))
    assert "highest" in capsys.readouterr().out
    assert not check_nm_mask(lambda s, n, m: ~nm_mask(s, n, m) if n * 4 == m else nm_mask(s, n, m))
    assert "inverted" in capsys.readouterr().out  # 1:4 inverted keeps 3 of 4

    def columns(s, n, m):
        if s.shape[0] % m:
            return nm_mask(s, n, m)
        return nm_mask(s.T.contiguous(), n, m).T

    assert not check_nm_mask(columns)
    assert "along each row" in capsys.readouterr().out


def test_prune_linear_layers_checker(capsys):
    from course_lib.checks.pruning import check_prune_linear_layers, reference_prune_linear_layers

    model = tiny_llama(vocab_size=VOCAB)
    assert reference_prune_linear_layers(model, 0.5) is model
    assert check_prune_linear_layers(reference_prune_linear_layers)
    capsys.readouterr()

    def article_bug(model, amount):  # the source article's mistake
        for module in prunable_layers(model).values():
            model = prune.l1_unstructured(module, name="weight", amount=amount)
        return model

    assert not check_prune_linear_layers(article_bug)
    assert "one layer" in capsys.readouterr().out

    def no_remove(model, amount):
        for module in prunable_layers(model).values():
            prune.l1_unstructured(module, name="weight", amount=amount)
        return model

    assert not check_prune_linear_layers(no_remove)
    assert "prune.remove" in capsys.readouterr().out

    def with_head(model, amount):
        for module in linear_layers(model, exclude=()).values():
            prune.l1_unstructured(module, name="weight", amount=amount)
            prune.remove(module, "weight")
        return model

    assert not check_prune_linear_layers(with_head)
    assert "lm_head" in capsys.readouterr().out


def test_prune_checker_separates_the_mistakes_learners_make(capsys):
    """Each mistake gets its own hint, and none of them blames lm_head: the tiny models' tied
    embedding has an all-zero padding row, which the old check took for a pruned lm_head."""
    from course_lib.checks.pruning import check_prune_linear_layers

    assert (tiny_llama(vocab_size=VOCAB).get_output_embeddings().weight == 0).any()  # the padding row

    def each(method, pick=lambda model: prunable_layers(model).values(), amount_of=lambda a: a):
        def fn(model, amount):
            for module in pick(model):
                method(module, name="weight", amount=amount_of(amount))
                prune.remove(module, "weight")
            return model
        return fn

    def only_nn_linear(model):
        return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]

    def global_ranking(model, amount):
        params = [(m, "weight") for m in prunable_layers(model).values()]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        for module, _ in params:
            prune.remove(module, "weight")
        return model

    mistakes = {
        "Conv1D": each(prune.l1_unstructured, pick=only_nn_linear),  # misses GPT-2's layers
        "global_unstructured": global_ranking,
        "random_unstructured": each(prune.random_unstructured),
        "fraction to *remove*": each(prune.l1_unstructured, amount_of=lambda a: 1 - a),
    }
    for hint, fn in mistakes.items():
        assert not check_prune_linear_layers(fn)
        out = capsys.readouterr().out
        assert hint in out, (hint, out)
        assert "lm_head" not in out, out
