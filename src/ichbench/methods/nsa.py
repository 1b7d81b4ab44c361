"""NSA: Natural Synthetic Anomalies (Schlueter et al., ECCV 2022), binary labels.

A patch of another training slice, rescaled and moved, is Poisson-blended into the slice (OpenCV
mixed-gradient `seamlessClone`); a ResNet-18 encoder-decoder learns to segment the pixels that changed
by more than `label_threshold` (4 grey levels of 0-255, median-filtered over 5 x 5 pixels).
"""
from __future__ import annotations

from ..anomalies import GREY_LEVEL, NSA as NSAGenerator
from .base import register
from .selfsup import PatchSegmentationMethod


class NSAMethod(PatchSegmentationMethod):
    """NSA and NSA-Intensity: the same anomalies, different labels."""

    paper = "Schlueter et al. 2022, Natural synthetic anomalies for self-supervised anomaly detection and localization"
    defaults = {"scale_sd": 0.5, "scale_min": 0.7, "scale_max": 1.3, "clone_mode": "mixed", "poisson_workers": 2}

    def label_options(self) -> dict:
        raise NotImplementedError

    def make_generator(self):
        p = self.params
        return NSAGenerator(patches=self.patch_sampler(), scale_sd=p["scale_sd"], scale_min=p["scale_min"],
                            scale_max=p["scale_max"], clone=p["clone_mode"], workers=int(p["poisson_workers"]),
                            **self.label_options())


@register
class NSA(NSAMethod):
    name = "NSA"
    defaults = {"label_threshold": 4 * GREY_LEVEL, "median_size": 5}

    def label_options(self) -> dict:
        return {"label": "binary", "threshold": self.params["label_threshold"],
                "median_size": int(self.params["median_size"])}
