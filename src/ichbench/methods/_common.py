"""Small helpers shared by the reconstruction rows (no rows are registered here).

`float32(t)`: a region where autocast is off, so that a loss or score computed there runs in
float32 even when the network itself ran in bfloat16 (`Method.autocast()` on CUDA). Tensors that
enter it are cast with `.float()` by the caller.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def float32(like: torch.Tensor):
    """Turn autocast off for the device of `like` (CUDA, CPU or MPS)."""
    with torch.autocast(device_type=like.device.type, enabled=False):
        yield
