"""FPI-Poisson: foreign patches blended in the gradient domain (Poisson image interpolation, Tan et al.
2021): the interpolated patch (1 - a) x + a x_other is Poisson-blended with OpenCV's `seamlessClone`
(mixed gradients by default), so the foreign gradients enter scaled by a; the label is a.
"""
from __future__ import annotations

from .base import register
from .fpi import FPI


@register
class FPIPoisson(FPI):
    name = "FPI-Poisson"
    paper = "Tan et al. 2021, Poisson image interpolation for self-supervised anomaly detection"
    defaults = {"clone_mode": "mixed", "poisson_workers": 2}

    def blend_options(self) -> dict:
        return {"poisson": True, "clone": self.params["clone_mode"], "workers": int(self.params["poisson_workers"])}
