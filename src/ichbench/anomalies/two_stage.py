"""Synthetic anomalies for the self-supervised rows of Table 1, separate from the networks.

Each generator maps a batch of normal slices to a batch with synthetic anomalies and a pixel label:

    syn = AnatPaste()(x, rng, brain_mask=brain)  # x (B, C, S, S) in [-1, 1], rng a numpy Generator
    syn.x, syn.label, syn.region              # (B, C, S, S), (B, 1, S, S) in [0, 1], (B, S, S) bool

`region` is where the generator may have changed pixels (the union of the pasted boxes, or the
support of AnatPaste's soft mask); outside it the output equals the input bit for bit.

| generator | row(s) | what it does (paper) |
|---|---|---|
| `CutPasteAug` | CutPaste (2 stage) | Li et al. 2021: 2-15 % of the area, aspect log-uniform, patch brightness/contrast jitter |
| `AnatPaste` | AnatPaste | Sato et al. 2023: pasted inside the brain through an ellipse/rectangle mask, blurred with a width drawn per image, times the brain mask |

The one-stage rows' generators (NSA, NSA-Intensity, FPI, FPI-Poisson, CutPaste) follow MedIAnomaly's
`patch_ex` and live in `ichbench.anomalies.one_stage`; this module keeps what they share (`Synthesis`,
the 8-bit conversions, OpenCV's clone flags).

Scales. The reference works on 8-bit images; here slices are float in [-1, 1], where one grey level of
0-255 is 2/255 = 1/127.5 (`GREY_LEVEL`).

Randomness. Every random number comes from the numpy Generator passed in, drawn in a fixed order
that does not depend on the data, so the same seed gives the same anomalies on any device. Pixel work
runs as batched torch ops on the batch's device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..inputs.windowing import dequantise, quantise
from .colorjitter import color_jitter

#: one grey level of an 8-bit image on the [-1, 1] scale
GREY_LEVEL = 1.0 / 127.5

CLONE_FLAGS = {"mixed": cv2.MIXED_CLONE, "normal": cv2.NORMAL_CLONE}


class Synthesis(NamedTuple):
    x: torch.Tensor       # (B, C, S, S) the slices with synthetic anomalies
    label: torch.Tensor   # (B, 1, S, S) float in [0, 1]: the pseudo-label (two-stage: the blend weight)
    region: torch.Tensor  # (B, S, S) bool: where pixels may differ from the input


# ---------------------------------------------------------------------------------------------
# Batched tensor helpers
# ---------------------------------------------------------------------------------------------
def _t(a, device, dtype=torch.long) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)


def box_masks(y, x, h, w, size: tuple[int, int], device, ok=None) -> torch.Tensor:
    """(B, H, W) bool masks of one box per image; boxes with ok False are empty."""
    y, x, h, w = (_t(a, device) for a in (y, x, h, w))
    if ok is not None:
        h = torch.where(_t(ok, device, torch.bool), h, torch.zeros_like(h))
    r = torch.arange(size[0], device=device)[None]
    c = torch.arange(size[1], device=device)[None]
    in_r = (r >= y[:, None]) & (r < (y + h)[:, None])
    in_c = (c >= x[:, None]) & (c < (x + w)[:, None])
    return in_r[:, :, None] & in_c[:, None, :]


def shifted(x: torch.Tensor, ys, xs, yd, xd) -> torch.Tensor:
    """Each image moved so that its pixel (ys, xs) lands on (yd, xd); coordinates clamp at the border."""
    b, c, hh, ww = x.shape
    dev = x.device
    rows = (torch.arange(hh, device=dev)[None] - _t(yd, dev)[:, None] + _t(ys, dev)[:, None]).clamp(0, hh - 1)
    cols = (torch.arange(ww, device=dev)[None] - _t(xd, dev)[:, None] + _t(xs, dev)[:, None]).clamp(0, ww - 1)
    out = x.gather(2, rows[:, None, :, None].expand(b, c, hh, ww))
    return out.gather(3, cols[:, None, None, :].expand(b, c, hh, ww))


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) float -> blurred with a separable Gaussian of `sigma` pixels (zero padding)."""
    if sigma <= 0:
        return m
    r = max(1, int(math.ceil(3.0 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=m.device, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    out = F.conv2d(m[:, None].float(), k.view(1, 1, 1, -1), padding=(0, r))
    return F.conv2d(out, k.view(1, 1, -1, 1), padding=(r, 0))[:, 0]


def _object_mask(mask: torch.Tensor | None, x: torch.Tensor) -> np.ndarray:
    """The object mask as numpy; no mask = the whole image is object."""
    if mask is None:
        return np.ones((x.shape[0],) + tuple(x.shape[-2:]), dtype=bool)
    return mask.detach().to("cpu", torch.bool).numpy()


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) [-1, 1] -> (B, H, W, C) uint8 codes, as the slice cache stores them."""
    return quantise(x.detach().float().permute(0, 2, 3, 1).cpu().numpy())


def from_uint8_hwc(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a)).to(like.device).permute(0, 3, 1, 2)
    return dequantise(t).to(like.dtype)


# ---------------------------------------------------------------------------------------------
# The generators
# ---------------------------------------------------------------------------------------------
def _cutpaste_boxes(rng: np.random.Generator, b_n: int, size, area: tuple[float, float], aspect: tuple[float, float]):
    """Li et al. 2021 box: area U(area) x H x W, aspect ratio log-uniform in `aspect`; source and
    destination positions uniform in the image."""
    hh, ww = size
    a = rng.uniform(area[0], area[1], b_n) * hh * ww
    r = np.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]), b_n))
    h = np.clip(np.rint(np.sqrt(a / r)).astype(np.int64), 1, hh)
    w = np.clip(np.rint(np.sqrt(a * r)).astype(np.int64), 1, ww)
    ys, xs = rng.integers(0, hh - h + 1), rng.integers(0, ww - w + 1)
    yd, xd = rng.integers(0, hh - h + 1), rng.integers(0, ww - w + 1)
    return h, w, ys, xs, yd, xd


@dataclass(frozen=True)
class CutPasteParams:
    """Two-stage CutPaste's settings, the defaults of both `CutPasteAug` and its device twin
    (`ichbench.anomalies.device.DeviceCutPasteAug`): box area as a fraction of the image, aspect ratio
    bounds, brightness/contrast jitter of the patch."""

    area_min: float = 0.02
    area_max: float = 0.15
    aspect_min: float = 0.3
    aspect_max: float = 3.3
    jitter: float = 0.1


@dataclass(frozen=True)
class CutPasteAug(CutPasteParams):
    """Two-stage CutPaste augmentation (Li et al. 2021; MedIAnomaly `CutPasteNormal`): a box of
    area_min-area_max of the image, aspect log-uniform in [aspect_min, aspect_max], cut from a random place
    of the same slice, its brightness and contrast jittered by `jitter` as torchvision's ColorJitter does
    on the reference's grey images (`ichbench.anomalies.colorjitter`; mean over the patch) and pasted at a random
    place. The method jitters the whole slice before this (`image_jitter`)."""

    def __call__(self, x, rng, head_mask=None, brain_mask=None) -> Synthesis:
        b_n, _, hh, ww = x.shape
        dev = x.device
        h, w, ys, xs, yd, xd = _cutpaste_boxes(rng, b_n, (hh, ww), (self.area_min, self.area_max),
                                               (self.aspect_min, self.aspect_max))
        box = box_masks(yd, xd, h, w, (hh, ww), dev)
        patch = color_jitter(shifted(x, ys, xs, yd, xd), rng, self.jitter, region=box)
        out = torch.where(box[:, None], patch.to(x.dtype), x)
        return Synthesis(out, box[:, None].to(x.dtype), box)


def gaussian_blur_each(m: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """(B, H, W) float -> each image blurred with its own separable Gaussian of sigmas[b] pixels (zero
    padding; sigma 0 leaves an image as it is)."""
    sig = _t(sigmas, m.device, torch.float32)
    r = max(1, int(math.ceil(3.0 * float(sig.max())))) if len(sig) else 1
    grid = torch.arange(-r, r + 1, device=m.device, dtype=torch.float32)[None]
    k = torch.where(sig[:, None] > 0, torch.exp(-0.5 * (grid / sig[:, None].clamp_min(1e-6)) ** 2),
                    (grid == 0).float())
    k = k / k.sum(1, keepdim=True)
    b_n = m.shape[0]
    out = F.conv2d(m[None].float(), k.view(b_n, 1, 1, -1), padding=(0, r), groups=b_n)
    return F.conv2d(out, k.view(b_n, 1, -1, 1), padding=(r, 0), groups=b_n)[0]


@dataclass(frozen=True)
class AnatPasteParams:
    """AnatPaste's settings, the defaults of both `AnatPaste` and its device twin
    (`ichbench.anomalies.device.DeviceAnatPaste`); lengths are fractions of the image size."""

    area_min: float = 0.02
    area_max: float = 0.15
    aspect_min: float = 0.3
    aspect_max: float = 3.3
    alpha_min: float = 0.6
    alpha_max: float = 1.0
    ellipse_p: float = 0.5
    blur_min: float = 0.0
    blur_max: float = 14 / 224
    margin: float = 10 / 224
    jitter: float = 0.1
    halo: str = "black"

    def __post_init__(self):
        if self.halo not in HALOS:
            raise ValueError(f"AnatPaste: halo must be one of {HALOS}, not {self.halo!r}")


#: what AnatPaste's blurred mask blends toward where it reaches past the pasted box: `black` = the reference's
#: pasted layer, black (-1 in every window) outside the patch, so strong blurs leave a dark rim; `image` = the
#: shifted slice continues under the blur's tail (no rim)
HALOS = ("black", "image")


def anatomy_or_everywhere(brain: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> the same, with an image without any anatomy pixel replaced by all True: the
    reference pastes anywhere (and blends unmasked) when its anatomy mask is empty."""
    empty = ~brain.flatten(1).any(1)
    return brain | empty[:, None, None]


def pasted_layer(shifted_patch: torch.Tensor, box: torch.Tensor, halo: str) -> torch.Tensor:
    """The layer AnatPaste blends in: the (jittered, moved) patch inside its box and, outside it, black
    (`halo: black`, the reference's) or the moved slice (`halo: image`)."""
    if halo == "image":
        return shifted_patch
    return torch.where(box[:, None], shifted_patch, torch.full_like(shifted_patch, -1.0))


@dataclass(frozen=True)
class AnatPaste(AnatPasteParams):
    """AnatPaste (Sato et al. 2023; MedIAnomaly `ssl/two_stage/anatpaste.py`) for head CT: a CutPaste box of
    the same slice, its brightness and contrast jittered as in CutPasteAug, pasted with its centre on a
    random brain pixel through a soft mask = an ellipse or rectangle (ellipse with probability ellipse_p)
    inset by `margin` on each side, Gaussian-blurred with a sigma drawn per image from U[blur_min,
    blur_max], times the brain mask, with opacity alpha ~ U(alpha_min, alpha_max):
    x' = x + alpha M (patch - x). Lengths are fractions of the image size: the reference's blur radius
    randint(0, 15) px and margin 10 px at 224 px are blur_max 14/224 and margin 10/224. A shape inset to
    nothing keeps 1 px per side. Where the blurred mask reaches past the box, the pasted layer is black
    (`halo: black`, the reference's: a dark rim under strong blurs) or the moved slice (`halo: image`).
    Pixels outside the brain mask never change; on a slice without brain the centre is any pixel and the
    mask is not cut by the brain (the reference's rule for an empty anatomy mask)."""

    def __call__(self, x, rng, head_mask=None, brain_mask=None) -> Synthesis:
        if brain_mask is None:
            raise ValueError("AnatPaste needs the brain mask")
        b_n, _, hh, ww = x.shape
        dev = x.device
        h, w, ys, xs, _, _ = _cutpaste_boxes(rng, b_n, (hh, ww), (self.area_min, self.area_max),
                                             (self.aspect_min, self.aspect_max))
        # destination centre: a brain pixel drawn uniformly (the k-th set pixel, k ~ U[0, count))
        anatomy = anatomy_or_everywhere(torch.as_tensor(_object_mask(brain_mask, x)))
        brain = anatomy.numpy().reshape(b_n, -1)
        k = np.floor(rng.random(b_n) * brain.sum(1)).astype(np.int64)
        centre = (np.cumsum(brain, 1) > k[:, None]).argmax(1)
        cy, cx = np.divmod(centre, ww)
        yd, xd = np.clip(cy - h // 2, 0, hh - h), np.clip(cx - w // 2, 0, ww - w)
        ellipse = _t(rng.random(b_n) < self.ellipse_p, dev, torch.bool)[:, None, None]
        alpha = _t(rng.uniform(self.alpha_min, self.alpha_max, b_n), dev, torch.float32)[:, None, None]
        sigma = rng.uniform(self.blur_min, self.blur_max, b_n) * min(hh, ww)

        # the shape: the destination box inset by the margin (at least 1 px per side of its centre)
        mg = self.margin * min(hh, ww)
        hs, ws = np.maximum(h - 2 * mg, 2.0), np.maximum(w - 2 * mg, 2.0)
        ys0, xs0 = yd + (h - hs) / 2, xd + (w - ws) / 2
        r = torch.arange(hh, device=dev, dtype=torch.float32)[None, :, None] + 0.5
        c = torch.arange(ww, device=dev, dtype=torch.float32)[None, None, :] + 0.5
        f = lambda a: _t(a, dev, torch.float32)[:, None, None]  # noqa: E731
        ry, rx = f(hs / 2), f(ws / 2)
        dy, dx = (r - f(ys0) - ry) / ry, (c - f(xs0) - rx) / rx
        ell = dy ** 2 + dx ** 2 <= 1.0
        rect = (dy.abs() <= 1.0) & (dx.abs() <= 1.0)
        shape = torch.where(ellipse, ell, rect).float()
        m = gaussian_blur_each(shape, sigma) * anatomy.to(dev).float() * alpha
        box = box_masks(yd, xd, h, w, (hh, ww), dev)
        patch = pasted_layer(color_jitter(shifted(x, ys, xs, yd, xd), rng, self.jitter, region=box), box, self.halo)
        out = x + m[:, None].to(x.dtype) * (patch.to(x.dtype) - x)
        return Synthesis(out, m[:, None].to(x.dtype), m > 0)
