import json
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.architecture import SIZES as ARCHITECTURE_SIZES
from course_lib.data import token_blocks
from course_lib.distillation import (SIZES, DistillationTrainer, check_same_vocabulary, distillation_loss, distillation_loss_fn,
                                     evaluate_student, kl_divergence, most_common_share, soft_targets, teacher_samples,
                                     top1_agreement, top1_predictions, train_student, trainer_loss_check,
                                     agreement_verdict)
from course_lib.training import blocks_dataset, logged_losses, trainer_arguments
from course_lib.metrics import perplexity
from course_lib.profiles import get_profile, sizes_for
from course_lib.tiny_models import tiny_gpt2, tiny_llama
from course_lib.training import block_batches, train


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_soft_targets_and_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0])
    p1, p4 = soft_targets(logits, 1.0), soft_targets(logits, 4.0)
    assert torch.allclose(p1, F.softmax(logits, -1)) and p1.sum().item() == pytest.approx(1.0)
    entropy = lambda p: -(p * p.log()).sum().item()  # noqa: E731
    assert entropy(p4) > entropy(p1) > entropy(soft_targets(logits, 0.5))
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            soft_targets(logits, bad)


def test_kl_divergence_by_hand_forward_and_reverse():
    t, s = _logits(2, 3, 5, seed=1), _logits(2, 3, 5, seed=2)
    p, q = F.softmax(t / 2, -1), F.softmax(s / 2, -1)
    forward = (p * (p.log() - q.log())).sum(-1).mean()
    reverse = (q * (q.log() - p.log())).sum(-1).mean()
    assert kl_divergence(t, s, 2.0).item() == pytest.approx(forward.item(), rel=1e-5)
    assert kl_divergence(t, s, 2.0, reverse=True).item() == pytest.approx(reverse.item(), rel=1e-5)
    assert forward.item() != pytest.approx(reverse.item())
    assert kl_divergence(t, t).item() == pytest.approx(0.0, abs=1e-6)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    by_hand = (p * (p.log() - q.log())).sum(-1)[mask].mean()
    assert kl_divergence(t, s, 2.0, mask=mask).item() == pytest.approx(by_hand.item(), rel=1e-5)
    with pytest.raises(ValueError, match="selects no position"):
        kl_divergence(t, s, mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        kl_divergence(t, s, mask=torch.ones(3, 2, dtype=torch.bool))


def test_distillation_loss_formula():
    student, teacher = _logits(2, 6, 7, seed=3), _logits(2, 6, 7, seed=4)
    labels = torch.randint(0, 7, (2, 6), generator=torch.Generator().manual_seed(5))
    labels[0, :3] = -100  # e.g. a prompt that is not scored
    T, alpha = 2.0, 0.3
    y = labels[:, 1:]
    mask = y != -100
    ce = F.cross_entropy(student[:, :-1].reshape(-1, 7), y.reshape(-1), ignore_index=-100)
    p, log_q = F.softmax(teacher[:, :-1] / T, -1), F.log_softmax(student[:, :-1] / T, -1)
    kl = (p * (p.log() - log_q)).sum(-1)[mask].mean()
    expected = alpha * ce + (1 - alpha) * T ** 2 * kl
    assert distillation_loss(student, teacher, labels, T, alpha).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(student, teacher, labels, T, 1.0).item() == pytest.approx(ce.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, labels, T, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_rejects_bad_input():
    student, teacher, labels = _logits(1, 4, 7), _logits(1, 4, 7), torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation_loss(student, teacher, labels, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(student, teacher, labels, alpha=1.5)
    with pytest.raises(ValueError, match="vocabularies differ"):
        distillation_loss(student, _logits(1, 4, 9), labels)
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(student, _logits(1, 5, 7), labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        distillation_loss(student, teacher, labels[:, :3])


def test_check_same_vocabulary():
    check_same_vocabulary(tiny_llama(vocab_size=100), tiny_gpt2(vocab_size=100))
    with pytest.raises(ValueError, match="vocabularies differ"):
        check_same_vocabulary(tiny_llama(vocab_size=100), tiny_llama(vocab_size=120))


def test_plain_loop_distillation_pulls_the_student_towards_the_teacher():
    torch.manual_seed(0)
    teacher = tiny_llama(vocab_size=64, hidden_size=64, num_layers=2, seed=1)
    student = tiny_llama(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=64, seed=2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    blocks = torch.randint(0, 64, (8, 16))
    loss_fn = distillation_loss_fn(teacher, temperature=1.0, alpha=0.0)
    before = loss_fn(student, next(block_batches(blocks, 8))).item()
    result = train(student, block_batches(blocks, 4), steps=40, lr=3e-3, loss_fn=loss_fn, progress=False)
    after = loss_fn(student, next(block_batches(blocks, 8))).item()
    assert after < 0.5 * before and len(result.losses) == 40
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss_fn(teacher, temperature=-1)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss_fn(teacher, alpha=-0.1)


def test_distillation_trainer_runs_and_computes_the_same_loss(tmp_path):
    teacher = tiny_llama(vocab_size=64, seed=1)
    student = tiny_llama(vocab_size=64, num_layers=1, seed=2)
    blocks = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    dataset = blocks_dataset(blocks)
    assert set(dataset[0]) == {"input_ids", "attention_mask", "labels"} and len(dataset) == 8
    args = trainer_arguments(str(tmp_path), steps=6, lr=3e-3, batch_size=4, disable_tqdm=True)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=dataset, teacher_model=teacher,
                                  temperature=2.0, alpha=0.5)
    batch = {k: torch.stack([d[k] for d in dataset[:4]]) for k in dataset[0]}
    expected = distillation_loss(student(input_ids=batch["input_ids"]).logits,
                                 teacher(input_ids=batch["input_ids"]).logits, batch["labels"], 2.0, 0.5)
    assert trainer.compute_loss(student, batch).item() == pytest.approx(expected.item(), rel=1e-5)
    loss, outputs = trainer.compute_loss(student, batch, return_outputs=True)
    assert outputs.logits.shape == (4, 16, 64)
    trainer.train()
    losses = logged_losses(trainer)
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_distillation_trainer_rejects_bad_setups(tmp_path):
    args = trainer_arguments(str(tmp_path), steps=1, lr=1e-3, batch_size=2)
    student = tiny_llama(vocab_size=64)
    with pytest.raises(ValueError, match="teacher_model"):
        DistillationTrainer(model=student, args=args)
    with pytest.raises(ValueError, match="vocabularies differ"):
        DistillationTrainer(model=student, args=args, teacher_model=tiny_llama(vocab_size=80))
    with pytest.raises(ValueError, match="temperature"):
        DistillationTrainer(model=student, args=args, teacher_model=tiny_llama(vocab_size=64), temperature=0)
    with pytest.raises(ValueError, match="steps"):
        trainer_arguments(str(tmp_path), steps=0, lr=1e-3, batch_size=2)
    with pytest.raises(ValueError, match="non-empty"):
        blocks_dataset(torch.zeros(0, 3, dtype=torch.long))


def test_top1_predictions_and_agreement():
    model = tiny_llama(vocab_size=50)
    blocks = torch.randint(0, 50, (5, 9), generator=torch.Generator().manual_seed(0))
    preds = top1_predictions(model, blocks, batch_size=2, progress=False)
    with torch.no_grad():
        expected = model(input_ids=blocks).logits[:, :-1].argmax(-1)
    assert torch.equal(preds, expected)
    assert top1_agreement(preds, preds) == 1.0
    other = preds.clone()
    other[0, :4] = (other[0, :4] + 1) % 50
    assert top1_agreement(other, preds) == pytest.approx(1 - 4 / preds.numel())
    # by hand: 3 of these 6 positions agree
    assert top1_agreement(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[1, 0, 3], [0, 0, 6]])) == 0.5
    # next-token accuracy: the predictions compared with the real next tokens blocks[:, 1:]
    hits = sum(int(preds[b, t] == blocks[b, t + 1]) for b in range(5) for t in range(8))
    assert top1_agreement(preds, blocks[:, 1:]) == pytest.approx(hits / 40)
    perfect = blocks[:, 1:].clone()
    perfect[1, 2] = (perfect[1, 2] + 1) % 50
    assert top1_agreement(perfect, blocks[:, 1:]) == pytest.approx(39 / 40)
    with pytest.raises(ValueError, match="Shapes differ"):
        top1_agreement(preds, blocks)
    with pytest.raises(ValueError, match="block_size >= 2"):
        top1_predictions(model, blocks[:, :1])


def test_teacher_samples_continue_the_prompts():
    teacher = tiny_llama(vocab_size=50)
    prompts = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(0))
    samples = teacher_samples(teacher, prompts, new_tokens=5, batch_size=2, seed=1, progress=False)
    assert samples.shape == (3, 9) and torch.equal(samples[:, :4], prompts)
    assert torch.equal(samples, teacher_samples(teacher, prompts, 5, batch_size=2, seed=1, progress=False))
    with pytest.raises(ValueError, match="temperature"):
        teacher_samples(teacher, prompts, 5, temperature=0)
    with pytest.raises(ValueError, match="new_tokens"):
        teacher_samples(teacher, prompts, 0)


def test_train_student_ce_and_kd_runs_use_the_same_batches_and_differ_in_the_loss():
    teacher = tiny_llama(vocab_size=64, hidden_size=64, num_layers=2, seed=1)
    blocks = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    first = next(block_batches(blocks, 4, seed=3))  # the first batch of every run with seed 3

    def student():
        return tiny_llama(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                          intermediate_size=64, seed=2)

    with torch.no_grad():
        s = student()
        ce_first = s(**first).loss.item()
        kd_first = distillation_loss(s(input_ids=first["input_ids"]).logits, teacher(input_ids=first["input_ids"]).logits,
                                     first["labels"], 2.0, 0.25).item()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ce = train_student(student(), blocks, steps=5, lr=1e-3, batch_size=4, seed=3, progress=False)
    model = student()
    kd = train_student(model, blocks, steps=5, lr=1e-3, batch_size=4, teacher=teacher, temperature=2.0,
                       alpha=0.25, seed=3, progress=False)
    assert ce.steps == kd.steps == 5 and len(ce.losses) == 5
    assert ce.losses[0] == pytest.approx(ce_first, rel=1e-5)
    assert kd.losses[0] == pytest.approx(kd_first, rel=1e-5)
    assert not model.training  # trained in place, left in eval mode
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, student().model.layers[0].mlp.up_proj.weight)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="alpha"):
        train_student(student(), blocks, steps=1, lr=1e-3, batch_size=4, teacher=teacher, alpha=2.0)


