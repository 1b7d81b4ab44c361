"""AE-U: the shared autoencoder whose output head emits 2 x C channels, the reconstruction x^ (first
C) and the per-pixel log variance log sigma^2 (last C) (Mao et al. 2020).

    loss = mean( w * (x - x^)^2 / sigma^2 + log sigma^2 )        map = (x - x^)^2 / sigma^2

The paper's Table 1 gives w = 10 (the default); Mao et al. and the MedIAnomaly reference use w = 1
(`weight: 1`). The log-variance path is float32 end to end, also in a bf16 recipe: the output layer
that emits x^ and log sigma^2 runs outside autocast on float32 input (`Float32Layer`), and both loss
terms are computed in float32 (a bfloat16 log sigma^2 has 8 significant bits, so exp(-log sigma^2) would
be off by up to 0.4 % per unit of log sigma^2).
"""
from __future__ import annotations

import torch
from torch import nn

from ..nets.autoencoder import AutoEncoder
from ._common import float32
from .ae import AutoEncoderMethod
from .base import register


class Float32Layer(nn.Module):
    """Runs the wrapped layer in float32 (autocast off, input cast up), whatever the autocast around it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        with float32(h):
            return self.layer(h.float())


def aeu_terms(x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (normalised squared error (x - x^)^2 / sigma^2, log sigma^2), float32, from the 2C-channel
    network output."""
    with float32(x):
        rec, logvar = out.float().chunk(2, dim=1)
        return (x.float() - rec) ** 2 * torch.exp(-logvar), logvar


def aeu_loss(x: torch.Tensor, out: torch.Tensor, weight: float) -> torch.Tensor:
    nerr, logvar = aeu_terms(x, out)
    return torch.mean(weight * nerr + logvar)


@register
class AEU(AutoEncoderMethod):
    name = "AE-U"
    paper = "Mao et al. 2020, autoencoder with estimated pixel-wise uncertainty"
    defaults = {"weight": 10.0}

    def build(self) -> torch.nn.Module:
        p = self.params
        net = AutoEncoder(self.in_channels, self.image_size, p["width"], p["latent_dim"], p["hidden"],
                          out_multiplier=2)
        net.decoder.layers[-1] = Float32Layer(net.decoder.layers[-1])
        return net

    def loss(self, batch):
        x = batch["x"]
        out = self.model(x)
        loss = aeu_loss(x, out, self.params["weight"])
        return loss, {"log_var": out.detach().chunk(2, dim=1)[1].float().mean()}

    def score_map(self, batch):
        x = batch["x"]
        return aeu_terms(x, self.model(x))[0]
