"""Synthetic anomalies and pseudo-labels of the one-stage rows, as MedIAnomaly's `patch_ex` makes them.

| generator | row(s) | reference setting (MedIAnomaly `ssl/one_stage/train_med.py`) |
|---|---|---|
| `NSA(label="binary")` | NSA | `Shift-M`: another image's patch, rescaled, moved, Poisson-blended (mixed gradients); binary label |
| `NSA(label="logistic")` | NSA-Intensity | `Shift-Intensity-M`: as NSA; label sigmoid(k (dI - x0)) on the changed pixels |
| `FPI()` | FPI | `FPI`: another image's patch at the same place, (1 - a) x + a x_other floored to 8 bits; label a |
| `FPI(poisson=True)` | FPI-Poisson | `FPI-Poisson`: the same patch Poisson-blended with the mask scaled to ceil(255 a); label a |
| `CutPaste()` | CutPaste | `CutPaste`: a patch of the same image copied elsewhere, no blending; binary label |

Each image of a batch is made as the reference makes one (Schlueter et al. 2022, their code in MedIAnomaly):
- 1 to `max_patches` patches, the first always, each further one with probability `extra_patch_p`; all patches
  of an image come from one source image (another image of the batch; the image itself for CutPaste).
- Half-size per dimension int(clip((base + Gamma(shape, scale)) x size, round(min_half x size), round(max_half x
  size))), drawn once per patch; only the position is retried (up to `max_tries`): the source centre is uniform in
  [round(min_half x size), size - round(min_half x size)) and the box is clipped at the image border. The source
  box must lie more than `min_object` on the source's object mask.
- NSA rescales the patch by clip(N(1, scale_sd), scale_min, scale_max), its new height and width clipped to the
  half-size bounds (the reference's rule, kept as is), keeping the aspect ratio.
- NSA and CutPaste move the patch to a centre uniform in [h//2 + 1, size - h//2 - 1); a destination is kept when
  the (resized) source object covers more than `min_object` of the patch and more than `min_overlap` of the source
  object lands on the destination's object. FPI keeps the source position and checks nothing more.
- Only box pixels on the source or the destination object are replaced (the patch mask); Poisson blending uses the
  whole box less its 1-pixel ring, and skips a patch of fewer than 50 mask pixels. The patch masks are written into
  one label mask box by box (a later box overwrites an earlier one, as in the reference).

Pseudo-label, every row (the reference's `patch_ex`): changed = patch mask x (mean over channels of |x' - x| > tol
grey levels), then a 5 x 5 median filter (`cv2.medianBlur`); binary rows use it as is, FPI rows multiply it by
a (drawn once per image), NSA-Intensity multiplies it by sigmoid(k (dI - x0)) with dI = mean over channels of
|x' - x| on the changed pixels, median-filtered with a disk of radius 5 (`scipy.ndimage.median_filter`, border
'nearest', as skimage's `median` does). Pixels under a patch that did not change (air on air) are normal.

Everything runs on the 8-bit codes of the slice cache (the [-1, 1] slices are on that grid), so the reference's
8-bit thresholds apply unchanged. The object mask is the pipeline's head mask (the reference thresholds the
image at 20 grey levels and median-filters it over 7 x 7; for CT the HU-based head mask is the same region,
computed more robustly). Every random number is drawn up front from the numpy Generator passed in, in a fixed
order that does not depend on the data, so a seed gives the same anomalies on any device. The per-image work
(numpy, OpenCV, SciPy) runs on the CPU in `workers` threads.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from .two_stage import CLONE_FLAGS, Synthesis, from_uint8_hwc, to_uint8_hwc

#: fewer positive mask pixels than this and the reference skips a Poisson patch (seamlessClone fails)
MIN_POISSON_PIXELS = 50


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def thread_pool(workers: int) -> ThreadPoolExecutor:
    """This process's pool of `workers` threads for the per-image work, made once and kept (a pool per call
    started and joined its threads at every training step). Keyed by process id as well: a forked child
    (a DataLoader worker) gets its own, since threads do not survive a fork."""
    key = (os.getpid(), workers)
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="ichbench-anomalies")
    return pool


@dataclass(frozen=True)
class PatchPlacement:
    """Patch count, size and placement rules (reference `train_med.py` constants: half-width bounds 3 % - 40 %,
    Gamma(2, 0.03) + 0.05, 3 patches, object and overlap fractions 0.7, 200 tries); the defaults of both
    `PatchSampler` and the device twin `ichbench.anomalies.device.DevicePatchExample`."""

    base: float = 0.05
    gamma_shape: float = 2.0
    gamma_scale: float = 0.03
    min_half: float = 0.03
    max_half: float = 0.40
    max_patches: int = 3
    extra_patch_p: float = 0.5
    min_object: float = 0.7
    min_overlap: float = 0.7
    max_tries: int = 200


@dataclass(frozen=True)
class PatchSampler(PatchPlacement):
    """The placement rules' random numbers, drawn with numpy."""

    def draw(self, rng: np.random.Generator, n: int, size: tuple[int, int], *, other_image: bool,
             scale_sd: float | None, alpha: tuple[float, float] | None) -> dict[str, np.ndarray]:
        """All random numbers of a batch of n images, in a fixed order."""
        (hh, ww), p, t = size, self.max_patches, self.max_tries
        lo = (int(np.rint(self.min_half * hh)), int(np.rint(self.min_half * ww)))
        d: dict[str, np.ndarray] = {
            "src": (np.arange(n) + rng.integers(1, n, n)) % n if other_image and n > 1 else np.arange(n),
            "alpha": rng.uniform(alpha[0], alpha[1], n) if alpha else np.ones(n),
            "active": np.concatenate([np.ones((n, 1), bool), rng.random((n, p - 1)) < self.extra_patch_p], 1),
            "gamma": rng.gamma(self.gamma_shape, self.gamma_scale, (n, p, 2)),
            "src_y": rng.integers(lo[0], hh - lo[0], (n, p, t)),
            "src_x": rng.integers(lo[1], ww - lo[1], (n, p, t)),
            "scale": rng.normal(1.0, scale_sd, (n, p)) if scale_sd is not None else np.ones((n, p)),
            "dst_u": rng.random((n, p, t, 2)),   # destination centres, uniform over a size-dependent range
        }
        return d


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius ** 2


