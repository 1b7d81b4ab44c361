"""Reading CT DICOM: index a folder by headers, choose one series per scan, load a series as HU.

Scans and series are identified by DICOM headers (PatientID, StudyInstanceUID, SeriesInstanceUID),
never by folder or file names. Patient-identifying fields (names, birth dates, institution,
accession numbers, ...) are never read into the index: only the fields listed in `_INDEX_FIELDS`
leave this module.
"""
from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

#: Columns of the header index (one row per file). Nothing identifying a person is among them.
_INDEX_FIELDS = [
    "path", "patient_id", "study_uid", "series_uid", "sop_uid", "modality", "image_type",
    "series_description", "kernel", "rows", "columns", "pixel_spacing", "slice_thickness",
    "orientation", "position", "instance_number", "transfer_syntax", "has_pixels",
]


class DicomReadError(Exception):
    """A file or series that cannot be used, with a reason a person can act on."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Rejection:
    item: str      # a file path or a scan / series ID
    reason: str
    stage: str = "index"


def _floats(value, n: int | None = None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]))
    except (TypeError, ValueError):
        return None
    if n is not None and len(vals) != n:
        return None
    return vals


def _read_header(path: str) -> dict | Rejection:
    """Header of one file, or the reason it is unusable. Runs in worker processes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return Rejection(path, "not a DICOM file (no DICM preamble)")
    except Exception as exc:  # truncated or corrupt headers raise many different errors
        return Rejection(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})")
    modality = str(ds.get("Modality", "") or "")
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if modality != "CT":
        if modality or sop_class not in (CT_IMAGE_STORAGE, ENHANCED_CT_STORAGE):
            return Rejection(path, f"modality is {modality or 'missing'}, not CT")
    image_type = "\\".join(str(v) for v in (ds.get("ImageType") or []))
    # stop_before_pixels drops the element; the file's pixel data is checked by its raw tag position.
    has_pixels = _has_pixel_data(path)
    tsyntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return {
        "path": path,
        "patient_id": str(ds.get("PatientID", "") or ""),
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "sop_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "modality": modality or "CT",
        "image_type": image_type,
        "series_description": str(ds.get("SeriesDescription", "") or ""),
        "kernel": "\\".join(str(v) for v in ds.get("ConvolutionKernel")) if isinstance(ds.get("ConvolutionKernel"), pydicom.multival.MultiValue) else str(ds.get("ConvolutionKernel", "") or ""),
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "pixel_spacing": _floats(ds.get("PixelSpacing"), 2),
        "slice_thickness": (_floats(ds.get("SliceThickness"), 1) or (np.nan,))[0],
        "orientation": _floats(ds.get("ImageOrientationPatient"), 6),
        "position": _floats(ds.get("ImagePositionPatient"), 3),
        "instance_number": int(ds.get("InstanceNumber", 0) or 0),
        "transfer_syntax": tsyntax,
        "has_pixels": has_pixels,
    }


def _has_pixel_data(path: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, specific_tags=["PixelData", "FloatPixelData", "DoubleFloatPixelData"])
        return any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:
        return False