def test_evaluate_student_saves_a_record_with_agreement_and_accuracy(tokenizer, results_tmp):
    profile = get_profile("smoke")
    val = token_blocks(tokenizer, "validation", profile.block_size, profile.eval_blocks)
    teacher, student = tiny_llama(seed=1), tiny_llama(seed=2)
    teacher_top1 = top1_predictions(teacher, val, progress=False)
    record = evaluate_student(student, tokenizer, val, teacher_top1, "04_test", "tiny student", notes="two layers",
                              speed=False, batch_size=2, profile=profile, progress=False)
    with torch.no_grad():
        s = student(input_ids=val).logits[:, :-1].argmax(-1)
        t = teacher(input_ids=val).logits[:, :-1].argmax(-1)
    positions = val.shape[0] * (val.shape[1] - 1)
    assert record.extra["top1_agreement"] == pytest.approx((s == t).sum().item() / positions)
    assert record.extra["next_token_accuracy"] == pytest.approx((s == val[:, 1:]).sum().item() / positions)
    assert record.perplexity == pytest.approx(perplexity(student, val, progress=False), rel=1e-5)
    assert record.name == "tiny student" and record.notes == "two layers" and record.tokens_per_s is None
    saved = json.loads((results_tmp / "smoke" / "04_test.json").read_text())["records"]
    assert [r["name"] for r in saved] == ["tiny student"] and saved[0]["extra"] == record.extra
    itself = evaluate_student(teacher, tokenizer, val, teacher_top1, "04_test", "teacher", speed=False,
                              profile=profile, progress=False)
    assert itself.extra["top1_agreement"] == 1.0
    with pytest.raises(ValueError, match="teacher_top1"):
        evaluate_student(student, tokenizer, val, teacher_top1[:, :-1], "04_test", "bad", profile=profile)