@dataclass(frozen=True)
class PatchRules:
    """How a `patch_ex` setting blends a patch and labels the result; the defaults of both `PatchExample`
    and the device twin `ichbench.anomalies.device.DevicePatchExample`."""

    blend: str = "swap"                  # "swap" (CutPaste), "uniform" (FPI), "poisson" (NSA, FPI-Poisson)
    clone: str = "mixed"                 # OpenCV gradients for "poisson": mixed or normal
    label: str = "binary"                # "binary", "continuous" (x a) or "logistic" (NSA-Intensity)
    same: bool = False                   # source = the image itself (CutPaste)
    shift: bool = True                   # move the patch (else keep the source position: FPI)
    resize: bool = False                 # rescale the patch (NSA)
    scale_sd: float = 0.5
    scale_min: float = 0.7
    scale_max: float = 1.3
    alpha_min: float = 0.05              # FPI's a ~ U(alpha_min, alpha_max), once per image
    alpha_max: float = 0.95
    tol: float = 1.0                     # grey levels of 0-255: a pixel changed if its mean |x' - x| exceeds this
    median_size: int = 5                 # median filter of the changed-pixel mask
    logistic_k: float = 0.5              # NSA-Intensity, per grey level
    logistic_x0: float = 4.0             # grey levels
    intensity_radius: int = 5            # disk median filter of dI

    def __post_init__(self):
        if self.blend not in ("swap", "uniform", "poisson"):
            raise ValueError(f"blend must be 'swap', 'uniform' or 'poisson', not {self.blend!r}")
        if self.label not in ("binary", "continuous", "logistic"):
            raise ValueError(f"label must be 'binary', 'continuous' or 'logistic', not {self.label!r}")
        if self.clone not in CLONE_FLAGS:
            raise ValueError(f"clone must be one of {sorted(CLONE_FLAGS)}, not {self.clone!r}")


