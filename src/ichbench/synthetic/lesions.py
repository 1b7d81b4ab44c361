"""Hemorrhages (EDH, SDH, IPH, IVH, SAH) and trauma findings (scalp hematoma, fracture): their draws and drawing."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .anatomy import _IS_IPH_OK, _IS_PAR, BLOOD, CSF, EDEMA, SCALP_HEM, SINUS, SKIN, _Slice
from .config import HEMORRHAGE_TYPES, SyntheticConfig
from .fields import _wrap
from .head import _VENT_RANGE, _Head


@dataclass
class _Lesion:
    """One finding: its kind, the slices k0..k1 it spans, mean HU, side and shape parameters."""
    kind: str
    k0: int
    k1: int
    mean_hu: float
    side: int             # +1 patient left, -1 right, 0 both / midline
    params: dict = field(default_factory=dict)
    shift_mm: float = 0.0  # midline shift it causes (signed, mm along +x)

    def taper(self, k: int) -> float:
        """Size factor on slice k: 1 in the middle of k0..k1, smaller towards its ends, 0 outside."""
        if k < self.k0 or k > self.k1:
            return 0.0
        L = self.k1 - self.k0 + 1
        kc = (self.k0 + self.k1) / 2
        return math.sqrt(max(0.0, 1 - ((k - kc) / ((L + 1) / 2)) ** 2))


def _draw_lesions(rng, cfg: SyntheticConfig, path_index: int, n: int) -> list[_Lesion]:
    """1-3 hemorrhages of a pathological patient with n slices; the first one's type cycles with
    path_index (so every type occurs in a cohort)."""
    lesions: list[_Lesion] = []
    j = path_index
    n_les = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    kinds = [HEMORRHAGE_TYPES[j % len(HEMORRHAGE_TYPES)]]
    for _ in range(n_les - 1):
        kinds.append(str(rng.choice(["IPH", "SDH", "SAH", "IVH", "EDH"], p=[0.3, 0.22, 0.2, 0.13, 0.15])))
    tr = dict(EDH=(0.3, 0.85), SDH=(0.3, 0.88), IPH=(0.25, 0.8), IVH=(0.42, 0.66), SAH=(0.25, 0.85))
    v0, v1 = _VENT_RANGE
    vent_slices = [k for k in range(1, n - 1) if v0 + 0.02 < k / (n - 1) < v1 - 0.02]
    ls = float(cfg.lesion_scale)
    r_hi = max(1, min(cfg.lesion_slices[1], n - 2))
    r_lo = min(cfg.lesion_slices[0], r_hi)
    for kind in kinds:
        if kind == "IVH" and not vent_slices:
            kind = "IPH"
        L = int(rng.integers(r_lo, r_hi + 1))
        if kind == "IVH":
            kc = int(rng.choice(vent_slices))
            L = min(L, 4)
        else:
            kc = int(round(rng.uniform(*tr[kind]) * (n - 1)))
        k0 = max(1, kc - L // 2)
        k1 = min(n - 2, k0 + L - 1)
        if kind == "IVH":
            k0, k1 = max(k0, vent_slices[0]), min(k1, vent_slices[-1])
            k0 = min(k0, kc)
            k1 = max(k1, kc)
        mean = float(rng.uniform(50, 75) if kind == "SAH" else rng.uniform(52, 90))
        side = 1 if rng.random() < 0.5 else -1
        P: dict = {}
        shift = 0.0
        if kind in ("EDH", "SDH"):
            base = 0.0 if side > 0 else np.pi
            P["theta"] = float(base + side * rng.normal(0, 0.55))
            if kind == "EDH":
                P["arc"] = float(rng.uniform(20, 45)) * ls
                P["h"] = float(np.exp(rng.uniform(np.log(7), np.log(28)))) * ls
                P["power"] = 1.0
                if P["h"] > 12:
                    shift = -side * min(10.0, (P["h"] - 8) * 0.5)
            else:
                P["arc"] = float(rng.uniform(45, 100)) * ls
                P["h"] = float(np.exp(rng.uniform(np.log(3), np.log(14)))) * ls
                P["power"] = float(rng.uniform(0.25, 0.45))
                if P["h"] > 8:
                    shift = -side * min(10.0, (P["h"] - 5) * 0.7)
            P["ripple"] = [(float(rng.normal(0, 0.06)), float(rng.uniform(0, 6.3))) for _ in range(3)]
        elif kind == "IPH":
            ang = float(rng.uniform(0, 2 * np.pi))
            frac = float(rng.uniform(0.15, 0.6))
            P["dir"] = ang
            P["frac"] = frac
            a = float(np.exp(rng.uniform(np.log(3.5), np.log(22)))) * ls
            P["a"], P["b"] = a, a * float(rng.uniform(0.6, 1.4))
            P["psi"] = float(rng.uniform(0, np.pi))
            P["harm"] = [(float(rng.normal(0, 0.1)), float(rng.uniform(0, 6.3))) for _ in range(4)]
            P["rim"] = float(rng.uniform(1.5, 4.0)) if rng.random() < 0.5 else 0.0
            P["rim_hu"] = float(rng.uniform(15, 25))
            side = 1 if math.cos(ang) > 0 else -1
            if a > 12:
                shift = -side * min(8.0, (a - 10) * 0.4)
        elif kind == "IVH":
            r = rng.random()
            side = 0 if r < 0.3 else side
            P["fill"] = min(1.0, float(rng.uniform(0.3, 0.8)) * ls)
        elif kind == "SAH":
            P["basal"] = bool(rng.random() < 0.3)
            P["theta"] = float(rng.uniform(0, 2 * np.pi))
            P["r"] = float(rng.uniform(15, 35)) * (1.4 if P["basal"] else 1.0) * ls
            side = 0 if P["basal"] else (1 if math.cos(P["theta"]) > 0 else -1)
            if P["basal"]:
                k_lo = max(1, int(round(0.2 * (n - 1))))
                k_hi = max(k_lo, min(n - 2, int(round(0.42 * (n - 1)))))
                k0 = max(k_lo, min(k0, k_hi))
                k1 = max(k0, min(k1, k_hi))
        lesions.append(_Lesion(kind, k0, k1, mean, side, P, shift))
    return lesions


def _draw_trauma(rng, cfg: SyntheticConfig, pathological: bool, n: int, lesions: list[_Lesion]):
    """Scalp hematoma (and fracture) parameters, or (None, None). Drawn after the lesions, so that
    the trauma settings leave every other draw of the patient unchanged."""
    p = cfg.trauma_prob if pathological else cfg.normal_trauma_prob
    if not rng.random() < p:
        return None, None
    # over the (first) extra-axial or lobar bleed, else anywhere above the skull base
    site = next((L for L in lesions if L.kind in ("EDH", "SDH")), None) or next(
        (L for L in lesions if L.kind in ("IPH", "SAH") and L.side != 0), None)
    if site is not None and "theta" in site.params:
        theta = float(site.params["theta"] + rng.normal(0, 0.3))
    elif site is not None:
        theta = float(site.params["dir"] + rng.normal(0, 0.3))
    else:
        theta = float(rng.uniform(0, 2 * np.pi))
    kc = (site.k0 + site.k1) / 2 if site is not None else float(rng.uniform(0.35, 0.85)) * (n - 1)
    L = int(rng.integers(3, max(4, min(9, n - 2)) + 1))
    k0 = max(1, int(round(kc - L / 2)))
    hem = _Lesion("scalp", k0, min(n - 2, k0 + L - 1), float(rng.uniform(45, 75)), 0,
                  dict(theta=theta, arc=float(rng.uniform(50, 130)),
                       h=float(np.exp(rng.uniform(np.log(4), np.log(14))))))
    fracture = None
    is_edh = site is not None and site.kind == "EDH"
    if pathological and (is_edh or rng.random() < cfg.fracture_prob):
        fracture = dict(theta=float(theta + rng.normal(0, 0.15)), width=float(rng.uniform(0.8, 2.0)),
                        k0=max(hem.k0, int(round(kc)) - 2), k1=min(hem.k1, int(round(kc)) + 2))
    return hem, fracture


def _midline_shift(lesions: list[_Lesion], n: int) -> np.ndarray:
    """Midline shift (mm along +x) on each of the n slices, from the space-occupying lesions."""
    shift = np.zeros(n)
    for les in lesions:
        if les.shift_mm:
            for k in range(n):
                if les.k0 - 2 <= k <= les.k1 + 2:
                    d = max(0, les.k0 - k, k - les.k1)
                    shift[k] += les.shift_mm * (1 - 0.3 * d)
    return np.clip(shift, -12, 12)


# ----------------------------------------------------------------------------- drawing on a slice

def draw_trauma(H: _Head, S: _Slice, scalp_hem: _Lesion | None, fracture: dict | None) -> float:
    """Scalp hematoma and fracture labels (outside the brain); returns the hematoma's taper here."""
    k, lab, d, R, bone = S.k, S.lab, S.d, S.R, S.bone
    th, rho, sc = H.th, H.rho, H.scalp
    sh = scalp_hem
    sh_tap = sh.taper(k) if sh is not None else 0.0
    if sh_tap > 0:
        # subgaleal hematoma: a lens that lifts the outer scalp surface
        dth = sh.params["arc"] / max(float(np.median(R)), 10.0)
        u = _wrap(th - sh.params["theta"]) / dth
        w = sh.params["h"] * np.sqrt(np.clip(1 - u * u, 0, 1)) * sh_tap
        lab[(w > 0.3) & (d >= -w) & (d < 0.5 * sc)] = SCALP_HEM
    fr = fracture
    if fr is not None and fr["k0"] <= k <= fr["k1"]:
        # linear calvarial fracture: a soft-tissue gap across the bone
        gap = np.abs(_wrap(th - fr["theta"])) * rho < fr["width"] / 2
        lab[bone & gap] = SKIN
    return sh_tap