def test_sizes_table_is_complete():
    for profile in ("smoke", "cpu", "gpu"):
        sizes = sizes_for(SIZES, profile)
        assert sizes.steps >= 1 and sizes.temperature > 0 and 0 <= sizes.alpha <= 1
        assert math.isfinite(sizes.lr)
        # chapter 06 heals chapter 04's depth student: the layer count lives in this table only
        assert 1 <= sizes.remove_layers < 30 and "heal_remove" not in ARCHITECTURE_SIZES[profile]


# --------------------------------------------------------------------------- exercise checkers

from course_lib.checks.distillation import (check_distillation_loss, check_soft_targets,  # noqa: E402
                                            reference_distillation_loss, reference_soft_targets)


def test_soft_targets_checker(capsys):
    assert check_soft_targets(reference_soft_targets)
    assert "✅" in capsys.readouterr().out
    assert not check_soft_targets(lambda z, t: F.softmax(z * t, -1))
    assert "you multiplied" in capsys.readouterr().out
    assert not check_soft_targets(lambda z, t: z / t)
    assert "apply softmax" in capsys.readouterr().out


def _loss_without(student, teacher, labels, t, alpha, **skip):
    s, te, y = student[:, :-1], teacher[:, :-1], labels[:, 1:]
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=-100)
    kl = kl_divergence(te, s, t, reverse=skip.get("reverse", False), mask=y != -100)
    return alpha * ce + (1 - alpha) * (1 if skip.get("no_t2") else t ** 2) * kl


