"""AnatPaste (Sato et al. 2023; MedIAnomaly `ssl/two_stage`, variant `anatpaste`), two-stage, for head CT:
CutPaste patches (jittered as in CutPaste 2-stage) pasted inside the brain (brain-window tissue inside the
skull) through an inset ellipse or rectangle, Gaussian-blurred with a width drawn per image, times the
brain mask, opacity U[0.6, 1.0]; black outside the patch where the blur reaches past it (`halo: black`, the
reference's; `halo: image` blends toward the moved slice there); a slice without brain gets its patch anywhere,
as the reference's empty-anatomy case; Gaussian on embeddings and Mahalanobis score as CutPaste (2 stage).
"""
from __future__ import annotations

from ..anomalies.device import DeviceAnatPaste
from ..anomalies.two_stage import AnatPaste as AnatPasteGenerator
from .base import register
from .selfsup import EmbeddingGaussianMethod, generator_from_params


@register
class AnatPaste(EmbeddingGaussianMethod):
    name = "AnatPaste"
    paper = "Sato et al. 2023, AnatPaste: anatomy-aware self-supervised learning for anomaly detection"
    needs = ("brain_mask",)
    defaults = {"alpha_min": 0.6, "alpha_max": 1.0, "ellipse_p": 0.5, "blur_min": 0.0, "blur_max": 14 / 224,
                "margin": 10 / 224, "jitter": 0.1, "halo": "black"}

    def make_generator(self):
        return generator_from_params(AnatPasteGenerator, self.params)

    def make_device_generator(self):
        return generator_from_params(DeviceAnatPaste, self.params)
