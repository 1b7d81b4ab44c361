"""AnatPaste (Sato et al. 2023), two-stage, for head CT: CutPaste patches pasted inside the brain
(brain-window tissue inside the skull) through a Gaussian-blurred ellipse or rectangle times the brain
mask, opacity U[0.6, 1.0]; Gaussian on embeddings and Mahalanobis score as CutPaste (2 stage).
"""
from __future__ import annotations

from ..anomalies import AnatPaste as AnatPasteGenerator
from .base import register
from .selfsup import EmbeddingGaussianMethod


@register
class AnatPaste(EmbeddingGaussianMethod):
    name = "AnatPaste"
    paper = "Sato et al. 2023, AnatPaste: anatomy-aware self-supervised learning for anomaly detection"
    needs = ("brain_mask",)
    defaults = {"alpha_min": 0.6, "alpha_max": 1.0, "ellipse_p": 0.5, "blur_sigma": 0.02}

    def make_generator(self):
        p = self.params
        return AnatPasteGenerator(area_min=p["area_min"], area_max=p["area_max"], aspect_min=p["aspect_min"],
                                  aspect_max=p["aspect_max"], alpha_min=p["alpha_min"], alpha_max=p["alpha_max"],
                                  ellipse_p=p["ellipse_p"], blur_sigma=p["blur_sigma"])
