"""Hounsfield units -> the paper's 3-channel CT windows at 128 x 128, scaled to [-1, 1].

One slice travels: stored pixel values --(RescaleSlope, RescaleIntercept)--> HU
--(three windows, each clipped to [level - width/2, level + width/2])--> [-1, 1] per channel
--(area-averaging resize)--> S x S --(quantise)--> uint8 in the cache.

The cache stores uint8 codes q = round((x + 1) * 127.5); training decodes x = q / 127.5 - 1.
One code step is 2/255 of the window, i.e. 0.31 HU in the brain window, finer than CT noise.

The downsampling resize is numpy's, computed exactly as torch's area interpolation (adaptive average
pooling: each output the float32 sum of its window in row-major order, then divided by the window's
height and then its width), so that preprocessing need not import torch (2.5 CPU-seconds and 600 MiB
of resident memory at start-up); upsampling, rare for CT, still uses torch, imported when needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Window:
    name: str
    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0


#: The paper's windows (level / width in HU): brain, subdural, bone.
PAPER_WINDOWS: tuple[Window, ...] = (
    Window("brain", 40.0, 80.0),
    Window("subdural", 75.0, 215.0),
    Window("bone", 600.0, 2800.0),
)


def windows_from_config(entries: Sequence[dict]) -> tuple[Window, ...]:
    return tuple(Window(str(e["name"]), float(e["level"]), float(e["width"])) for e in entries)


def to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored pixel values -> HU (float32): HU = stored * RescaleSlope + RescaleIntercept."""
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def apply_windows(hu: np.ndarray, windows: Sequence[Window] = PAPER_WINDOWS,
                  out: np.ndarray | None = None) -> np.ndarray:
    """HU image(s) (..., H, W) -> windows (..., C, H, W) in [-1, 1], float32.

    Each window maps [level - width/2, level + width/2] linearly onto [-1, 1] and clips outside.
    `out`: a float32 array of the result's shape to write into (no allocation per call).
    """
    hu = np.asarray(hu, dtype=np.float32)
    shape = hu.shape[:-2] + (len(windows),) + hu.shape[-2:]
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}, not {shape} float32")
    for c, w in enumerate(windows):
        channel = out[..., c, :, :]
        # the same float32 operations, in the same order, as (hu - low) * (2 / width) - 1, then clip
        np.subtract(hu, np.float32(w.low), out=channel)
        np.multiply(channel, np.float32(2.0 / w.width), out=channel)
        np.subtract(channel, np.float32(1.0), out=channel)
        np.maximum(channel, np.float32(-1.0), out=channel)
        np.minimum(channel, np.float32(1.0), out=channel)
    return out


def _area_windows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each output pixel's input window, as torch's adaptive pooling:
    start = floor(i * n_in / n_out), end = ceil((i + 1) * n_in / n_out)."""
    i = np.arange(n_out, dtype=np.int64)
    return (i * n_in) // n_out, ((i + 1) * n_in + n_out - 1) // n_out


def area_resize(images: np.ndarray, rows: int, cols: int | None = None) -> np.ndarray:
    """Area-average (..., H, W) float32 images down to (..., rows, cols), bit for bit as torch's
    `F.interpolate(mode="area")` on the CPU (adaptive average pooling of a contiguous tensor):
    every output is the float32 sum of its input window taken in row-major order, divided by the
    window's height and then by its width. H >= rows and W >= cols."""
    cols = rows if cols is None else cols
    x = np.asarray(images, dtype=np.float32)
    h, w = x.shape[-2:]
    if h < rows or w < cols:
        raise ValueError(f"area_resize downsamples only: {h} x {w} -> {rows} x {cols}")
    lead = x.shape[:-2]
    acc = np.zeros(lead + (rows, cols), np.float32)
    if h % rows == 0 and w % cols == 0:                  # equal windows: strided views, no copies
        kh, kw = h // rows, w // cols
        blocks = x.reshape(lead + (rows, kh, cols, kw))
        for a in range(kh):
            for b in range(kw):
                np.add(acc, blocks[..., :, a, :, b], out=acc)
        np.divide(acc, np.float32(kh), out=acc)
        np.divide(acc, np.float32(kw), out=acc)
        return acc
    r0, r1 = _area_windows(h, rows)
    c0, c1 = _area_windows(w, cols)
    kh, kw = r1 - r0, c1 - c0
    for a in range(int(kh.max())):
        r_ok = a < kh
        r_idx = np.minimum(r0 + a, h - 1)
        for b in range(int(kw.max())):
            ok = r_ok[:, None] & (b < kw)[None, :]
            part = x[..., r_idx[:, None], np.minimum(c0 + b, w - 1)[None, :]]
            np.add(acc, part, out=acc, where=np.broadcast_to(ok, acc.shape))
    np.divide(acc, kh.astype(np.float32)[:, None], out=acc)
    np.divide(acc, kw.astype(np.float32)[None, :], out=acc)
    return acc


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, C, H, W) float images to (N, C, size, size).

    Downsampling uses area averaging (anti-aliased, no ringing, values stay inside the input
    range; `area_resize`), upsampling bilinear interpolation (torch).
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.astype(np.float32, copy=False)
    if h >= size and w >= size:
        return area_resize(images, size)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy()


def resize_mask(masks: np.ndarray, size: int) -> np.ndarray:
    """Resize boolean masks (N, H, W) to (N, size, size): a pixel is set where >= half is covered."""
    if masks.shape[-2:] == (size, size):
        return masks.astype(bool)
    frac = resize(masks[:, None].astype(np.float32), size)[:, 0]
    return frac >= 0.5


def quantise(x: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 codes (the cache's dtype)."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def dequantise(q):
    """uint8 codes -> [-1, 1] float32 (numpy or torch, matching the input)."""
    if not isinstance(q, (np.ndarray, np.generic)):   # a torch tensor (torch is not imported here)
        return q.float().div_(127.5).sub_(1.0)   # division, as the numpy branch: identical values
    return q.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def hu_to_cache(hu: np.ndarray, windows: Sequence[Window], size: int) -> np.ndarray:
    """HU slices (N, H, W) -> cached uint8 windows (N, C, size, size)."""
    return quantise(resize(apply_windows(hu, windows), size))
