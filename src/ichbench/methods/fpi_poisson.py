"""FPI-Poisson: foreign patches blended in the gradient domain (Poisson image interpolation, Tan et al.
2021; the reference's `FPI-Poisson` setting): the foreign patch is Poisson-blended with OpenCV's
`seamlessClone` (mixed gradients by default) through a mask of value ceil(255 a), so the foreign gradients
enter weighted by a; the label is a on the pixels that changed.
"""
from __future__ import annotations

from .base import register
from .fpi import FPI


@register
class FPIPoisson(FPI):
    name = "FPI-Poisson"
    paper = "Tan et al. 2021, Poisson image interpolation for self-supervised anomaly detection"
    defaults = {"clone_mode": "mixed"}

    def blend_options(self) -> dict:
        return {"poisson": True, "clone": self.params["clone_mode"]}
