"""NSA-Intensity: NSA with the soft intensity-logistic label (Schlueter et al., ECCV 2022; the reference's
`Shift-Intensity-M` setting).

label = changed-pixel mask x sigmoid(k (dI - x0)), dI the pixel's mean intensity change over the channels,
median-filtered with a disk of radius 5. k and x0 are set on the [-1, 1] scale of the slices: the
reference's k = 0.5 per grey level and x0 = 4 grey levels of 0-255 are k = 0.5 x 127.5 = 63.75 and
x0 = 4 / 127.5; the generator works in grey levels and converts them back.
"""
from __future__ import annotations

from ..anomalies.two_stage import GREY_LEVEL
from .base import register
from .nsa import NSAMethod


@register
class NSAIntensity(NSAMethod):
    name = "NSA-Intensity"
    defaults = {"logistic_k": 0.5 / GREY_LEVEL, "logistic_t": 4 * GREY_LEVEL, "intensity_radius": 5}

    def nsa_label(self) -> dict:
        p = self.params
        return {"label": "logistic", "logistic_k": p["logistic_k"] * GREY_LEVEL,
                "logistic_x0": p["logistic_t"] / GREY_LEVEL, "intensity_radius": int(p["intensity_radius"])}
