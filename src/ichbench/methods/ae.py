"""AE: the plain convolutional autoencoder, trained with the mean squared error; the pixel map is
the squared reconstruction error (MedIAnomaly's AE, Cai et al. 2024)."""
from __future__ import annotations

import torch

from ..nets.autoencoder import AutoEncoder
from .base import Method, register


class AutoEncoderMethod(Method):
    """Shared base of the rows built on the plain autoencoder."""

    group = "reconstruction"
    defaults = {"latent_dim": 16, "width": 16, "hidden": 1024}

    def build(self) -> torch.nn.Module:
        p = self.params
        return AutoEncoder(self.in_channels, self.image_size, p["width"], p["latent_dim"], p["hidden"])


@register
class AE(AutoEncoderMethod):
    name = "AE"
    paper = "autoencoder baseline of Cai et al. 2024 (MedIAnomaly)"

    def loss(self, batch):
        x = batch["x"]
        return torch.mean((x - self.model(x)) ** 2), {}

    def score_map(self, batch):
        x = batch["x"]
        return (x - self.model(x)) ** 2
