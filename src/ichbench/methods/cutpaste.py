"""CutPaste, one-stage (the NSA / MedIAnomaly variant of Li et al. 2021, the reference's `CutPaste`
setting): a patch of the same slice is copied to another place on the head without blending; the network
segments the pixels that changed (more than 1 grey level, 5 x 5 median-filtered).
"""
from __future__ import annotations

from ..anomalies.device import device_cutpaste
from ..anomalies.one_stage import CutPaste as CutPasteGenerator
from .base import register
from .selfsup import PatchSegmentationMethod


@register
class CutPaste(PatchSegmentationMethod):
    name = "CutPaste"
    paper = "Li et al. 2021 (CutPaste), one-stage segmentation variant of Schlueter et al. 2022"
    cpu_factory = staticmethod(CutPasteGenerator)
    device_factory = staticmethod(device_cutpaste)
