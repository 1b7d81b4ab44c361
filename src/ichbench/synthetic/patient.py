"""One synthetic patient: its scan settings, head and findings drawn in a fixed order, and its slices."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import (WM, draw_cortex, draw_deep_structures, draw_normal_variants, draw_outline,
                      draw_skull_base, draw_ventricles, tissue_hu)
from .config import SyntheticConfig
from .head import _Head
from .lesions import (_draw_lesions, _draw_trauma, _Lesion, _midline_shift, draw_hemorrhages, draw_trauma,
                      findings_hu, sulcal_widening)


@dataclass
class _Plan:
    """What the cohort decides about a patient before its own draws."""
    index: int            # position in the patient order (0..N-1)
    number: int           # n in SYN-CT-{n} / CT_{n}
    pathological: bool
    path_index: int       # index among pathological patients (-1 for normals)
    storage: str          # int16 | uint12 | uint16_slope | int16_offset


class _Patient:
    """All random parameters of one patient, drawn in a fixed order from its own RNG.

    The order (scan, head, hemorrhages, trauma) is part of the data: changing it changes every file.
    """

    def __init__(self, cfg: SyntheticConfig, plan: _Plan, attempt: int = 0):
        self.cfg, self.plan = cfg, plan
        rng = np.random.default_rng([cfg.seed, plan.number, 17, attempt])
        N = cfg.image_size
        lo, hi = cfg.n_slices
        self.n = int(rng.integers(lo, hi + 1))
        fov = float(rng.uniform(*cfg.fov_mm))
        self.ps = round(fov / N, 4)
        self.fov = self.ps * N
        self.dz = float(cfg.slice_thickness_mm)
        self.z_mm = np.arange(self.n) * self.dz
        self.z_start = round(float(rng.uniform(-160, -60)), 1)
        self.table_y = round(float(rng.uniform(-15, 15)), 1)
        self.tilt_deg = float(rng.uniform(2.0, max(2.0, cfg.max_tilt_deg))) if rng.random() < cfg.tilt_prob else 0.0
        self.reversed = bool(rng.random() < cfg.reverse_instance_prob)
        self.padding = plan.storage.startswith("int16") and bool(rng.random() < cfg.fov_padding_prob)
        self.sex = "M" if rng.random() < 0.5 else "F"

        self.head = _Head(rng, N, self.ps, self.z_mm, self.dz, cfg.calcification_prob)
        X, Y = np.meshgrid(self.head.coords, self.head.coords)
        self.recon_circle = np.hypot(X, Y) <= (N / 2) * self.ps

        self.lesions: list[_Lesion] = []
        if plan.pathological:
            self.lesions = _draw_lesions(rng, cfg, plan.path_index, self.n)
        self.scalp_hem, self.fracture = _draw_trauma(rng, cfg, plan.pathological, self.n, self.lesions)
        self.shift = _midline_shift(self.lesions, self.n)

    def render(self, k: int):
        """-> (hu float32 before PSF/noise, label uint8, {type: bool mask})."""
        H = self.head
        S = draw_outline(H, k, k / (self.n - 1))
        sh_tap = draw_trauma(H, S, self.scalp_hem, self.fracture)
        S.lab[S.ic] = WM                   # the brain: white matter, into which the rest is carved
        active = [(L, L.taper(k)) for L in self.lesions if L.taper(k) > 0]
        S.f_fine = H.f_fine(k)
        S.f_mid = H.f_mid(k)
        draw_cortex(H, S, sulcal_widening(H, S, active))
        S.xs = H.xh - np.float32(self.shift[k])
        draw_deep_structures(H, S)
        vent_side = draw_ventricles(H, S, self.shift[k])
        beta = draw_skull_base(H, S)
        masks, paint = draw_hemorrhages(H, S, active, vent_side)

        sh = self.scalp_hem
        hu, tex = tissue_hu(H, S, sh.mean_hu if sh is not None else 60)
        findings_hu(hu, S, tex, sh_tap, active, paint)
        draw_normal_variants(H, S, hu, self.shift[k], beta)
        return hu.astype(np.float32), S.lab, masks
