"""AE-SSIM: the shared autoencoder trained with 1 - SSIM; the pixel map is 1 - the local SSIM map
(Bergmann et al. 2019), as the MedIAnomaly reference computes them (`SSIMLoss`, pytorch_msssim's `_ssim`):

SSIM per channel on images mapped from [-1, 1] to [0, 1] and clamped there, data range 1, K1 = 0.01,
K2 = 0.03, an 11 x 11 Gaussian window of sigma 1.5 (separable, normalised), population covariances
(the definition of Wang et al. 2004), and a 'valid' filter: the map covers the (S - 10) x (S - 10) window
centres that lie wholly inside the image, so the 5-pixel border takes no part in the loss.

    loss = mean of (1 - SSIM) over the valid map
    map  = 1 - SSIM, valid map upsampled bilinearly (align_corners False) to S x S

The valid map equals `skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, full=True)` with its 5-pixel border cut off. All in float32.
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


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable depthwise Gaussian filter, 'valid' (no padding): (H, W) -> (H - k + 1, W - k + 1)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Local SSIM map (B, C, H - win_size + 1, W - win_size + 1) of two image batches ('valid'), float32."""
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"SSIM: images {tuple(a.shape[-2:])} are smaller than the {win_size}-pixel window")
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
        """1 - the valid SSIM map, (B, C, S - w + 1, S - w + 1)."""
        rec = self.model(x)
        to01 = lambda t: ((t.float() + 1) / 2).clamp(0, 1)  # noqa: E731
        return 1 - ssim_map(to01(x), to01(rec), 1.0, self.params["ssim_window"], self.params["ssim_sigma"])

    def loss(self, batch):
        return self._dissimilarity(batch["x"]).mean(), {}

    def score_map(self, batch):
        x = batch["x"]
        d = self._dissimilarity(x)
        with float32(d):
            return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
