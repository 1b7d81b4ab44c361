"""Opening model and checkpoint files without running code they carry: the only way ichbench reads a .pt file.

A `.pt` file is a pickle. Loaded with `weights_only=False`, a crafted one runs any code it holds; ichbench never
does that. What it writes holds only tensors and plain values (dicts, lists, tuples, strings, numbers, None), which
`torch.load(weights_only=True)` accepts, and a file holding anything else is refused with a message, never opened
another way.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals
from torch.torch_version import TorchVersion

from ..errors import ModelFileError

#: Classes a model file may hold beside tensors and plain values, each with why:
#: TorchVersion - `torch.__version__` (a str subclass without code of its own) in the run record of model.pt
#: files written before 2026-12-03; newer files store it as a plain string.
ALLOWED = (TorchVersion,)


def load_model_file(path: str | os.PathLike, map_location: Any = "cpu", what: str = "model file") -> dict:
    """-> the file's contents, read with torch's safe (weights-only) loader; ModelFileError names the file and
    the reason when it holds code (a class or callable that loading would run) or is not a readable file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such {what}")
    try:
        with safe_globals(list(ALLOWED)):
            blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch(path):        # e.g. a text or image file: nothing to refuse, just not one
            raise ModelFileError(f"{path}: not a readable {what} (not written by torch.save)") from None
        raise ModelFileError(_refusal(path, what, exc)) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable {what} (truncated, or not written by torch.save): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(blob, dict):
        raise ModelFileError(f"{path}: not an ichbench {what}: it holds a {type(blob).__name__}, not a dict")
    return blob


def _looks_like_torch(path: Path) -> bool:
    """Whether a file is in one of torch.save's formats: a zip archive, or a pickle (the legacy format)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"              # the PROTO opcode every pickle of protocol 2 or later starts with


def _refusal(path: Path, what: str, exc: Exception) -> str:
    try:            # reads the pickle's opcodes only: nothing in the file is run
        names = [g for g in get_unsafe_globals_in_checkpoint(path) if g not in {_name(c) for c in ALLOWED}]
    except Exception:                                        # noqa: BLE001 - the names are a courtesy
        names = []
    held = f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
    return (f"{path}: refused to open this {what}: it holds Python objects beyond tensors and plain values"
            f"{held}, i.e. code that opening it would run. ichbench only opens files that hold data. If this "
            f"file came from someone else, do not open it another way; if your own ichbench run wrote it "
            f"before 2026-12-03, retrain (the pipeline reruns the job when model.pt is deleted).")


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
