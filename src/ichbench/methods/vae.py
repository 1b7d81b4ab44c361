"""VAE: the shared autoencoder with a variational bottleneck (mu, log var of 16 dims each), trained
with MSE + kl_weight * KL(q(z|x) || N(0, I)), the KL averaged over latent dimensions (and over the
batch), as in the MedIAnomaly reference (kl_weight 0.005). Training samples z = mu + sigma * eps with
the torch global RNG. The pixel map is (x - x^)^2 with x^ decoded from the posterior mean, unless
`sample_at_test` (the reference's behaviour: one sample per scoring, so scores vary between runs).
"""
from __future__ import annotations

import torch

from ..nets.autoencoder import AutoEncoder
from ._common import float32
from .ae import AutoEncoderMethod
from .base import register


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, averaged over latent dims: (B,). float32."""
    with float32(mu):
        mu, logvar = mu.float(), logvar.float()
        return torch.mean(-0.5 * (1 + logvar - mu ** 2 - torch.exp(logvar)), dim=1)


@register
class VAE(AutoEncoderMethod):
    name = "VAE"
    paper = "variational autoencoder (Kingma & Welling 2014), MedIAnomaly setting (Cai et al. 2024)"
    defaults = {"kl_weight": 0.005, "sample_at_test": False}

    def build(self) -> torch.nn.Module:
        p = self.params
        return AutoEncoder(self.in_channels, self.image_size, p["width"], p["latent_dim"], p["hidden"],
                           variational=True)

    def _reconstruct(self, x: torch.Tensor, sample: bool):
        mu, logvar = self.model.encode(x)
        z = mu
        if sample:
            z = mu + torch.exp(0.5 * logvar.float()).to(mu.dtype) * torch.randn_like(mu)
        return self.model.decode(z), mu, logvar

    def loss(self, batch):
        x = batch["x"]
        rec, mu, logvar = self._reconstruct(x, sample=True)
        mse = torch.mean((x - rec.float()) ** 2)
        kl = kl_divergence(mu, logvar).mean()
        return mse + self.params["kl_weight"] * kl, {"mse": mse.detach(), "kl": kl.detach()}

    def score_map(self, batch):
        x = batch["x"]
        rec = self._reconstruct(x, sample=bool(self.params["sample_at_test"]))[0]
        return (x - rec.float()) ** 2
