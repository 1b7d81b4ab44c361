"""The opt-in switch for deterministic kernels (`train.deterministic`), and what it set, for run.json.

Seeds alone make a CPU run repeatable; on a GPU, cuDNN's autotuner (`benchmark`) and atomic-add kernels
(e.g. some convolution backward passes) can still change the last bits from run to run. With the switch on:

    torch.backends.cudnn.deterministic = True, torch.backends.cudnn.benchmark = False,
    torch.use_deterministic_algorithms(True, warn_only=True),
    CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS needs it for deterministic matrix products; set before the first
    cuBLAS call, i.e. before training, unless the environment already sets it).

`warn_only`: an operation without a deterministic CUDA kernel (e.g. the backward pass of bilinear
upsampling in the one-stage decoder) logs a warning instead of stopping the run, so such rows are only as
deterministic as PyTorch allows. Off (the default) leaves PyTorch's defaults, and the faster kernels.
"""
from __future__ import annotations

import os
from typing import Any

import torch

CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(on: bool) -> dict[str, Any]:
    """Switch deterministic kernels on (or leave the defaults) for this process; -> what is in effect."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return state(requested=bool(on))


def state(requested: bool | None = None) -> dict[str, Any]:
    """The determinism settings of this process, as run.json records them."""
    return {"requested": requested,
            "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
