"""AE-PL: the shared autoencoder trained with a perceptual loss (Shvetsova et al. 2021, deep
perceptual autoencoder), in the relative-L1 form of the MedIAnomaly reference:

    f = VGG-19 features up to relu4_2 (torchvision `vgg19().features[:23]`, frozen, eval mode)
    loss  = mean over (channels, pixels) of |f(x) - f(x^)| / mean |f(x)|     (per slice, the
            normaliser detached), then mean over the batch
    map   = mean over feature channels of |f(x) - f(x^)| / mean |f(x)|, upsampled bilinearly from
            S/8 to S x S

What the VGG sees: the 3 CT windows (brain, subdural, bone) are fed as its 3 input channels (R, G, B),
each mapped from [-1, 1] to [0, 1] and normalised with the ImageNet mean / std; a 1-channel input is
replicated to 3. (The reference's optional per-layer ImageNet feature mean / variance file is not
used: its normalisation is the identity by default.)

Weights: the features part of torchvision's `vgg19-dcbb9e9d.pth` (ImageNet), from the hyper-parameter
`vgg_weights` or, when that is null, from `torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth`. Nothing
is downloaded. Without a file, construction fails with a message saying where to put it, unless
`allow_random_vgg` is true: then the VGG gets torchvision's random initialisation from a fixed seed
(`vgg_seed`, so a reloaded model scores the same) and `notes` carries a remark for Table 1.

Cost: the VGG dominates (tens of times the autoencoder's FLOPs at 128 x 128 up to relu4_2). For CPU demos,
`vgg_input_size` (default null: the image size, as in the paper) resizes the VGG's input (bilinear,
antialiased) to a smaller square; the map is still upsampled to the image size.

The VGG is not part of `self.model` (not trained, not saved in checkpoints: it is rebuilt from the
same file or seed when a model is loaded).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg as tv_vgg

from ._common import float32
from .ae import AutoEncoderMethod
from .base import register

VGG19_FILE = "vgg19-dcbb9e9d.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: index (in torchvision's `vgg19().features`) of each ReLU a feature map can be taken from
VGG19_RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
              "relu3_3": 15, "relu3_4": 17, "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26,
              "relu5_1": 29, "relu5_2": 31, "relu5_3": 33, "relu5_4": 35}


def default_vgg_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def _random_init(features: nn.Sequential, seed: int) -> None:
    """torchvision's VGG initialisation (Kaiming normal, fan out, zero bias), from a private generator."""
    g = torch.Generator().manual_seed(seed)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            nn.init.zeros_(m.bias)


def _load_features(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:    # legacy (non-zip) serialisation cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


def _features_up_to(index: int) -> nn.Sequential:
    """torchvision's VGG-19 feature stack (`make_layers(cfgs["E"])`, same module indices and parameter
    names as `vgg19(weights=None).features`), built only up to module `index`."""
    cfg, count = [], 0
    for item in tv_vgg.cfgs["E"]:
        cfg.append(item)
        count += 1 if item == "M" else 2
        if count > index:
            break
    return tv_vgg.make_layers(cfg)[:index + 1]


def build_vgg_features(layer: str, weights: str | os.PathLike | None, allow_random: bool,
                       seed: int = 0) -> tuple[nn.Sequential, str | None]:
    """-> (frozen VGG-19 feature stack up to `layer`, None or a note when the weights are random)."""
    if layer not in VGG19_RELU:
        raise ValueError(f"AE-PL: unknown VGG-19 layer {layer!r}; one of {', '.join(VGG19_RELU)}")
    feats = _features_up_to(VGG19_RELU[layer])
    path = Path(weights).expanduser() if weights else default_vgg_path()
    note = None
    if path.is_file():
        state = _load_features(path)
        missing = [k for k in feats.state_dict() if k not in state]
        if missing:
            raise RuntimeError(f"{path} is not torchvision's VGG-19 state dict (no 'features.{missing[0]}')")
        feats.load_state_dict({k: state[k] for k in feats.state_dict()})
    elif allow_random:
        _random_init(feats, seed)
        note = "VGG-19 with random weights, not the paper's AE-PL"
    else:
        where = f"the file given by `vgg_weights` ({path})" if weights else str(path)
        raise RuntimeError(
            f"AE-PL needs the ImageNet VGG-19 weights of torchvision, file {VGG19_FILE!r} "
            f"(https://download.pytorch.org/models/{VGG19_FILE}), and none was found at {where}. "
            f"Copy that file to {default_vgg_path()} (torch.hub's checkpoint folder; it is never "
            "downloaded at run time) or set the AE-PL hyper-parameter `vgg_weights` to its path. "
            "To run without it (not the paper's method), set `allow_random_vgg: true`.")
    feats.eval()
    for p in feats.parameters():
        p.requires_grad_(False)
    return feats, note


@register
class AEPL(AutoEncoderMethod):
    name = "AE-PL"
    paper = "Shvetsova et al. 2021, deep perceptual autoencoder"
    defaults = {"vgg_layer": "relu4_2", "vgg_weights": None, "allow_random_vgg": False, "vgg_seed": 0,
                "vgg_input_size": None}

    def __init__(self, params, in_channels, image_size, device):
        super().__init__(params, in_channels, image_size, device)
        if in_channels not in (1, 3):
            raise ValueError(f"AE-PL feeds the VGG 1 or 3 channels, not {in_channels}")
        p = self.params
        self.vgg, note = build_vgg_features(p["vgg_layer"], p["vgg_weights"], bool(p["allow_random_vgg"]),
                                            int(p["vgg_seed"]))
        self.vgg.to(device)
        if note:
            self.notes.append(note)
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def _vgg_in(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() + 1) / 2
        size = self.params["vgg_input_size"]
        if size and size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self._mean) / self._std

    def _distance(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) relative feature distance |f(x) - f(x^)| / mean |f(x)| (float32)."""
        rec = self.model(x)
        self.vgg.eval()
        with torch.no_grad():                       # the target's features: no graph needed
            fx = self.vgg(self._vgg_in(x))
        fr = self.vgg(self._vgg_in(rec))
        with float32(x):
            fx, fr = fx.float(), fr.float()
            norm = fx.abs().mean(dim=(1, 2, 3), keepdim=True).detach().clamp_min(1e-8)
            return (fx - fr).abs() / norm

    def loss(self, batch):
        return self._distance(batch["x"]).mean(), {}

    def score_map(self, batch):
        x = batch["x"]
        d = self._distance(x).mean(dim=1, keepdim=True)
        return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
