"""The example row `MyAE`: a reconstruction row whose loss mixes L1 and squared error, and whose anomaly map
is the same mix per pixel. Registered by the entry point in pyproject.toml, or named in config.yaml with
`class: my_row.rows:MyAE`."""
from __future__ import annotations

import torch

from ichbench.methods import Method

from .nets import SmallConvAE


class MyAE(Method):
    name = "MyAE"                     # the row name: the key under `methods:` and the entry point's name
    group = "reconstruction"          # or "self-supervised"
    paper = "ichbench worked example (docs/your-method.md)"
    #: the row's hyper-parameters and their defaults; config.yaml and the recipes may override each one
    defaults = {"width": 8, "code": 16, "l1_weight": 0.5}

    def build(self) -> torch.nn.Module:
        p = self.params
        if self.image_size % 8:
            raise ValueError(f"MyAE needs an image size divisible by 8, not {self.image_size}")
        return SmallConvAE(self.in_channels, int(p["width"]), int(p["code"]))

    def _error(self, x: torch.Tensor) -> torch.Tensor:
        """Per pixel and channel: l1_weight * |x - x'| + (1 - l1_weight) * (x - x')^2."""
        diff = x - self.model(x)
        w = float(self.params["l1_weight"])
        return w * diff.abs() + (1.0 - w) * diff ** 2

    def loss(self, batch):
        err = self._error(batch["x"])
        return err.mean(), {"l1_mse": err.detach().mean()}

    def score_map(self, batch):
        # (B, C, S, S); the base class's score() averages it over channels for the figure map and over
        # pixels and channels for the slice score
        return self._error(batch["x"])
