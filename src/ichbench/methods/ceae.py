"""CeAE: context-encoding autoencoder (Zimmerer et al. 2018). Training input: x with one square
erased to -1 (air), its area `mask_fraction` of the image (0.024: 20 x 20 px at 128), at a uniformly
random position per slice (torch global RNG); the target is the unmasked x. Pixel map: (x - AE(x))^2 on
the unmasked input.
"""
from __future__ import annotations

import math

import torch

from .ae import AutoEncoderMethod
from .base import register


def erase_random_square(x: torch.Tensor, fraction: float, fill: float = -1.0) -> torch.Tensor:
    """Copy of x (B, C, H, W) with one square of side round(sqrt(fraction * H * W)) set to `fill`,
    placed at a random position per image (vectorised; torch global RNG)."""
    b, _, h, w = x.shape
    side = max(1, min(h, w, round(math.sqrt(fraction * h * w))))
    y0 = torch.randint(0, h - side + 1, (b, 1), device=x.device)
    x0 = torch.randint(0, w - side + 1, (b, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None]
    cols = torch.arange(w, device=x.device)[None]
    in_rows = (rows >= y0) & (rows < y0 + side)                 # (B, H)
    in_cols = (cols >= x0) & (cols < x0 + side)                 # (B, W)
    square = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(square, fill)


@register
class CeAE(AutoEncoderMethod):
    name = "CeAE"
    paper = "Zimmerer et al. 2018, context-encoding autoencoder"
    defaults = {"mask_fraction": 0.024, "mask_value": -1.0}

    def loss(self, batch):
        x = batch["x"]
        masked = erase_random_square(x, self.params["mask_fraction"], self.params["mask_value"])
        return torch.mean((x - self.model(masked).float()) ** 2), {}

    def score_map(self, batch):
        x = batch["x"]
        return (x - self.model(x).float()) ** 2
