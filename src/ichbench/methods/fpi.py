"""FPI: Foreign Patch Interpolation (Tan et al., MELBA 2022).

A patch of another training slice at the same position is linearly interpolated into the slice,
x' = floor((1 - a) x + a x_other) on the 8-bit grid, with one a ~ U(0.05, 0.95) per slice for all its
patches (the reference's `FPI` setting); the network regresses a on the pixels that changed (more than
1 grey level, 5 x 5 median-filtered), 0 elsewhere.
"""
from __future__ import annotations

from ..anomalies.device import device_fpi
from ..anomalies.one_stage import FPI as FPIGenerator
from .base import register
from .selfsup import PatchSegmentationMethod


@register
class FPI(PatchSegmentationMethod):
    name = "FPI"
    paper = "Tan et al. 2022, Detecting outliers with foreign patch interpolation"
    defaults = {"alpha_min": 0.05, "alpha_max": 0.95}
    cpu_factory = staticmethod(FPIGenerator)
    device_factory = staticmethod(device_fpi)

    def blend_options(self) -> dict:
        return {"poisson": False}

    def generator_settings(self) -> dict:
        return {"alpha_min": self.params["alpha_min"], "alpha_max": self.params["alpha_max"],
                **self.blend_options()}
