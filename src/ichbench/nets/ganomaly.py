"""GANomaly's networks (Akcay et al. 2018), built from the shared autoencoder's parts:

generator      = AutoEncoder (encoder 1 -> z -> decoder -> x^) + a second LatentEncoder (x^ -> z^)
discriminator  = ConvEncoder (the same conv stack; its output is the feature map used for feature
                 matching) -> Conv (4w -> 1, kernel S/16, the whole remaining map) -> one logit
"""
from __future__ import annotations

import torch
from torch import nn

from .autoencoder import AutoEncoder, ConvEncoder


class LatentEncoder(nn.Module):
    """ConvEncoder followed by the encoding half of the dense bottleneck: (B, C, S, S) -> (B, latent)."""

    def __init__(self, in_channels: int, image_size: int, width: int = 16, latent_dim: int = 16,
                 hidden: int = 1024):
        super().__init__()
        self.conv = ConvEncoder(in_channels, width)
        s = image_size // 16
        flat = self.conv.out_channels * s * s
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.BatchNorm1d(hidden),
                                   nn.ReLU(inplace=True), nn.Linear(hidden, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(x))


class Generator(nn.Module):
    def __init__(self, in_channels: int, image_size: int, width: int, latent_dim: int, hidden: int):
        super().__init__()
        self.ae = AutoEncoder(in_channels, image_size, width, latent_dim, hidden)
        self.encoder2 = LatentEncoder(in_channels, image_size, width, latent_dim, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (x^, z, z^)."""
        z = self.ae.encode(x)
        rec = self.ae.decode(z)
        return rec, z, self.encoder2(rec)


class Discriminator(nn.Module):
    def __init__(self, in_channels: int, image_size: int, width: int = 16):
        super().__init__()
        self.features = ConvEncoder(in_channels, width)
        self.classifier = nn.Conv2d(self.features.out_channels, 1, image_size // 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logit (B,), feature map (B, 4w, S/16, S/16))."""
        f = self.features(x)
        return self.classifier(f).flatten(), f


class GANomalyNet(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 128, width: int = 16, latent_dim: int = 16,
                 hidden: int = 1024):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image size {image_size} must be divisible by 16")
        self.generator = Generator(in_channels, image_size, width, latent_dim, hidden)
        self.discriminator = Discriminator(in_channels, image_size, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction x^."""
        return self.generator(x)[0]