def test_distillation_loss_checker(capsys):
    assert check_distillation_loss(reference_distillation_loss)
    assert "✅" in capsys.readouterr().out
    assert check_distillation_loss(_loss_without)  # an independent correct version passes
    capsys.readouterr()
    assert not check_distillation_loss(lambda *a: _loss_without(*a, no_t2=True))
    assert "T**2" in capsys.readouterr().out
    assert not check_distillation_loss(lambda *a: _loss_without(*a, reverse=True))
    assert "reverse KL" in capsys.readouterr().out

    def unshifted(student, teacher, labels, t, alpha):
        pad = lambda x: torch.cat([x, x[:, :1]], 1)  # noqa: E731
        return _loss_without(pad(student), pad(teacher), torch.cat([labels[:, :1], labels], 1), t, alpha)

    assert not check_distillation_loss(unshifted)
    assert "logits[:, :-1]" in capsys.readouterr().out


# --------------------------------------------------------------------------- issue fixes, chapter 04

def test_distillation_loss_with_every_label_masked_raises_for_every_alpha():
    student, teacher = _logits(1, 4, 7), _logits(1, 4, 7, seed=1)
    labels = torch.full((1, 4), -100)
    labels[0, 0] = 3  # the first label is never predicted (the shift drops it)
    for alpha in (0.0, 0.5, 1.0):
        with pytest.raises(ValueError, match="Every predicted label is -100"):
            distillation_loss(student, teacher, labels, 2.0, alpha)


def test_distillation_trainer_neither_moves_nor_switches_the_callers_teacher(tmp_path):
    teacher = tiny_llama(vocab_size=64, seed=1).train()  # the caller left it in training mode
    blocks = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    args = trainer_arguments(str(tmp_path), steps=2, lr=1e-3, batch_size=2, disable_tqdm=True)
    trainer = DistillationTrainer(model=tiny_llama(vocab_size=64, num_layers=1, seed=2), args=args,
                                  train_dataset=blocks_dataset(blocks), teacher_model=teacher)
    assert trainer.teacher is teacher and teacher.training
    trainer.train()
    assert teacher.training and next(teacher.parameters()).device.type == "cpu"  # mode and device kept
    elsewhere = tiny_llama(vocab_size=64, seed=1).to("meta")
    with pytest.raises(ValueError, match="move it first"):
        DistillationTrainer(model=tiny_llama(vocab_size=64, num_layers=1), args=args, teacher_model=elsewhere)
    assert next(elsewhere.parameters()).device.type == "meta"  # refused, not moved


def _kd_setup(tmp_path):
    """A teacher, a smaller student, one stacked batch of two 8-token blocks and Trainer arguments."""
    teacher, student = tiny_llama(vocab_size=64, seed=1), tiny_llama(vocab_size=64, num_layers=1, seed=2)
    rows = blocks_dataset(torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0)))
    batch = {k: torch.stack([row[k] for row in rows]) for k in rows[0]}
    args = trainer_arguments(str(tmp_path), steps=1, lr=1e-3, batch_size=2, disable_tqdm=True)
    return teacher, student, batch, args


def test_distillation_trainer_loss_is_the_kd_loss_not_plain_cross_entropy(tmp_path):
    """What the lesson's claim row checks: a dummy trainer returning plain CE would fail it."""
    teacher, student, batch, args = _kd_setup(tmp_path)
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, temperature=2.0, alpha=0.0)
    got = trainer.compute_loss(student, batch).item()
    with torch.no_grad():
        ce = student(**batch).loss.item()
        kd = distillation_loss(student(input_ids=batch["input_ids"]).logits,
                               teacher(input_ids=batch["input_ids"]).logits, batch["labels"], 2.0, 0.0).item()
    assert got == pytest.approx(kd, rel=1e-5) and got != pytest.approx(ce, rel=1e-3)


def test_loss_fn_restores_the_teacher_mode_and_refuses_a_teacher_elsewhere():
    teacher = tiny_llama(vocab_size=64, seed=1).train()
    student = tiny_llama(vocab_size=64, num_layers=1, seed=2)
    batch = next(block_batches(torch.randint(0, 64, (2, 8)), 2))
    loss_fn = distillation_loss_fn(teacher, 2.0, 0.5)
    assert teacher.training  # building the loss does not switch the caller's model
    loss_fn(student, batch)
    assert teacher.training
    with pytest.raises(ValueError, match="teacher is on meta"):
        distillation_loss_fn(tiny_llama(vocab_size=64).to("meta"))(student, batch)


