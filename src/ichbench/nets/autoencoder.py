"""The shared convolutional autoencoder of the reconstruction rows (MedIAnomaly's AE, Cai et al. 2024).

Encoder: 4 x [Conv 4x4 s2 p1, no bias -> BatchNorm -> ReLU], C -> w -> 2w -> 4w -> 4w (w = 16).
Bottleneck: flatten -> Linear 1024 -> BN1d -> ReLU -> Linear latent (z) -> Linear 1024 -> BN1d -> ReLU
-> Linear back to 4w x (S/16)^2. Decoder: 3 x [ConvT 4x4 s2 -> BN -> ReLU], 4w -> 4w -> 2w -> w, then
ConvT w -> C x out_multiplier (no bias, as every conv of the reference), linear output.
8,646,736 parameters at 3 x 128 x 128, the reference's `AE` count.

Variants swap one part only: the VAE bottleneck emits (mu, log var); AE-U's head emits 2 x C channels;
GANomaly's generator has no BatchNorm1d in the dense bottleneck (`dense_norm=False`).
"""
from __future__ import annotations

import torch
from torch import nn


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ConvEncoder(nn.Module):
    """(B, C, S, S) -> (B, 4w, S/16, S/16)."""

    def __init__(self, in_channels: int = 3, width: int = 16):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        self.layers = nn.Sequential(*[_down(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvDecoder(nn.Module):
    """(B, 4w, S/16, S/16) -> (B, out_channels, S, S), linear output."""

    def __init__(self, out_channels: int = 3, width: int = 16):
        super().__init__()
        chans = [4 * width, 4 * width, 2 * width, width]
        self.layers = nn.Sequential(*[_up(a, b) for a, b in zip(chans[:-1], chans[1:])],
                                    nn.ConvTranspose2d(width, out_channels, 4, 2, 1, bias=False))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)


def dense_block(cin: int, hidden: int, cout: int, norm: bool = True) -> nn.Sequential:
    """Linear cin -> hidden -> [BatchNorm1d] -> ReLU -> Linear hidden -> cout."""
    mid = [nn.BatchNorm1d(hidden)] if norm else []
    return nn.Sequential(nn.Linear(cin, hidden), *mid, nn.ReLU(inplace=True), nn.Linear(hidden, cout))


class Bottleneck(nn.Module):
    """Dense bottleneck: feature map -> latent -> feature map. With `variational`, the encoding half
    emits 2 x latent values (mu, log var) and `encode` returns both. `norm`: BatchNorm1d after each
    hidden Linear (the reference AE; its GANomaly has none)."""

    def __init__(self, feature_shape: tuple[int, int, int], latent_dim: int = 16, hidden: int = 1024,
                 variational: bool = False, norm: bool = True):
        super().__init__()
        c, h, w = feature_shape
        flat = c * h * w
        self.feature_shape = feature_shape
        self.variational = variational
        self.enc = nn.Sequential(nn.Flatten(),
                                 *dense_block(flat, hidden, 2 * latent_dim if variational else latent_dim, norm))
        self.dec = dense_block(latent_dim, hidden, flat, norm)

    def encode(self, h: torch.Tensor):
        z = self.enc(h)
        if self.variational:
            mu, logvar = z.chunk(2, dim=1)
            return mu, logvar
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z).view(-1, *self.feature_shape)


class AutoEncoder(nn.Module):
    """Encoder -> dense bottleneck -> decoder. `out_multiplier` = 2 gives AE-U's (x^, log sigma^2)."""

    def __init__(self, in_channels: int = 3, image_size: int = 128, width: int = 16, latent_dim: int = 16,
                 hidden: int = 1024, variational: bool = False, out_multiplier: int = 1, dense_norm: bool = True):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image size {image_size} must be divisible by 16")
        self.encoder = ConvEncoder(in_channels, width)
        s = image_size // 16
        self.bottleneck = Bottleneck((self.encoder.out_channels, s, s), latent_dim, hidden, variational, dense_norm)
        self.decoder = ConvDecoder(in_channels * out_multiplier, width)

    def encode(self, x: torch.Tensor):
        return self.bottleneck.encode(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.bottleneck.decode(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode(x)
        if isinstance(z, tuple):   # variational: the posterior mean by default
            z = z[0]
        return self.decode(z)
