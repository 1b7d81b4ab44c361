"""Batched synthetic-anomaly generators on the training device.

The seven generators of the self-supervised rows as batched torch code on any device (CPU, CUDA), with
the pseudo-label rules of the reference (MedIAnomaly `patch_ex`, see docs METHODS.md) and a batched
Poisson solver (`device_ops`), so that a GPU never waits for NumPy/OpenCV:

    gen = torch.Generator(device=x.device).manual_seed(0)
    syn = device_nsa()(x, gen, head_mask=head)   # x (B, C, S, S) in [-1, 1] on the 8-bit grid
    syn.x, syn.label, syn.region                 # as `ichbench.anomalies.two_stage.Synthesis`

| factory | row | reference setting |
|---|---|---|
| `device_nsa("binary")` | NSA | another image's patch, rescaled, moved, Poisson-blended (OpenCV mixed gradients) |
| `device_nsa("logistic")` | NSA-Intensity | as NSA; label x sigmoid(k (dI - x0)), dI disk-median-filtered |
| `device_fpi()` | FPI | another image's patch at the same place, (1 - a) x + a x_other floored to 8 bits |
| `device_fpi(poisson=True)` | FPI-Poisson | that patch Poisson-blended, mask weight ceil(255 a) |
| `device_cutpaste()` | CutPaste | a patch of the same image moved, no blending |
| `DeviceCutPasteAug()` | CutPaste (2 stage) | Li et al. 2021 box, brightness/contrast jitter of the patch |
| `DeviceAnatPaste()` | AnatPaste | Sato et al. 2023: soft ellipse/rectangle mask x brain mask, alpha U[0.6, 1] |

Pseudo-label (one-stage rows, every mode): changed = patch mask x (mean over channels of |x' - x| > tol
grey levels), 5 x 5 median filter (border replicated, as `cv2.medianBlur`); FPI rows x a (one a per image);
NSA-Intensity x sigmoid(k (dI - x0)) with dI the disk (radius 5) median of |x' - x| on changed pixels
(border 'nearest'). Work runs on the 8-bit codes (0-255 floats) of the slices, so the reference's
thresholds apply as they are.

Placement makes the reference's checks (half-size from Gamma, centre tries, first valid try kept), every try
at once: the source box's object coverage through integral images; the resized source object's own coverage;
its share landing on the destination's object, for all destination tries by one FFT cross-correlation of the
two masks (float64, exact after rounding; float32 on MPS); the resize arithmetic in float64 as numpy's. What
still differs from the CPU port (`one_stage`), measured with identical random numbers by
scripts/device_synthesis_stats.py (128 x 128 slices): the resized patch and object mask are bilinear, rounded
(>= 0.5 for the mask), where OpenCV's 8-bit fixed-point cv2.resize differs by 1 grey level on ~9 % of patch
pixels and flips a few mask pixels: NSA rows keep or place ~0.1-0.2 % of patches differently, 3 % of box
pixels differ by more than 1 grey level and 1 % of labelled pixels by label; FPI, FPI-Poisson and CutPaste
agree (Poisson solve `device_ops.poisson_clone`: mean difference < 0.001 grey levels, 0.01 % of labelled
pixels). The random numbers are torch's, not numpy's (same distributions, different streams).

The tensor primitives and the Poisson solver are in `device_ops`.

Randomness: every number is drawn from the torch.Generator passed in (it must live on x's device), in a
fixed order that does not depend on the data: the same seed on the same device gives the same anomalies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .device_ops import (box_sum, disk_median, first_true, from_codes, gather_rc, in_box, integral, median5_binary,
                         pick_rows, poisson_clone, resample_boxes, to_codes, uniform_between)
from .one_stage import MIN_POISSON_PIXELS, PatchPlacement, PatchRules
from .two_stage import AnatPasteParams, CutPasteParams, Synthesis, anatomy_or_everywhere, pasted_layer


# ---------------------------------------------------------------------------------------------
# One-stage generators (the reference's patch_ex), batched
# ---------------------------------------------------------------------------------------------
def _wide(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64     # MPS has no float64


@dataclass(frozen=True)
class DevicePatchExample(PatchPlacement, PatchRules):
    """The reference's `patch_ex` for one setting, on a whole batch at once (see the module docstring);
    parameters as `ichbench.anomalies.one_stage.PatchExample`, with the patch placement's fields
    (`PatchPlacement`) flattened in. Fed the same random numbers, `_place` accepts and places every patch as
    `PatchExample._one_patch` does, but where OpenCV's 8-bit resize of the object mask flips a pixel (NSA rows)."""

    def __post_init__(self):
        super().__post_init__()
        if int(self.gamma_shape) != self.gamma_shape or self.gamma_shape < 1:
            raise ValueError("gamma_shape must be a positive integer on the device (sum of exponentials)")

    def draw(self, gen: torch.Generator, n: int, size, device) -> dict[str, torch.Tensor]:
        """All random numbers of a batch, in a fixed order."""
        (hh, ww), p, t = size, self.max_patches, self.max_tries
        lo_y, lo_x = round(self.min_half * hh), round(self.min_half * ww)
        other = not self.same and n > 1
        d = {"src": ((torch.arange(n, device=device) + torch.randint(1, max(n, 2), (n,), generator=gen, device=device))
                     % n if other else torch.arange(n, device=device)),
             "alpha": uniform_between(gen, (n,), self.alpha_min, self.alpha_max, device),
             "active": torch.cat([torch.ones((n, 1), dtype=torch.bool, device=device),
                                  torch.rand((n, p - 1), generator=gen, device=device) < self.extra_patch_p], 1)}
        u = torch.rand((int(self.gamma_shape), n, p, 2), generator=gen, device=device)
        d["gamma"] = -self.gamma_scale * torch.log1p(-u).sum(0)   # Gamma(integer shape) = sum of exponentials
        d["src_y"] = torch.randint(lo_y, hh - lo_y, (n, p, t), generator=gen, device=device)
        d["src_x"] = torch.randint(lo_x, ww - lo_x, (n, p, t), generator=gen, device=device)
        d["scale"] = torch.randn((n, p), generator=gen, device=device) * self.scale_sd + 1.0
        d["dst_u"] = torch.rand((n, p, t, 2), generator=gen, device=device)
        return d

    def __call__(self, x: torch.Tensor, gen: torch.Generator, head_mask=None, brain_mask=None) -> Synthesis:
        n, _, hh, ww = x.shape
        dev = x.device
        q0 = to_codes(x)
        obj = (torch.ones((n, hh, ww), dtype=torch.bool, device=dev) if head_mask is None
               else head_mask.to(dev, torch.bool))
        ii = integral(obj)
        d = self.draw(gen, n, (hh, ww), dev)
        src = d["src"]
        obj_hat = torch.fft.rfft2(obj.to(_wide(dev))) if self.shift else None   # the destinations' objects
        cur = q0
        mask = torch.zeros((n, hh, ww), dtype=torch.bool, device=dev)
        region = torch.zeros_like(mask)
        alpha = d["alpha"]
        for k in range(self.max_patches):
            ok, (sy0, sx0, sh, sw), (dy0, dx0, h, w) = self._place(d, k, obj, ii, obj_hat)
            dy1, dx1 = dy0 + h, dx0 + w
            box = in_box(dy0, dy1, dx0, dx1, (hh, ww), dev) & ok[:, None, None]
            # the patch (and the source object) resampled onto the destination box
            stack = torch.cat([q0[src], obj[src][:, None].float()], 1)
            warped = resample_boxes(stack, sy0, sh, sx0, sw, dy0, h, dx0, w)
            patch = warped[:, :-1]
            if self.resize:                              # cv2.resize on uint8 rounds
                patch = patch.round()
            patch_mask = box & ((warped[:, -1] >= 0.5) | obj)
            if self.blend == "swap":
                cur = torch.where(patch_mask[:, None], patch, cur)
            elif self.blend == "uniform":
                fm = alpha[:, None, None, None] * patch_mask[:, None].float()
                mixed = (cur - fm * cur) + fm * patch
                cur = torch.where(box[:, None], torch.floor(mixed + 1e-3), cur)
            else:
                cur = self._poisson(cur, patch, ok, dy0, dx0, h, w, alpha)
            mask = torch.where(box, patch_mask, mask)
            region |= box
        return Synthesis(from_codes(cur, x), self._label(q0, cur, mask, alpha)[:, None].to(x.dtype), region)

    def _place(self, d, k: int, obj, ii, obj_hat):
        """Patch k of every image, all tries at once: (ok (n,) bool, source box (y0, x0, h, w), destination
        (y0, x0, h, w)), each (n,) long; ok False where the reference skips the patch. obj (n, H, W) bool,
        ii its integral image, obj_hat its rfft2 in `_wide` precision (None without shift). No host sync."""
        hh, ww = obj.shape[1:]
        src = d["src"]
        lo_y, lo_x = round(self.min_half * hh), round(self.min_half * ww)
        hi_y, hi_x = round(self.max_half * hh), round(self.max_half * ww)
        half_y = ((self.base + d["gamma"][:, k, 0]) * hh).clamp(lo_y, hi_y).floor().long()
        half_x = ((self.base + d["gamma"][:, k, 1]) * ww).clamp(lo_x, hi_x).floor().long()
        cy, cx = d["src_y"][:, k], d["src_x"][:, k]                       # (n, T)
        y0 = (cy - half_y[:, None]).clamp_min(0)
        y1 = (cy + half_y[:, None]).clamp_max(hh)
        x0 = (cx - half_x[:, None]).clamp_min(0)
        x1 = (cx + half_x[:, None]).clamp_max(ww)
        area = ((y1 - y0) * (x1 - x0)).clamp_min(1)
        cov = box_sum(ii, src[:, None].expand_as(y0), y0, y1, x0, x1) / area
        t_src, found = first_true(cov > self.min_object)
        sy0, sy1, sx0, sx1 = (pick_rows(a, t_src) for a in (y0, y1, x0, x1))
        sh, sw = sy1 - sy0, sx1 - sx0
        if self.resize:
            # in float64 as the reference's numpy: a factor clipped to 0.7 times a width of 10 is exactly 7
            f = d["scale"][:, k].to(_wide(obj.device)).clamp(self.scale_min, self.scale_max)
            nh = (f * sh).clamp(lo_y, hi_y)
            nw = torch.floor(nh / sh * sw).clamp(lo_x, hi_x).floor()
            nh = torch.floor(nw / sw * sh).clamp(lo_y, hi_y).floor()
            h, w = nh.long(), nw.long()
        else:
            h, w = sh, sw
        ok = found & d["active"][:, k]
        if self.blend == "poisson":                       # seamlessClone needs 50 mask pixels
            ok &= (h - 2) * (w - 2) >= MIN_POISSON_PIXELS
        if not self.shift:
            return ok, (sy0, sx0, sh, sw), (sy0, sx0, h, w)
        # the source object resized to h x w at the top-left corner (cv2.resize of the 0/1 mask rounds)
        wide, zero = _wide(obj.device), torch.zeros_like(h)
        sobj = resample_boxes(obj[src][:, None].float(), sy0, sh, sx0, sw, zero, h, zero, w)[:, 0] >= 0.5
        sobj &= in_box(zero, h, zero, w, (hh, ww), obj.device)
        s_sum = sobj.sum((1, 2)).to(wide)
        ok &= s_sum / (h * w).clamp_min(1).to(wide) > self.min_object    # its own coverage
        ylo, yhi = h // 2 + 1, hh - h // 2 - 1
        xlo, xhi = w // 2 + 1, ww - w // 2 - 1
        ok &= (yhi > ylo) & (xhi > xlo)
        u = d["dst_u"][:, k]
        dcy = ylo[:, None] + (u[..., 0] * (yhi - ylo)[:, None]).floor().long()
        dcx = xlo[:, None] + (u[..., 1] * (xhi - xlo)[:, None]).floor().long()
        dy0, dx0 = dcy - (h // 2)[:, None], dcx - (w // 2)[:, None]
        dy0, dx0 = dy0.clamp(0, hh - 1), dx0.clamp(0, ww - 1)
        # pixels of the resized source object on the destination's object, every placement at once: the
        # circular cross-correlation of the two masks (no wrap-around: with room, every box ends inside the
        # image), exact integers after rounding
        corr = torch.fft.irfft2(torch.fft.rfft2(sobj.to(wide)).conj() * obj_hat, s=(hh, ww)).round()
        overlap = corr.flatten(1).gather(1, dy0 * ww + dx0)
        t_dst, found_d = first_true(overlap / s_sum.clamp_min(1)[:, None] > self.min_overlap)
        ok &= found_d
        return ok, (sy0, sx0, sh, sw), (pick_rows(dy0, t_dst), pick_rows(dx0, t_dst), h, w)

    def _poisson(self, cur, patch_img, ok, y0, x0, h, w, alpha) -> torch.Tensor:
        """seamlessClone(patch, cur, box mask without its ring, centre (x1 - w//2, y0 + h//2)): the ROI is
        the box interior (h-2) x (w-2), its top-left in cur at (y0 + h//2 - (h-2)//2, x1 - w//2 - (w-2)//2),
        its source the patch's interior."""
        n, c, hh, ww = cur.shape
        dev = cur.device
        hr, wr = (h - 2).clamp_min(1), (w - 2).clamp_min(1)
        ry = y0 + h // 2 - (h - 2) // 2
        rx = x0 + w - w // 2 - (w - 2) // 2
        # a padded size fixed by the settings, not the data: no device-to-host read, static shapes
        hm = max(1, min(hh, 2 * round(self.max_half * hh)) - 2)
        wm = max(1, min(ww, 2 * round(self.max_half * ww)) - 2)
        ar, ac = torch.arange(hm, device=dev)[None], torch.arange(wm, device=dev)[None]
        dst_roi = gather_rc(cur, ry[:, None] + ar, rx[:, None] + ac)
        src_roi = gather_rc(patch_img, y0[:, None] + 1 + ar, x0[:, None] + 1 + ac)
        weight = (torch.ceil(alpha * 255) if self.label == "continuous" else torch.full_like(alpha, 255.0)) / 255.0
        out_roi = poisson_clone(dst_roi, src_roi, weight, hr, wr, mixed=self.clone == "mixed")
        out_roi = out_roi.floor().clamp(0, 255)        # OpenCV truncates, no rounding
        # back into the image: pixels of each ROI read their solved value
        lr = torch.arange(hh, device=dev)[None] - ry[:, None]
        lc = torch.arange(ww, device=dev)[None] - rx[:, None]
        inside = ((lr >= 0) & (lr < hr[:, None]))[:, :, None] & ((lc >= 0) & (lc < wr[:, None]))[:, None, :]
        inside &= ok[:, None, None]
        vals = gather_rc(F.pad(out_roi, (0, 1, 0, 1)), lr.clamp(0, hm), lc.clamp(0, wm))
        return torch.where(inside[:, None], vals, cur)

    def _label(self, q0: torch.Tensor, q1: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        diff = (q1 - q0).abs().mean(1)
        changed = median5_binary((diff * mask) > self.tol, self.median_size)
        if self.label == "binary":
            return changed.float()
        if self.label == "continuous":
            return changed.float() * alpha[:, None, None]
        c = changed.float()
        d_i = disk_median(diff * c, self.intensity_radius)
        return c * torch.sigmoid(self.logistic_k * (d_i - self.logistic_x0))


def device_nsa(label: str = "binary", **kw) -> DevicePatchExample:
    """NSA (`label="binary"`) and NSA-Intensity (`label="logistic"`), Schlueter et al. 2022."""
    return DevicePatchExample(blend="poisson", label=label, same=False, shift=True, resize=True, **kw)


def device_fpi(poisson: bool = False, **kw) -> DevicePatchExample:
    """FPI (Tan et al. 2022) and, with poisson=True, FPI-Poisson (Tan et al. 2021)."""
    return DevicePatchExample(blend="poisson" if poisson else "uniform", label="continuous", same=False,
                              shift=False, resize=False, **kw)


def device_cutpaste(**kw) -> DevicePatchExample:
    """One-stage CutPaste as in the NSA / MedIAnomaly code."""
    return DevicePatchExample(blend="swap", label="binary", same=True, shift=True, resize=False, **kw)


# ---------------------------------------------------------------------------------------------
# Two-stage generators
# ---------------------------------------------------------------------------------------------
def color_jitter(x: torch.Tensor, gen: torch.Generator, strength: float, region: torch.Tensor | None = None):
    """torchvision ColorJitter's brightness and contrast (the only parts that change grey images) on
    (B, C, H, W) slices in [-1, 1], on the [0, 1] scale, one (b, c) per image, random order per image;
    the contrast mean per channel over `region` ((B, H, W) bool) or the whole image."""
    if strength <= 0:
        return x
    n, dev = x.shape[0], x.device
    b = uniform_between(gen, (n,), max(0.0, 1 - strength), 1 + strength, dev).view(n, 1, 1, 1)
    c = uniform_between(gen, (n,), max(0.0, 1 - strength), 1 + strength, dev).view(n, 1, 1, 1)
    first = (torch.rand((n,), generator=gen, device=dev) < 0.5).view(n, 1, 1, 1)
    wgt = torch.ones_like(x[:, :1], dtype=torch.float32) if region is None else region[:, None].float()

    def con(v):
        mean = (v * wgt).sum((2, 3), keepdim=True) / wgt.sum((2, 3), keepdim=True).clamp_min(1.0)
        return (c * v + (1 - c) * mean).clamp(0, 1)

    u = (x.float() + 1) * 0.5
    out = torch.where(first, con((b * u).clamp(0, 1)), (b * con(u)).clamp(0, 1))
    return (out * 2 - 1).to(x.dtype)


def _cutpaste_boxes(gen, n, size, area, aspect, device):
    hh, ww = size
    a = uniform_between(gen, (n,), area[0], area[1], device) * hh * ww
    r = torch.exp(uniform_between(gen, (n,), math.log(aspect[0]), math.log(aspect[1]), device))
    h = torch.sqrt(a / r).round().long().clamp(1, hh)
    w = torch.sqrt(a * r).round().long().clamp(1, ww)
    u = torch.rand((4, n), generator=gen, device=device)
    ys, xs = (u[0] * (hh - h + 1)).floor().long(), (u[1] * (ww - w + 1)).floor().long()
    yd, xd = (u[2] * (hh - h + 1)).floor().long(), (u[3] * (ww - w + 1)).floor().long()
    return h, w, ys, xs, yd, xd


def _shifted(x, ys, xs, yd, xd):
    hh, ww = x.shape[-2:]
    ar, ac = torch.arange(hh, device=x.device)[None], torch.arange(ww, device=x.device)[None]
    return gather_rc(x, ar - yd[:, None] + ys[:, None], ac - xd[:, None] + xs[:, None])


@dataclass(frozen=True)
class DeviceCutPasteAug(CutPasteParams):
    """Two-stage CutPaste (Li et al. 2021): a box of area_min - area_max of the image, aspect log-uniform,
    cut from a random place of the same slice, brightness/contrast-jittered over the patch, pasted at a
    random place; label = the box. (The whole-slice jitter before it is the method's, `color_jitter`.)"""

    def __call__(self, x, gen, head_mask=None, brain_mask=None) -> Synthesis:
        n, _, hh, ww = x.shape
        dev = x.device
        h, w, ys, xs, yd, xd = _cutpaste_boxes(gen, n, (hh, ww), (self.area_min, self.area_max),
                                               (self.aspect_min, self.aspect_max), dev)
        box = in_box(yd, yd + h, xd, xd + w, (hh, ww), dev)
        patch = color_jitter(_shifted(x, ys, xs, yd, xd), gen, self.jitter, region=box)
        out = torch.where(box[:, None], patch.to(x.dtype), x)
        return Synthesis(out, box[:, None].to(x.dtype), box)


def gaussian_blur_each(m: torch.Tensor, sigmas: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """(B, H, W) -> each image blurred with its own Gaussian of sigmas[b] px (zero padding; 0 = none)."""
    r = max(1, int(math.ceil(3.0 * max_sigma)))
    grid = torch.arange(-r, r + 1, device=m.device, dtype=torch.float32)[None]
    s = sigmas.float()[:, None]
    k = torch.where(s > 0, torch.exp(-0.5 * (grid / s.clamp_min(1e-6)) ** 2), (grid == 0).float())
    k = k / k.sum(1, keepdim=True)
    b = m.shape[0]
    out = F.conv2d(m[None].float(), k.view(b, 1, 1, -1), padding=(0, r), groups=b)
    return F.conv2d(out, k.view(b, 1, -1, 1), padding=(r, 0), groups=b)[0]


@dataclass(frozen=True)
class DeviceAnatPaste(AnatPasteParams):
    """AnatPaste (Sato et al. 2023) for head CT: a CutPaste box of the same slice, jittered, pasted with its
    centre on a random brain pixel through a soft mask = ellipse or rectangle inset by `margin`, blurred with
    a sigma per image from U[blur_min, blur_max] (fractions of the size), times the brain mask, times
    alpha ~ U[alpha_min, alpha_max]: x' = x + M (layer - x), layer = the patch in its box and black (`halo:
    black`) or the moved slice (`halo: image`) outside; label = M. A slice without brain: anywhere, unmasked."""

    def __call__(self, x, gen, head_mask=None, brain_mask=None) -> Synthesis:
        if brain_mask is None:
            raise ValueError("AnatPaste needs the brain mask")
        n, _, hh, ww = x.shape
        dev = x.device
        h, w, ys, xs, _, _ = _cutpaste_boxes(gen, n, (hh, ww), (self.area_min, self.area_max),
                                             (self.aspect_min, self.aspect_max), dev)
        brain = anatomy_or_everywhere(brain_mask.to(dev, torch.bool)).reshape(n, -1)
        k = (torch.rand((n,), generator=gen, device=dev) * brain.sum(1)).floor().long()
        centre = (brain.cumsum(1) > k[:, None]).int().argmax(1)
        cy, cx = centre // ww, centre % ww
        yd = torch.minimum((cy - h // 2).clamp_min(0), hh - h)
        xd = torch.minimum((cx - w // 2).clamp_min(0), ww - w)
        ellipse = (torch.rand((n,), generator=gen, device=dev) < self.ellipse_p)[:, None, None]
        alpha = uniform_between(gen, (n,), self.alpha_min, self.alpha_max, dev)[:, None, None]
        sigma = uniform_between(gen, (n,), self.blur_min, self.blur_max, dev) * min(hh, ww)
        mg = self.margin * min(hh, ww)
        hs, ws = (h - 2 * mg).clamp_min(2.0), (w - 2 * mg).clamp_min(2.0)
        ys0, xs0 = yd + (h - hs) / 2, xd + (w - ws) / 2
        r = torch.arange(hh, device=dev, dtype=torch.float32)[None, :, None] + 0.5
        c = torch.arange(ww, device=dev, dtype=torch.float32)[None, None, :] + 0.5
        v = lambda a: a.float()[:, None, None]  # noqa: E731
        dy, dx = (r - v(ys0) - v(hs) / 2) / (v(hs) / 2), (c - v(xs0) - v(ws) / 2) / (v(ws) / 2)
        shape = torch.where(ellipse, dy ** 2 + dx ** 2 <= 1.0, (dy.abs() <= 1.0) & (dx.abs() <= 1.0)).float()
        m = gaussian_blur_each(shape, sigma, self.blur_max * min(hh, ww)) * brain.view(n, hh, ww).float() * alpha
        box = in_box(yd, yd + h, xd, xd + w, (hh, ww), dev)
        patch = pasted_layer(color_jitter(_shifted(x, ys, xs, yd, xd), gen, self.jitter, region=box), box, self.halo)
        out = x + m[:, None].to(x.dtype) * (patch - x)
        return Synthesis(out, m[:, None].to(x.dtype), m > 0)


#: row name -> device generator, in Table 1 order
DEVICE_GENERATORS = {
    "NSA": device_nsa("binary"),
    "NSA-Intensity": device_nsa("logistic"),
    "FPI": device_fpi(),
    "FPI-Poisson": device_fpi(poisson=True),
    "CutPaste": device_cutpaste(),
    "CutPaste-2stage": DeviceCutPasteAug(),
    "AnatPaste": DeviceAnatPaste(),
}


class OnDevice:
    """A device generator behind the CPU generators' call signature `(x, rng, head_mask=, brain_mask=)`, so a
    method can use it in place of its CPU one (`method.generator = OnDevice(...)`): the numpy `rng` is ignored
    and every draw comes from this object's own torch.Generator on `device` (`torch_generator`; its
    get_state/set_state belong in a checkpoint)."""

    def __init__(self, generator, device: torch.device | str, seed: int):
        self.generator = generator
        self.torch_generator = torch.Generator(device=torch.device(device)).manual_seed(int(seed))

    def __call__(self, x, rng=None, head_mask=None, brain_mask=None) -> Synthesis:
        return self.generator(x, self.torch_generator, head_mask=head_mask, brain_mask=brain_mask)
