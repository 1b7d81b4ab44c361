"""Constrained AE (Chen & Konukoglu 2018): the shared autoencoder with a latent consistency term,
the encoder applied again to the reconstruction:

    loss = MSE(x, x^) + rho * MSE(z, E(x^)),   z = E(x), x^ = D(z);      map = (x - x^)^2

Gradients flow through both z and E(x^) (as in the reference). rho = 1. As the reference's second
`bottle_neck` call, the second pass also runs the decoding half of the dense bottleneck on E(x^) (output
unused, no gradient), so its BatchNorm1d running statistics see both passes, as there.
"""
from __future__ import annotations

import torch

from ._common import float32
from .ae import AutoEncoderMethod
from .base import register


@register
class ConstrainedAE(AutoEncoderMethod):
    name = "ConstrainedAE"
    display = "Constrained AE"
    paper = "Chen & Konukoglu 2018, constrained autoencoder"
    defaults = {"rho": 1.0}

    def loss(self, batch):
        x = batch["x"]
        z = self.model.encode(x)
        rec = self.model.decode(z)
        z_rec = self.model.encode(rec)
        with torch.no_grad():
            self.model.bottleneck.decode(z_rec)      # only for the BatchNorm1d running statistics
        with float32(x):
            mse = torch.mean((x - rec.float()) ** 2)
            lat = torch.mean((z.float() - z_rec.float()) ** 2)
        return mse + self.params["rho"] * lat, {"mse": mse.detach(), "latent": lat.detach()}

    def score_map(self, batch):
        x = batch["x"]
        return (x - self.model(x).float()) ** 2
