import pytest
import torch

from course_lib.tasks import make_task
from course_lib.tiny_models import tiny_gpt2, tiny_llama
from course_lib.training import (block_batches, lr_at, optimizer_state_bytes, smoothed, task_batches, train)


def test_learning_rate_schedule():
    rates = [lr_at(t, 10, 1.0, 2) for t in range(10)]
    assert rates[0] == 0.5 and rates[1] == 1.0
    assert rates == sorted(rates[:2]) + sorted(rates[2:], reverse=True)
    assert rates[-1] == pytest.approx(1 / 8)
    assert lr_at(0, 5, 0.1, 0) == 0.1


def test_training_lowers_the_loss_on_a_tiny_model():
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=64)
    blocks = torch.randint(0, 64, (4, 16))
    result = train(model, block_batches(blocks, 4), steps=30, lr=3e-3, progress=False)
    assert len(result.losses) == 30 and result.seconds > 0
    assert len(result.step_seconds) == 30 and all(t > 0 for t in result.step_seconds)
    assert sum(result.step_seconds) <= result.seconds  # one clock: the steps fit inside the run
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5 - 0.3
    assert not model.training


def test_gpt2_trains_too():
    model = tiny_gpt2(vocab_size=64)
    result = train(model, block_batches(torch.randint(0, 64, (2, 8)), 2), steps=2, lr=1e-3, progress=False)
    assert result.steps == 2


def test_task_batches_and_callback_stop(tokenizer):
    model = tiny_llama(vocab_size=len(tokenizer))
    batches = task_batches(tokenizer, make_task("date-iso", 6, 0).train, batch_size=3)
    batch = next(batches)
    assert batch["input_ids"].shape[0] == 3 and (batch["labels"] != -100).any()
    result = train(model, batches, steps=10, lr=1e-3, callback=lambda step, loss: step == 2, progress=False)
    assert result.steps == 3 and len(result.step_seconds) == 3


def test_training_input_errors(tokenizer):
    model = tiny_llama(vocab_size=64)
    batches = block_batches(torch.randint(0, 64, (2, 8)), 2)
    with pytest.raises(ValueError, match="steps"):
        train(model, batches, steps=0, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        train(model, batches, steps=1, lr=0)
    with pytest.raises(ValueError, match="warmup"):
        train(model, batches, steps=2, lr=1e-3, warmup_steps=3)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, batches, steps=1, lr=1e-3)
    with pytest.raises(ValueError):
        next(block_batches(torch.zeros(2, 8, dtype=torch.long), 3))
    with pytest.raises(ValueError):
        next(task_batches(tokenizer, [], 2))


def test_optimizer_state_and_smoothing():
    model = torch.nn.Linear(10, 10)
    assert optimizer_state_bytes(model) == 2 * 4 * 110
    model.bias.requires_grad_(False)
    assert optimizer_state_bytes(model) == 2 * 4 * 100
    assert smoothed([1, 3, 5], window=2) == [1, 2, 4]


def test_causal_lm_loss_and_train_result():
    from course_lib.training import TrainResult, causal_lm_loss

    model = tiny_llama(vocab_size=64)
    batch = next(block_batches(torch.randint(0, 64, (2, 8)), 2))
    assert causal_lm_loss(model, batch).item() == pytest.approx(model(**batch).loss.item())
    assert TrainResult(losses=[1.0, 2.0], seconds=3.0, steps=2).seconds_per_step == 1.5


def test_a_batch_larger_than_the_data_is_an_error_not_an_endless_loop(tokenizer):
    examples = make_task("date-iso", 3, 0).train
    with pytest.raises(ValueError, match="between 1 and the number of examples \\(3\\)"):
        next(task_batches(tokenizer, examples, batch_size=8))
    with pytest.raises(ValueError, match="tensor"):
        next(block_batches([[1, 2, 3]], 1))


def test_trainer_route_helpers(tmp_path):
    from course_lib.training import blocks_dataset, logged_losses, trainer_arguments

    args = trainer_arguments(str(tmp_path), steps=3, lr=1e-3, batch_size=2, warmup_steps=1, logging_steps=2)
    assert args.max_steps == 3 and args.max_grad_norm == 1.0 and args.logging_steps == 2 and args.use_cpu
    assert not args.dataloader_pin_memory  # pinning is for GPUs; on a CPU torch warns about it
    with pytest.raises(ValueError, match="steps >= 1"):
        trainer_arguments(str(tmp_path), steps=0, lr=1e-3, batch_size=2)
    data = blocks_dataset(torch.randint(0, 64, (3, 8)))
    assert len(data) == 3 and torch.equal(data[0]["labels"], data[0]["input_ids"])
    with pytest.raises(ValueError, match="non-empty"):
        blocks_dataset(torch.empty(0, 8, dtype=torch.long))

    class FakeTrainer:
        class state:
            log_history = [{"loss": 2.0}, {"eval_loss": 1.0}, {"loss": 1.5}]

    assert logged_losses(FakeTrainer()) == [2.0, 1.5]
