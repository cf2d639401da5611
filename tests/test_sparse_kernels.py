import pytest
import torch

from course_lib.sparse_kernels import csr_comparison, semi_structured_benchmark, semi_structured_support


def test_csr_comparison_counts_bytes_and_times():
    weight = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    rows = csr_comparison(weight, sparsities=(0.5, 0.9), tokens=8, min_run_time=0.01)
    assert [r["sparsity"] for r in rows] == [0.5, 0.9]
    assert rows[0]["dense_MB"] == pytest.approx(64 * 32 * 4 / 1e6)
    nonzero = 64 * 32 - round(0.5 * 64 * 32)
    assert rows[0]["csr_MB"] == pytest.approx((nonzero * (4 + 8) + 65 * 8) / 1e6)
    assert rows[1]["csr_MB"] < rows[0]["csr_MB"]
    assert all(r["dense_ms"] > 0 and r["csr_ms"] > 0 for r in rows)
    with pytest.raises(ValueError, match=r"\[out, in\]"):
        csr_comparison(torch.ones(3))


def test_semi_structured_path_is_guarded_on_cpu():
    ok, reason = semi_structured_support("cpu")
    assert not ok and "CUDA" in reason
    with pytest.raises(ValueError, match="CUDA"):
        semi_structured_benchmark(device="cpu")
