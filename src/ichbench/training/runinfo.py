"""What a run record says about the code and machine it ran on, without naming a person or a host."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

PROJECT = Path(__file__).resolve().parents[3]   # src/ichbench/training/ -> the project
NOT_GIT = "not a git checkout"


def git_commit(root: str | Path = PROJECT) -> dict[str, Any]:
    """{"git_commit": <sha> or "not a git checkout", "git_modified": tracked files differ from it (or None)}."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(root).resolve():
            return {"git_commit": NOT_GIT, "git_modified": None}   # the project lies inside another repository
        sha = git("rev-parse", "HEAD")
        modified = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": NOT_GIT, "git_modified": None}
    return {"git_commit": sha, "git_modified": modified}


def environment_record(device: torch.device) -> dict[str, Any]:
    """Project commit, CUDA / cuDNN versions and the GPU model (no host name, user name or paths)."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {**git_commit(), "cuda": torch.version.cuda, "cudnn": cudnn, "gpu": gpu}
