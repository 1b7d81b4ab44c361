"""A fold's slices for training and scoring, batched without per-slice Python: loaded once into one in-memory
array when they fit the memory budget, else gathered batch by batch from the memory-mapped slice store
(`cache.store`), on a GPU through pinned host buffers filled one batch ahead of the step."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from ..cache import pack, store
from ..errors import ConfigError
from ..inputs.windowing import dequantise

log = logging.getLogger(__name__)

MASK_KEYS = ("head_mask", "brain_mask")
DEFAULT_BUDGET_GB = store.DEFAULT_BUDGET_GB


@dataclass
class SliceSet:
    """Slices of one fold part: uint8 images (N, C, S, S), masks (N, S, S) and their manifest rows. The arrays
    are numpy arrays (in memory) or `store.StoreArray`s (gathers from the memory-mapped store)."""

    images: np.ndarray | store.StoreArray
    masks: dict[str, np.ndarray | store.StoreArray]
    rows: pd.DataFrame

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)


def row_chunks(array, rows: int = 512) -> Iterator[np.ndarray]:
    """An in-memory array as it is, a StoreArray `rows` rows at a time: the same bytes in the same order."""
    if isinstance(array, np.ndarray):
        yield array
    else:
        yield from array.chunks(rows)


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


def parse_in_memory(value) -> str:
    """train.in_memory -> "auto", "true" or "false" (booleans and their spellings accepted)."""
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return text
    if text in ("1", "yes", "on"):
        return "true"
    if text in ("0", "no", "off"):
        return "false"
    raise ConfigError(f"train.in_memory must be auto, true or false, not {value!r}")


def open_slices(rows: pd.DataFrame, extra: tuple[str, ...] = (), *, in_memory="auto",
                memory_budget_gb: float = DEFAULT_BUDGET_GB, where: str = "the fold") -> SliceSet:
    """The slices of manifest rows, in row order: in memory (`load_slices`) with `in_memory` true, or auto
    and the images and masks fit in `memory_budget_gb`; else StoreArrays over the shards' slice stores.
    A fold that must be read from the store but has none raises ConfigError naming the shard and the fix."""
    mode = parse_in_memory(in_memory)
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise ValueError("no slices to load (empty manifest part)")
    keys = MASK_KEYS + tuple(k for k in extra if k not in MASK_KEYS)
    if mode == "true":
        return load_slices(rows, extra)
    with np.load(rows["npz"].iloc[0], allow_pickle=False) as z:
        shape = z["images"].shape[1:]
    need = len(rows) * (int(np.prod(shape)) + len(keys) * int(np.prod(shape[1:])))
    budget = float(memory_budget_gb) * 2**30
    if mode == "auto" and need <= budget:
        return load_slices(rows, extra)
    arrays, why = store.open_fold(rows, keys)
    if arrays is None:        # a shard not packed (its cohort fitted the budget) or packed before its NPZs changed
        try:
            packed = pack.ensure_packed(sorted({os.path.dirname(str(n)) for n in rows["npz"].unique()}))
        except (OSError, ConfigError) as exc:
            packed, why = [], f"{why}, and packing it failed ({exc})"
        if packed:
            arrays, why = store.open_fold(rows, keys)
    if arrays is None:
        reason = ("train.in_memory is false" if mode == "false" else
                  f"its slices take {need / 2**30:.2f} GB, over train.memory_budget_gb ({memory_budget_gb})")
        other = "set train.in_memory: auto" if mode == "false" else "raise train.memory_budget_gb"
        raise ConfigError(f"{where}: {reason}, so it is read from the slice store, but {why}. Pack the cache "
                          f"shards with `ichbench pack --cache results/data/cache/shard-*`, or {other}")
    log.info("%s: %d slices (%.2f GB) read from the slice store as memory-mapped gathers",
             where, len(rows), need / 2**30)
    return SliceSet(arrays["images"], {k: arrays[k] for k in keys}, rows)


def _resident(array, where: torch.device) -> torch.Tensor:
    """An array as one tensor on `where`; a StoreArray is copied in chunks (host memory stays bounded)."""
    if isinstance(array, np.ndarray):
        return torch.from_numpy(array).to(where)
    out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=where)
    start = 0
    for chunk in array.chunks():
        out[start:start + len(chunk)].copy_(torch.from_numpy(chunk))
        start += len(chunk)
    return out


class DeviceBatches:
    """Decoded batches of a SliceSet: one gather and one dtype conversion per batch.

    In memory, or a store-read set that fits the GPU: held as tensors (on the GPU when it fits, else pinned
    host memory) and gathered there. Otherwise streamed: each batch is gathered from the memory map into a
    host buffer (pinned on a GPU, `pin`), copied with non_blocking, and with `prefetch` (default on a GPU) the
    next batch's gather runs in a thread while the step runs. Both give the same batches for the same order."""

    def __init__(self, data: SliceSet, device: torch.device, mask_keys: tuple[str, ...] = (),
                 max_gpu_bytes: float = 8e9, prefetch: bool | None = None, pin: bool | None = None):
        self.device = device
        self.mask_keys = tuple(mask_keys)
        self.n = len(data.images)
        on_gpu = device.type == "cuda" and data.images.nbytes < max_gpu_bytes
        self.source = None if (data.in_memory or on_gpu) else data
        if self.source is not None:
            cuda = device.type == "cuda"
            self.pin = (cuda if pin is None else bool(pin)) and torch.cuda.is_available()
            self.prefetch = cuda if prefetch is None else bool(prefetch)
            self._slots: list[dict[str, torch.Tensor] | None] = [None, None]
            self._events: list = [None, None]
            self._turn = 0
            return
        where = device if on_gpu else torch.device("cpu")
        self.images = _resident(data.images, where)
        self.masks = {k: _resident(data.masks[k], where) for k in mask_keys}
        if device.type == "cuda" and not on_gpu:
            self.images = self.images.pin_memory()
            self.masks = {k: v.pin_memory() for k, v in self.masks.items()}

    def __len__(self) -> int:
        return self.n

    @property
    def streamed(self) -> bool:
        return self.source is not None

    def _host_gather(self, idx: np.ndarray, slot: int) -> dict[str, torch.Tensor]:
        """Batch `idx` gathered from the map into host tensors (the slot's pinned buffers when pinning)."""
        arrays = {"x": self.source.images, **{k: self.source.masks[k] for k in self.mask_keys}}
        if not self.pin:
            return {k: torch.from_numpy(a.take(idx)) for k, a in arrays.items()}
        if self._events[slot] is not None:
            self._events[slot].synchronize()          # the copy out of this buffer has finished
        bufs = self._slots[slot]
        if bufs is None or bufs["x"].shape[0] < len(idx):
            bufs = {k: torch.from_numpy(np.empty((len(idx),) + a.row_shape, a.dtype)).pin_memory()
                    for k, a in arrays.items()}
            self._slots[slot] = bufs
        out = {k: bufs[k][:len(idx)] for k in arrays}
        for k, a in arrays.items():
            a.take(idx, out=out[k].numpy())
        return out

    def _upload(self, host: dict[str, torch.Tensor], slot: int) -> dict[str, torch.Tensor]:
        out = {"x": dequantise(host["x"].to(self.device, non_blocking=True))}
        for k in self.mask_keys:
            out[k] = host[k].to(self.device, non_blocking=True)
        if self.pin:
            self._events[slot] = torch.cuda.Event()
            self._events[slot].record()
        return out

    def _next_slot(self) -> int:
        self._turn += 1
        return self._turn % 2

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.streamed:
            slot = self._next_slot()
            return self._upload(self._host_gather(np.asarray(idx.cpu().numpy(), np.int64), slot), slot)
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
        stop = n - (n % batch_size) if (drop_last and n >= batch_size) else n
        if not self.streamed:
            order = order.to(self.images.device)   # one copy per epoch, not one (synchronising) copy per batch
            for start in range(0, stop, batch_size):
                yield self.batch(order[start:start + batch_size])
            return
        order = order.numpy().astype(np.int64)
        parts = [order[s:s + batch_size] for s in range(0, stop, batch_size)]
        if not self.prefetch:
            for idx in parts:
                slot = self._next_slot()
                yield self._upload(self._host_gather(idx, slot), slot)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="ichbench-gather") as pool:
            slots = [self._next_slot()]
            ahead = pool.submit(self._host_gather, parts[0], slots[0]) if parts else None
            for i in range(len(parts)):
                host, slot = ahead.result(), slots[i]
                if i + 1 < len(parts):               # the next batch's gather runs while this one's step does
                    slots.append(self._next_slot())
                    ahead = pool.submit(self._host_gather, parts[i + 1], slots[-1])
                yield self._upload(host, slot)
