"""The one place where the course decides which device to run on.

Every notebook and helper asks :func:`pick_device`; nothing else looks at CUDA directly.
Also here: :func:`model_device`, :func:`synchronize` (for timers), :func:`release_memory` and
:func:`torch_threads` (how much of the machine a block of code uses).
Override with the environment variable ``COURSE_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

__all__ = ["DEVICE_ENV", "pick_device", "synchronize", "model_device", "machine_info", "release_memory",
           "torch_threads"]

# CPU features that change which kernels run (and so speeds): vector widths, bf16/int8 support.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "neon", "asimd")

DEVICE_ENV = "COURSE_DEVICE"


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """Return the device to use.

    Order: the ``preferred`` argument, else ``$COURSE_DEVICE``, else ``cuda`` when a CUDA GPU is
    present, else ``cpu``. Apple's ``mps`` is only used when asked for explicitly (bitsandbytes
    and several kernels the course uses do not support it).

    Raises:
        ValueError: the requested device is not available on this machine.
    """
    choice = preferred if preferred is not None else os.environ.get(DEVICE_ENV)
    if choice is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as err:
        raise ValueError(
            f"Unknown device {choice!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {choice!r} was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}). Unset {DEVICE_ENV} or use 'cpu'."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {choice!r} was requested but MPS is not available. Use 'cpu'.")
    return device


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work to finish, so that a timer measures the work, not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (cpu for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def machine_info(device: str | torch.device | None = None) -> dict:
    """Which machine made a measurement: CPU model, the :data:`CPU_FLAGS` it has, cores, torch
    threads, torch version, and the GPU's name and compute capability when ``device`` is CUDA.
    Speeds and even the ordering of methods differ between machines: every record says where it
    was measured."""
    import platform

    info = {"cpu": platform.processor() or platform.machine(), "cpu_flags": [], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith(("flags", "Features"))), [])
        info["cpu"] = names[0] if names else info["cpu"]
        info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
    except OSError:  # not Linux
        pass
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


def release_memory() -> None:
    """Collect garbage, empty the CUDA cache (on a GPU) and hand freed heap memory back to the OS
    (glibc ``malloc_trim``), so that a following :class:`~course_lib.metrics.PeakMemory` starts
    from an honest baseline."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if os.name == "posix":
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
            pass


@contextmanager
def torch_threads(n: int):
    """Run a block with ``torch.set_num_threads(n)``, then restore the previous count.

    Tiny models gain nothing from several threads, and on a shared 2-core machine threads
    that wait for each other cost more than they give; one thread per process is the rule
    when several processes share the cores.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"The number of threads must be a positive int, got {n!r}.")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
