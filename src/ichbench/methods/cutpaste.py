"""CutPaste, one-stage (the NSA / MedIAnomaly variant of Li et al. 2021): a patch of the same slice is
copied to another place on the head without blending; the network segments the binary patch mask.
"""
from __future__ import annotations

from ..anomalies import CutPaste as CutPasteGenerator
from .base import register
from .selfsup import PatchSegmentationMethod


@register
class CutPaste(PatchSegmentationMethod):
    name = "CutPaste"
    paper = "Li et al. 2021 (CutPaste), one-stage segmentation variant of Schlueter et al. 2022"

    def make_generator(self):
        return CutPasteGenerator(patches=self.patch_sampler())
