"""NIfTI input: a folder of CT volumes in HU (`.nii` / `.nii.gz`), optional hemorrhage masks.

    nifti_dir/<scan>.nii.gz              one CT volume per scan, values in HU (scl_slope/inter applied)
    nifti_masks_dir/<scan>.nii.gz        optional mask of the same shape (> 0 = hemorrhage, any label; a
                                         warning names values in (0, 0.5], negative or NaN);
                                         also found as <scan>_mask, _seg, -mask, -seg, _label or _gt
    nifti_labels (CSV scan_id,label)     optional scan labels (1 = hemorrhage); without it, a scan with
                                         a mask is labelled by whether its mask has any voxel set

The scan ID is the file name without `.nii[.gz]` (it is PatientID, StudyInstanceUID and, made
file-name safe, SeriesInstanceUID). Each volume is reoriented to the closest canonical (RAS+)
orientation with nibabel; its axial slices are then taken along the third (inferior -> superior)
axis and shown as DICOM shows them (rows anterior -> posterior, columns patient right -> left).
Slice k (0 = most inferior) gets the stable ID `<scan>#<k>` as its SOPInstanceUID. Masks give the
slice labels (a slice is anomalous where its mask has a voxel) and the pixel ground truth.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import dicomio, rejections
from .geometry import stack_tilt_deg
from .inputcheck import mask_truth
from .series_select import scan_choices

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_SUFFIXES = ("", "_mask", "_seg", "-mask", "-seg", "_label", "_gt")
INDEX_COLUMNS = ["path", "mask_path", "patient_id", "study_uid", "series_uid", "rows", "columns", "n_slices",
                 "pixel_spacing", "slice_thickness", "source"]


def scan_id_of(path: str | os.PathLike) -> str | None:
    name = Path(path).name
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return None


def safe_uid(scan_id: str) -> str:
    """A file-name safe series ID for a scan ID (unchanged where already safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", scan_id)
    if safe != scan_id or not safe:
        safe = f"{safe}-{hashlib.sha1(scan_id.encode()).hexdigest()[:8]}"
    return safe


def _find(root: Path, exclude: Path | None = None) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if exclude is not None:
            dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).resolve() != exclude]
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and scan_id_of(f) is not None]
    return out


def find_masks(masks_dir: str | os.PathLike | None) -> dict[str, Path]:
    """Mask files by scan ID (the file name minus `.nii[.gz]` and one of MASK_SUFFIXES)."""
    if not masks_dir or not Path(masks_dir).is_dir():
        return {}
    out: dict[str, Path] = {}
    for p in _find(Path(masks_dir)):
        sid = scan_id_of(p)
        out.setdefault(sid, p)
        for suf in MASK_SUFFIXES[1:]:
            if sid.endswith(suf):
                out.setdefault(sid[: -len(suf)], p)
    return out