def _sah_disc(H: _Head, L: _Lesion, tap: float, Rin, ic):
    """Centre (x, y) and radius of the disc in which a SAH fills the CSF on this slice (head frame, mm)."""
    P = L.params
    r = P["r"] * (0.5 + 0.5 * tap)
    if P["basal"]:
        return 0.0, -4.0 * H.fb, r
    th0 = P["theta"]
    sector = ic & (np.abs(_wrap(H.th - th0)) < 0.04)
    rr = float(np.median(Rin[sector])) if sector.any() else 40.0
    return (rr - 6) * math.cos(th0), (rr - 6) * math.sin(th0), r


def sulcal_widening(H: _Head, S: _Slice, active: list[tuple[_Lesion, float]]) -> np.ndarray:
    """Factor on the sulcal width: doubled inside the disc of each SAH (the blood fills widened sulci)."""
    widen = np.ones((H.N, H.N), np.float32)
    for L, tap in active:
        if L.kind == "SAH":
            cxs, cys, r = _sah_disc(H, L, tap, S.Rin, S.ic)
            widen += 1.0 * (np.hypot(H.xh - cxs, H.yh - cys) < r)
    return widen


def draw_hemorrhages(H: _Head, S: _Slice, active: list[tuple[_Lesion, float]],
                     vent_side: dict[int, np.ndarray]):
    """Label the active hemorrhages BLOOD (and IPH rims EDEMA); returns ({type: bool mask},
    [(mask, mean HU)] to paint)."""
    N = H.N
    ic, Rin, depth, lab, f_fine = S.ic, S.Rin, S.depth, S.lab, S.f_fine
    xh, yh, th = H.xh, H.yh, H.th
    masks: dict[str, np.ndarray] = {}
    paint = []   # (mask, mean_hu)
    for L, tap in active:
        P = L.params
        if L.kind in ("EDH", "SDH"):
            arc = P["arc"] * (0.55 + 0.45 * tap)
            dth = arc / max(float(np.median(Rin[ic])) if ic.any() else 50.0, 10.0)
            u = _wrap(th - P["theta"]) / dth
            prof = np.clip(1 - u * u, 0, 1) ** P["power"]
            rip = 1 + sum(a * np.cos((i + 2) * u * np.pi + ph) for i, (a, ph) in enumerate(P["ripple"]))
            h = P["h"] * tap * prof * rip
            mk = ic & (np.abs(u) < 1) & (depth < h) & (lab != SINUS)
        elif L.kind == "IPH":
            r_at = float(np.median(Rin[ic])) if ic.any() else 50.0
            cxl = P["frac"] * r_at * math.cos(P["dir"])
            cyl = P["frac"] * r_at * math.sin(P["dir"]) * 1.2
            ca, sa = math.cos(P["psi"]), math.sin(P["psi"])
            x1 = ca * (xh - cxl) + sa * (yh - cyl)
            y1 = -sa * (xh - cxl) + ca * (yh - cyl)
            rn = np.hypot(x1 / P["a"], y1 / P["b"])
            al = np.arctan2(y1, x1)
            bnd = tap * (1 + sum(a * np.cos((i + 2) * al + ph) for i, (a, ph) in enumerate(P["harm"])))
            bnd = bnd + 0.08 * f_fine
            okp = _IS_IPH_OK[lab]
            mk = ic & okp & (rn < bnd)
            if P["rim"] > 0:
                rim = ic & _IS_PAR[lab] & (rn >= bnd) & (rn < bnd + P["rim"] / (0.5 * (P["a"] + P["b"])))
                lab[rim] = EDEMA
        elif L.kind == "IVH":
            mk = np.zeros((N, N), bool)
            for sgn, v in vent_side.items():
                if (L.side == 0 or L.side == sgn) and v.any():
                    yy = H.Y[v]
                    lvl = yy.max() - P["fill"] * (yy.max() - yy.min())
                    mk |= v & (H.Y >= lvl)
        else:  # SAH
            cxs, cys, r = _sah_disc(H, L, tap, Rin, ic)
            mk = ic & (lab == CSF) & (np.hypot(xh - cxs, yh - cys) < r)
        if mk.any():
            lab[mk] = BLOOD
            masks[L.kind] = masks.get(L.kind, np.zeros((N, N), bool)) | mk
            paint.append((mk, L.mean_hu))
    return masks, paint


def findings_hu(hu: np.ndarray, S: _Slice, tex: np.ndarray, sh_tap: float,
                active: list[tuple[_Lesion, float]], paint: list) -> None:
    """HU of the scalp hematoma texture, the IPH edema rims and the hemorrhages, in place."""
    lab, f_fine = S.lab, S.f_fine
    if sh_tap > 0:
        hu += np.where(lab == SCALP_HEM, 3.0 * f_fine, 0).astype(np.float32)
    for L, tap in active:
        if L.kind == "IPH" and L.params["rim"] > 0:
            hu[lab == EDEMA] = L.params["rim_hu"] + tex[lab == EDEMA]
    for mk, mean in paint:
        hu[mk] = mean + 3.0 * f_fine[mk] + 1.5 * tex[mk]
