"""Head-like axial slices made in memory (skull, brain, ventricles, noise), for tests, benchmarks and figures.

`toy_head_slices` goes from HU through the pipeline's own windowing and mask code, so its slices look like
the cache's without a DICOM folder or a slice cache.
"""
from __future__ import annotations

import numpy as np
import torch

from ..inputs.masks import brain_mask, head_mask
from ..inputs.windowing import PAPER_WINDOWS, apply_windows, dequantise, quantise


def toy_head_slices(n: int, size: int = 128, seed: int = 0, noise_hu: float = 5.0):
    """n head-like axial slices: -> (images float32 (n, 3, S, S) in [-1, 1] on the cache's 8-bit grid,
    head masks, brain masks (n, S, S) bool), computed with the pipeline's windows and masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    hus = np.empty((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(-0.04, 0.04, 2)
        ay, ax = rng.uniform(0.36, 0.44), rng.uniform(0.30, 0.38)
        r = np.sqrt(((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2)
        hu = np.full((size, size), -1000.0, np.float32)
        hu[r < 1.0] = 40.0                                   # scalp
        hu[r < 0.95] = rng.uniform(700, 1200)                # skull
        inside = r < 0.86
        # grey/white matter texture: smooth noise of +-8 HU around 32 HU
        tex = rng.normal(0, 1, (size // 8, size // 8)).astype(np.float32)
        tex = torch.nn.functional.interpolate(torch.from_numpy(tex)[None, None], size=(size, size), mode="bicubic",
                                              align_corners=False)[0, 0].numpy()
        hu[inside] = 32.0 + 8.0 * tex[inside]
        for sx in (-1, 1):                                   # lateral ventricles (CSF)
            v = ((yy - cy + 0.03) / rng.uniform(0.07, 0.12)) ** 2 + ((xx - cx - sx * 0.06) / 0.035) ** 2 < 1
            hu[v & inside] = 5.0
        hus[i] = hu + rng.normal(0, noise_hu, (size, size)).astype(np.float32) * (hu > -900)
    images = dequantise(quantise(apply_windows(hus, PAPER_WINDOWS)))
    heads = np.stack([head_mask(h) for h in hus])
    brains = np.stack([brain_mask(h, m) for h, m in zip(hus, heads)])
    return images.astype(np.float32), heads, brains
