"""FPI: Foreign Patch Interpolation (Tan et al., MELBA 2022).

A patch of another training slice at the same position is linearly interpolated into the slice,
x' = (1 - a) x + a x_other with a ~ U(0.05, 0.95); the network regresses a pixel by pixel.
"""
from __future__ import annotations

from ..anomalies import FPI as FPIGenerator
from .base import register
from .selfsup import PatchSegmentationMethod


@register
class FPI(PatchSegmentationMethod):
    name = "FPI"
    paper = "Tan et al. 2022, Detecting outliers with foreign patch interpolation"
    defaults = {"alpha_min": 0.05, "alpha_max": 0.95}

    def blend_options(self) -> dict:
        return {"poisson": False}

    def make_generator(self):
        p = self.params
        return FPIGenerator(patches=self.patch_sampler(), alpha_min=p["alpha_min"], alpha_max=p["alpha_max"],
                            **self.blend_options())
