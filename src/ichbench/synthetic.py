"""Built-in synthetic head CT generator that writes real DICOM.

The data are entirely synthetic: a parametric head (scalp, skull, cortex with sulci, white
matter, ventricles, cisterns, skull-base bits, physiological calcifications) rendered slice by
slice in Hounsfield units, with 1-3 acute hemorrhages (EDH, SDH, IPH, IVH, SAH) in the
pathological patients and a per-pixel ground-truth mask. Everything is deterministic from the
config (no wall clock, UIDs hashed from seed/patient/slice), so the same config gives
byte-identical files whatever the number of worker processes.

Layout written under ``out_dir`` (see :func:`generate`)::

    dicom/<study hash>/<series hash>/<sop hash>.dcm   CT Image Storage, Explicit VR LE
    cq500_labels.csv     CTFSH format  (name;is_pathl;diagnosis;TEST;notes, names CT_{n})
    reads.csv            CQ500 reads format (44 columns, 3 simulated readers, names = PatientID)
    slice_labels.csv     one row per slice of the primary (soft-tissue) axial series
    masks/<SeriesInstanceUID>.npz   sop_uids (str), masks (bool, n x Rows x Columns)
    README.txt
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["SyntheticConfig", "generate", "HEMORRHAGE_TYPES", "READS_COLUMNS",
           "SLICE_LABEL_COLUMNS", "CTFSH_COLUMNS"]

#: Hemorrhage types, in the order the CTFSH labels list them (e.g. "IPH;IVH;SDH;EDH;SAH").
HEMORRHAGE_TYPES: tuple[str, ...] = ("IPH", "IVH", "SDH", "EDH", "SAH")
CTFSH_COLUMNS: tuple[str, ...] = ("name", "is_pathl", "diagnosis", "TEST", "notes")
_READER_FIELDS: tuple[str, ...] = (
    "ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
    "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift")
#: The 44 columns of the CQ500 reads.csv.
READS_COLUMNS: tuple[str, ...] = ("name", "Category") + tuple(
    f"R{r}:{f}" for r in (1, 2, 3) for f in _READER_FIELDS)
SLICE_LABEL_COLUMNS: tuple[str, ...] = (
    "patient_id", "study_uid", "series_uid", "sop_uid", "instance_number", "position_z",
    "hemorrhage", "types", "hemorrhage_pixels")

_GENERATOR_VERSION = "ichbench-synthetic-2"


@dataclass
class SyntheticConfig:
    seed: int = 0
    n_normal: int = 12
    n_pathological: int = 18
    image_size: int = 256          # Rows = Columns, >= 128; must work for 256 and 512
    n_slices: tuple[int, int] = (20, 28)   # min, max slices per series, drawn per patient
    slice_thickness_mm: float = 5.0
    noise_hu: float = 6.0          # std of scanner noise
    id_format: str = "SYN-CT-{n}"  # PatientID; the labels files use "CT_{n}" as the CTFSH name
    extra_series: bool = False     # also write a bone-kernel series + a lateral localizer per patient
    fov_mm: tuple[float, float] = (220.0, 250.0)  # range of the reconstruction field of view
    correlated_noise: bool = True  # mix white noise with a 3x3-smoothed copy (CT-like texture)
    psf_blur: bool = True          # slight in-plane blur (scanner PSF) before the noise
    tilt_prob: float = 0.15        # fraction of patients scanned with a gantry tilt
    max_tilt_deg: float = 8.0      # tilt drawn uniformly in [2, max_tilt_deg] degrees
    reverse_instance_prob: float = 0.3   # InstanceNumber runs vertex -> base for these patients
    fov_padding_prob: float = 0.5  # int16 patients padded outside the reconstruction circle
    calcification_prob: float = 0.5      # prob. of pineal / choroid plexus calcification (both classes)
    reader_miss_prob: float = 0.1  # per reader and true subtype: probability it is not marked
    reader_fp_prob: float = 0.15   # per normal patient: probability one reader calls an ICH
    study_date: str = "20000101"   # fixed fake StudyDate
    number_range_factor: int = 4   # patient numbers drawn without replacement from [0, max(100, f*N))
    lesion_scale: float = 1.0      # in-plane size factor of every hemorrhage (thickness, length, radius)
    lesion_slices: tuple[int, int] = (2, 10)  # min, max slices a hemorrhage spans (clipped to the series)
    # Head trauma, the commonest cause of ICH in CQ500-like cohorts: a subgaleal (scalp) hematoma over
    # the bleed, and for some a linear calvarial fracture under it. Extracranial findings: never in the
    # ICH ground truth. Normal patients can be trauma cases too (a scalp hematoma, no bleed).
    trauma_prob: float = 0.6         # pathological patients with a scalp hematoma
    fracture_prob: float = 0.5       # of those, with a calvarial fracture (an EDH always has one)
    normal_trauma_prob: float = 0.2  # normal patients with a scalp hematoma

    def __post_init__(self) -> None:
        # (min, max) pairs arrive as lists from JSON / YAML
        for name in ("n_slices", "fov_mm", "lesion_slices"):
            setattr(self, name, tuple(getattr(self, name)))

    def validate(self) -> None:
        if self.image_size < 128:
            raise ValueError("image_size must be >= 128")
        lo, hi = self.n_slices
        if not (4 <= lo <= hi):
            raise ValueError("n_slices must be (min, max) with 4 <= min <= max")
        if self.n_normal < 0 or self.n_pathological < 0 or self.n_normal + self.n_pathological < 1:
            raise ValueError("need at least one patient")
        for name in ("trauma_prob", "fracture_prob", "normal_trauma_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.lesion_scale <= 0:
            raise ValueError("lesion_scale must be > 0")
        if not (1 <= self.lesion_slices[0] <= self.lesion_slices[1]):
            raise ValueError("lesion_slices must be (min, max) with 1 <= min <= max")
        if self.slice_thickness_mm <= 0 or self.noise_hu < 0:
            raise ValueError("slice_thickness_mm must be > 0 and noise_hu >= 0")
        if "{n}" not in self.id_format:
            raise ValueError("id_format must contain '{n}'")


# ----------------------------------------------------------------------------- helpers

# label codes of the tissue map
AIR, SKIN, FAT, CORT, DIPL, CSF, GM, WM, VENT, DEEP, FALX, CALC, BLOOD, EDEMA, SINUS, SCALP_HEM = range(16)
_PARENCHYMA = (GM, WM, DEEP)


def _lut(*codes):
    t = np.zeros(16, bool)
    t[list(codes)] = True
    return t


_IS_PAR = _lut(GM, WM, DEEP)
_IS_PAR_EDEMA = _lut(GM, WM, DEEP, EDEMA)
_IS_WM_DEEP = _lut(WM, DEEP)
_IS_IPH_OK = _lut(GM, WM, DEEP, CSF, FALX)


def _blas_single_thread():
    """One BLAS thread: the small matrix products here are much slower with contended threads,
    and a fixed thread count keeps the floating-point results reproducible."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _cfg_digest(cfg: SyntheticConfig) -> str:
    d = asdict(cfg)
    d["_version"] = _GENERATOR_VERSION
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _uid(*parts) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _opaque(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def _ds(v: float) -> str:
    """Decimal String of at most 16 characters."""
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s[:16]


def _wrap(a):
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


# ----------------------------------------------------------------------------- patient model

@dataclass
class _Plan:
    index: int            # position in the patient order (0..N-1)
    number: int           # n in SYN-CT-{n} / CT_{n}
    pathological: bool
    path_index: int       # index among pathological patients (-1 for normals)
    storage: str          # int16 | uint12 | uint16_slope | int16_offset


@dataclass
class _Lesion:
    kind: str
    k0: int
    k1: int
    mean_hu: float
    side: int             # +1 patient left, -1 right, 0 both / midline
    params: dict = field(default_factory=dict)
    shift_mm: float = 0.0  # midline shift it causes (signed, mm along +x)

    def taper(self, k: int) -> float:
        if k < self.k0 or k > self.k1:
            return 0.0
        L = self.k1 - self.k0 + 1
        kc = (self.k0 + self.k1) / 2
        return math.sqrt(max(0.0, 1 - ((k - kc) / ((L + 1) / 2)) ** 2))


class _Patient:
    """All random parameters of one patient, drawn in a fixed order from its own RNG."""

    def __init__(self, cfg: SyntheticConfig, plan: _Plan, attempt: int = 0):
        self.cfg, self.plan = cfg, plan
        rng = np.random.default_rng([cfg.seed, plan.number, 17, attempt])
        self.rng = rng
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
        p = cfg.calcification_prob
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
        self.recon_circle = np.hypot(X, Y) <= (N / 2) * self.ps

        self.f_lo = _Smooth(rng, c, self.z_mm, 25.0, 20.0)
        self.f_mid = _Smooth(rng, c, self.z_mm, 7.0, 7.0)
        self.f_fine = _Smooth(rng, c, self.z_mm, 2.2, 3.0)
        self.f_phase = _Smooth(rng, c, self.z_mm, 13.0, 6.0)
        self.f_depth = _Smooth(rng, c, self.z_mm, 8.0, 6.0)

        self.lesions: list[_Lesion] = []
        if plan.pathological:
            self._draw_lesions(rng)
        self.scalp_hem, self.fracture = self._draw_trauma(rng)
        self.shift = np.zeros(self.n)
        for les in self.lesions:
            if les.shift_mm:
                for k in range(self.n):
                    if les.k0 - 2 <= k <= les.k1 + 2:
                        d = max(0, les.k0 - k, k - les.k1)
                        self.shift[k] += les.shift_mm * (1 - 0.3 * d)
        self.shift = np.clip(self.shift, -12, 12)

    # -- slice-dependent shape
    def t(self, k: int) -> float:
        return k / (self.n - 1)

    def scale(self, t: float) -> float:
        tp = self.tpeak
        if t <= tp:
            return self.s_base + (1 - self.s_base) * (1 - ((tp - t) / tp) ** 2)
        return math.sqrt(max(0.05, 1 - ((t - tp) / (1 - tp + self.s_top)) ** 2))

    def _vent_range(self):
        return 0.36, 0.72

    def _draw_lesions(self, rng) -> None:
        n = self.n
        j = self.plan.path_index
        n_les = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        kinds = [HEMORRHAGE_TYPES[j % len(HEMORRHAGE_TYPES)]]
        for _ in range(n_les - 1):
            kinds.append(str(rng.choice(["IPH", "SDH", "SAH", "IVH", "EDH"], p=[0.3, 0.22, 0.2, 0.13, 0.15])))
        tr = dict(EDH=(0.3, 0.85), SDH=(0.3, 0.88), IPH=(0.25, 0.8), IVH=(0.42, 0.66), SAH=(0.25, 0.85))
        v0, v1 = self._vent_range()
        vent_slices = [k for k in range(1, n - 1) if v0 + 0.02 < self.t(k) < v1 - 0.02]
        ls = float(self.cfg.lesion_scale)
        r_hi = max(1, min(self.cfg.lesion_slices[1], n - 2))
        r_lo = min(self.cfg.lesion_slices[0], r_hi)
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
            self.lesions.append(_Lesion(kind, k0, k1, mean, side, P, shift))

    def _draw_trauma(self, rng):
        """Scalp hematoma (and fracture) parameters, or (None, None). Drawn after the lesions, so that
        the trauma settings leave every other draw of the patient unchanged."""
        cfg, n = self.cfg, self.n
        p = cfg.trauma_prob if self.plan.pathological else cfg.normal_trauma_prob
        if not rng.random() < p:
            return None, None
        # over the (first) extra-axial or lobar bleed, else anywhere above the skull base
        site = next((L for L in self.lesions if L.kind in ("EDH", "SDH")), None) or next(
            (L for L in self.lesions if L.kind in ("IPH", "SAH") and L.side != 0), None)
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
        if self.plan.pathological and (is_edh or rng.random() < cfg.fracture_prob):
            fracture = dict(theta=float(theta + rng.normal(0, 0.15)), width=float(rng.uniform(0.8, 2.0)),
                            k0=max(hem.k0, int(round(kc)) - 2), k1=min(hem.k1, int(round(kc)) + 2))
        return hem, fracture

    # -- rendering
    def render(self, k: int):
        """-> (hu float32 before PSF/noise, label uint8, {type: bool mask})."""
        N = self.cfg.image_size
        t = self.t(k)
        s = self.scale(t)
        xh, yh, rho, th = self.xh, self.yh, self.rho, self.th
        fb = self.fb
        R = self.R0 * np.float32(s)
        vtx = 1.0 + 1.4 * min(1.0, max(0.0, (t - 0.82) / 0.18)) ** 2
        skull = self.skull * np.float32(vtx)
        d = R - rho
        inner = self.scalp + skull
        Rin = R - inner
        depth = d - inner                       # depth below the inner table (>= 0 inside)
        frac = rho / np.maximum(Rin, 1.0)       # 0 at centre, 1 at inner table

        lab = np.zeros((N, N), np.uint8)
        head = d >= 0
        lab[head] = SKIN
        sc = self.scalp
        lab[head & (d > 0.35 * sc) & (d < 0.65 * sc)] = FAT
        bone = (d >= sc) & (depth < 0)
        lab[bone] = CORT
        rel = (d - sc) / skull
        lab[bone & (rel > 0.3) & (rel < 0.7)] = DIPL
        sh = self.scalp_hem
        sh_tap = sh.taper(k) if sh is not None else 0.0
        if sh_tap > 0:
            # subgaleal hematoma: a lens that lifts the outer scalp surface
            dth = sh.params["arc"] / max(float(np.median(R)), 10.0)
            u = _wrap(th - sh.params["theta"]) / dth
            w = sh.params["h"] * np.sqrt(np.clip(1 - u * u, 0, 1)) * sh_tap
            lab[(w > 0.3) & (d >= -w) & (d < 0.5 * sc)] = SCALP_HEM
        fr = self.fracture
        if fr is not None and fr["k0"] <= k <= fr["k1"]:
            # linear calvarial fracture: a soft-tissue gap across the bone
            gap = np.abs(_wrap(th - fr["theta"])) * rho < fr["width"] / 2
            lab[bone & gap] = SKIN
        ic = depth >= 0
        lab[ic] = WM

        lesions = [(L, L.taper(k)) for L in self.lesions if L.taper(k) > 0]
        f_fine = self.f_fine(k)
        f_mid = self.f_mid(k)

        # --- cortex and sulci: primary sulci along a warped angular phase, shorter secondary
        # sulci in between (present where a smooth field is positive), variable depths
        m = max(8, int(round(2 * np.pi * float(np.mean(Rin[ic])) / self.sulcal_period))) if ic.any() else 8
        fph = self.f_phase(k)
        phase = _wrap(m * th + 2.2 * fph)
        sd = np.abs(phase) * rho / m
        D = self.sulcal_depth * np.clip(0.7 + 0.45 * self.f_depth(k), 0.2, 1.5)
        sd2 = np.abs(_wrap(2 * m * th + 4.4 * fph + np.pi)) * rho / (2 * m)
        D2 = np.where(f_mid > 0.1, 0.45 * D, 0)
        ws = self.sulcal_w + 0.3 * self.ps
        widen = np.ones((N, N), np.float32)
        for L, tap in lesions:
            if L.kind == "SAH":
                cxs, cys, r = self._sah_disc(L, tap, Rin, ic)
                widen += 1.0 * (np.hypot(xh - cxs, yh - cys) < r)
        ws = ws * widen
        surf = self.csf_surf * (1 + 0.4 * f_mid)
        ctx = self.ctx * (1 + 0.12 * f_mid)
        gm = ic & ((depth < surf + ctx) | ((depth < D + ctx) & (sd < ws + ctx))
                   | ((depth < D2 + ctx) & (sd2 < ws + ctx)))
        csf = ic & ((depth < surf) | ((depth < D) & (sd < ws * np.sqrt(np.clip(1 - depth / D, 0, 1))))
                    | ((depth < D2) & (sd2 < 0.8 * ws * np.sqrt(np.clip(1 - depth / np.maximum(D2, 1e-3), 0, 1)))))
        lab[gm] = GM
        lab[csf] = CSF

        # --- deep structures (head frame, midline shifted by mass effect)
        xs = xh - np.float32(self.shift[k])
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
            lab[reg & (ax < self.fissure_w + ctx) & _IS_WM_DEEP[lab]] = GM
            lab[reg & (ax < self.fissure_w)] = CSF
            falx = reg & (ax < max(0.4, 0.55 * self.ps))
            lab[falx] = FALX
        # sylvian fissures (short, wiggly, widening towards the surface)
        if 0.26 <= t <= 0.48:
            for sgn in (-1, 1):
                pts = [(sgn * 24 * fb, -9 * fb), (sgn * 42 * fb, -16 * fb + 3 * fph.flat[0]), (sgn * 66 * fb, -8 * fb)]
                d1, l1 = _seg_dist(xs, yh, *pts[0], *pts[1])
                d2, l2 = _seg_dist(xs, yh, *pts[1], *pts[2])
                dd = np.minimum(d1, d2) + 1.0 * fph
                lam = np.where(d1 < d2, 0.5 * l1, 0.5 + 0.5 * l2)
                w = (0.5 + 1.2 * lam) * (1.0 + 1.5 * self.atrophy)
                lab[ic & (dd < w + ctx) & _IS_WM_DEEP[lab]] = GM
                lab[ic & (dd < w)] = CSF
        # basal cisterns
        if 0.18 <= t <= 0.31:
            rr = np.hypot(xs, yh - 6 * fb)
            rmb = 11 * fb
            lab[ic & (rr < rmb)] = WM
            lab[ic & (rr >= rmb) & (rr < rmb + 2.0 + 2 * self.atrophy)] = CSF
            if t <= 0.30:
                lab[ic & (np.hypot(xs, yh + 13 * fb) < 6.5 * fb)] = CSF
        # ventricles
        vent_side = {}
        v0, v1 = self._vent_range()
        if v0 < t < v1:
            pz = math.sin(np.pi * (t - v0) / (v1 - v0)) ** 0.7
            Lh = 26 * fb * (0.6 + 0.4 * pz)
            u = (yh - 2 * fb) / Lh
            inside = np.abs(u) < 1
            low = max(0.0, 1 - (t - v0) / 0.1)
            for sgn in (-1, 1):
                comp = 1.0
                if self.shift[k] * sgn > 0:      # shift towards this side: this is the contralateral
                    pass
                elif self.shift[k] != 0:
                    comp = 1 - 0.35 * min(1.0, abs(self.shift[k]) / 8)
                me = 1.2 + 10 * fb * ((u + 1) / 2) ** 2 * (0.6 + 0.4 * pz)
                W = (self.vscale * comp * (2.5 + 4.5 * pz) * fb * np.clip(1 - u * u, 0, 1) ** 0.4
                     * (1 + 0.5 * np.exp(-((u + 0.7) / 0.25) ** 2)) * (1 + 0.4 * np.exp(-((u - 0.6) / 0.3) ** 2)))
                sx = sgn * xs
                v = ic & inside & (sx > me) & (sx < me + W)
                if low > 0:
                    v &= np.abs(u) > 0.4 * low
                lab[v] = VENT
                vent_side[sgn] = v
        if 0.32 <= t <= 0.45:
            lab[ic & (np.abs(xs) < (1.0 + 1.5 * self.atrophy) * self.vscale ** 0.5) & (np.abs(yh - 1 * fb) < 10 * fb)] = VENT
        if 0.08 <= t <= 0.24:
            e = (xs / (6 * fb)) ** 2 + ((yh - 24 * fb) / (3.5 * fb)) ** 2 < self.vscale
            lab[ic & e] = VENT
        # skull base (lowest slices)
        beta = min(1.0, max(0.0, (0.22 - t) / 0.22))
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

        # --- hemorrhages
        masks: dict[str, np.ndarray] = {}
        paint = []   # (mask, mean_hu)
        for L, tap in lesions:
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
                        yy = self.Y[v]
                        lvl = yy.max() - P["fill"] * (yy.max() - yy.min())
                        mk |= v & (self.Y >= lvl)
            else:  # SAH
                cxs, cys, r = self._sah_disc(L, tap, Rin, ic)
                mk = ic & (lab == CSF) & (np.hypot(xh - cxs, yh - cys) < r)
            if mk.any():
                lab[mk] = BLOOD
                masks[L.kind] = masks.get(L.kind, np.zeros((N, N), bool)) | mk
                paint.append((mk, L.mean_hu))

        # --- HU
        H = self.hu
        lut = np.zeros(16, np.float32)
        lut[[AIR, SKIN, FAT, CORT, DIPL, CSF, GM, WM, VENT, DEEP, FALX, CALC, BLOOD, EDEMA, SINUS, SCALP_HEM]] = [
            -1000, H["skin"], H["fat"], H["cort"], H["dipl"], H["csf"], H["gm"], H["wm"], H["vent"],
            H["deep"], H["falx"], 150, 60, 20, H["sinus"], sh.mean_hu if sh is not None else 60]
        hu = lut[lab]
        tex = 1.2 * self.f_lo(k) + 1.0 * f_mid
        par = _IS_PAR_EDEMA[lab]
        hu += np.where(par, tex, 0).astype(np.float32)
        hu += np.where(lab == DIPL, 160 * f_fine, 0).astype(np.float32)
        hu += np.where(lab == CORT, 80 * f_fine, 0).astype(np.float32)
        if sh_tap > 0:
            hu += np.where(lab == SCALP_HEM, 3.0 * f_fine, 0).astype(np.float32)
        for L, tap in lesions:
            if L.kind == "IPH" and L.params["rim"] > 0:
                hu[lab == EDEMA] = L.params["rim_hu"] + tex[lab == EDEMA]
        for mk, mean in paint:
            hu[mk] = mean + 3.0 * f_fine[mk] + 1.5 * tex[mk]
        # calcifications (normal variants) drawn last: they are never hemorrhage
        zk = self.z_mm[k]
        for cz in self.calcs:
            zc = cz["t"] * self.z_mm[-1]
            dzv = abs(zk - zc) - self.dz / 2
            r = cz["r"] if dzv <= 0 else math.sqrt(max(0.0, cz["r"] ** 2 - dzv ** 2))
            if r < 0.3:
                continue
            x0 = cz["x"] * fb + (self.shift[k] if cz["shift"] else 0)
            mk = ic & (np.hypot(xh - x0, yh - cz["y"] * fb) < max(r, 0.5 * self.ps)) & (lab != BLOOD)
            pv = min(1.0, 2 * r / self.dz) * 0.6 + 0.4
            hu[mk] = H["wm"] + (cz["hu"] - H["wm"]) * pv
            lab[mk] = CALC
        if self.falx_calc is not None and t > 0.4:
            y0, y1, w, h = self.falx_calc
            mk = (lab == FALX) & (yh >= y0 * fb) & (yh <= y1 * fb)
            hu[mk] = h
        # beam-hardening-like dark streaks on the skull-base slices
        if beta > 0.2:
            for ang, off, amp in self.streaks:
                dist = np.abs(math.cos(ang) * xh + math.sin(ang) * (yh - 10) - off)
                hu += np.where(ic & (dist < 1.5), amp * beta, 0).astype(np.float32)
        return hu.astype(np.float32), lab, masks

    def _sah_disc(self, L: _Lesion, tap: float, Rin, ic):
        P = L.params
        r = P["r"] * (0.5 + 0.5 * tap)
        if P["basal"]:
            return 0.0, -4.0 * self.fb, r
        th0 = P["theta"]
        sector = ic & (np.abs(_wrap(self.th - th0)) < 0.04)
        rr = float(np.median(Rin[sector])) if sector.any() else 40.0
        return (rr - 6) * math.cos(th0), (rr - 6) * math.sin(th0), r


# ----------------------------------------------------------------------------- per-patient work

_STORAGE = {
    #            dtype      bits  intercept slope  pixel_repr
    "int16": (np.int16, 16, 0.0, 1.0, 1),
    "uint12": (np.uint16, 12, -1024.0, 1.0, 0),
    "uint16_slope": (np.uint16, 16, -1024.0, 0.5, 0),
    "int16_offset": (np.int16, 16, -1024.0, 1.0, 1),
}


def _to_stored(hu: np.ndarray, storage: str) -> np.ndarray:
    dtype, bits, icpt, slope, rep = _STORAGE[storage]
    v = np.rint((hu - icpt) / slope)
    if rep:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2 ** bits - 1
    return np.clip(v, lo, hi).astype(dtype)


def _noise(rng, N: int, std: float, correlated: bool) -> np.ndarray:
    w = rng.standard_normal((N, N), dtype=np.float32)
    if not correlated:
        return w * np.float32(std)
    sm = _blur3(w) / np.float32(0.375)
    # var(w + sm) = 1 + 1 + 2 * cov, cov = (4/16) / 0.375
    return (w + sm) * np.float32(std / math.sqrt(2 + 2 * (0.25 / 0.375)))


def _base_dataset(cfg, P: _Patient, study_uid, series_uid, frame_uid, pid, number) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = cfg.study_date
    ds.SeriesDate = cfg.study_date
    ds.AcquisitionDate = cfg.study_date
    ds.ContentDate = cfg.study_date
    ds.StudyTime = "120000"
    ds.SeriesTime = "120500"
    ds.AcquisitionTime = "120500"
    ds.ContentTime = "120500"
    ds.AccessionNumber = f"ACC{number:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "ichbench-synthetic"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = f"SYNTHETIC^REFERRER{number}"
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST (SYNTHETIC)"
    ds.ManufacturerModelName = "Synthetic CT"
    ds.PatientName = f"SYNTHETIC^PATIENT{number}"
    ds.PatientID = pid
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = P.sex
    ds.PatientAge = "040Y"
    ds.BodyPartExamined = "HEAD"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(number)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleType = "HU"
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, storage: str) -> None:
    dtype, bits, icpt, slope, rep = _STORAGE[storage]
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = rep
    ds.RescaleIntercept = _ds(icpt)
    ds.RescaleSlope = _ds(slope)
    ds.add_new(0x7FE00010, "OW", stored.astype(stored.dtype.newbyteorder("<")).tobytes())


