"""NSA-Intensity: NSA with the soft intensity-logistic label (Schlueter et al., ECCV 2022).

label = sigmoid(k (dI - t)) inside the patch, dI the pixel's intensity change; the reference's k = 0.5,
t = 4 on 0-255 become k = 0.5 x 127.5 = 63.75 and t = 4 / 127.5 on the [-1, 1] slices.
"""
from __future__ import annotations

from ..anomalies import GREY_LEVEL
from .base import register
from .nsa import NSAMethod


@register
class NSAIntensity(NSAMethod):
    name = "NSA-Intensity"
    defaults = {"logistic_k": 0.5 / GREY_LEVEL, "logistic_t": 4 * GREY_LEVEL}

    def label_options(self) -> dict:
        return {"label": "logistic", "logistic_k": self.params["logistic_k"], "logistic_t": self.params["logistic_t"]}
