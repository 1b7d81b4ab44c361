"""Numerical building blocks of the synthetic CT: smooth random fields, blurs, scanner noise, distances."""
from __future__ import annotations

import math

import numpy as np


def _wrap(a):
    """Angle(s) wrapped to [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


class _Smooth:
    """Smooth random 3D field (unit variance) evaluated slice by slice.

    Gaussian-RBF interpolation of a coarse random grid: field_k = U @ G_k @ U.T with G_k a
    z-weighted mix of grid planes, so the in-plane cost is two small matrix products.
    """

    def __init__(self, rng, coords_mm, z_mm, corr_mm, corr_z_mm):
        step = corr_mm * 0.7
        g = np.arange(coords_mm[0] - 2 * corr_mm, coords_mm[-1] + 2 * corr_mm + step, step)
        u = np.exp(-0.5 * ((coords_mm[:, None] - g[None, :]) / step) ** 2)
        self.U = (u / np.sqrt((u ** 2).sum(1, keepdims=True))).astype(np.float32)
        stepz = corr_z_mm * 0.7
        gz = np.arange(z_mm[0] - 2 * corr_z_mm, z_mm[-1] + 2 * corr_z_mm + stepz, stepz)
        w = np.exp(-0.5 * ((z_mm[:, None] - gz[None, :]) / stepz) ** 2)
        self.W = (w / np.sqrt((w ** 2).sum(1, keepdims=True))).astype(np.float32)
        self.G = rng.standard_normal((len(gz), len(g), len(g))).astype(np.float32)

    def __call__(self, k: int) -> np.ndarray:
        w = self.W[k]
        nz = np.nonzero(w > 1e-4)[0]
        gk = np.tensordot(w[nz], self.G[nz], axes=1)
        return self.U @ gk @ self.U.T


def _blur3(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication."""
    p = np.pad(a, 1, mode="edge")
    r = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    return (r[:-2] + 2 * r[1:-1] + r[2:]) * np.float32(1 / 16)


def _seg_dist(x, y, x0, y0, x1, y1):
    """Distance of points to the segment (x0,y0)-(x1,y1), and the position along it (0..1)."""
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy
    lam = np.clip(((x - x0) * dx + (y - y0) * dy) / L2, 0.0, 1.0)
    return np.hypot(x - x0 - lam * dx, y - y0 - lam * dy), lam


def _noise(rng, N: int, std: float, correlated: bool) -> np.ndarray:
    """N x N scanner noise of standard deviation std, white or mixed with a blurred copy."""
    w = rng.standard_normal((N, N), dtype=np.float32)
    if not correlated:
        return w * np.float32(std)
    sm = _blur3(w) / np.float32(0.375)
    # var(w + sm) = 1 + 1 + 2 * cov, cov = (4/16) / 0.375
    return (w + sm) * np.float32(std / math.sqrt(2 + 2 * (0.25 / 0.375)))
