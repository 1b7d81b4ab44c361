"""AE-L1: the shared autoencoder trained with the mean absolute error; the pixel map is the absolute
reconstruction error (MedIAnomaly's AE-L1, Cai et al. 2024)."""
from __future__ import annotations

import torch

from .ae import AutoEncoderMethod
from .base import register


@register
class AEL1(AutoEncoderMethod):
    name = "AE-L1"
    paper = "autoencoder with an L1 reconstruction loss (Cai et al. 2024, MedIAnomaly)"

    def loss(self, batch):
        x = batch["x"]
        return torch.mean(torch.abs(x - self.model(x).float())), {}

    def score_map(self, batch):
        x = batch["x"]
        return torch.abs(x - self.model(x).float())
