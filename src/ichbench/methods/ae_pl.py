"""AE-PL: the shared autoencoder trained with a perceptual loss (Shvetsova et al. 2021, deep
perceptual autoencoder), in the relative-L1 form of the MedIAnomaly reference:

    f = VGG-19 features up to relu4_2 (torchvision `vgg19().features[:23]`, frozen, eval mode)
    n(f) = (f - mean_c) / var_c      per channel c, the ImageNet statistics of that layer (below)
    loss  = mean over (channels, pixels) of |n(f(x)) - n(f(x^))| / mean |n(f(x))|   (per slice, the
            normaliser detached), then mean over the batch
    map   = mean over feature channels of the same ratio, upsampled bilinearly from S/8 to S x S

This is the reference's `RelativePerceptualL1Loss` (`use_feature_normalization=True`, layer `r42`).
The statistics: the reference's file `vgg19_ILSVRC2012_object_detection_mean_var.pt` (a dict layer
name -> (mean, var), per channel; MIT, from MedIAnomaly `utils/data/`), named by the hyper-parameter
`feature_stats` or, when that is null, looked for beside the VGG weights in
`torch.hub.get_dir()/checkpoints/`. Note the division by the variance, not the standard
deviation, as the reference does. `feature_normalization: false` skips the step (raw features).

The statistics describe the ImageNet network's channels, so the step is applied only when the VGG
weights come from a file. With random weights (`allow_random_vgg`, the CPU demo) it is skipped and the
Table 1 note says so: their features are unrelated to those statistics (measured at relu3_1 on uniform
noise, 64 px: mean |f| 0.11, while mean |(f - mean_c) / var_c| is 0.42, almost all of it the constant mean_c / var_c),
so the per-slice normaliser mean |n(f(x))| would be nearly constant and the loss no longer relative.

What the VGG sees: the 3 CT windows (brain, subdural, bone) are fed as its 3 input channels (R, G, B),
each mapped from [-1, 1] to [0, 1] and normalised with the ImageNet mean / std; a 1-channel input is
replicated to 3.

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

from ._common import float32
from .ae import AutoEncoderMethod
from .base import register

VGG19_FILE = "vgg19-dcbb9e9d.pth"
FEATURE_STATS_FILE = "vgg19_ILSVRC2012_object_detection_mean_var.pt"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: index (in torchvision's `vgg19().features`) of each ReLU a feature map can be taken from
VGG19_RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
              "relu3_3": 15, "relu3_4": 17, "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26,
              "relu5_1": 29, "relu5_2": 31, "relu5_3": 33, "relu5_4": 35}


def default_vgg_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def default_feature_stats_path() -> Path:
    """Where the statistics file is looked for when `feature_stats` is null: beside the VGG weights."""
    return default_vgg_path().with_name(FEATURE_STATS_FILE)


def load_feature_stats(path: str | os.PathLike | None, layer: str,
                       channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mean, var), each (1, channels, 1, 1) float32, of VGG-19 layer `layer` (e.g. relu4_2 -> key
    'r42') from the reference's statistics file (`path`, or `default_feature_stats_path()` when None)."""
    path = Path(path).expanduser() if path else default_feature_stats_path()
    key = "r" + layer[len("relu"):].replace("_", "")
    if not path.is_file():
        raise FileNotFoundError(f"AE-PL: feature statistics file {path} not found: put MedIAnomaly's "
                                f"{FEATURE_STATS_FILE} (utils/data/, MIT) there or name it with the "
                                f"hyper-parameter `feature_stats` (README: AE-PL)")
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"AE-PL: cannot read feature statistics file {path}: {exc}") from None
    if not isinstance(stats, dict) or key not in stats:
        raise ValueError(f"AE-PL: {path} holds no statistics for layer {layer!r} (key {key!r}); expected the "
                         f"dict layer name -> (mean, var) of {FEATURE_STATS_FILE}")
    try:
        mean, var = (torch.as_tensor(t, dtype=torch.float32).reshape(1, channels, 1, 1) for t in stats[key])
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"AE-PL: {path}: entry {key!r} is not a (mean, var) pair of {channels} values each") from None
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all() and (var > 0).all()):
        raise ValueError(f"AE-PL: {path}: entry {key!r} has non-finite values or a variance <= 0")
    return mean, var


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
    from torchvision.models import vgg as tv_vgg   # here, not at the top: importing torchvision costs ~3 s of CPU

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
        note = "VGG-19 with random weights (and no ImageNet feature normalisation), not the paper's AE-PL"
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
                "vgg_input_size": None, "feature_normalization": True, "feature_stats": None}

    @classmethod
    def input_files(cls, params: dict) -> dict[str, str | None]:
        """The files this row reads besides the data (for the workflow's job inputs): the VGG weights
        (None when the file is absent) and the feature statistics (None when not used: switched off, or
        no weights file; named even when absent, so that the workflow stops on the missing file before
        any job runs)."""
        p = {**cls.full_defaults(), **params}
        vgg = Path(p["vgg_weights"]).expanduser() if p["vgg_weights"] else default_vgg_path()
        stats = Path(p["feature_stats"]).expanduser() if p["feature_stats"] else default_feature_stats_path()
        return {"vgg_weights": str(vgg) if vgg.is_file() else None,
                "feature_stats": str(stats) if p["feature_normalization"] and vgg.is_file() else None}

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
        self._feat_mean = self._feat_var = None
        if p["feature_normalization"] and note is None:      # only for the weights the statistics describe
            channels = [m for m in self.vgg.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            mean, var = load_feature_stats(p["feature_stats"], p["vgg_layer"], channels)
            self._feat_mean, self._feat_var = mean.to(device), var.to(device)

    def _normalise(self, f: torch.Tensor) -> torch.Tensor:
        """(f - mean_c) / var_c, the reference's per-channel feature normalisation (float32)."""
        if self._feat_mean is None:
            return f
        return (f - self._feat_mean) / self._feat_var

    def _vgg_in(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() + 1) / 2
        size = self.params["vgg_input_size"]
        if size and size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self._mean) / self._std

    def _distance(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) relative distance |n(f(x)) - n(f(x^))| / mean |n(f(x))| (float32)."""
        rec = self.model(x)
        self.vgg.eval()
        with torch.no_grad():                       # the target's features: no graph needed
            fx = self.vgg(self._vgg_in(x))
        fr = self.vgg(self._vgg_in(rec))
        with float32(x):
            fx, fr = self._normalise(fx.float()), self._normalise(fr.float())
            norm = fx.abs().mean(dim=(1, 2, 3), keepdim=True).detach().clamp_min(1e-8)
            return (fx - fr).abs() / norm

    def loss(self, batch):
        return self._distance(batch["x"]).mean(), {}

    def score_map(self, batch):
        x = batch["x"]
        d = self._distance(x).mean(dim=1, keepdim=True)
        return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