@dataclass(frozen=True)
class PatchExample(PatchRules):
    """The reference's `patch_ex` for one setting; called on a batch, it makes every image independently."""

    patches: PatchSampler = field(default_factory=PatchSampler)
    workers: int = 2

    def __call__(self, x: torch.Tensor, rng: np.random.Generator, head_mask=None, brain_mask=None) -> Synthesis:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"the one-stage anomalies need 1 or 3 channels, got {x.shape[1]}")
        n, _, hh, ww = x.shape
        imgs = to_uint8_hwc(x)
        obj = None if head_mask is None else head_mask.detach().to("cpu", torch.bool).numpy()
        draws = self.patches.draw(rng, n, (hh, ww), other_image=not self.same,
                                  scale_sd=self.scale_sd if self.resize else None,
                                  alpha=(self.alpha_min, self.alpha_max) if self.label == "continuous" else None)

        def one(b: int):
            s = int(draws["src"][b])
            return self.example(imgs[b], imgs[s], None if obj is None else obj[b], None if obj is None else obj[s],
                                {k: v[b] for k, v in draws.items()})

        workers = min(max(1, self.workers), os.cpu_count() or 1, n)
        if workers > 1:
            done = list(thread_pool(workers).map(one, range(n)))
        else:
            done = [one(b) for b in range(n)]
        out = from_uint8_hwc(np.stack([d[0] for d in done]), x)
        label = torch.from_numpy(np.stack([d[1] for d in done])).to(x.device, x.dtype)[:, None]
        region = torch.from_numpy(np.stack([d[2] for d in done])).to(x.device)
        return Synthesis(out, label, region)

    # -- one image ------------------------------------------------------------------------------
    def example(self, dest: np.ndarray, src: np.ndarray, dest_obj, src_obj, draw: dict[str, Any]):
        """(H, W, C) uint8 image, its source image and object masks (or None) -> (image, label (H, W) float32,
        region (H, W) bool: the boxes of the applied patches)."""
        hh, ww = dest.shape[:2]
        if self.same:
            src, src_obj = dest, dest_obj
        mask = np.zeros((hh, ww), np.uint8)
        region = np.zeros((hh, ww), bool)
        out = dest
        alpha = float(draw["alpha"])
        for k in range(self.patches.max_patches):
            if not draw["active"][k]:
                continue
            done = self._one_patch(out, src, dest_obj, src_obj, draw, k, alpha)
            if done is None:
                continue
            out, (y0, y1, x0, x1), patch_mask = done
            mask[y0:y1, x0:x1] = patch_mask
            region[y0:y1, x0:x1] = True
        return out, self._label(dest, out, mask, alpha), region

    def _label(self, dest: np.ndarray, out: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
        diff = np.abs(dest.astype(np.float64) - out.astype(np.float64)).mean(-1)
        changed = ((diff * mask) > self.tol).astype(np.uint8)
        if self.median_size > 1:
            changed = cv2.medianBlur(changed, self.median_size)
        if self.label == "binary":
            return changed.astype(np.float32)
        if self.label == "continuous":
            return (changed * alpha).astype(np.float32)
        label = np.zeros(changed.shape, np.float32)
        ys, xs = np.nonzero(changed)
        if len(ys) == 0:
            return label
        # the median only matters on changed pixels: filter their bounding box plus the disk radius (where
        # that box meets the image border, 'nearest' extends the same pixels as on the whole image)
        r = self.intensity_radius
        y0, y1 = max(ys.min() - r, 0), min(ys.max() + r + 1, changed.shape[0])
        x0, x1 = max(xs.min() - r, 0), min(xs.max() + r + 1, changed.shape[1])
        c = changed[y0:y1, x0:x1]
        from scipy.ndimage import median_filter     # here: scipy.ndimage costs every job 0.3 s to import

        d_i = median_filter(diff[y0:y1, x0:x1] * c, footprint=_disk(r), mode="nearest")
        label[y0:y1, x0:x1] = c / (1.0 + np.exp(-self.logistic_k * (d_i - self.logistic_x0)))
        return label

    def _one_patch(self, cur, src, dest_obj, src_obj, draw, k: int, alpha: float):
        """One patch pasted into `cur`; None where the reference skips it."""
        p = self.patches
        hh, ww = cur.shape[:2]
        lo = (int(np.rint(p.min_half * hh)), int(np.rint(p.min_half * ww)))
        hi = (int(np.rint(p.max_half * hh)), int(np.rint(p.max_half * ww)))
        half_y = int(np.clip((p.base + draw["gamma"][k, 0]) * hh, lo[0], hi[0]))
        half_x = int(np.clip((p.base + draw["gamma"][k, 1]) * ww, lo[1], hi[1]))
        for t in range(p.max_tries):                      # source position
            cy, cx = int(draw["src_y"][k, t]), int(draw["src_x"][k, t])
            y0, y1 = max(cy - half_y, 0), min(cy + half_y, hh)
            x0, x1 = max(cx - half_x, 0), min(cx + half_x, ww)
            if src_obj is None or src_obj[y0:y1, x0:x1].mean() > p.min_object:
                break
        else:
            return None
        patch = src[y0:y1, x0:x1]
        h, w = patch.shape[:2]
        sobj = None if src_obj is None else src_obj[y0:y1, x0:x1].astype(np.uint8)
        if self.resize:
            f = float(np.clip(draw["scale"][k], self.scale_min, self.scale_max))
            nh = np.clip(f * h, lo[0], hi[0])
            nw = int(np.clip(int(nh / h * w), lo[1], hi[1]))
            nh = int(np.clip(int(nw / w * h), lo[0], hi[0]))
            patch = cv2.resize(patch, (nw, nh)).reshape(nh, nw, -1)
            if sobj is not None:
                sobj = cv2.resize(sobj, (nw, nh))
            h, w = nh, nw
        if self.shift:                                    # destination position
            if sobj is not None and sobj.mean() <= p.min_object:
                return None
            ylo, yhi = h // 2 + 1, hh - h // 2 - 1
            xlo, xhi = w // 2 + 1, ww - w // 2 - 1
            if yhi <= ylo or xhi <= xlo:                  # no room (the reference would raise)
                return None
            for t in range(p.max_tries):
                cy = ylo + int(draw["dst_u"][k, t, 0] * (yhi - ylo))
                cx = xlo + int(draw["dst_u"][k, t, 1] * (xhi - xlo))
                y0, y1, x0, x1 = cy - h // 2, cy + (h + 1) // 2, cx - w // 2, cx + (w + 1) // 2
                if sobj is None or (sobj & dest_obj[y0:y1, x0:x1]).sum() / sobj.sum() > p.min_overlap:
                    break
            else:
                return None
        if sobj is None:
            patch_mask = np.ones((h, w), np.uint8)
        else:
            patch_mask = (sobj | dest_obj[y0:y1, x0:x1]).astype(np.uint8)
        before = cur[y0:y1, x0:x1]
        out = cur.copy()
        if self.blend == "swap":
            out[y0:y1, x0:x1] = np.where(patch_mask[..., None] > 0, patch, before)
        elif self.blend == "uniform":
            fm = alpha * patch_mask[..., None].astype(np.float64)   # the reference's float64 arithmetic
            mixed = (before - fm * before) + fm * patch
            out[y0:y1, x0:x1] = np.floor(mixed).astype(np.uint8)
        else:
            # the whole box (the reference adds the both-background pixels back "to avoid artefacts"),
            # weighted ceil(255 a) (1 for NSA), without its 1-pixel ring
            weight = np.full((h, w), math.ceil(alpha * 255) if self.label == "continuous" else 255, np.uint8)
            weight[0], weight[-1], weight[:, 0], weight[:, -1] = 0, 0, 0, 0
            if (weight > 0).sum() < MIN_POISSON_PIXELS:
                return None
            centre = (x1 - (x1 - x0) // 2, y0 + (y1 - y0) // 2)
            grey = cur.shape[2] == 1
            # OpenCV wants 3 channels; the reference pads a grey image with two zero channels
            pad = (lambda a: np.concatenate([a, np.zeros_like(a), np.zeros_like(a)], 2)) if grey else (lambda a: a)
            try:
                blended = cv2.seamlessClone(pad(patch), pad(cur), weight, centre, CLONE_FLAGS[self.clone])
            except cv2.error:
                return None
            out = blended[..., :1] if grey else blended
        return out, (y0, y1, x0, x1), patch_mask


def NSA(label: str = "binary", **kw) -> PatchExample:
    """NSA (`label="binary"`) and NSA-Intensity (`label="logistic"`), Schlueter et al. 2022."""
    return PatchExample(blend="poisson", label=label, same=False, shift=True, resize=True, **kw)


def FPI(poisson: bool = False, **kw) -> PatchExample:
    """FPI (Tan et al. 2022) and, with poisson=True, FPI-Poisson (Tan et al. 2021, PII)."""
    return PatchExample(blend="poisson" if poisson else "uniform", label="continuous", same=False, shift=False,
                        resize=False, **kw)


def CutPaste(**kw) -> PatchExample:
    """One-stage CutPaste as in the NSA / MedIAnomaly code (Li et al. 2021's patch, no blending)."""
    return PatchExample(blend="swap", label="binary", same=True, shift=True, resize=False, **kw)
