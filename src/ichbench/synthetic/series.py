"""One synthetic patient to files: its axial series (optionally a bone series and a localizer) and mask file."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import _GENERATOR_VERSION, HEMORRHAGE_TYPES, SyntheticConfig, _cfg_digest
from .dicom import _STORAGE, _base_dataset, _ds, _opaque, _save, _save_npz, _set_pixels, _to_stored, _uid
from .fields import _blur3, _noise
from .patient import _Patient, _Plan


def _blas_single_thread():
    """One BLAS thread: the small matrix products here are much slower with contended threads,
    and a fixed thread count keeps the floating-point results reproducible."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@dataclass
class _PatientIds:
    """The identifiers of one patient's files; every UID is hashed from the config and patient number."""
    pid: str
    prefix: tuple         # (generator version, config digest, seed, number): the start of every UID hash
    study_uid: str
    frame_uid: str
    study_dir: Path

    @classmethod
    def make(cls, cfg: SyntheticConfig, plan: _Plan, out: Path) -> _PatientIds:
        prefix = (_GENERATOR_VERSION, _cfg_digest(cfg), cfg.seed, plan.number)
        study_uid = _uid(*prefix, "study")
        return cls(cfg.id_format.format(n=plan.number), prefix, study_uid, _uid(*prefix, "frame"),
                   out / "dicom" / _opaque("study" + study_uid))

    def uid(self, *parts) -> str:
        return _uid(*self.prefix, *parts)

    def path(self, series_uid: str, sop_uid: str) -> Path:
        return self.study_dir / _opaque("series" + series_uid) / (_opaque("sop" + sop_uid, 20) + ".dcm")


def _make_patient(cfg: SyntheticConfig, plan: _Plan, out_dir: str) -> dict:
    with _blas_single_thread():
        return _make_patient_impl(cfg, plan, out_dir)


def _make_patient_impl(cfg: SyntheticConfig, plan: _Plan, out_dir: str) -> dict:
    out = Path(out_dir)
    ids = _PatientIds.make(cfg, plan, out)
    P, slices = _render_patient(cfg, plan, ids.pid)
    rows, n_files, hem_slices, proj = _write_axial_series(cfg, P, slices, ids, out)
    if cfg.extra_series:   # lateral localizer built from the rendered volume
        _write_localizer(cfg, P, proj, ids)
        n_files += 1

    present = [t for t in HEMORRHAGE_TYPES if any(t in m and m[t].any() for _, _, m in slices)]
    left = right = False
    for L in P.lesions:
        if L.kind in present:
            left |= L.side >= 0
            right |= L.side <= 0
    return dict(number=plan.number, pid=ids.pid, pathological=plan.pathological, types=present,
                left=left, right=right, mass_effect=bool(np.abs(P.shift).max() > 0),
                midline_shift=bool(np.abs(P.shift).max() > 4), rows=rows, n_files=n_files,
                n_slices=P.n, n_hem_slices=int(hem_slices), scalp_hematoma=P.scalp_hem is not None,
                fracture=P.fracture is not None)


def _render_patient(cfg: SyntheticConfig, plan: _Plan, pid: str):
    """-> (patient, its rendered slices); re-draws the lesions if one ended up with no pixel at all
    (should be rare)."""
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
    return P, slices


def _write_axial_series(cfg: SyntheticConfig, P: _Patient, slices: list, ids: _PatientIds, out: Path):
    """Soft-tissue series (and bone series) with scanner blur and noise, and the mask file.
    Returns (slice label rows, files written, hemorrhage slices, lateral projection for the localizer)."""
    N = cfg.image_size
    plan = P.plan
    series_uid = ids.uid("series", "soft")
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
        kinds.append(("bone", ids.uid("series", "bone"), "Head 5mm bone", "H70h", ("700", "3000"), 3))

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
            sop = ids.uid(kind, k)
            ds = _base_dataset(cfg, P.sex, ids.study_uid, s_uid, ids.frame_uid, ids.pid, plan.number)
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
            _save(ds, ids.path(s_uid, sop))
            n_files += 1
            if kind == "soft":
                sop_list.append(sop)
                types = [t for t in HEMORRHAGE_TYPES if t in masks and masks[t].any()]
                npx = int(mk.sum())
                hem_slices += npx > 0
                rows.append([ids.pid, ids.study_uid, s_uid, sop, inst, _ds(ipp[2]),
                             int(npx > 0), ";".join(types), npx])

    _save_npz(out / "masks" / f"{series_uid}.npz",
              {"sop_uids": np.array(sop_list, dtype=str), "masks": mask_stack})
    return rows, n_files, hem_slices, proj


def _write_localizer(cfg: SyntheticConfig, P: _Patient, proj: np.ndarray, ids: _PatientIds) -> None:
    """Lateral topogram: the projection of each rendered slice, resampled to pixel rows."""
    N = cfg.image_size
    half = (N - 1) / 2 * P.ps
    y_center = P.table_y
    s_uid = ids.uid("series", "scout")
    sop = ids.uid("scout", 0)
    z_mid = P.z_start + (P.n - 1) * P.dz / 2
    z_top = z_mid + half
    zz = z_top - np.arange(N) * P.ps
    kk = np.rint((zz - P.z_start) / P.dz).astype(int)
    ok = (kk >= 0) & (kk < P.n)
    img = np.zeros((N, N), np.float32)
    img[ok] = proj[kk[ok]]
    stored = np.clip(np.rint(img * 8.0), 0, 4095).astype(np.uint16)
    ds = _base_dataset(cfg, P.sex, ids.study_uid, s_uid, ids.frame_uid, ids.pid, P.plan.number)
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
    _save(ds, ids.path(s_uid, sop))
