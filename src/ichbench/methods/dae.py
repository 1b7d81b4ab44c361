"""DAE: denoising autoencoder (Kascenas et al. 2022). A UNet (`nets.unet`) learns to remove coarse
noise from normal slices:

    loss = MSE( UNet(x + n), x )          map = (x - UNet(x))^2

Noise n: Gaussian with std `noise_std` (0.2) drawn at `noise_res` x `noise_res` (16 x 16) per slice
and channel (or one field shared by the channels with `noise_shared_channels`), bilinearly upsampled
to the image size with `align_corners=True` (as the reference), rolled (translated with wrap-around) by
one random shift per batch in each direction, and set to zero outside the head mask
(`needs = ("head_mask",)`; `noise_mask: none` leaves it over the whole image). All draws use the torch
global RNG. The reference code's leftover `n = (n - 0.5) * 2` line can be reproduced with
`reference_noise_shift: true` (off by default). The reference masks only its brain-MRI sets (x > min x),
so on CT it runs as `reference_noise_shift: true, noise_mask: none`: shifted noise over the whole image,
air included. The reference trains with batch 16 (a recipe value).
The UNet (`nets.unet`) is the reference's at `unet_width` 64 and `unet_levels` 5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nets.unet import UNet
from .base import Method, register


def coarse_noise(x: torch.Tensor, std: float, res: int, mask: torch.Tensor | None = None,
                 shared_channels: bool = False, reference_shift: bool = False) -> torch.Tensor:
    """Coarse Gaussian noise shaped like x (B, C, H, W), zero where `mask` (B, H, W) is False."""
    b, c, h, w = x.shape
    n = torch.randn(b, 1 if shared_channels else c, res, res, device=x.device) * std
    n = F.interpolate(n, size=(h, w), mode="bilinear", align_corners=True)
    # the roll's shifts are drawn from the CPU RNG as before but stay tensors: the roll is an index
    # gather on the device (torch.roll's out[i] = n[(i - s) mod h]), no value is read back to the host
    sy, sx = torch.randint(0, h, (1,)), torch.randint(0, w, (1,))
    rows = (torch.arange(h) - sy) % h
    cols = (torch.arange(w) - sx) % w
    n = n[:, :, rows.to(n.device, non_blocking=True)][..., cols.to(n.device, non_blocking=True)]
    n = n.expand(b, c, h, w)
    if reference_shift:
        n = (n - 0.5) * 2
    if mask is not None:
        n = n * mask[:, None].to(n.dtype)
    return n


@register
class DAE(Method):
    name = "DAE"
    group = "reconstruction"
    paper = "Kascenas et al. 2022, denoising autoencoder"
    needs = ("head_mask",)
    defaults = {"noise_std": 0.2, "noise_res": 16, "noise_shared_channels": False,
                "reference_noise_shift": False, "noise_mask": "head", "unet_width": 64, "unet_levels": 5}

    def __init__(self, params, in_channels, image_size, device):
        super().__init__(params, in_channels, image_size, device)
        if self.params["noise_mask"] not in ("head", "none"):
            raise ValueError(f"DAE: noise_mask must be 'head' or 'none', not {self.params['noise_mask']!r}")

    def build(self) -> torch.nn.Module:
        p = self.params
        return UNet(self.in_channels, p["unet_width"], p["unet_levels"])

    def loss(self, batch):
        x = batch["x"]
        p = self.params
        mask = batch["head_mask"] if p["noise_mask"] == "head" else None
        n = coarse_noise(x, p["noise_std"], p["noise_res"], mask,
                         p["noise_shared_channels"], p["reference_noise_shift"])
        return torch.mean((x - self.model(x + n).float()) ** 2), {}

    def score_map(self, batch):
        x = batch["x"]
        return (x - self.model(x).float()) ** 2
