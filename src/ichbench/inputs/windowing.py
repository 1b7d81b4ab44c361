"""Hounsfield units -> the paper's 3-channel CT windows at 128 x 128, scaled to [-1, 1].

One slice travels: stored pixel values --(RescaleSlope, RescaleIntercept)--> HU
--(three windows, each clipped to [level - width/2, level + width/2])--> [-1, 1] per channel
--(area-averaging resize)--> S x S --(quantise)--> uint8 in the cache.

The cache stores uint8 codes q = round((x + 1) * 127.5); training decodes x = q / 127.5 - 1.
One code step is 2/255 of the window, i.e. 0.31 HU in the brain window, finer than CT noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


def apply_windows(hu: np.ndarray, windows: Sequence[Window] = PAPER_WINDOWS) -> np.ndarray:
    """HU image(s) (..., H, W) -> windows (..., C, H, W) in [-1, 1], float32.

    Each window maps [level - width/2, level + width/2] linearly onto [-1, 1] and clips outside.
    """
    hu = np.asarray(hu, dtype=np.float32)
    out = np.empty(hu.shape[:-2] + (len(windows),) + hu.shape[-2:], dtype=np.float32)
    for c, w in enumerate(windows):
        channel = (hu - np.float32(w.low)) * np.float32(2.0 / w.width) - np.float32(1.0)
        np.clip(channel, -1.0, 1.0, out=out[..., c, :, :])
    return out


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, C, H, W) float images to (N, C, size, size).

    Downsampling uses area averaging (anti-aliased, no ringing, values stay inside the input
    range), upsampling bilinear interpolation.
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if h >= size and w >= size:
        out = F.interpolate(t, size=(size, size), mode="area")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out.numpy()


def resize_mask(masks: np.ndarray, size: int) -> np.ndarray:
    """Resize boolean masks (N, H, W) to (N, size, size): a pixel is set where >= half is covered."""
    if masks.shape[-2:] == (size, size):
        return masks.astype(bool)
    frac = resize(masks[:, None].astype(np.float32), size)[:, 0]
    return frac >= 0.5


def quantise(x: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 codes (the cache's dtype)."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray | torch.Tensor):
    """uint8 codes -> [-1, 1] float32 (numpy or torch, matching the input)."""
    if isinstance(q, torch.Tensor):
        return q.float().div_(127.5).sub_(1.0)   # division, as the numpy branch: identical values
    return q.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def hu_to_cache(hu: np.ndarray, windows: Sequence[Window], size: int) -> np.ndarray:
    """HU slices (N, H, W) -> cached uint8 windows (N, C, size, size)."""
    return quantise(resize(apply_windows(hu, windows), size))
