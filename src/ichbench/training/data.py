"""Loading a fold's slices once into one in-memory array, and batching it without per-slice Python."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from ..inputs.windowing import dequantise

MASK_KEYS = ("head_mask", "brain_mask")


@dataclass
class SliceSet:
    """Slices of one fold part: uint8 images (N, C, S, S), masks (N, S, S) and their manifest rows."""

    images: np.ndarray
    masks: dict[str, np.ndarray]
    rows: pd.DataFrame

    def __len__(self) -> int:
        return len(self.rows)


def load_slices(rows: pd.DataFrame, extra: tuple[str, ...] = ()) -> SliceSet:
    """Read the cached slices named by manifest rows, one NPZ read per series, in row order."""
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise ValueError("no slices to load (empty manifest part)")
    with np.load(rows["npz"].iloc[0], allow_pickle=False) as z:
        shape = z["images"].shape[1:]
    images = np.empty((len(rows),) + shape, dtype=np.uint8)
    masks = {k: np.empty((len(rows),) + shape[1:], dtype=bool) for k in MASK_KEYS + tuple(extra)}
    for path, g in rows.groupby("npz", sort=False):
        where = g.index.to_numpy()
        idx = g["slice_index"].to_numpy()
        with np.load(path, allow_pickle=False) as z:
            imgs = z["images"]
            if imgs.shape[1:] != shape:
                raise ValueError(f"{path}: cached slices are {imgs.shape[1:]}, others {shape}; "
                                 "rerun preprocessing with one image size")
            images[where] = imgs[idx]
            for k in masks:
                masks[k][where] = z[k][idx]
    return SliceSet(images, masks, rows)


class DeviceBatches:
    """Holds a SliceSet as tensors (on the GPU when it fits, else pinned host memory) and yields
    decoded batches: one gather and one dtype conversion per batch."""

    def __init__(self, data: SliceSet, device: torch.device, mask_keys: tuple[str, ...] = (),
                 max_gpu_bytes: float = 8e9):
        on_gpu = device.type == "cuda" and data.images.nbytes < max_gpu_bytes
        where = device if on_gpu else torch.device("cpu")
        self.device = device
        self.images = torch.from_numpy(data.images).to(where)
        self.masks = {k: torch.from_numpy(data.masks[k]).to(where) for k in mask_keys}
        if device.type == "cuda" and not on_gpu:
            self.images = self.images.pin_memory()
            self.masks = {k: v.pin_memory() for k, v in self.masks.items()}

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.images.device)
        out = {"x": dequantise(self.images[idx].to(self.device, non_blocking=True))}
        for k, v in self.masks.items():
            out[k] = v[idx].to(self.device, non_blocking=True)
        return out

    def epoch(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
              drop_last: bool = False, first_n: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """One pass in batches; `first_n`: a pass over the first n slices only (in SliceSet order)."""
        n = len(self) if not first_n else min(len(self), int(first_n))
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.images.device)   # one copy per epoch, not one (synchronising) copy per batch
        stop = n - (n % batch_size) if (drop_last and n >= batch_size) else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])