def iter_files(root: str | os.PathLike) -> list[str]:
    """Every regular file below root (any suffix: many DICOM files have none), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            out.append(os.path.join(dirpath, name))
    return out


def index_folder(root: str | os.PathLike, workers: int = 1) -> tuple[pd.DataFrame, list[Rejection]]:
    """Read the headers of every file below root.

    Returns the header index (one row per usable CT image file) and the rejected files with reasons.
    """
    files = iter_files(root)
    if workers > 1 and len(files) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_read_header, files, chunksize=64))
    else:
        results = [_read_header(f) for f in files]
    rows, rejected = [], []
    for r in results:
        if isinstance(r, Rejection):
            rejected.append(r)
            continue
        missing = [k for k in ("patient_id", "series_uid", "sop_uid") if not r[k]]
        if missing:
            rejected.append(Rejection(r["path"], f"missing {', '.join(missing)}"))
        elif not r["has_pixels"]:
            rejected.append(Rejection(r["path"], "no pixel data"))
        elif "LOCALIZER" in r["image_type"].upper():
            rejected.append(Rejection(r["path"], "localizer / scout image"))
        elif r["orientation"] is None or r["position"] is None:
            rejected.append(Rejection(r["path"], "missing ImageOrientationPatient / ImagePositionPatient"))
        else:
            rows.append(r)
    index = pd.DataFrame(rows, columns=_INDEX_FIELDS)
    return index, rejected


# --------------------------------------------------------------------------- series selection

BONE_KERNEL_HINTS = ("BONE", "H60", "H70", "H80", "H90", "B60", "B70", "B80", "LUNG", "SHARP", "YC", "D", "EDGE")


def is_bone_kernel(kernel: str, description: str) -> bool:
    text = f"{kernel} {description}".upper()
    if "BONE" in text or "LUNG" in text or "SHARP" in text or "EDGE" in text:
        return True
    k = kernel.upper().strip()
    # Siemens kernels Hxx / Bxx / Jxx: 60 and above are sharp (bone) kernels.
    if len(k) >= 3 and k[0] in "HBJ" and k[1:3].isdigit():
        return int(k[1:3]) >= 60
    return False


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    n = np.cross(row, col)
    return n / (np.linalg.norm(n) or 1.0)


def is_axial(orientation: Sequence[float], tolerance_deg: float = 30.0) -> bool:
    """Axial (or gantry-tilted axial): the slice normal lies within tolerance of the z axis."""
    n = slice_normal(orientation)
    return abs(n[2]) >= np.cos(np.deg2rad(tolerance_deg))


def describe_series(index: pd.DataFrame) -> pd.DataFrame:
    """One row per (patient, series) with what series selection needs."""
    rows = []
    for (pid, suid), g in index.groupby(["patient_id", "series_uid"], sort=True):
        first = g.iloc[0]
        normal = slice_normal(first["orientation"])
        z = np.array([np.dot(normal, p) for p in g["position"]])
        thickness = float(np.nanmedian(g["slice_thickness"].astype(float))) if g["slice_thickness"].notna().any() else np.nan
        rows.append({
            "patient_id": pid,
            "study_uid": first["study_uid"],
            "series_uid": suid,
            "n_files": len(g),
            "series_description": first["series_description"],
            "kernel": first["kernel"],
            "slice_thickness": thickness,
            "extent_mm": float(z.max() - z.min()) if len(z) else 0.0,
            "axial": bool(is_axial(first["orientation"])),
            "bone_kernel": bool(is_bone_kernel(first["kernel"], first["series_description"])),
            "sizes": ";".join(sorted({f"{r}x{c}" for r, c in zip(g["rows"], g["columns"])})),
        })
    return pd.DataFrame(rows)


def select_series(series: pd.DataFrame, min_slices: int = 8, min_extent_mm: float = 60.0) -> pd.DataFrame:
    """The paper's choice: per patient one axial, soft-tissue (non-bone-kernel) series, the thinnest
    among those covering the head (extent >= min_extent_mm); falls back to the longest extent.

    Returns `series` with columns `eligible`, `why_not` and `selected`.
    """
    s = series.copy()
    why = []
    for _, r in s.iterrows():
        if not r["axial"]:
            why.append("not axial")
        elif r["bone_kernel"]:
            why.append("bone kernel")
        elif r["n_files"] < min_slices:
            why.append(f"fewer than {min_slices} slices")
        else:
            why.append("")
    s["why_not"] = why
    s["eligible"] = s["why_not"] == ""
    s["selected"] = False
    for pid, g in s[s["eligible"]].groupby("patient_id"):
        covering = g[g["extent_mm"] >= min_extent_mm]
        pool = covering if len(covering) else g
        order = pool.sort_values(["slice_thickness", "extent_mm", "n_files", "series_uid"],
                                 ascending=[True, False, False, True])
        s.loc[order.index[0], "selected"] = True
    return s


# --------------------------------------------------------------------------- series loading

@dataclass
class Series:
    patient_id: str
    study_uid: str
    series_uid: str
    hu: np.ndarray                     # (n, rows, cols) float32 HU, sorted along the slice normal
    sop_uids: list[str]
    positions: np.ndarray              # (n,) mm along the slice normal, increasing
    instance_numbers: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    tilt_deg: float                    # gantry tilt: angle between the slice normal and the stack direction
    spacing: np.ndarray = field(default_factory=lambda: np.zeros(0))   # gaps between neighbours (mm)
    rejected: list[Rejection] = field(default_factory=list)


def _pixels_to_hu(ds, path: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DicomReadError(path, f"pixel data cannot be decoded (transfer syntax {ts}: {type(exc).__name__}: {exc})") from None
    if arr.ndim != 2:
        raise DicomReadError(path, f"expected one 2D frame, got pixel array of shape {arr.shape}")
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        raise DicomReadError(path, "missing RescaleSlope/RescaleIntercept: HU cannot be computed")
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    raw = arr
    hu = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    pad = ds.get("PixelPaddingValue")
    if pad is not None:
        hu[raw == pad] = -1024.0
    # Values below air come from padding outside the reconstruction circle.
    np.maximum(hu, -1024.0, out=hu)
    return hu


def load_series(files: pd.DataFrame) -> Series:
    """Load the files of one series (rows of the header index) as HU, sorted along the slice normal.

    Files that fail to decode are dropped and reported in `Series.rejected`; slices whose size
    differs from the series' majority size too. Raises DicomReadError when nothing usable remains.
    """
    first = files.iloc[0]
    normal = slice_normal(first["orientation"])
    files = files.assign(_z=[float(np.dot(normal, p)) for p in files["position"]])
    files = files.sort_values(["_z", "instance_number", "sop_uid"])
    sizes = files.groupby(["rows", "columns"]).size()
    major = sizes.idxmax()
    rejected = [Rejection(p, f"image size {r}x{c} differs from the series' {major[0]}x{major[1]}", "load")
                for p, r, c in zip(files["path"], files["rows"], files["columns"]) if (r, c) != major]
    files = files[(files["rows"] == major[0]) & (files["columns"] == major[1])]
    files = files.drop_duplicates("sop_uid")
    images, keep = [], []
    for i, path in enumerate(files["path"]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
            images.append(_pixels_to_hu(ds, path))
            keep.append(i)
        except DicomReadError as exc:
            rejected.append(Rejection(exc.path, exc.reason, "load"))
        except Exception as exc:
            rejected.append(Rejection(path, f"unreadable ({type(exc).__name__}: {exc})", "load"))
    if not images:
        raise DicomReadError(first["series_uid"], "no slice of the series could be decoded")
    files = files.iloc[keep]
    z = files["_z"].to_numpy(float)
    # Gantry tilt: the stack direction (change of position) against the slice normal.
    tilt = 0.0
    if len(files) > 1:
        p0, p1 = np.asarray(files.iloc[0]["position"]), np.asarray(files.iloc[-1]["position"])
        d = p1 - p0
        if np.linalg.norm(d) > 0:
            tilt = float(np.degrees(np.arccos(np.clip(abs(np.dot(d, normal)) / np.linalg.norm(d), -1, 1))))
        # A tilted acquisition keeps axial IOP = identity and tilts the rows instead: report the IOP tilt too.
        tilt = max(tilt, float(np.degrees(np.arccos(np.clip(abs(normal[2]), -1, 1)))))
    ps = first["pixel_spacing"] or (np.nan, np.nan)
    return Series(
        patient_id=first["patient_id"], study_uid=first["study_uid"], series_uid=first["series_uid"],
        hu=np.stack(images).astype(np.float32), sop_uids=list(files["sop_uid"]), positions=z,
        instance_numbers=files["instance_number"].to_numpy(int), pixel_spacing=(float(ps[0]), float(ps[1])),
        slice_thickness=float(first["slice_thickness"]) if first["slice_thickness"] == first["slice_thickness"] else float("nan"),
        tilt_deg=tilt, spacing=np.diff(z), rejected=rejected,
    )


def rejections_frame(rejections: Iterable[Rejection]) -> pd.DataFrame:
    return pd.DataFrame([{"stage": r.stage, "item": r.item, "reason": r.reason} for r in rejections],
                        columns=["stage", "item", "reason"])
