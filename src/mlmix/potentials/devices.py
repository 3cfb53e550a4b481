"""Torch devices and precisions named in configs: refused before any work when this
machine lacks them or they are not one of the choices."""

from __future__ import annotations

from ..errors import ConfigurationError
from ..schema import DTYPES


def check_dtype(dtype) -> None:
    """Refuse a precision that is not one of ``mlmix.schema.DTYPES``."""
    if dtype not in DTYPES:
        raise ConfigurationError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def is_device_name(device) -> bool:
    """``"cpu"``, ``"cuda"`` or ``"cuda:K"`` (checked without importing torch)."""
    return isinstance(device, str) and (
        device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()))


def check_device(device: str) -> None:
    """Refuse a torch device this machine does not have, naming what to use instead."""
    if not is_device_name(device):
        raise ConfigurationError(f"device must be 'cpu', 'cuda' or 'cuda:K', got {device!r}")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(
            f"device = {device!r}, but torch sees no CUDA GPU on this machine (torch "
            f"{torch.__version__}); use device = 'cpu'"
        )
