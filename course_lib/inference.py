"""Running a model over data, the one way every chapter does it.

* :func:`eval_mode`: a ``with`` block in evaluation mode (dropout off) without gradients, that
  restores the model's train/eval mode afterwards, also when the block raises.
* :func:`batches`: the rows of a tensor in batches of ``batch_size``, moved to a device, with a
  progress bar.
* :func:`capture`: run token blocks through a model and hand each chosen module's input and
  output to a callback (forward hooks, removed afterwards): how calibration statistics, Block
  Influence and GPTQ's Hessians are gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from .device import model_device

__all__ = ["eval_mode", "batches", "capture"]


@contextmanager
def eval_mode(model: nn.Module, no_grad: bool = True):
    """Run a block with ``model.eval()`` (and ``torch.no_grad()`` unless ``no_grad=False``), then
    put back the mode the model had, whatever happens inside the block.

    Example::

        with eval_mode(model):
            logits = model(input_ids=batch).logits
    """
    was_training = model.training
    model.eval()
    try:
        if no_grad:
            with torch.no_grad():
                yield model
        else:
            yield model
    finally:
        model.train(was_training)


def batches(rows: torch.Tensor, batch_size: int, device: torch.device | str | None = None, *,
            desc: str = "batches", progress: bool = True) -> Iterator[torch.Tensor]:
    """``rows[start:start + batch_size]`` for ``start = 0, batch_size, 2 * batch_size, ...``, each
    moved to ``device`` (unchanged when None), with a progress bar when there is more than one.

    Raises:
        ValueError: ``rows`` is not a tensor with at least one row, or ``batch_size < 1``.
    """
    if not isinstance(rows, torch.Tensor):
        raise ValueError(f"rows must be a tensor (e.g. token blocks [n_blocks, block_size]); got "
                         f"{type(rows).__name__}. Stack a list first: torch.stack(rows).")
    if rows.ndim < 1 or len(rows) == 0:
        raise ValueError(f"rows must have at least one row; got shape {tuple(rows.shape)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2, leave=False):
        batch = rows[start:start + batch_size]
        yield batch if device is None else batch.to(device)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs.get("hidden_states", kwargs.get("input"))


def _main_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def capture(model: nn.Module, modules: dict[str, nn.Module], blocks: torch.Tensor,
            fn: Callable[[str, torch.Tensor, torch.Tensor], None], batch_size: int = 8, *,
            desc: str = "capturing", progress: bool = True) -> None:
    """Run ``blocks`` through ``model`` (eval mode, no gradients, batches on the model's device)
    and call ``fn(name, input, output)`` for every module of ``modules`` each time it runs.

    ``input`` is the module's first tensor argument (``hidden_states`` for a decoder block given
    as a keyword) and ``output`` its output (the first element when it returns a tuple), both
    detached and on the model's device: ``fn`` decides what to keep (a running sum, a norm...).
    The hooks are removed afterwards, also when ``fn`` raises.

    Raises:
        ValueError: ``modules`` is empty or holds a module that is not part of ``model``.
    """
    if not modules:
        raise ValueError("capture needs at least one module, e.g. {'model.layers.0.mlp.up_proj': layer}.")
    inside = {id(m) for m in model.modules()}
    strangers = [name for name, m in modules.items() if id(m) not in inside]
    if strangers:
        raise ValueError(f"These modules are not part of the model: {strangers}.")

    def hook_for(name):
        def hook(module, args, kwargs, output):
            x = _first_tensor(args, kwargs)
            fn(name, x.detach() if x is not None else None, _main_output(output).detach())
        return hook

    handles = [m.register_forward_hook(hook_for(name), with_kwargs=True) for name, m in modules.items()]
    try:
        with eval_mode(model):
            for batch in batches(blocks, batch_size, model_device(model), desc=desc, progress=progress):
                model(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
