"""ColorJitter of the two-stage rows (torchvision's brightness and contrast jitter) for windowed CT slices.

The reference (MedIAnomaly `ssl/two_stage`, after Li et al. 2021) applies torchvision
`ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1)` to every training image before the
CutPaste, and again to the cut patch. Its images are grey (an 8-bit grey image replicated to RGB), so only
brightness and contrast change anything there: saturation blends an image with its own grey version and hue
rotates the colour angle, and both leave R = G = B untouched. Our 3 channels are CT windows, not colours;
mixing them (which saturation and hue would do) has no meaning, so we apply what the reference effectively
applies, to each window as to a grey image, on the [0, 1] scale ((x + 1) / 2) as torchvision does:

    brightness  u -> clamp(b u, 0, 1)                     b ~ U[max(0, 1 - s), 1 + s]
    contrast    u -> clamp(c u + (1 - c) mean(u), 0, 1)   c ~ U[max(0, 1 - s), 1 + s]

with one (b, c) per image for all windows, mean(u) per window (over the image, or over the patch for a
patch jitter), and the two operations in a random order per image (torchvision draws a random order of
its four operations, so brightness comes first with probability 1/2).
"""
from __future__ import annotations

import numpy as np
import torch


def adjust(u: torch.Tensor, bright: torch.Tensor, contrast: torch.Tensor, bright_first: torch.Tensor,
           region: torch.Tensor | None = None) -> torch.Tensor:
    """Brightness and contrast of (B, C, H, W) images `u` in [0, 1] with per-image factors (B,) and order
    (B,) bool. The contrast mean is taken per channel over `region` ((B, H, W) bool; None = whole image)."""
    b = bright.to(u.device, torch.float32)[:, None, None, None]
    c = contrast.to(u.device, torch.float32)[:, None, None, None]
    w = torch.ones_like(u[:, :1]) if region is None else region[:, None].to(u.device, torch.float32)

    def contrast_of(v: torch.Tensor) -> torch.Tensor:
        mean = (v * w).sum((2, 3), keepdim=True) / w.sum((2, 3), keepdim=True).clamp_min(1.0)
        return (c * v + (1.0 - c) * mean).clamp(0.0, 1.0)

    u = u.float()
    bc = contrast_of((b * u).clamp(0.0, 1.0))
    cb = (b * contrast_of(u)).clamp(0.0, 1.0)
    return torch.where(bright_first.to(u.device)[:, None, None, None], bc, cb)


def draw(rng: np.random.Generator, n: int, brightness: float, contrast: float):
    """Per-image factors and order, drawn in a fixed order from `rng`: (bright, contrast, bright_first)."""
    b = rng.uniform(max(0.0, 1.0 - brightness), 1.0 + brightness, n)
    c = rng.uniform(max(0.0, 1.0 - contrast), 1.0 + contrast, n)
    first = rng.random(n) < 0.5
    return torch.as_tensor(b), torch.as_tensor(c), torch.as_tensor(first)


def color_jitter(x: torch.Tensor, rng: np.random.Generator, strength: float,
                 region: torch.Tensor | None = None) -> torch.Tensor:
    """Jitter (B, C, H, W) slices in [-1, 1] (brightness and contrast both of `strength`); same dtype out.
    `strength` 0 returns `x` itself and draws nothing."""
    if strength <= 0:
        return x
    bright, contrast, first = draw(rng, x.shape[0], strength, strength)
    u = adjust((x.float() + 1.0) * 0.5, bright, contrast, first, region)
    return (u * 2.0 - 1.0).to(x.dtype)
