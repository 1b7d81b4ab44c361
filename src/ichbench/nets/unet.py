"""The UNet of the denoising autoencoder row (DAE, Kascenas et al. 2022), built as the MedIAnomaly reference
builds it (`reconstruction/networks/unet.py`, from the DAE authors' code; `UNet(in_c, n_classes=in_c)`,
depth 5, first width 2^6):

- 5 resolution levels of widths w, 2w, 4w, 8w, 16w (w = 64: 64 -> 1024);
- each level: two [reflection pad 1 -> weight-standardised 3 x 3 conv (with bias) -> Swish -> GroupNorm]
  layers (activation before normalisation, as the reference);
- GroupNorm groups = the median divisor of the channel count (`median_divisor_groups`: 8, 16, 16, 32, 32
  groups at 64, 128, 256, 512, 1024 channels);
- 2 x 2 average pooling down; up: 2 x 2 stride-2 transposed conv (with bias) halving the channels,
  concatenation with the skip, then a level block (2 x -> 1 x channels);
- a 1 x 1 conv to the input channels, linear output.

31,043,651 parameters for 3 channels at w = 64 (the reference's count). `width` makes a narrow UNet for
CPU demos (same layout).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WSConv2d(nn.Conv2d):
    """Conv2d whose weights are standardised before every use (Qiao et al. 2019), as the reference's
    `WNConv2d`: w <- (w - mean) / (std + 1e-5), mean and std (unbiased, n - 1) over each output filter.
    The standardisation runs in the weights' dtype (float32)."""

    eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.flatten(1).std(dim=1).view(-1, 1, 1, 1) + self.eps)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def median_divisor_groups(channels: int) -> int:
    """GroupNorm group count of the reference: the divisor of `channels` in the middle of the sorted
    list of its divisors (upper middle for an even count): 64 -> 8, 128 -> 16, 1024 -> 32."""
    divisors = [d for d in range(1, channels + 1) if channels % d == 0]
    return divisors[len(divisors) // 2]


def _layer(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(1), WSConv2d(cin, cout, 3), nn.SiLU(),
            nn.GroupNorm(median_divisor_groups(cout), cout)]


class ConvBlock(nn.Sequential):
    """Two [reflection pad -> WS conv 3 x 3 -> Swish -> GroupNorm] layers."""

    def __init__(self, cin: int, cout: int):
        super().__init__(*_layer(cin, cout), *_layer(cout, cout))


class UNet(nn.Module):
    """(B, C, S, S) -> (B, C, S, S); S must be divisible by 2^(levels - 1)."""

    def __init__(self, in_channels: int = 3, width: int = 64, levels: int = 5):
        super().__init__()
        chans = [width * 2 ** i for i in range(levels)]
        self.factor = 2 ** (levels - 1)
        self.down = nn.ModuleList([ConvBlock(in_channels, chans[0])] +
                                  [ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.pool = nn.AvgPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(chans[:-1], chans[1:])])
        self.merge = nn.ModuleList([ConvBlock(2 * a, a) for a in chans[:-1]])
        self.head = nn.Conv2d(chans[0], in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"UNet input {tuple(x.shape[-2:])} must be divisible by {self.factor}")
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            h = merge(torch.cat([up(h), skips.pop()], dim=1))
        return self.head(h)
