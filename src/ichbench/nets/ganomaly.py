"""GANomaly's networks (Akcay et al. 2018) as MedIAnomaly builds them (`reconstruction/networks/ganomaly.py`),
from the shared autoencoder's parts:

generator      = encoder 1 -> z -> decoder -> x^ -> encoder 2 -> z^; the shared conv stacks, and dense
                 bottlenecks Linear -> ReLU -> Linear without BatchNorm1d (the reference comments it out).
                 12,961,984 parameters at 3 x 128 x 128 (w 16, hidden 1024, latent 16).
discriminator  = the same 4 conv blocks -> flatten -> features = Linear(4w (S/16)^2 -> hidden) -> ReLU,
                 classifier = Linear(hidden -> 1) -> sigmoid. 4,303,969 parameters at 3 x 128 x 128.
                 Feature matching uses the dense features. `forward` returns the classifier's logit
                 (the sigmoid is applied in the loss, `binary_cross_entropy_with_logits`, the same value
                 as the reference's BCELoss on sigmoid outputs and safe under bfloat16 autocast).
"""
from __future__ import annotations

import torch
from torch import nn

from .autoencoder import AutoEncoder, ConvEncoder, dense_block


class LatentEncoder(nn.Module):
    """ConvEncoder followed by the dense encoding half, no BatchNorm1d: (B, C, S, S) -> (B, latent)."""

    def __init__(self, in_channels: int, image_size: int, width: int = 16, latent_dim: int = 16,
                 hidden: int = 1024):
        super().__init__()
        self.conv = ConvEncoder(in_channels, width)
        s = image_size // 16
        flat = self.conv.out_channels * s * s
        self.dense = nn.Sequential(nn.Flatten(), *dense_block(flat, hidden, latent_dim, norm=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(x))


class Generator(nn.Module):
    def __init__(self, in_channels: int, image_size: int, width: int, latent_dim: int, hidden: int):
        super().__init__()
        self.ae = AutoEncoder(in_channels, image_size, width, latent_dim, hidden, dense_norm=False)
        self.encoder2 = LatentEncoder(in_channels, image_size, width, latent_dim, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (x^, z, z^)."""
        z = self.ae.encode(x)
        rec = self.ae.decode(z)
        return rec, z, self.encoder2(rec)


class Discriminator(nn.Module):
    def __init__(self, in_channels: int, image_size: int, width: int = 16, hidden: int = 1024):
        super().__init__()
        self.conv = ConvEncoder(in_channels, width)
        s = image_size // 16
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(self.conv.out_channels * s * s, hidden),
                                      nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logit (B,), dense features (B, hidden)); the probability is sigmoid(logit)."""
        f = self.features(self.conv(x))
        return self.classifier(f).flatten(), f


class GANomalyNet(nn.Module):
    def __init__(self, in_channels: int = 3, image_size: int = 128, width: int = 16, latent_dim: int = 16,
                 hidden: int = 1024):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image size {image_size} must be divisible by 16")
        self.generator = Generator(in_channels, image_size, width, latent_dim, hidden)
        self.discriminator = Discriminator(in_channels, image_size, width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction x^."""
        return self.generator(x)[0]
