"""CutPaste (2 stage) (Li et al., CVPR 2021; MedIAnomaly `ssl/two_stage`, variant `normal`): a ResNet-18
learns to tell brightness/contrast-jittered slices from copies with a pasted patch of themselves (2-15 % of
the area, aspect log-uniform in [0.3, 3.3], patch jitter 0.1); a Gaussian on the L2-normalised 512-d
embeddings of the training slices scores by Mahalanobis distance.
"""
from __future__ import annotations

from ..anomalies.device import DeviceCutPasteAug
from ..anomalies.two_stage import CutPasteAug
from .base import register
from .selfsup import EmbeddingGaussianMethod, generator_from_params


@register
class CutPaste2Stage(EmbeddingGaussianMethod):
    name = "CutPaste-2stage"
    display = "CutPaste (2 stage)"
    paper = "Li et al. 2021, CutPaste: self-supervised learning for anomaly detection and localization"
    defaults = {"jitter": 0.1}

    def make_generator(self):
        return generator_from_params(CutPasteAug, self.params)

    def make_device_generator(self):
        return generator_from_params(DeviceCutPasteAug, self.params)
