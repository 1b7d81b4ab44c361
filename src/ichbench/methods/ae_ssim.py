"""AE-SSIM: the shared autoencoder trained with 1 - SSIM; the pixel map is 1 - the local SSIM map
(Bergmann et al. 2019).

SSIM is computed per channel on images mapped from [-1, 1] to [0, 1] (and clamped there, as the
reference does), data range 1, K1 = 0.01, K2 = 0.03, with an 11 x 11 Gaussian window of sigma 1.5
(separable, normalised) and population (not sample) covariances: the definition of Wang et al. 2004.
`pytorch_msssim` only returns the mean SSIM of a 'valid' convolution, not a same-size local map, so
the map is computed here. Borders are padded symmetrically (edge pixel repeated, scipy's 'reflect'),
which makes the map equal to `skimage.metrics.structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1, full=True)`. All in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import float32
from .ae import AutoEncoderMethod
from .base import register


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of `size` taps (float32)."""
    r = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def _pad_symmetric(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad the last two dims by p, repeating the edge pixel (d c b a | a b c d | d c b a)."""
    x = torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], dim=-1)
    return torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable depthwise Gaussian filter, same size output."""
    c = x.shape[1]
    p = g.numel() // 2
    x = _pad_symmetric(x, p)
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Local SSIM map (B, C, H, W) of two image batches, in float32."""
    with float32(a):
        a, b = a.float(), b.float()
        g = gaussian_window(win_size, sigma, a.device)
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        mu_a, mu_b = _blur(a, g), _blur(b, g)
        var_a = _blur(a * a, g) - mu_a ** 2
        var_b = _blur(b * b, g) - mu_b ** 2
        cov = _blur(a * b, g) - mu_a * mu_b
        return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


@register
class AESSIM(AutoEncoderMethod):
    name = "AE-SSIM"
    paper = "Bergmann et al. 2019, SSIM autoencoder"
    defaults = {"ssim_window": 11, "ssim_sigma": 1.5}

    def _dissimilarity(self, x: torch.Tensor) -> torch.Tensor:
        rec = self.model(x)
        to01 = lambda t: ((t.float() + 1) / 2).clamp(0, 1)  # noqa: E731
        return 1 - ssim_map(to01(x), to01(rec), 1.0, self.params["ssim_window"], self.params["ssim_sigma"])

    def loss(self, batch):
        return self._dissimilarity(batch["x"]).mean(), {}

    def score_map(self, batch):
        return self._dissimilarity(batch["x"])
