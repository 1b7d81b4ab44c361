"""NSA: Natural Synthetic Anomalies (Schlueter et al., ECCV 2022), binary labels.

A patch of another training slice, rescaled and moved, is Poisson-blended into the slice (OpenCV
mixed-gradient `seamlessClone`, the reference's `Shift-M` setting); the reference's ResNet-18
encoder-decoder learns to segment the pixels that changed by more than 1 grey level of 0-255 (mean over
the channels), median-filtered over 5 x 5 pixels (`ichbench.anomalies.one_stage`).
"""
from __future__ import annotations

from ..anomalies.device import device_nsa
from ..anomalies.one_stage import NSA as NSAGenerator
from .base import register
from .selfsup import PatchSegmentationMethod


class NSAMethod(PatchSegmentationMethod):
    """NSA and NSA-Intensity: the same anomalies, different labels."""

    paper = "Schlueter et al. 2022, Natural synthetic anomalies for self-supervised anomaly detection and localization"
    defaults = {"scale_sd": 0.5, "scale_min": 0.7, "scale_max": 1.3, "clone_mode": "mixed"}
    cpu_factory = staticmethod(NSAGenerator)
    device_factory = staticmethod(device_nsa)

    def nsa_label(self) -> dict:
        raise NotImplementedError

    def generator_settings(self) -> dict:
        p = self.params
        return {"scale_sd": p["scale_sd"], "scale_min": p["scale_min"], "scale_max": p["scale_max"],
                "clone": p["clone_mode"], **self.nsa_label()}


@register
class NSA(NSAMethod):
    name = "NSA"

    def nsa_label(self) -> dict:
        return {"label": "binary"}
