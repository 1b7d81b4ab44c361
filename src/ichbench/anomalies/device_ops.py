"""Batched tensor primitives of the device generators: 8-bit codes, integral images, box resampling, median
filters and the batched Poisson solver.

Poisson blending (`poisson_clone`) reproduces `cv2.seamlessClone` on each patch's region of interest:
guidance field = forward differences of the source (mixed: per pixel and channel, OpenCV's rule keeps
the source gradient where |gx - gy| of the source exceeds that of the destination), weighted by the mask
value w / 255 against the destination's; Dirichlet boundary = the ROI's 1-pixel ring; the interior is
solved exactly by a discrete sine transform. Patches of different sizes are padded to a common size: each
sample's DST matrix is its own n x n sine basis in the top-left block and the identity elsewhere, so one
batched matrix product solves every patch at once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# Small batched helpers
# ---------------------------------------------------------------------------------------------
def to_codes(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] slices -> 8-bit codes as float32 (0..255)."""
    return torch.round((x.float() + 1.0) * 127.5).clamp(0, 255)


def from_codes(q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (q / 127.5 - 1.0).to(like.dtype)


def uniform_between(gen, shape, lo, hi, device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device) * (hi - lo) + lo


def integral(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H + 1, W + 1) summed-area table (float32: exact below 2^24 pixels)."""
    return F.pad(mask.float().cumsum(1).cumsum(2), (1, 0, 1, 0))


def box_sum(ii: torch.Tensor, img: torch.Tensor, y0, y1, x0, x1) -> torch.Tensor:
    """Sums over boxes [y0, y1) x [x0, x1) of image img (index tensors of one shape)."""
    w1 = ii.shape[2]
    flat = ii.flatten(1)
    g = lambda y, x: flat[img, y * w1 + x]  # noqa: E731
    return g(y1, x1) - g(y0, x1) - g(y1, x0) + g(y0, x0)


def first_true(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) bool -> (index of the first True (0 if none), any True)."""
    t = valid.shape[1]
    idx = torch.where(valid, torch.arange(t, device=valid.device), t).amin(1)
    return idx.clamp(max=t - 1), idx < t


def pick_rows(a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return a.gather(1, idx[:, None])[:, 0]


def in_box(y0, y1, x0, x1, size, device) -> torch.Tensor:
    """(B, H, W) bool masks of the boxes [y0, y1) x [x0, x1)."""
    r = torch.arange(size[0], device=device)[None, :, None]
    c = torch.arange(size[1], device=device)[None, None, :]
    v = lambda a: a[:, None, None]  # noqa: E731
    return (r >= v(y0)) & (r < v(y1)) & (c >= v(x0)) & (c < v(x1))


def gather_rc(img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """img (B, C, H, W), rows (B, R), cols (B, K) clamped indices -> (B, C, R, K)."""
    b, c, hh, ww = img.shape
    rows, cols = rows.clamp(0, hh - 1), cols.clamp(0, ww - 1)
    out = img.gather(2, rows[:, None, :, None].expand(b, c, rows.shape[1], ww))
    return out.gather(3, cols[:, None, None, :].expand(b, c, rows.shape[1], cols.shape[1]))


def resample_boxes(img: torch.Tensor, sy0, sh, sx0, sw, dy0, dh, dx0, dw) -> torch.Tensor:
    """For every pixel, the value of img's source box [sy0, sy0+sh) x [sx0, sx0+sw) resized bilinearly to
    dh x dw and placed at (dy0, dx0) (pixel-centre mapping and edge clamping as cv2.resize INTER_LINEAR);
    values outside the destination box are meaningless. img (B, C, H, W) float; sizes (B,) long."""
    _, _, hh, ww = img.shape
    dev = img.device

    def axis(n, s0, sn, d0, dn):
        p = torch.arange(n, device=dev, dtype=torch.float32)[None]
        s = (p - d0[:, None] + 0.5) * (sn / dn.clamp_min(1)).float()[:, None] - 0.5
        s = s.clamp(min=0.0)
        i0 = s.floor()
        f = s - i0
        i0 = i0.long()
        last = (sn - 1)[:, None]
        i1 = torch.minimum(i0 + 1, last)
        i0 = torch.minimum(i0, last)
        return s0[:, None] + i0, s0[:, None] + i1, f

    r0, r1, fy = axis(hh, sy0, sh, dy0, dh)
    c0, c1, fx = axis(ww, sx0, sw, dx0, dw)
    fy, fx = fy[:, None, :, None], fx[:, None, None, :]
    top = gather_rc(img, r0, c0) * (1 - fx) + gather_rc(img, r0, c1) * fx
    bot = gather_rc(img, r1, c0) * (1 - fx) + gather_rc(img, r1, c1) * fx
    return top * (1 - fy) + bot * fy


def median5_binary(mask: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Median of a (B, H, W) bool mask over size x size windows, border replicated (cv2.medianBlur)."""
    if size <= 1:
        return mask
    p = size // 2
    m = F.pad(mask[:, None].float(), (p, p, p, p), mode="replicate")
    return F.avg_pool2d(m, size, stride=1)[:, 0] * (size * size) > (size * size) / 2


def disk_median(a: torch.Tensor, radius: int, chunk_bytes: int = 1 << 26) -> torch.Tensor:
    """Median over a disk of `radius` of (B, H, W) floats, border 'nearest' (scipy median_filter)."""
    k = 2 * radius + 1
    r = torch.arange(-radius, radius + 1)     # the disk's offsets on the host: nonzero() on a device syncs
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2).flatten().nonzero()[:, 0].to(a.device)
    b, hh, ww = a.shape
    per = max(1, chunk_bytes // (len(disk) * hh * ww * 4))
    out = []
    for i in range(0, b, per):  # chunks of the batch bound the unfolded memory
        p = F.pad(a[i:i + per, None], (radius,) * 4, mode="replicate")
        cols = F.unfold(p, k)[:, disk]                       # (b, |disk|, H * W)
        out.append(cols.median(1).values.view(-1, hh, ww))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Poisson blending (cv2.seamlessClone on a rectangular region of interest), batched
# ---------------------------------------------------------------------------------------------
def _dst_basis(n: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample orthonormal DST-I matrices (B, size, size) of order n (identity past n) and the
    eigenvalues (B, size) of the 1-D Dirichlet Laplacian (-1 past n, where the right-hand side is 0)."""
    dev = n.device
    wide = torch.float32 if dev.type == "mps" else torch.float64     # MPS has no float64
    j = torch.arange(size, device=dev, dtype=wide)
    nn_ = n.to(wide)[:, None, None]
    inside = (j[None, :, None] < nn_) & (j[None, None, :] < nn_)
    s = torch.sqrt(2.0 / (nn_ + 1)) * torch.sin(math.pi * (j[None, :, None] + 1) * (j[None, None, :] + 1) / (nn_ + 1))
    eye = torch.eye(size, device=dev, dtype=wide).expand_as(s)
    basis = torch.where(inside, s, eye)
    lam = torch.where(j[None] < n.to(wide)[:, None],
                      2.0 * torch.cos(math.pi * (j[None] + 1) / (n.to(wide)[:, None] + 1)) - 2.0,
                      torch.full_like(j[None], -1.0))
    return basis.float(), lam.float()


def poisson_clone(dst: torch.Tensor, src: torch.Tensor, weight: torch.Tensor, hr: torch.Tensor,
                  wr: torch.Tensor, mixed: bool = True, erode: int = 3) -> torch.Tensor:
    """Blend padded regions of interest as cv2.seamlessClone does with a constant mask on the ROI.

    dst, src: (B, C, Hm, Wm) 8-bit codes as floats, each sample's ROI the top-left hr[b] x wr[b] block;
    weight: (B,) mask value / 255, on the ROI less `erode` pixels at its edge (OpenCV erodes the mask; there
    the destination's gradients guide). Returns (B, C, Hm, Wm): the ROI's ring kept from dst, its interior
    the solution of the Poisson equation (float; OpenCV truncates it to uint8); past the ROI dst's values."""
    with torch.autocast(dst.device.type, enabled=False):     # the solve needs float32 even inside autocast
        return _poisson_clone(dst.float(), src.float(), weight, hr, wr, mixed, erode)


def _poisson_clone(dst, src, weight, hr, wr, mixed: bool, erode: int) -> torch.Tensor:
    b, c, hm, wm = dst.shape
    dev = dst.device

    def grads(a):
        gx = torch.zeros_like(a)
        gy = torch.zeros_like(a)
        gx[..., :, :-1] = a[..., :, 1:] - a[..., :, :-1]
        gy[..., :-1, :] = a[..., 1:, :] - a[..., :-1, :]
        return gx, gy

    dgx, dgy = grads(dst)
    sgx, sgy = grads(src)
    rr = torch.arange(hm, device=dev)[None, :, None]
    cc = torch.arange(wm, device=dev)[None, None, :]
    h_, w_ = hr.view(b, 1, 1), wr.view(b, 1, 1)
    # OpenCV erodes the ROI's mask 3 times with a 3 x 3 kernel, reading the zero ring around the ROI
    core = (rr >= erode) & (rr < h_ - erode) & (cc >= erode) & (cc < w_ - erode)
    w = (weight.float().view(b, 1, 1) * core)[:, None]
    if mixed:
        use_src = (sgx - sgy).abs() > (dgx - dgy).abs()
        gx = torch.where(use_src, sgx * w, dgx * w) + dgx * (1 - w)
        gy = torch.where(use_src, sgy * w, dgy * w) + dgy * (1 - w)
    else:
        gx = sgx * w + dgx * (1 - w)
        gy = sgy * w + dgy * (1 - w)
    lap = torch.zeros_like(dst)
    lap[..., :, 1:] += gx[..., :, 1:] - gx[..., :, :-1]
    lap[..., 1:, :] += gy[..., 1:, :] - gy[..., :-1, :]
    # interior (1 .. hr-2, 1 .. wr-2); the ring's values move to the right-hand side
    interior = ((rr >= 1) & (rr < h_ - 1) & (cc >= 1) & (cc < w_ - 1))[:, None]
    ring = ((rr < h_) & (cc < w_))[:, None] & ~interior
    bound = torch.where(ring, dst, torch.zeros_like(dst))
    pb = F.pad(bound, (1, 1, 1, 1))
    bound_lap = pb[..., :-2, 1:-1] + pb[..., 2:, 1:-1] + pb[..., 1:-1, :-2] + pb[..., 1:-1, 2:] - 4 * bound
    rhs = torch.where(interior, lap - bound_lap, torch.zeros_like(dst))[..., 1:, 1:]
    n_y, n_x = (hr - 2).clamp_min(0), (wr - 2).clamp_min(0)
    sy, ly = _dst_basis(n_y, hm - 1)
    sx, lx = _dst_basis(n_x, wm - 1)
    sy4, sx4 = sy[:, None], sx[:, None]
    f_hat = sy4 @ rhs @ sx4                                  # the bases are symmetric and orthonormal
    u_hat = f_hat / (ly[:, None, :, None] + lx[:, None, None, :])
    u = sy4 @ u_hat @ sx4
    u = F.pad(u, (1, 0, 1, 0))
    return torch.where(interior, u, dst)
