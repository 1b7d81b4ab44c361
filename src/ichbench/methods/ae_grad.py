"""AE-Grad: the plain autoencoder (trained with the MSE, as AE); the pixel map is the absolute
gradient of the reconstruction error with respect to the input (Zimmerer et al. 2019):

    map = | d/dx  sum (x - AE(x))^2 |

The derivative is the total one (through the direct x term and through the network). In eval mode
BatchNorm uses running statistics, so slices of a batch do not interact and the gradient of the
batch sum is each slice's own gradient. Scoring runs with autograd on and in float32 (autocast off):
a bfloat16 backward pass would quantise the small gradient values of the map.
"""
from __future__ import annotations

import torch

from ._common import float32
from .ae import AutoEncoderMethod
from .base import register


@register
class AEGrad(AutoEncoderMethod):
    name = "AE-Grad"
    paper = "Zimmerer et al. 2019, gradient-based anomaly localisation"

    def loss(self, batch):
        x = batch["x"]
        return torch.mean((x - self.model(x).float()) ** 2), {}

    def score_map(self, batch):
        x = batch["x"].detach().clone()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        x.requires_grad_(True)
        with torch.enable_grad(), float32(x):
            err = ((x - self.model(x).to(x.dtype)) ** 2).sum()
            (grad,) = torch.autograd.grad(err, x)
        return grad.abs()

    def score(self, batch):
        self.model.eval()
        m = self.score_map(batch).detach().float()
        return m.mean(dim=(1, 2, 3)), m.mean(dim=1)