def _save(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed without timestamps (byte-identical output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _make_patient(cfg: SyntheticConfig, plan: _Plan, out_dir: str) -> dict:
    with _blas_single_thread():
        return _make_patient_impl(cfg, plan, out_dir)


def _make_patient_impl(cfg: SyntheticConfig, plan: _Plan, out_dir: str) -> dict:
    out = Path(out_dir)
    N = cfg.image_size
    digest = _cfg_digest(cfg)
    pid = cfg.id_format.format(n=plan.number)

    # render; re-draw lesions if one ended up with no pixel at all (should be rare)
    for attempt in range(20):
        P = _Patient(cfg, plan, attempt)
        slices = [P.render(k) for k in range(P.n)]
        if not plan.pathological:
            break
        present = {kind for _, _, mk in slices for kind, m in mk.items() if m.any()}
        if {L.kind for L in P.lesions} <= present:
            break
    else:  # pragma: no cover
        raise RuntimeError(f"could not place the hemorrhages of {pid}")

    study_uid = _uid(_GENERATOR_VERSION, digest, cfg.seed, plan.number, "study")
    frame_uid = _uid(_GENERATOR_VERSION, digest, cfg.seed, plan.number, "frame")
    series_uid = _uid(_GENERATOR_VERSION, digest, cfg.seed, plan.number, "series", "soft")
    study_dir = out / "dicom" / _opaque("study" + study_uid)
    storage = plan.storage
    icpt, slope = _STORAGE[storage][2], _STORAGE[storage][3]
    pad_hu = (-2000.0 if storage == "int16" else -3024.0) if P.padding else None

    tilt = math.radians(P.tilt_deg)
    ct, st = math.cos(tilt), math.sin(tilt)
    iop = [1.0, 0.0, 0.0, 0.0, ct, -st]
    half = (N - 1) / 2 * P.ps
    x0 = -half
    y_center = P.table_y

    kinds = [("soft", series_uid, "Head 5mm soft tissue", "H30s", ("40", "80"), 2)]
    if cfg.extra_series:
        kinds.append(("bone", _uid(_GENERATOR_VERSION, digest, cfg.seed, plan.number, "series", "bone"),
                      "Head 5mm bone", "H70h", ("700", "3000"), 3))

    rows = []
    n_files = 0
    hem_slices = 0
    mask_stack = np.zeros((P.n, N, N), bool)
    sop_list = []
    proj = np.zeros((P.n, N), np.float32)
    for k, (hu0, lab, masks) in enumerate(slices):
        mk = np.zeros((N, N), bool)
        for m in masks.values():
            mk |= m
        mask_stack[k] = mk
        proj[k] = np.maximum(hu0 + 1000, 0).sum(axis=1) * (P.ps / 1000.0)
        z = P.z_start + k * P.dz
        inst = (P.n - k) if P.reversed else (k + 1)
        ipp = [x0, y_center - half * ct, z + half * st]
        for kind, s_uid, desc, kernel, win, sno in kinds:
            nrng = np.random.default_rng([cfg.seed, plan.number, 29, k, sno])
            if kind == "soft":
                img = _blur3(hu0) if cfg.psf_blur else hu0
                img = img + _noise(nrng, N, cfg.noise_hu, cfg.correlated_noise)
            else:
                img = hu0 + _noise(nrng, N, 2.5 * cfg.noise_hu, False)
            if pad_hu is not None:
                img = np.where(P.recon_circle, img, np.float32(pad_hu))
            stored = _to_stored(img, storage)
            sop = _uid(_GENERATOR_VERSION, digest, cfg.seed, plan.number, kind, k)
            ds = _base_dataset(cfg, P, study_uid, s_uid, frame_uid, pid, plan.number)
            ds.SOPInstanceUID = sop
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SeriesDescription = desc
            ds.ProtocolName = "Head routine (synthetic)"
            ds.ConvolutionKernel = kernel
            ds.SeriesNumber = sno
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = inst
            ds.SliceThickness = _ds(P.dz)
            ds.SpacingBetweenSlices = _ds(P.dz * ct)
            ds.GantryDetectorTilt = _ds(P.tilt_deg)
            ds.ImagePositionPatient = [_ds(v) for v in ipp]
            ds.ImageOrientationPatient = [_ds(v) for v in iop]
            ds.SliceLocation = _ds(z)
            ds.PixelSpacing = [_ds(P.ps), _ds(P.ps)]
            ds.WindowCenter, ds.WindowWidth = win
            _set_pixels(ds, stored, storage)
            if pad_hu is not None:
                ds.add_new(0x00280120, "SS", int(round((pad_hu - icpt) / slope)))
            _save(ds, study_dir / _opaque("series" + s_uid) / (_opaque("sop" + sop, 20) + ".dcm"))
            n_files += 1
            if kind == "soft":
                sop_list.append(sop)
                types = [t for t in HEMORRHAGE_TYPES if t in masks and masks[t].any()]
                npx = int(mk.sum())
                hem_slices += npx > 0
                rows.append([pid, study_uid, s_uid, sop, inst, _ds(ipp[2]),
                             int(npx > 0), ";".join(types), npx])

    _save_npz(out / "masks" / f"{series_uid}.npz",
              {"sop_uids": np.array(sop_list, dtype=str), "masks": mask_stack})

    if cfg.extra_series:   # lateral localizer built from the rendered volume
        s_uid = _uid(_GENERATOR_VERSION, digest, cfg.seed, plan.number, "series", "scout")
        sop = _uid(_GENERATOR_VERSION, digest, cfg.seed, plan.number, "scout", 0)
        z_mid = P.z_start + (P.n - 1) * P.dz / 2
        z_top = z_mid + half
        zz = z_top - np.arange(N) * P.ps
        kk = np.rint((zz - P.z_start) / P.dz).astype(int)
        ok = (kk >= 0) & (kk < P.n)
        img = np.zeros((N, N), np.float32)
        img[ok] = proj[kk[ok]]
        stored = np.clip(np.rint(img * 8.0), 0, 4095).astype(np.uint16)
        ds = _base_dataset(cfg, P, study_uid, s_uid, frame_uid, pid, plan.number)
        ds.SOPInstanceUID = sop
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = "Topogram lateral"
        ds.ConvolutionKernel = "T20s"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = 1
        ds.SliceThickness = "0.6"
        ds.ImagePositionPatient = ["0", _ds(y_center - half), _ds(z_top)]
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        ds.PixelSpacing = [_ds(P.ps), _ds(P.ps)]
        ds.WindowCenter, ds.WindowWidth = "1000", "2000"
        _set_pixels(ds, stored, "uint12")
        _save(ds, study_dir / _opaque("series" + s_uid) / (_opaque("sop" + sop, 20) + ".dcm"))
        n_files += 1

    present = [t for t in HEMORRHAGE_TYPES if any(t in m and m[t].any() for _, _, m in slices)]
    left = right = False
    for L in P.lesions:
        if L.kind in present:
            left |= L.side >= 0
            right |= L.side <= 0
    return dict(number=plan.number, pid=pid, pathological=plan.pathological, types=present,
                left=left, right=right, mass_effect=bool(np.abs(P.shift).max() > 0),
                midline_shift=bool(np.abs(P.shift).max() > 4), rows=rows, n_files=n_files,
                n_slices=P.n, n_hem_slices=int(hem_slices), scalp_hematoma=P.scalp_hem is not None,
                fracture=P.fracture is not None)


# ----------------------------------------------------------------------------- dataset level

def _plans(cfg: SyntheticConfig) -> list[_Plan]:
    N = cfg.n_normal + cfg.n_pathological
    rng = np.random.default_rng([cfg.seed, 7919])
    numbers = np.sort(rng.choice(max(100, cfg.number_range_factor * N), size=N, replace=False))
    order = rng.permutation(N)                   # which numbers are pathological
    path = np.zeros(N, bool)
    path[order[:cfg.n_pathological]] = True
    storage_order = rng.permutation(N)
    modes = list(_STORAGE)
    plans, j = [], 0
    for i in range(N):
        plans.append(_Plan(i, int(numbers[i]), bool(path[i]), j if path[i] else -1,
                           modes[int(np.nonzero(storage_order == i)[0][0]) % len(modes)]))
        j += bool(path[i])
    return plans


def _simulate_reads(cfg: SyntheticConfig, results: list[dict]) -> list[list]:
    rng = np.random.default_rng([cfg.seed, 104729])
    normals = [r for r in results if not r["pathological"]]
    fp = {r["number"] for r in normals if rng.random() < cfg.reader_fp_prob}
    if normals and not fp:
        fp = {normals[int(rng.integers(len(normals)))]["number"]}
    out = []
    for r in results:
        row = [r["pid"], "B1" if rng.random() < 0.45 else "B2"]
        fp_reader = int(rng.integers(3))
        for reader in range(3):
            v = dict.fromkeys(_READER_FIELDS, 0)
            if r["pathological"]:
                if rng.random() > 0.04:
                    v["ICH"] = 1
                    for t in HEMORRHAGE_TYPES:
                        if t in r["types"]:
                            v[t] = int(rng.random() > cfg.reader_miss_prob)
                        else:
                            v[t] = int(rng.random() < 0.03)
                    if not any(v[t] for t in HEMORRHAGE_TYPES) and r["types"]:
                        v[r["types"][0]] = 1
                    v["BleedLocation-Left"] = int(r["left"] and rng.random() < 0.9)
                    v["BleedLocation-Right"] = int(r["right"] and rng.random() < 0.9)
                    v["ChronicBleed"] = int(rng.random() < 0.03)
                    v["MassEffect"] = int(r["mass_effect"] and rng.random() < 0.85)
                    v["MidlineShift"] = int(r["midline_shift"] and rng.random() < 0.8)
                    if r["fracture"]:
                        v["Fracture"] = v["CalvarialFracture"] = int(rng.random() < 0.85)
            elif r["number"] in fp and reader == fp_reader:
                v["ICH"] = 1
                v[str(rng.choice(HEMORRHAGE_TYPES))] = 1
                v["BleedLocation-Left" if rng.random() < 0.5 else "BleedLocation-Right"] = 1
            row += [v[f] for f in _READER_FIELDS]
        out.append(row)
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]


_README = """\
SYNTHETIC DATA - not from any patient. Generated by ichbench.synthetic ({version}).

Parametric head CT (scalp, skull, cortex/sulci, white matter, ventricles, cisterns,
calcifications) with acute hemorrhages (IPH, IVH, SDH, EDH, SAH) in the pathological patients.
All names, dates, institutions and identifiers in the DICOM headers are fake.

dicom/<study>/<series>/<sop>.dcm  CT Image Storage, Explicit VR Little Endian; folder and file
    names are hashes: index the files by their DICOM headers (PatientID, Study/Series UIDs).
cq500_labels.csv   CTFSH format: name;is_pathl;diagnosis;TEST;notes  (name CT_{{n}}, diagnosis
    HEALTHY or the hemorrhage types joined by ';', quoted like the real file)
reads.csv          CQ500 reads format, 44 columns, 3 simulated readers, name = PatientID
slice_labels.csv   {slice_cols}
    (one row per slice of the soft-tissue axial series; types joined by ';')
masks/<SeriesInstanceUID>.npz  sop_uids (str), masks (bool, n x Rows x Columns), per-pixel
    hemorrhage ground truth in the pixel-data orientation, rows in slice_labels order

Config: {config}
Patients: {n_patients} ({n_normal} normal, {n_pathological} pathological); slices: {n_slices};
hemorrhage slices: {n_hemorrhage_slices}.
"""


def generate(out_dir: str | Path, cfg: SyntheticConfig, workers: int = 1) -> dict:
    """Write the dataset; return a small summary dict (counts of patients, slices, hemorrhage slices)."""
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = _plans(cfg)
    if workers > 1 and len(plans) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(plans)), mp_context=get_context("spawn")) as ex:
            results = list(ex.map(_make_patient, [cfg] * len(plans), plans, [str(out)] * len(plans)))
    else:
        results = [_make_patient(cfg, p, str(out)) for p in plans]

    # CTFSH labels (rows sorted by name, as in the real file)
    lines = []
    for r in sorted(results, key=lambda r: f"CT_{r['number']}"):
        diag = ";".join(r["types"]) if r["pathological"] else "HEALTHY"
        lines.append([f"CT_{r['number']}", int(r["pathological"]), diag, 0, ""])
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=";", lineterminator="\n")
    w.writerow(CTFSH_COLUMNS)
    w.writerows(lines)
    (out / "cq500_labels.csv").write_text(buf.getvalue(), encoding="utf-8")

    # CQ500 reads (CRLF, no trailing newline, like the real file)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(READS_COLUMNS)
    w.writerows(_simulate_reads(cfg, results))
    (out / "reads.csv").write_bytes(buf.getvalue().rstrip("\r\n").encode())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SLICE_LABEL_COLUMNS)
    for r in results:
        w.writerows(r["rows"])
    (out / "slice_labels.csv").write_text(buf.getvalue(), encoding="utf-8")

    summary = dict(
        n_patients=len(results),
        n_normal=sum(not r["pathological"] for r in results),
        n_pathological=sum(r["pathological"] for r in results),
        n_slices=sum(r["n_slices"] for r in results),
        n_hemorrhage_slices=sum(r["n_hem_slices"] for r in results),
        n_files=sum(r["n_files"] for r in results),
        types={t: sum(t in r["types"] for r in results) for t in HEMORRHAGE_TYPES},
        n_scalp_hematoma={"normal": sum(r["scalp_hematoma"] and not r["pathological"] for r in results),
                          "pathological": sum(r["scalp_hematoma"] and r["pathological"] for r in results)},
        n_fracture=sum(r["fracture"] for r in results),
    )
    (out / "README.txt").write_text(_README.format(
        version=_GENERATOR_VERSION, slice_cols=",".join(SLICE_LABEL_COLUMNS),
        config=json.dumps(asdict(cfg), sort_keys=True), **summary), encoding="utf-8")
    summary["out_dir"] = str(out)
    return summary