def test_most_common_share_tells_a_degenerate_student():
    assert most_common_share(torch.tensor([[5, 5, 5], [5, 5, 5]])) == 1.0
    assert most_common_share(torch.tensor([[1, 2, 3], [4, 5, 1]])) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="non-empty"):
        most_common_share(torch.zeros(0, dtype=torch.long))


def test_top1_and_teacher_samples_restore_the_mode_and_return_cpu_tensors():
    model = tiny_llama(vocab_size=50).train()
    blocks = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(0))
    assert top1_predictions(model, blocks, progress=False).device.type == "cpu" and model.training
    assert teacher_samples(model, blocks[:, :3], 2, progress=False).device.type == "cpu" and model.training


def test_distillation_loss_checker_names_the_batchmean_and_student_temperature_mistakes(capsys):
    def batchmean(student, teacher, labels, t, alpha):
        s, te, y = student[:, :-1], teacher[:, :-1], labels[:, 1:]
        ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=-100)
        keep = y != -100
        log_p, log_q = F.log_softmax(te / t, -1), F.log_softmax(s / t, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)[keep].sum() / s.shape[0]
        return alpha * ce + (1 - alpha) * t ** 2 * kl

    def student_not_softened(student, teacher, labels, t, alpha):
        s, te, y = student[:, :-1], teacher[:, :-1], labels[:, 1:]
        ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=-100)
        log_p, log_q = F.log_softmax(te / t, -1), F.log_softmax(s, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)[y != -100].mean()
        return alpha * ce + (1 - alpha) * t ** 2 * kl

    assert not check_distillation_loss(batchmean)
    assert "batchmean" in capsys.readouterr().out
    assert not check_distillation_loss(student_not_softened)
    assert "same temperature" in capsys.readouterr().out
    assert not check_distillation_loss(lambda *a: _loss_without(*a[:4], 1 - a[4]))
    assert "alpha weighs" in capsys.readouterr().out
    assert not check_soft_targets(lambda z, t: F.softmax(z / t, 0))
    assert "dim=-1" in capsys.readouterr().out


def test_reference_solutions_are_the_library_formulas():
    z = _logits(2, 3, 5)
    assert torch.allclose(reference_soft_targets(z, 2.0), F.softmax(z / 2, -1))
    s, t, y = _logits(1, 4, 5, seed=1), _logits(1, 4, 5, seed=2), torch.tensor([[1, 2, 3, 4]])
    assert reference_distillation_loss(s, t, y, 2.0, 0.3).item() == pytest.approx(
        distillation_loss(s, t, y, 2.0, 0.3).item())


def test_trainer_loss_check_tells_a_distillation_trainer_from_a_plain_ce_one(tmp_path):
    from course_lib.claims import INCONCLUSIVE

    teacher, student, batch, args = _kd_setup(tmp_path)
    real = DistillationTrainer(model=student, args=args, teacher_model=teacher, temperature=2.0, alpha=0.5)
    check = trainer_loss_check(real, batch)
    assert check["holds"] is True and check["loss"] == pytest.approx(check["kd"], rel=1e-5)

    class PlainCE(DistillationTrainer):  # the articles' trainer: ignores the teacher
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return model(**inputs).loss

    dummy = PlainCE(model=student, args=args, teacher_model=teacher, temperature=2.0, alpha=0.5)
    assert trainer_loss_check(dummy, batch)["holds"] is False
    only_ce = DistillationTrainer(model=student, args=args, teacher_model=teacher, alpha=1.0)
    assert trainer_loss_check(only_ce, batch)["holds"] == INCONCLUSIVE


def test_agreement_verdict_is_inconclusive_for_degenerate_students():
    from course_lib.claims import INCONCLUSIVE
    from course_lib.scorecard import Record

    def student(agreement, share):
        return Record(chapter="04_test", name="s", profile="smoke", device="cpu", params=1, nonzero_params=1,
                      sparsity=0.0, footprint_bytes=1, naive_footprint_bytes=1, perplexity=1.0,
                      extra={"top1_agreement": agreement, "most_common_share": share})

    assert agreement_verdict(student(0.40, 0.1), student(0.20, 0.1), 1000) is True
    assert agreement_verdict(student(0.20, 0.1), student(0.40, 0.1), 1000) is False
    assert agreement_verdict(student(0.40, 0.9), student(0.20, 0.1), 1000) == INCONCLUSIVE
