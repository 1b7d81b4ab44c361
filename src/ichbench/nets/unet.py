"""The UNet of the denoising autoencoder row (DAE, Kascenas et al. 2022), as the paper describes it:
5 resolution levels with widths w, 2w, 4w, 8w, 16w (w = 64: 64 -> 1024), each level two
[weight-standardised 3 x 3 conv -> GroupNorm -> Swish] layers, average pooling (2 x 2) down, 2 x 2
stride-2 transposed convolutions up, skip connections by concatenation, and a 1 x 1 conv to the input
channels with a linear output. `width` makes a narrow UNet for CPU demos. GroupNorm uses
gcd(groups, channels) groups (32 at full width).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class WSConv2d(nn.Conv2d):
    """Conv2d whose weights are standardised (zero mean, unit variance over each output filter)
    before every use (Qiao et al. 2019). The standardisation runs in the weights' dtype (float32)."""

    eps = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) * torch.rsqrt(var + self.eps)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, groups: int = 32):
        super().__init__(WSConv2d(cin, cout, 3, padding=1), _norm(cout, groups), nn.SiLU(inplace=True),
                         WSConv2d(cout, cout, 3, padding=1), _norm(cout, groups), nn.SiLU(inplace=True))


class UNet(nn.Module):
    """(B, C, S, S) -> (B, C, S, S); S must be divisible by 2^(levels - 1)."""

    def __init__(self, in_channels: int = 3, width: int = 64, levels: int = 5, groups: int = 32):
        super().__init__()
        chans = [width * 2 ** i for i in range(levels)]
        self.factor = 2 ** (levels - 1)
        self.down = nn.ModuleList([ConvBlock(in_channels, chans[0], groups)] +
                                  [ConvBlock(a, b, groups) for a, b in zip(chans[:-1], chans[1:])])
        self.pool = nn.AvgPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(chans[:-1], chans[1:])])
        self.merge = nn.ModuleList([ConvBlock(2 * a, a, groups) for a in chans[:-1]])
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
