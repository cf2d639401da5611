"""Sparse storage and sparse kernels: does a pruned matrix get smaller or faster?

* :func:`csr_comparison`: a general sparse format (CSR) against the dense matrix on the CPU.
  Bytes: dense ``out * in * element_size``; CSR stores the values, one int64 column index per
  non-zero and ``out + 1`` int64 row pointers.
* :func:`semi_structured_support` / :func:`semi_structured_benchmark`: NVIDIA's 2:4 sparse
  tensor-core kernels (``torch.sparse.to_sparse_semi_structured``), CUDA compute capability 8.0
  or newer only; guarded, so that a run without them says so instead of failing.
"""

from __future__ import annotations

import warnings

import torch

from .device import pick_device
from .pruning import magnitude_mask, nm_mask

__all__ = ["csr_comparison", "semi_structured_support", "semi_structured_benchmark"]


@torch.no_grad()
def csr_comparison(weight: torch.Tensor, sparsities=(0.5, 0.9), tokens: int = 128,
                   min_run_time: float = 0.2) -> list[dict]:
    """Does a sparse format make an unstructured-pruned layer smaller or faster **on this CPU**?

    A CPU-only demonstration: ``weight`` (``[out, in]``) is copied to the CPU on purpose, whatever
    device it came from. For each sparsity it is magnitude-pruned and ``W @ X`` (X: ``[in,
    tokens]``) is timed with ``torch.utils.benchmark`` for the dense matrix and for its CSR form
    (``Tensor.to_sparse_csr``). Returns rows ``{"sparsity", "dense_ms", "csr_ms", "dense_MB",
    "csr_MB"}`` (times: medians of ``blocked_autorange``).
    """
    from torch.utils.benchmark import Timer

    if weight.ndim != 2:
        raise ValueError(f"weight must be [out, in], got shape {tuple(weight.shape)}.")
    weight = weight.detach().cpu()  # CPU on purpose: this compares CPU kernels
    x = torch.randn(weight.shape[1], tokens, dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
    rows = []
    for sparsity in sparsities:
        w = (weight * magnitude_mask(weight, sparsity)).contiguous()
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


def semi_structured_support(device: str | torch.device | None = None) -> tuple[bool, str]:
    """Can ``torch.sparse.to_sparse_semi_structured`` run here? Returns ``(ok, reason)``.

    The 2:4 sparse tensor-core kernels (cuSPARSELt or CUTLASS) need a CUDA GPU of compute
    capability 8.0 or newer (Ampere: A100, RTX 30xx, L4...). A CPU has none, and Colab's T4
    (capability 7.5) predates them.
    """
    device = pick_device(device)
    if device.type != "cuda":
        return False, f"2:4 sparse kernels need a CUDA GPU; this run uses {device.type}."
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, (f"2:4 sparse kernels need compute capability >= 8.0 (Ampere or newer); "
                       f"{torch.cuda.get_device_name(device)} has {major}.{minor}.")
    return True, f"{torch.cuda.get_device_name(device)} (capability {major}.{minor}) has 2:4 sparse kernels."


def _median_cuda_ms(fn, repeats: int, device) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        samples.append(start.elapsed_time(end))
    return sorted(samples)[len(samples) // 2]


@torch.no_grad()
def semi_structured_benchmark(shapes=((1536, 576), (576, 1536), (11008, 4096)), tokens: int = 4096,
                              repeats: int = 20, device: str | torch.device | None = None) -> list[dict]:
    """Time ``x @ W.T`` with a dense 2:4-pruned fp16 weight against the same weight converted by
    ``torch.sparse.to_sparse_semi_structured``, for each ``(out, in)`` shape, ``tokens`` rows of x.

    This times one matrix multiplication (the kernel's rate), not a model end to end. Returns rows
    ``{"shape", "dense_ms", "sparse_ms", "speedup", "max_abs_diff"}`` (median of ``repeats``
    after a warm-up). The default shapes are SmolLM2's MLP and a LLaMA-7B MLP.

    Raises:
        ValueError: no GPU with 2:4 kernels here (see :func:`semi_structured_support`).
    """
    from torch.nn.functional import linear
    from torch.sparse import to_sparse_semi_structured

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
        times = {label: _median_cuda_ms(lambda w=w: linear(x, w), repeats, device)
                 for label, w in (("dense", weight), ("sparse", sparse))}
        diff = (linear(x, sparse) - linear(x, weight)).abs().max().item()
        rows.append({"shape": (out_features, in_features), "dense_ms": times["dense"], "sparse_ms": times["sparse"],
                     "speedup": times["dense"] / times["sparse"], "max_abs_diff": diff})
    return rows
