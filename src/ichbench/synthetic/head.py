"""The parametric head of one synthetic patient: shape, tissue HU, normal variants, and its pixel grids."""
from __future__ import annotations

import math

import numpy as np

from .fields import _Smooth

#: Slice range (0 = skull base, 1 = vertex) of the lateral ventricles.
_VENT_RANGE = (0.36, 0.72)


class _Head:
    """Random head parameters, drawn from the patient's RNG in a fixed order, on the scan's grid.

    ps: pixel spacing (mm), z_mm: slice positions from the first slice (mm), dz: slice spacing (mm).
    """

    def __init__(self, rng, N: int, ps: float, z_mm: np.ndarray, dz: float, calcification_prob: float):
        self.N, self.ps, self.z_mm, self.dz = N, ps, z_mm, dz
        # --- head geometry (mm, head frame: x = patient left, y = posterior)
        self.a = float(rng.uniform(68, 80))           # outer half-width
        self.b = float(rng.uniform(86, 100))          # outer half-length
        self.cx = float(rng.uniform(-8, 8))
        self.cy = float(rng.uniform(-10, 10))
        self.rot = math.radians(float(rng.uniform(-9, 9)))
        self.harm = [(float(rng.normal(0, 0.018 / k ** 0.5)), float(rng.uniform(0, 2 * np.pi))) for k in range(1, 7)]
        self.tpeak = float(rng.uniform(0.40, 0.52))
        self.s_base = float(rng.uniform(0.74, 0.84))
        self.s_top = float(rng.uniform(0.03, 0.10))
        self.scalp0 = float(rng.uniform(4.0, 6.5))
        self.skull0 = float(rng.uniform(5.5, 8.0))
        self.skull_harm = [(float(rng.normal(0, 0.12)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3)]
        self.atrophy = float(rng.beta(2, 4))          # 0..1, widens CSF spaces
        self.vscale = float(rng.uniform(0.75, 1.25)) * (1 + 0.6 * self.atrophy)
        self.fb = (self.b - 12) / 80.0                # brain size factor
        self.sulcal_period = float(rng.uniform(11, 16))
        self.sulcal_depth = float(rng.uniform(8, 14))
        self.sulcal_w = float(rng.uniform(0.45, 0.8)) * (1 + 0.8 * self.atrophy)
        self.csf_surf = float(rng.uniform(0.4, 1.2)) * (1 + 1.5 * self.atrophy)
        self.ctx = float(rng.uniform(2.4, 3.4))
        self.fissure_w = float(rng.uniform(0.8, 1.5)) * (1 + self.atrophy)
        # tissue HU
        self.hu = dict(skin=float(rng.uniform(25, 45)), fat=float(rng.uniform(-110, -80)),
                       cort=float(rng.uniform(1300, 1800)), dipl=float(rng.uniform(550, 900)),
                       csf=float(rng.uniform(3, 12)), gm=float(rng.uniform(36, 43)),
                       wm=float(rng.uniform(25, 31)), falx=float(rng.uniform(45, 65)),
                       sinus=float(rng.uniform(-960, -900)))
        self.hu["vent"] = self.hu["csf"] + float(rng.uniform(-2, 2))
        self.hu["deep"] = self.hu["gm"] - float(rng.uniform(0, 4))
        # normal variants (present in both classes)
        p = calcification_prob
        self.calcs = []
        zc_pineal = float(rng.uniform(0.38, 0.46))
        if rng.random() < p:
            self.calcs.append(dict(x=0.0, y=11.0, r=float(rng.uniform(1.5, 3.5)), t=zc_pineal,
                                   hu=float(rng.uniform(120, 320)), shift=True))
        if rng.random() < p:
            t = float(rng.uniform(0.46, 0.56))
            for s in (-1, 1):
                self.calcs.append(dict(x=s * 17.0, y=21.0, r=float(rng.uniform(1.5, 3.5)), t=t,
                                       hu=float(rng.uniform(100, 260)), shift=True))
        if rng.random() < p * 0.25:
            s = 1 if rng.random() < 0.5 else -1
            self.calcs.append(dict(x=s * 17.0, y=-2.0, r=float(rng.uniform(1.5, 3.0)), t=float(rng.uniform(0.34, 0.44)),
                                   hu=float(rng.uniform(100, 200)), shift=True))
        self.falx_calc = None
        if rng.random() < p * 0.4:
            y0 = float(rng.uniform(-45, 30))
            self.falx_calc = (y0, y0 + float(rng.uniform(5, 15)), float(rng.uniform(0.5, 0.9)), float(rng.uniform(150, 400)))
        self.streaks = [(float(rng.uniform(0, np.pi)), float(rng.uniform(-20, 20)), float(rng.uniform(-14, -4)))
                        for _ in range(int(rng.integers(1, 4)))]

        # --- grids
        c = ((np.arange(N) - (N - 1) / 2) * self.ps).astype(np.float32)
        self.coords = c
        X, Y = np.meshgrid(c, c)                       # X: columns (+x), Y: rows (+y)
        self.Y = Y
        dx, dy = X - self.cx, Y - self.cy
        cr, sr = math.cos(self.rot), math.sin(self.rot)
        self.xh = (cr * dx + sr * dy).astype(np.float32)
        self.yh = (-sr * dx + cr * dy).astype(np.float32)
        self.rho = np.hypot(self.xh, self.yh)
        self.th = np.arctan2(self.yh, self.xh)
        th = self.th
        R0 = 1.0 / np.sqrt((np.cos(th) / self.a) ** 2 + (np.sin(th) / self.b) ** 2)
        pert = 1.0 + sum(e * np.cos(k * th + ph) for k, (e, ph) in enumerate(self.harm, start=1))
        self.R0 = (R0 * pert).astype(np.float32)
        sk = 1.0 + sum(e * np.cos((k + 1) * th + ph) for k, (e, ph) in enumerate(self.skull_harm))
        sk = sk * (1.0 - 0.3 * np.cos(th) ** 2)        # thinner temporal squama
        self.skull = (self.skull0 * sk).astype(np.float32)
        self.scalp = (self.scalp0 * (1 + 0.15 * np.sin(2 * th + 1.0))).astype(np.float32)

        self.f_lo = _Smooth(rng, c, self.z_mm, 25.0, 20.0)
        self.f_mid = _Smooth(rng, c, self.z_mm, 7.0, 7.0)
        self.f_fine = _Smooth(rng, c, self.z_mm, 2.2, 3.0)
        self.f_phase = _Smooth(rng, c, self.z_mm, 13.0, 6.0)
        self.f_depth = _Smooth(rng, c, self.z_mm, 8.0, 6.0)

    def scale(self, t: float) -> float:
        """In-plane size of the head at height t (0 = skull base, 1 = vertex), relative to its widest."""
        tp = self.tpeak
        if t <= tp:
            return self.s_base + (1 - self.s_base) * (1 - ((tp - t) / tp) ** 2)
        return math.sqrt(max(0.05, 1 - ((t - tp) / (1 - tp + self.s_top)) ** 2))
