"""Normal anatomy of one synthetic slice: the tissue label map (scalp to ventricles) and its Hounsfield units."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fields import _seg_dist, _wrap
from .head import _VENT_RANGE, _Head

# label codes of the tissue map
AIR, SKIN, FAT, CORT, DIPL, CSF, GM, WM, VENT, DEEP, FALX, CALC, BLOOD, EDEMA, SINUS, SCALP_HEM = range(16)


def _lut(*codes):
    t = np.zeros(16, bool)
    t[list(codes)] = True
    return t


_IS_PAR = _lut(GM, WM, DEEP)
_IS_PAR_EDEMA = _lut(GM, WM, DEEP, EDEMA)
_IS_WM_DEEP = _lut(WM, DEEP)
_IS_IPH_OK = _lut(GM, WM, DEEP, CSF, FALX)


@dataclass
class _Slice:
    """One slice while it is drawn: its label map and the geometry the drawing steps share (mm)."""
    k: int
    t: float                 # height, 0 at the first (skull-base) slice, 1 at the vertex
    R: np.ndarray            # outer head radius along each pixel's angle
    Rin: np.ndarray          # radius of the inner table
    d: np.ndarray            # depth below the skin surface
    depth: np.ndarray        # depth below the inner table (>= 0 inside)
    frac: np.ndarray         # 0 at centre, 1 at inner table
    bone: np.ndarray         # the skull (outer table to inner table)
    ic: np.ndarray           # intracranial: depth >= 0
    lab: np.ndarray          # uint8 tissue codes, written by every step in turn
    f_fine: np.ndarray | None = None   # smooth fields of this slice
    f_mid: np.ndarray | None = None
    fph: np.ndarray | None = None      # the sulcal phase field (also bends the sylvian fissures)
    ctx: np.ndarray | None = None      # cortical thickness
    xs: np.ndarray | None = None       # head-frame x minus the midline shift


def draw_outline(H: _Head, k: int, t: float) -> _Slice:
    """Scalp (skin, fat) and skull (cortical tables, diploe); the brain is still unlabelled."""
    N = H.N
    s = H.scale(t)
    rho = H.rho
    R = H.R0 * np.float32(s)
    vtx = 1.0 + 1.4 * min(1.0, max(0.0, (t - 0.82) / 0.18)) ** 2
    skull = H.skull * np.float32(vtx)
    d = R - rho
    inner = H.scalp + skull
    Rin = R - inner
    depth = d - inner                       # depth below the inner table (>= 0 inside)
    frac = rho / np.maximum(Rin, 1.0)       # 0 at centre, 1 at inner table

    lab = np.zeros((N, N), np.uint8)
    head = d >= 0
    lab[head] = SKIN
    sc = H.scalp
    lab[head & (d > 0.35 * sc) & (d < 0.65 * sc)] = FAT
    bone = (d >= sc) & (depth < 0)
    lab[bone] = CORT
    rel = (d - sc) / skull
    lab[bone & (rel > 0.3) & (rel < 0.7)] = DIPL
    return _Slice(k, t, R, Rin, d, depth, frac, bone, depth >= 0, lab)


def draw_cortex(H: _Head, S: _Slice, widen: np.ndarray) -> None:
    """Cortex and sulci: primary sulci along a warped angular phase, shorter secondary sulci in
    between (present where a smooth field is positive), variable depths; widen scales the sulcal width."""
    ic, Rin, depth, lab, f_mid = S.ic, S.Rin, S.depth, S.lab, S.f_mid
    rho, th = H.rho, H.th
    m = max(8, int(round(2 * np.pi * float(np.mean(Rin[ic])) / H.sulcal_period))) if ic.any() else 8
    fph = H.f_phase(S.k)
    phase = _wrap(m * th + 2.2 * fph)
    sd = np.abs(phase) * rho / m
    D = H.sulcal_depth * np.clip(0.7 + 0.45 * H.f_depth(S.k), 0.2, 1.5)
    sd2 = np.abs(_wrap(2 * m * th + 4.4 * fph + np.pi)) * rho / (2 * m)
    D2 = np.where(f_mid > 0.1, 0.45 * D, 0)
    ws = H.sulcal_w + 0.3 * H.ps
    ws = ws * widen
    surf = H.csf_surf * (1 + 0.4 * f_mid)
    ctx = H.ctx * (1 + 0.12 * f_mid)
    gm = ic & ((depth < surf + ctx) | ((depth < D + ctx) & (sd < ws + ctx))
               | ((depth < D2 + ctx) & (sd2 < ws + ctx)))
    csf = ic & ((depth < surf) | ((depth < D) & (sd < ws * np.sqrt(np.clip(1 - depth / D, 0, 1))))
                | ((depth < D2) & (sd2 < 0.8 * ws * np.sqrt(np.clip(1 - depth / np.maximum(D2, 1e-3), 0, 1)))))
    lab[gm] = GM
    lab[csf] = CSF
    S.fph, S.ctx = fph, ctx


def draw_deep_structures(H: _Head, S: _Slice) -> None:
    """Basal ganglia and thalami, interhemispheric fissure and falx, sylvian fissures, basal cisterns
    (around the midline S.xs, shifted by mass effect)."""
    t, ic, lab, frac, ctx, fph, xs = S.t, S.ic, S.lab, S.frac, S.ctx, S.fph, S.xs
    yh, fb = H.yh, H.fb
    wmlike = lab == WM
    if 0.30 <= t <= 0.52:
        for sgn in (-1, 1):
            e = ((xs - sgn * 17 * fb) / (6.5 * fb)) ** 2 + ((yh + 3 * fb) / (12 * fb)) ** 2 < 1
            lab[wmlike & e] = DEEP
            if t >= 0.36:
                e = ((xs - sgn * 9 * fb) / (7 * fb)) ** 2 + ((yh - 11 * fb) / (9 * fb)) ** 2 < 1
                lab[wmlike & e] = DEEP
    # interhemispheric fissure + falx
    if t > 0.3:
        if t > 0.66:
            reg = ic
        else:
            reg = ic & (frac > 0.38 + 0.25 * (0.66 - t) / 0.36)
        ax = np.abs(xs)
        lab[reg & (ax < H.fissure_w + ctx) & _IS_WM_DEEP[lab]] = GM
        lab[reg & (ax < H.fissure_w)] = CSF
        falx = reg & (ax < max(0.4, 0.55 * H.ps))
        lab[falx] = FALX
    # sylvian fissures (short, wiggly, widening towards the surface)
    if 0.26 <= t <= 0.48:
        for sgn in (-1, 1):
            pts = [(sgn * 24 * fb, -9 * fb), (sgn * 42 * fb, -16 * fb + 3 * fph.flat[0]), (sgn * 66 * fb, -8 * fb)]
            d1, l1 = _seg_dist(xs, yh, *pts[0], *pts[1])
            d2, l2 = _seg_dist(xs, yh, *pts[1], *pts[2])
            dd = np.minimum(d1, d2) + 1.0 * fph
            lam = np.where(d1 < d2, 0.5 * l1, 0.5 + 0.5 * l2)
            w = (0.5 + 1.2 * lam) * (1.0 + 1.5 * H.atrophy)
            lab[ic & (dd < w + ctx) & _IS_WM_DEEP[lab]] = GM
            lab[ic & (dd < w)] = CSF
    # basal cisterns
    if 0.18 <= t <= 0.31:
        rr = np.hypot(xs, yh - 6 * fb)
        rmb = 11 * fb
        lab[ic & (rr < rmb)] = WM
        lab[ic & (rr >= rmb) & (rr < rmb + 2.0 + 2 * H.atrophy)] = CSF
        if t <= 0.30:
            lab[ic & (np.hypot(xs, yh + 13 * fb) < 6.5 * fb)] = CSF


def draw_ventricles(H: _Head, S: _Slice, shift: float) -> dict[int, np.ndarray]:
    """Lateral (the one on the side of a midline shift compressed), third and fourth ventricles.
    Returns the lateral ventricle of each side {-1, +1} drawn on this slice (where blood can layer)."""
    t, ic, lab, xs = S.t, S.ic, S.lab, S.xs
    yh, fb = H.yh, H.fb
    vent_side = {}
    v0, v1 = _VENT_RANGE
    if v0 < t < v1:
        pz = math.sin(np.pi * (t - v0) / (v1 - v0)) ** 0.7
        Lh = 26 * fb * (0.6 + 0.4 * pz)
        u = (yh - 2 * fb) / Lh
        inside = np.abs(u) < 1
        low = max(0.0, 1 - (t - v0) / 0.1)
        for sgn in (-1, 1):
            comp = 1.0
            if shift * sgn > 0:      # shift towards this side: this is the contralateral
                pass
            elif shift != 0:
                comp = 1 - 0.35 * min(1.0, abs(shift) / 8)
            me = 1.2 + 10 * fb * ((u + 1) / 2) ** 2 * (0.6 + 0.4 * pz)
            W = (H.vscale * comp * (2.5 + 4.5 * pz) * fb * np.clip(1 - u * u, 0, 1) ** 0.4
                 * (1 + 0.5 * np.exp(-((u + 0.7) / 0.25) ** 2)) * (1 + 0.4 * np.exp(-((u - 0.6) / 0.3) ** 2)))
            sx = sgn * xs
            v = ic & inside & (sx > me) & (sx < me + W)
            if low > 0:
                v &= np.abs(u) > 0.4 * low
            lab[v] = VENT
            vent_side[sgn] = v
    if 0.32 <= t <= 0.45:
        lab[ic & (np.abs(xs) < (1.0 + 1.5 * H.atrophy) * H.vscale ** 0.5) & (np.abs(yh - 1 * fb) < 10 * fb)] = VENT
    if 0.08 <= t <= 0.24:
        e = (xs / (6 * fb)) ** 2 + ((yh - 24 * fb) / (3.5 * fb)) ** 2 < H.vscale
        lab[ic & e] = VENT
    return vent_side


def draw_skull_base(H: _Head, S: _Slice) -> float:
    """Petrous ridges, mastoids, clivus and sphenoid sinus on the lowest slices; returns their weight
    beta (0 above the skull base, 1 on the first slice)."""
    ic, lab, f_fine = S.ic, S.lab, S.f_fine
    xh, yh, fb = H.xh, H.yh, H.fb
    beta = min(1.0, max(0.0, (0.22 - S.t) / 0.22))
    if beta > 0:
        for sgn in (-1, 1):
            # petrous ridge: a wedge from the lateral skull base towards the clivus
            dd, lam = _seg_dist(xh, yh, sgn * 18 * fb, 0.0, sgn * 60 * fb, 20 * fb)
            wedge = ic & (dd < (1.5 + 5 * lam) * beta + 0.5) & (lam > 0)
            lab[wedge] = CORT
            lab[wedge & (f_fine > 0.6)] = DIPL
            mast = ic & (np.hypot(xh - sgn * 52 * fb, yh - 26 * fb) < 8 * beta)
            lab[mast] = CORT
            lab[mast & (f_fine > 0.2)] = SINUS
        cl = ic & ((xh / (5 * beta + 1)) ** 2 + ((yh + 8 * fb) / (9 * beta + 1)) ** 2 < 1)
        lab[cl] = CORT
        e = (xh / (11 * beta + 0.5)) ** 2 + ((yh + 30 * fb) / (8 * beta + 0.5)) ** 2
        lab[ic & (e < 1.35)] = CORT
        lab[ic & (e < 1)] = SINUS
    return beta


def tissue_hu(H: _Head, S: _Slice, scalp_hem_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """HU of every label with parenchymal and bone texture; returns (hu float32, parenchymal texture)."""
    lab, f_fine = S.lab, S.f_fine
    T = H.hu
    lut = np.zeros(16, np.float32)
    lut[[AIR, SKIN, FAT, CORT, DIPL, CSF, GM, WM, VENT, DEEP, FALX, CALC, BLOOD, EDEMA, SINUS, SCALP_HEM]] = [
        -1000, T["skin"], T["fat"], T["cort"], T["dipl"], T["csf"], T["gm"], T["wm"], T["vent"],
        T["deep"], T["falx"], 150, 60, 20, T["sinus"], scalp_hem_hu]
    hu = lut[lab]
    tex = 1.2 * H.f_lo(S.k) + 1.0 * S.f_mid
    par = _IS_PAR_EDEMA[lab]
    hu += np.where(par, tex, 0).astype(np.float32)
    hu += np.where(lab == DIPL, 160 * f_fine, 0).astype(np.float32)
    hu += np.where(lab == CORT, 80 * f_fine, 0).astype(np.float32)
    return hu, tex


def draw_normal_variants(H: _Head, S: _Slice, hu: np.ndarray, shift: float, beta: float) -> None:
    """Calcifications (pineal, choroid plexus, falx) and skull-base streaks, drawn over everything
    else: a calcification is never hemorrhage."""
    k, t, ic, lab = S.k, S.t, S.ic, S.lab
    xh, yh, fb = H.xh, H.yh, H.fb
    zk = H.z_mm[k]
    for cz in H.calcs:
        zc = cz["t"] * H.z_mm[-1]
        dzv = abs(zk - zc) - H.dz / 2
        r = cz["r"] if dzv <= 0 else math.sqrt(max(0.0, cz["r"] ** 2 - dzv ** 2))
        if r < 0.3:
            continue
        x0 = cz["x"] * fb + (shift if cz["shift"] else 0)
        mk = ic & (np.hypot(xh - x0, yh - cz["y"] * fb) < max(r, 0.5 * H.ps)) & (lab != BLOOD)
        pv = min(1.0, 2 * r / H.dz) * 0.6 + 0.4
        hu[mk] = H.hu["wm"] + (cz["hu"] - H.hu["wm"]) * pv
        lab[mk] = CALC
    if H.falx_calc is not None and t > 0.4:
        y0, y1, w, h = H.falx_calc
        mk = (lab == FALX) & (yh >= y0 * fb) & (yh <= y1 * fb)
        hu[mk] = h
    # beam-hardening-like dark streaks on the skull-base slices
    if beta > 0.2:
        for ang, off, amp in H.streaks:
            dist = np.abs(math.cos(ang) * xh + math.sin(ang) * (yh - 10) - off)
            hu += np.where(ic & (dist < 1.5), amp * beta, 0).astype(np.float32)
