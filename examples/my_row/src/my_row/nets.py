"""The example row's network: a small fully convolutional autoencoder (three stride-2 stages down, three up)."""
from __future__ import annotations

import torch
from torch import nn


def _stage(cin: int, cout: int, up: bool) -> nn.Sequential:
    conv = (nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1) if up
            else nn.Conv2d(cin, cout, 4, stride=2, padding=1))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class SmallConvAE(nn.Module):
    """(B, C, S, S) -> (B, C, S, S) in [-1, 1], S divisible by 8; the code is (B, code, S/8, S/8)."""

    def __init__(self, channels: int, width: int = 8, code: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(_stage(channels, width, False), _stage(width, 2 * width, False),
                                     nn.Conv2d(2 * width, code, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(_stage(code, 2 * width, True), _stage(2 * width, width, True),
                                     nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
