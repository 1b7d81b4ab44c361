"""Synthetic anomalies for the self-supervised rows of Table 1, separate from the networks.

Each generator maps a batch of normal slices to a batch with synthetic anomalies and a pixel label:

    syn = NSA()(x, rng, head_mask=head)       # x (B, C, S, S) in [-1, 1], rng a numpy Generator
    syn.x, syn.label, syn.region              # (B, C, S, S), (B, 1, S, S) in [0, 1], (B, S, S) bool

`region` is where the generator may have changed pixels (the union of the pasted boxes, or the
support of AnatPaste's soft mask); outside it the output equals the input bit for bit.

| generator | row(s) | what it does (paper) |
|---|---|---|
| `NSA` | NSA, NSA-Intensity | a patch of another image, rescaled and moved, Poisson-blended with OpenCV mixed gradients (Schlueter et al. 2022) |
| `FPI` | FPI, FPI-Poisson | a foreign patch at the same place, linearly interpolated (Tan et al. 2022) or Poisson-blended with the foreign part weighted by a (Tan et al. 2021, PII) |
| `CutPaste` | CutPaste | a patch of the same image pasted elsewhere, no blending, binary patch label |
| `CutPasteAug` | CutPaste (2 stage) | Li et al. 2021: 2-15 % of the area, aspect log-uniform, patch brightness/contrast jitter |
| `AnatPaste` | AnatPaste | Sato et al. 2023: pasted inside the brain through an ellipse/rectangle mask, blurred with a width drawn per image, times the brain mask |

Scales. The reference works on 8-bit images; here slices are float in [-1, 1], where one grey level of
0-255 is 2/255 = 1/127.5. So a threshold of t grey levels is t / 127.5 and a logistic slope k per grey
level is k * 127.5 per unit: NSA-Intensity's sigmoid(0.5 (dI - 4)) on 0-255 is sigmoid(63.75 (dI - 0.0314)).
With 3 CT windows per pixel, the intensity change dI of a pixel is the largest change over its channels.

Randomness. Every random number comes from the numpy Generator passed in, drawn in a fixed order
that does not depend on the data (all 200 placement tries are drawn at once and the first valid one
is kept), so the same seed gives the same anomalies on any device. Pixel work runs as batched torch
ops on the batch's device (FPI, CutPaste, CutPasteAug, AnatPaste); OpenCV's Poisson blending
(`cv2.seamlessClone`) runs per image on the CPU, in a few threads (OpenCV releases the GIL).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .colorjitter import color_jitter
from .windowing import dequantise, quantise

#: one grey level of an 8-bit image on the [-1, 1] scale
GREY_LEVEL = 1.0 / 127.5

CLONE_FLAGS = {"mixed": cv2.MIXED_CLONE, "normal": cv2.NORMAL_CLONE}


class Synthesis(NamedTuple):
    x: torch.Tensor       # (B, C, S, S) the slices with synthetic anomalies
    label: torch.Tensor   # (B, 1, S, S) float in [0, 1]: the pseudo-label (two-stage: the blend weight)
    region: torch.Tensor  # (B, S, S) bool: where pixels may differ from the input


# ---------------------------------------------------------------------------------------------
# Patch placement shared by NSA, FPI and the one-stage CutPaste
# ---------------------------------------------------------------------------------------------
@dataclass
class PatchSlot:
    """One patch per image of a batch (numpy arrays of length B); `ok` False = no patch."""

    ok: np.ndarray
    src: np.ndarray          # index of the source image in the batch
    ys: np.ndarray           # source box: top, left, height, width
    xs: np.ndarray
    h: np.ndarray
    w: np.ndarray
    yd: np.ndarray           # destination box
    xd: np.ndarray
    hd: np.ndarray
    wd: np.ndarray


def integral_image(mask: np.ndarray) -> np.ndarray:
    """(B, H, W) bool -> (B, H + 1, W + 1) summed-area table, so any box sum costs 4 look-ups."""
    ii = np.zeros((mask.shape[0], mask.shape[1] + 1, mask.shape[2] + 1), dtype=np.int64)
    ii[:, 1:, 1:] = mask.astype(np.int64).cumsum(1).cumsum(2)
    return ii


def box_coverage(ii: np.ndarray, img, y, x, h, w) -> np.ndarray:
    """Fraction of each box (top y, left x, size h x w) that the mask of image `img` covers."""
    s = ii[img, y + h, x + w] - ii[img, y, x + w] - ii[img, y + h, x] + ii[img, y, x]
    return s / np.maximum(h * w, 1)


@dataclass(frozen=True)
class PatchSampler:
    """Where patches go (NSA, Schlueter et al. 2022; also used for FPI and the one-stage CutPaste).

    Half-size per dimension = (base + Gamma(gamma_shape, gamma_scale)) x size, clipped to
    [min_half, max_half] x size. 1 to max_patches patches per image: the first always, each further
    one with probability extra_patch_p. A placement is kept only where the object (head) mask covers
    more than min_coverage of the patch, at the source and at the destination; up to max_tries
    placements (size, source image, positions, scale all redrawn) are tried, else the patch is skipped.
    Boxes keep `margin` pixels from the image border (OpenCV's Poisson blending needs 1).
    """

    base: float = 0.05
    gamma_shape: float = 2.0
    gamma_scale: float = 0.03
    min_half: float = 0.03
    max_half: float = 0.40
    max_patches: int = 3
    extra_patch_p: float = 0.5
    min_coverage: float = 0.7
    max_tries: int = 200
    margin: int = 1

    def _sizes(self, rng: np.random.Generator, shape, n: int) -> np.ndarray:
        half = np.clip(self.base + rng.gamma(self.gamma_shape, self.gamma_scale, shape), self.min_half, self.max_half)
        return np.clip(np.rint(2.0 * half * n).astype(np.int64), 2, n - 2 * self.margin)

    def sample(self, rng: np.random.Generator, head: np.ndarray, *, other_image: bool, move: bool,
               scale: tuple[float, float, float] | None = None) -> list[PatchSlot]:
        """head: (B, H, W) bool object masks. other_image: take the source patch from another image of
        the batch (else the same image). move: draw a new destination (else the source position).
        scale: (sd, lo, hi) of the destination size factor N(1, sd) clipped to [lo, hi], or None."""
        b_n, hh, ww = head.shape
        t, m = self.max_tries, self.margin
        ii = integral_image(head)
        active = np.ones((self.max_patches, b_n), dtype=bool)
        active[1:] = rng.random((self.max_patches - 1, b_n)) < self.extra_patch_p
        rows = np.arange(b_n)[:, None]
        slots = []
        for k in range(self.max_patches):
            h, w = self._sizes(rng, (b_n, t), hh), self._sizes(rng, (b_n, t), ww)
            if other_image and b_n > 1:
                src = (rows + rng.integers(1, b_n, (b_n, t))) % b_n
            else:
                src = np.broadcast_to(rows, (b_n, t))
            ys, xs = rng.integers(m, hh - m - h + 1), rng.integers(m, ww - m - w + 1)
            if scale is not None:
                f = np.clip(rng.normal(1.0, scale[0], (b_n, t)), scale[1], scale[2])
                hd = np.clip(np.rint(h * f).astype(np.int64), 2, hh - 2 * m)
                wd = np.clip(np.rint(w * f).astype(np.int64), 2, ww - 2 * m)
            else:
                hd, wd = h, w
            if move:
                yd, xd = rng.integers(m, hh - m - hd + 1), rng.integers(m, ww - m - wd + 1)
            else:
                yd, xd = ys, xs
            valid = ((box_coverage(ii, src, ys, xs, h, w) > self.min_coverage)
                     & (box_coverage(ii, np.broadcast_to(rows, (b_n, t)), yd, xd, hd, wd) > self.min_coverage))
            first = valid.argmax(1)
            pick = (np.arange(b_n), first)
            slots.append(PatchSlot(ok=valid[pick] & active[k], src=src[pick], ys=ys[pick], xs=xs[pick], h=h[pick],
                                   w=w[pick], yd=yd[pick], xd=xd[pick], hd=hd[pick], wd=wd[pick]))
        return slots


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


def binary_median(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter of a (B, H, W) bool mask over size x size windows (majority vote, zeros outside)."""
    if size <= 1:
        return mask
    frac = F.avg_pool2d(mask[:, None].float(), size, stride=1, padding=size // 2, count_include_pad=True)
    return frac[:, 0] > 0.5


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
# Poisson blending with OpenCV, one image at a time
# ---------------------------------------------------------------------------------------------
def poisson_paste(dst: np.ndarray, sources: np.ndarray, jobs: list[tuple], flag: int) -> np.ndarray:
    """Paste boxes into one uint8 (H, W, 3 or 1) image with `cv2.seamlessClone`, one after another.

    jobs: (src_index, ys, xs, h, w, yd, xd, hd, wd, alpha): the source box of sources[src_index] is
    resized to hd x wd; with alpha (FPI-Poisson) the pasted patch is (1 - alpha) dst + alpha source,
    so the foreign part of the guidance field is scaled by alpha. The 1-pixel ring of the box stays
    dst (the Dirichlet boundary), so nothing outside the box changes.
    """
    grey = dst.shape[2] == 1
    cur = np.repeat(dst, 3, axis=2) if grey else dst.copy()
    for (j, ys, xs, h, w, yd, xd, hd, wd, alpha) in jobs:
        patch = sources[j][ys:ys + h, xs:xs + w]
        if grey:
            patch = np.repeat(patch, 3, axis=2)
        if (hd, wd) != (h, w):
            patch = cv2.resize(patch, (int(wd), int(hd)), interpolation=cv2.INTER_LINEAR)
        if alpha is not None:
            under = cur[yd:yd + hd, xd:xd + wd].astype(np.float32)
            patch = np.clip(np.rint((1.0 - alpha) * under + alpha * patch.astype(np.float32)), 0, 255).astype(np.uint8)
        src = cur.copy()
        src[yd:yd + hd, xd:xd + wd] = patch
        mask = np.zeros(cur.shape[:2], dtype=np.uint8)
        mask[yd:yd + hd, xd:xd + wd] = 255
        # seamlessClone centres the mask's bounding box (width w) at p, left edge p.x - w // 2
        cur = cv2.seamlessClone(src, cur, mask, (int(xd + wd // 2), int(yd + hd // 2)), flag)
    return cur[:, :, :1] if grey else cur


def _poisson_batch(x: torch.Tensor, slots: list[PatchSlot], flag: int, workers: int,
                   alphas: np.ndarray | None = None) -> torch.Tensor:
    if x.shape[1] not in (1, 3):
        raise ValueError(f"OpenCV Poisson blending needs 1 or 3 channels, got {x.shape[1]}")
    imgs = to_uint8_hwc(x)

    def one(b: int) -> np.ndarray:
        jobs = [(int(s.src[b]), int(s.ys[b]), int(s.xs[b]), int(s.h[b]), int(s.w[b]), int(s.yd[b]), int(s.xd[b]),
                 int(s.hd[b]), int(s.wd[b]), None if alphas is None else float(alphas[k, b]))
                for k, s in enumerate(slots) if s.ok[b]]
        return poisson_paste(imgs[b], imgs, jobs, flag) if jobs else imgs[b]

    n = min(max(1, workers), os.cpu_count() or 1, x.shape[0])
    if n > 1:
        with ThreadPoolExecutor(n) as pool:
            out = list(pool.map(one, range(x.shape[0])))
    else:
        out = [one(b) for b in range(x.shape[0])]
    return from_uint8_hwc(np.stack(out), x)


def _union(slots: list[PatchSlot], size, device) -> torch.Tensor:
    region = torch.zeros((len(slots[0].ok),) + tuple(size), dtype=torch.bool, device=device)
    for s in slots:
        region |= box_masks(s.yd, s.xd, s.hd, s.wd, size, device, s.ok)
    return region


# ---------------------------------------------------------------------------------------------
# The generators
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NSA:
    """Natural Synthetic Anomalies (Schlueter et al. 2022): a patch of another slice of the batch,
    rescaled by N(1, scale_sd) clipped to [scale_min, scale_max], moved to a new position and
    Poisson-blended (OpenCV `seamlessClone`, mixed gradients).

    label "binary": pixels whose intensity changed by more than `threshold` (median-filtered over
    median_size x median_size); "logistic" (NSA-Intensity): sigmoid(logistic_k (dI - logistic_t)) inside
    the patches. Defaults are the reference's 8-bit values (4 grey levels, k = 0.5 per level) on [-1, 1].
    """

    patches: PatchSampler = field(default_factory=PatchSampler)
    scale_sd: float = 0.5
    scale_min: float = 0.7
    scale_max: float = 1.3
    clone: str = "mixed"
    label: str = "binary"
    threshold: float = 4 * GREY_LEVEL
    median_size: int = 5
    logistic_k: float = 0.5 / GREY_LEVEL
    logistic_t: float = 4 * GREY_LEVEL
    workers: int = 2

    def __call__(self, x, rng, head_mask=None, brain_mask=None) -> Synthesis:
        slots = self.patches.sample(rng, _object_mask(head_mask, x), other_image=True, move=True,
                                    scale=(self.scale_sd, self.scale_min, self.scale_max))
        region = _union(slots, x.shape[-2:], x.device)
        blended = _poisson_batch(x, slots, CLONE_FLAGS[self.clone], self.workers)
        out = torch.where(region[:, None], blended, x)
        d_i = (out - x).abs().amax(1)
        if self.label == "binary":
            lab = (binary_median(d_i > self.threshold, self.median_size) & region).float()
        elif self.label == "logistic":
            lab = torch.sigmoid(self.logistic_k * (d_i - self.logistic_t)) * region
        else:
            raise ValueError(f"NSA label must be 'binary' or 'logistic', not {self.label!r}")
        return Synthesis(out, lab[:, None].to(x.dtype), region)


@dataclass(frozen=True)
class FPI:
    """Foreign Patch Interpolation (Tan et al. 2022): a patch of another slice at the same position,
    x' = (1 - a) x + a x_other with a ~ U(alpha_min, alpha_max), label a inside the patch.
    poisson=True (FPI-Poisson, after Tan et al. 2021): the interpolated patch is Poisson-blended
    (OpenCV, `clone` gradients), i.e. the foreign gradients enter scaled by a; the label stays a.
    Overlapping patches compose: label = 1 - prod(1 - a_i), the share of foreign content."""

    patches: PatchSampler = field(default_factory=PatchSampler)
    alpha_min: float = 0.05
    alpha_max: float = 0.95
    poisson: bool = False
    clone: str = "mixed"
    workers: int = 2

    def __call__(self, x, rng, head_mask=None, brain_mask=None) -> Synthesis:
        slots = self.patches.sample(rng, _object_mask(head_mask, x), other_image=True, move=False)
        alphas = rng.uniform(self.alpha_min, self.alpha_max, (len(slots), x.shape[0]))
        size, dev = x.shape[-2:], x.device
        label = torch.zeros((x.shape[0],) + tuple(size), dtype=torch.float32, device=dev)
        region = torch.zeros_like(label, dtype=torch.bool)
        out = x
        for k, s in enumerate(slots):
            box = box_masks(s.yd, s.xd, s.hd, s.wd, size, dev, s.ok)
            a = box.float() * _t(alphas[k], dev, torch.float32)[:, None, None]
            if not self.poisson:
                out = out + a[:, None].to(x.dtype) * (x[_t(s.src, dev)] - out)
            label = 1.0 - (1.0 - label) * (1.0 - a)
            region |= box
        if self.poisson:
            out = torch.where(region[:, None], _poisson_batch(x, slots, CLONE_FLAGS[self.clone], self.workers, alphas), x)
        return Synthesis(out, label[:, None].to(x.dtype), region)


@dataclass(frozen=True)
class CutPaste:
    """One-stage CutPaste as in the NSA/MedIAnomaly set: a patch of the same slice copied to another
    position on the object, no blending; label = the binary patch mask."""

    patches: PatchSampler = field(default_factory=PatchSampler)

    def __call__(self, x, rng, head_mask=None, brain_mask=None) -> Synthesis:
        slots = self.patches.sample(rng, _object_mask(head_mask, x), other_image=False, move=True)
        size, dev = x.shape[-2:], x.device
        out = x
        region = torch.zeros((x.shape[0],) + tuple(size), dtype=torch.bool, device=dev)
        for s in slots:
            box = box_masks(s.yd, s.xd, s.hd, s.wd, size, dev, s.ok)
            out = torch.where(box[:, None], shifted(x, s.ys, s.xs, s.yd, s.xd), out)
            region |= box
        return Synthesis(out, region[:, None].to(x.dtype), region)


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
class CutPasteAug:
    """Two-stage CutPaste augmentation (Li et al. 2021; MedIAnomaly `CutPasteNormal`): a box of
    area_min-area_max of the image, aspect log-uniform in [aspect_min, aspect_max], cut from a random place
    of the same slice, its brightness and contrast jittered by `jitter` as torchvision's ColorJitter does
    on the reference's grey images (`ichbench.colorjitter`; mean over the patch) and pasted at a random
    place. The method jitters the whole slice before this (`image_jitter`)."""

    area_min: float = 0.02
    area_max: float = 0.15
    aspect_min: float = 0.3
    aspect_max: float = 3.3
    jitter: float = 0.1

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
class AnatPaste:
    """AnatPaste (Sato et al. 2023; MedIAnomaly `ssl/two_stage/anatpaste.py`) for head CT: a CutPaste box of
    the same slice, its brightness and contrast jittered as in CutPasteAug, pasted with its centre on a
    random brain pixel through a soft mask = an ellipse or rectangle (ellipse with probability ellipse_p)
    inset by `margin` on each side, Gaussian-blurred with a sigma drawn per image from U[blur_min,
    blur_max], times the brain mask, with opacity alpha ~ U(alpha_min, alpha_max):
    x' = x + alpha M (patch - x). Lengths are fractions of the image size: the reference's blur radius
    randint(0, 15) px and margin 10 px at 224 px are blur_max 14/224 and margin 10/224. A shape inset to
    nothing keeps 1 px per side. Pixels outside the brain mask never change; a slice without brain is
    returned unchanged."""

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

    def __call__(self, x, rng, head_mask=None, brain_mask=None) -> Synthesis:
        if brain_mask is None:
            raise ValueError("AnatPaste needs the brain mask")
        b_n, _, hh, ww = x.shape
        dev = x.device
        h, w, ys, xs, _, _ = _cutpaste_boxes(rng, b_n, (hh, ww), (self.area_min, self.area_max),
                                             (self.aspect_min, self.aspect_max))
        # destination centre: a brain pixel drawn uniformly (the k-th set pixel, k ~ U[0, count))
        brain = _object_mask(brain_mask, x).reshape(b_n, -1)
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
        m = gaussian_blur_each(shape, sigma) * brain_mask.to(dev).float() * alpha
        patch = color_jitter(shifted(x, ys, xs, yd, xd), rng, self.jitter,
                             region=box_masks(yd, xd, h, w, (hh, ww), dev))
        out = x + m[:, None].to(x.dtype) * (patch.to(x.dtype) - x)
        return Synthesis(out, m[:, None].to(x.dtype), m > 0)