def _canonical_geometry(img) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine after reorienting to the closest canonical orientation, from the header only."""
    import nibabel as nib

    shape = tuple(int(s) for s in img.shape[:3])
    ornt = nib.orientations.io_orientation(img.affine)
    canon_shape = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        canon_shape[int(axis)] = shape[i]
    to_canon = nib.orientations.inv_ornt_aff(ornt, shape)
    return tuple(canon_shape), img.affine @ to_canon


def _open(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) != 3:
        raise dicomio.DicomReadError(path, f"expected a 3D volume, got shape {tuple(shape)}")
    return img


def build_index(nifti_dir, index_csv, series_csv, rejected_csv, *, masks_dir=None, min_slices: int = 8,
                selected_csv=None) -> pd.DataFrame:
    """Index a NIfTI folder: one 'series' per volume, always selected. Writes the same files as the
    DICOM index (index.csv holds one row per volume) and returns the candidates."""
    root = Path(nifti_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"NIfTI folder {nifti_dir} does not exist")
    exclude = Path(masks_dir).resolve() if masks_dir and Path(masks_dir).is_dir() else None
    masks = find_masks(masks_dir)
    if masks_dir and not Path(masks_dir).is_dir():
        log.warning("NIfTI mask folder %s does not exist: no pixel ground truth", masks_dir)
    rows, cands, rejected, seen = [], [], [], {}
    for path in _find(root, exclude):
        sid = scan_id_of(path)
        if sid in seen:
            rejected.append(dicomio.Rejection(str(path), f"a second volume for scan {sid} (first: {seen[sid]})"))
            continue
        seen[sid] = str(path)
        try:
            img = _open(path)
            shape, affine = _canonical_geometry(img)
        except dicomio.DicomReadError as exc:
            rejected.append(dicomio.Rejection(str(path), exc.reason))
            continue
        except Exception as exc:
            rejected.append(dicomio.Rejection(str(path), f"unreadable NIfTI file ({dicomio.describe_error(exc)})"))
            continue
        if shape[2] < min_slices:
            rejected.append(dicomio.Rejection(sid, f"no usable series (volume has {shape[2]} axial slices, "
                                                   f"fewer than {min_slices})", "select"))
            continue
        mask_path = masks.get(sid)
        if mask_path is not None:
            try:
                mshape, maffine = _canonical_geometry(_open(mask_path))
                if mshape != shape:
                    raise dicomio.DicomReadError(mask_path, f"mask shape {mshape} differs from the volume's {shape}")
                if not np.allclose(maffine[:3, 3], affine[:3, 3], atol=1.0):
                    log.warning("%s: mask affine differs from the volume's; used voxel by voxel", mask_path)
            except dicomio.DicomReadError as exc:
                rejected.append(dicomio.Rejection(str(mask_path), exc.reason + "; scan kept without ground truth"))
                mask_path = None
            except Exception as exc:
                rejected.append(dicomio.Rejection(str(mask_path), f"unreadable mask ({dicomio.describe_error(exc)}); "
                                                                  "scan kept without ground truth"))
                mask_path = None
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        normal = np.cross(affine[:3, 0], affine[:3, 1])
        normal /= np.linalg.norm(normal) or 1.0
        uid = safe_uid(sid)
        row = {"path": str(path), "mask_path": str(mask_path or ""), "patient_id": sid, "study_uid": sid,
               "series_uid": uid, "rows": shape[1], "columns": shape[0], "n_slices": shape[2],
               "pixel_spacing": f"{zooms[1]:.6g}\\{zooms[0]:.6g}", "slice_thickness": float(zooms[2]),
               "source": "nifti"}
        rows.append(row)
        cands.append({"patient_id": sid, "study_uid": sid, "series_uid": uid, "n_files": 1,
                      "series_description": "NIfTI volume", "kernel": "", "image_type": "",
                      "slice_thickness": float(zooms[2]), "spacing_mm": float(abs(np.dot(affine[:3, 2], normal))),
                      "extent_mm": float(abs(np.dot(affine[:3, 2], normal)) * (shape[2] - 1)),
                      "normal_angle_deg": round(float(np.degrees(np.arccos(np.clip(abs(normal[2]), 0, 1)))), 3),
                      "axial": True, "bone_kernel": False, "sizes": f"{shape[1]}x{shape[0]}", "source": "nifti",
                      "why_not": "", "eligible": True, "selected": True, "choice": "the scan's NIfTI volume",
                      "has_mask": mask_path is not None})
    used = {r["mask_path"] for r in rows}
    for sid, p in sorted(masks.items()):
        if sid not in seen and str(p) not in used and scan_id_of(p) == sid:
            rejected.append(dicomio.Rejection(str(p), "mask without a volume of the same scan ID"))
    rejections.log_summary(((r.item, r.reason) for r in rejected), log, "files")
    rejections.rejections_frame(rejected).to_csv(rejected_csv, index=False)
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    candidates = pd.DataFrame(cands)
    index.to_csv(index_csv, index=False)
    candidates.to_csv(series_csv, index=False)
    if selected_csv is None:
        selected_csv = Path(series_csv).with_name("series_selected.csv")
    if len(candidates):
        scan_choices(candidates).to_csv(selected_csv, index=False)
    else:
        scan_choices(pd.DataFrame(columns=["patient_id", "selected"])).to_csv(selected_csv, index=False)
    if index.empty:
        raise RuntimeError(f"no usable NIfTI volume in {nifti_dir} ({len(rejected)} rejected, see {rejected_csv})")
    log.info("%d NIfTI volumes indexed (%d with masks), %d rejected", len(index), int((index["mask_path"] != "").sum()),
             len(rejected))
    return candidates


def _to_slices(vol: np.ndarray) -> np.ndarray:
    """Canonical (X=R, Y=A, Z=S) -> (Z, rows, cols): rows anterior -> posterior, columns right -> left."""
    return np.ascontiguousarray(vol[::-1, ::-1, :].transpose(2, 1, 0))


def _canonical_data(path: str, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.as_closest_canonical(_open(Path(path)))
    return img.get_fdata(dtype=dtype), img.affine


def load_volume(row: dict | pd.Series) -> tuple[dicomio.Series, dict[str, np.ndarray] | None]:
    """One indexed NIfTI volume -> (Series, ground-truth masks by slice ID or None).

    Whether the values are HU is judged by the caller (inputcheck.hu_problem, as for DICOM)."""
    path, sid, uid = str(row["path"]), str(row["patient_id"]), str(row["series_uid"])
    try:
        data, affine = _canonical_data(path)
    except dicomio.DicomReadError:
        raise
    except Exception as exc:
        raise dicomio.DicomReadError(path, f"unreadable NIfTI data ({dicomio.describe_error(exc)})") from None
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=-1024.0, posinf=-1024.0, neginf=-1024.0)
    hu = _to_slices(data)
    np.maximum(hu, -1024.0, out=hu)
    n = hu.shape[0]
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    normal /= np.linalg.norm(normal) or 1.0
    centres = (affine @ np.c_[np.zeros((n, 2)), np.arange(n), np.ones(n)].T)[:3].T
    positions = centres @ normal
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sops = [f"{sid}#{k}" for k in range(n)]
    series = dicomio.Series(
        patient_id=sid, study_uid=sid, series_uid=uid, hu=hu.astype(np.float32, copy=False), sop_uids=sops,
        positions=positions.astype(float), instance_numbers=np.arange(1, n + 1), pixel_spacing=(float(zooms[1]), float(zooms[0])),
        slice_thickness=float(zooms[2]), tilt_deg=stack_tilt_deg(normal, centres[[0, -1]] if n > 1 else centres[:1]),
        spacing=np.diff(positions), source="nifti",
    )
    gt = None
    mask_path = str(row.get("mask_path", "") or "")
    if mask_path and mask_path != "nan":
        try:
            m, _ = _canonical_data(mask_path)
            m, warning = mask_truth(_to_slices(m), mask_path)
            if warning:
                series.notes.append(warning)
            if m.shape != hu.shape:
                raise ValueError(f"mask shape {m.shape} differs from the volume's {hu.shape}")
            gt = {u: m[k] for k, u in enumerate(sops)}
        except Exception as exc:
            series.rejected.append(dicomio.Rejection(mask_path, f"mask unusable ({dicomio.describe_error(exc)}); "
                                                                "scan kept without ground truth", "load"))
    return series, gt
