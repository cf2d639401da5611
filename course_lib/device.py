"""The one place where the course decides which device to run on.

Every notebook and helper asks :func:`pick_device`; nothing else looks at CUDA directly.
Override with the environment variable ``COURSE_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
"""

from __future__ import annotations

import os

import torch

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
