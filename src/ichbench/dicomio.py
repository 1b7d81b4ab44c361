"""Reading CT DICOM: index a folder by headers, choose one series per scan, load a series as HU.

Scans and series are identified by DICOM headers (PatientID, StudyInstanceUID, SeriesInstanceUID),
never by folder or file names. Patient-identifying fields (names, birth dates, institution,
accession numbers, ...) are never read into the index: only the fields listed in `_INDEX_FIELDS`
leave this module, and reasons for rejecting a file name tags, UIDs and geometry, never values of
other header fields.

Decoding: native and compressed transfer syntaxes (JPEG Lossless, JPEG-LS, JPEG 2000, RLE, ...)
through pydicom's pixel handlers (pylibjpeg plugins or GDCM); a file whose syntax has no installed
decoder is rejected while indexing, with the plugin to install. HU = stored * RescaleSlope +
RescaleIntercept; padding (PixelPaddingValue, and anything below -1024 HU) becomes air; a native
file whose BitsStored disagrees with its pixel data is read the way that gives plausible HU.
Slices are sorted by position along the slice normal (never by InstanceNumber); gaps, uneven
spacing and gantry tilt are recorded, the slices themselves stay as acquired (no resampling).
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pydicom

from .geometry import is_axial, normal_angle_deg, slice_normal, stack_tilt_deg

log = logging.getLogger(__name__)
# pydicom's own log lines may quote element values; keep them out of the run logs.
logging.getLogger("pydicom").setLevel(logging.ERROR)

_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_DEFLATED = "1.2.840.10008.1.2.1.99"


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
    if not all(np.isfinite(vals)):
        return None
    return vals


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def describe_error(exc: BaseException, limit: int = 160) -> str:
    """`Type: message` of an exception with quoted values blanked: pydicom messages may quote
    element values, which must not reach logs or rejected.csv."""
    msg = str(exc).replace("\n", " ")
    msg = re.sub(r"b'[^']*'|b\"[^\"]*\"|'[^']*'|\"[^\"]*\"", "'...'", msg)
    if len(msg) > limit:
        msg = msg[:limit] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


_DECODER_PROBLEM: dict[str, str] = {}


def decoder_problem(transfer_syntax: str) -> str:
    """'' where pixel data of this transfer syntax can be decoded here, else why not."""
    ts = (transfer_syntax or "").strip()
    if not ts or ts in _NATIVE_SYNTAXES or ts == _DEFLATED:
        return ""
    if ts not in _DECODER_PROBLEM:
        from pydicom.pixels import get_decoder
        from pydicom.uid import UID

        uid = UID(ts)
        name = uid.name if uid.is_transfer_syntax else "unknown transfer syntax"
        try:
            decoder = get_decoder(uid)
            if decoder.is_available:
                problem = ""
            else:
                need = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
                problem = f"no decoder installed for transfer syntax {ts} ({name}); install one of: {need}"
        except NotImplementedError:
            problem = f"transfer syntax {ts} ({name}) is not supported by any pixel data decoder"
        except Exception as exc:
            problem = f"transfer syntax {ts} ({name}) cannot be decoded ({describe_error(exc)})"
        _DECODER_PROBLEM[ts] = problem
    return _DECODER_PROBLEM[ts]


# --------------------------------------------------------------------------- series selection

#: Words in a kernel name or series description that mark a sharp (bone / lung) reconstruction.
BONE_WORDS = ("BONE", "BONES", "BONEPLUS", "OSTEO", "SKELETON", "LUNG", "LUNGS", "SHARP", "EDGE", "ULTRA", "HIGHRES")
#: Words that mark a soft-tissue (brain) reconstruction; they do not override a bone word.
SOFT_WORDS = ("STANDARD", "STND", "STD", "SOFT", "BRAIN", "PLAIN", "HEAD", "SMOOTH")


def _kernel_sharpness(token: str) -> bool | None:
    """Vendor kernel codes: True (sharp), False (soft) or None (not a known code)."""
    t = token.upper()
    # Siemens: H30s, H70h, Hr38, Br64, J70h, Qr40, Ur77, B60f, C30s, T20f, V40 -> number >= 60 is sharp.
    m = re.fullmatch(r"([HBJQUCTVIDY])[A-Z]?(\d{2})[A-Z]?", t)
    if m:
        return int(m.group(2)) >= 60
    # Toshiba / Canon: FC01-FC28 soft (FC2x head), FC30+ bone and lung.
    m = re.fullmatch(r"FC(\d{2})", t)
    if m:
        return int(m.group(1)) >= 30
    # Philips: A/B/C/UA/UB/UC (soft, brain), D/E/L and YD/YE/YF (sharp, bone, lung).
    if t in ("D", "E", "L", "LA", "YD", "YE", "YF"):
        return True
    if t in ("A", "B", "C", "UA", "UB", "UC", "CB"):
        return False
    return None


def is_bone_kernel(kernel: str, description: str, extra_patterns: Sequence[str] = ()) -> bool:
    """Whether a series is a sharp (bone / lung) reconstruction, from its kernel and description.

    Whole words are compared (so "STANDARD" never matches "D", "CT PLAIN THIN" is soft, "BONE THIN"
    and kernel BONEPLUS are bone); vendor kernel codes are decoded (Siemens Hxx/Bxx/Jxx >= 60,
    Toshiba FCxx >= 30, Philips D/E/L/YD-YF). `extra_patterns`: regular expressions (case-insensitive)
    matched against "kernel description" that also mark bone.
    """
    kernel, description = (kernel or ""), (description or "")
    text = f"{kernel} {description}"
    for p in extra_patterns:
        if re.search(p, text, flags=re.IGNORECASE):
            return True
    words = re.findall(r"[A-Z0-9]+", text.upper())
    if any(w in BONE_WORDS or w.startswith("BONE") for w in words):
        return True
    for token in re.findall(r"[A-Za-z0-9]+", kernel):
        sharp = _kernel_sharpness(token)
        if sharp is not None:
            return sharp
    return False


def describe_series(index: pd.DataFrame, bone_patterns: Sequence[str] = (),
                    axial_tolerance_deg: float = 30.0) -> pd.DataFrame:
    """One row per (patient, series) with what series selection needs."""
    rows = []
    for (pid, suid), g in index.groupby(["patient_id", "series_uid"], sort=True):
        first = g.iloc[0]
        normal = slice_normal(first["orientation"])
        z = np.sort(np.array([np.dot(normal, p) for p in g["position"]]))
        gaps = np.diff(z)
        thickness = float(np.nanmedian(g["slice_thickness"].astype(float))) if g["slice_thickness"].notna().any() else np.nan
        rows.append({
            "patient_id": pid,
            "study_uid": first["study_uid"],
            "series_uid": suid,
            "n_files": len(g),
            "series_description": first["series_description"],
            "kernel": first["kernel"],
            "image_type": first["image_type"],
            "slice_thickness": thickness,
            "spacing_mm": float(np.median(gaps)) if len(gaps) else np.nan,
            "extent_mm": float(z.max() - z.min()) if len(z) else 0.0,
            "normal_angle_deg": round(normal_angle_deg(first["orientation"]), 3),
            "axial": bool(is_axial(first["orientation"], axial_tolerance_deg)),
            "bone_kernel": bool(is_bone_kernel(first["kernel"], first["series_description"], bone_patterns)),
            "sizes": ";".join(sorted({f"{r}x{c}" for r, c in zip(g["rows"], g["columns"])})),
            "source": "dicom",
        })
    return pd.DataFrame(rows)


def read_series_override(path: str | os.PathLike | None) -> dict[str, str]:
    """CSV `patient_id,series_uid`: the series to use for a scan ('' or '-' = leave the scan out)."""
    if not path:
        return {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#")
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the series override CSV ({describe_error(exc)})") from None
    if not {"patient_id", "series_uid"} <= set(df.columns):
        raise ValueError(f"{path}: a series override file needs columns patient_id and series_uid")
    df = df.assign(patient_id=df["patient_id"].str.strip(), series_uid=df["series_uid"].str.strip())
    dup = df["patient_id"][df["patient_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: scan(s) listed twice: {', '.join(dup.iloc[:5])}")
    return {p: ("" if s == "-" else s) for p, s in zip(df["patient_id"], df["series_uid"]) if p}


def select_series(series: pd.DataFrame, min_slices: int = 8, min_extent_mm: float = 60.0,
                  override: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The paper's choice: per patient one axial, non-localizer, soft-tissue (non-bone-kernel) series,
    the thinnest among those covering the head (extent >= min_extent_mm); where none covers it, the
    longest. `override` (patient_id -> series_uid, '' = none) replaces the choice for its scans.

    Returns `series` with columns `eligible`, `why_not`, `selected` and `choice` (why the selected
    series was chosen, or why the scan has none; the same for every row of a scan).
    """
    s = series.copy()
    override = dict(override or {})
    why = []
    for _, r in s.iterrows():
        if not r["axial"]:
            why.append(f"not axial (normal {r.get('normal_angle_deg', float('nan')):.0f} deg from z)")
        elif r["bone_kernel"]:
            why.append("bone kernel")
        elif r["n_files"] < min_slices:
            why.append(f"fewer than {min_slices} slices")
        else:
            why.append("")
    s["why_not"] = why
    s["eligible"] = s["why_not"] == ""
    s["selected"] = False
    s["choice"] = ""
    for pid, g in s.groupby("patient_id", sort=True):
        if pid in override:
            want = override[pid]
            if not want:
                s.loc[g.index, "choice"] = "excluded by series_override"
            elif want in set(g["series_uid"]):
                i = g.index[g["series_uid"] == want][0]
                s.loc[i, "selected"] = True
                s.loc[g.index, "choice"] = "series_override" + (f" (note: {s.loc[i, 'why_not']})" if s.loc[i, "why_not"] else "")
            else:
                s.loc[g.index, "choice"] = f"series_override names series {want}, which is not among the scan's {len(g)} series"
            continue
        ok = g[g["eligible"]]
        if ok.empty:
            s.loc[g.index, "choice"] = "no eligible series (" + "; ".join(
                f"{u}: {w}" for u, w in zip(g["series_uid"], g["why_not"])) + ")"
            continue
        covering = ok[ok["extent_mm"] >= min_extent_mm]
        if len(covering):
            order = covering.sort_values(["slice_thickness", "extent_mm", "n_files", "series_uid"],
                                         ascending=[True, False, False, True])
            reason = f"thinnest eligible series covering >= {min_extent_mm:g} mm"
        else:
            order = ok.sort_values(["extent_mm", "slice_thickness", "n_files", "series_uid"],
                                   ascending=[False, True, False, True])
            reason = f"no eligible series covers {min_extent_mm:g} mm: the longest"
        s.loc[order.index[0], "selected"] = True
        s.loc[g.index, "choice"] = f"{reason} ({len(ok)} eligible of {len(g)})"
    return s


def scan_choices(candidates: pd.DataFrame) -> pd.DataFrame:
    """The per-scan manifest: one row per scan with the chosen series (or none) and every candidate."""
    rows = []
    for pid, g in candidates.groupby("patient_id", sort=True):
        chosen = g[g["selected"]]
        c = chosen.iloc[0] if len(chosen) else None
        rows.append({
            "patient_id": pid,
            "study_uid": (c if c is not None else g.iloc[0])["study_uid"],
            "series_uid": c["series_uid"] if c is not None else "",
            "series_description": c["series_description"] if c is not None else "",
            "kernel": c["kernel"] if c is not None else "",
            "slice_thickness": c["slice_thickness"] if c is not None else np.nan,
            "n_files": int(c["n_files"]) if c is not None else 0,
            "extent_mm": c["extent_mm"] if c is not None else np.nan,
            "choice": g["choice"].iloc[0],
            "n_series": len(g),
            "n_eligible": int(g["eligible"].sum()),
            "candidates": " | ".join(
                f"{r.series_uid} [{r.series_description}; {r.kernel}; {r.slice_thickness:g} mm; "
                f"{r.n_files} files; {r.extent_mm:.0f} mm; {r.why_not or 'eligible'}]"
                for r in g.itertuples()),
        })
    return pd.DataFrame(rows, columns=["patient_id", "study_uid", "series_uid", "series_description", "kernel",
                                       "slice_thickness", "n_files", "extent_mm", "choice", "n_series",
                                       "n_eligible", "candidates"])


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
    tilt_deg: float                    # gantry tilt: angle between the slice normal and the stack direction / z
    spacing: np.ndarray = field(default_factory=lambda: np.zeros(0))   # gaps between neighbours (mm)
    rejected: list[Rejection] = field(default_factory=list)
    source: str = "dicom"
    notes: list[str] = field(default_factory=list)


def _stored_dtype(ds) -> np.dtype | None:
    bits = _int(ds.get("BitsAllocated"))
    if bits not in (8, 16, 32):
        return None
    kind = "i" if _int(ds.get("PixelRepresentation")) == 1 else "u"
    little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
    return np.dtype(f"{'<' if little else '>'}{kind}{bits // 8}")


def _implausible(stored: np.ndarray, slope: float, intercept: float, pad_mask: np.ndarray) -> float:
    hu = stored.astype(np.float32) * slope + intercept
    return float(np.mean(((hu < -1100) | (hu > 4000)) & ~pad_mask))


def _padding_mask(ds, raw: np.ndarray) -> np.ndarray:
    pad = ds.get("PixelPaddingValue")
    try:
        pad = None if pad is None else int(pad)
    except (TypeError, ValueError):
        pad = None
    if pad is None:
        return np.zeros(raw.shape, bool)
    bits = _int(ds.get("BitsAllocated"), 16)
    values = {int(pad)}
    if _int(ds.get("PixelRepresentation")) == 1 and int(pad) >= 2 ** (bits - 1):
        values.add(int(pad) - 2 ** bits)            # signed padding written as its unsigned pattern
    try:
        limit = ds.get("PixelPaddingRangeLimit")
        limit = None if limit is None else int(limit)
    except (TypeError, ValueError):
        limit = None
    if limit is not None:
        lo, hi = sorted((int(pad), int(limit)))
        return (raw >= lo) & (raw <= hi)
    return np.isin(raw, list(values))


def _pixels_to_hu(ds, path: str, notes: list[str] | None = None) -> np.ndarray:
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError(path, "no pixel data")
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        raise DicomReadError(path, "missing RescaleSlope/RescaleIntercept: HU cannot be computed")
    slope, intercept = _floats(ds.get("RescaleSlope"), 1), _floats(ds.get("RescaleIntercept"), 1)
    if slope is None or intercept is None or slope[0] == 0:
        raise DicomReadError(path, "RescaleSlope/RescaleIntercept not usable numbers: HU cannot be computed")
    slope, intercept = slope[0], intercept[0]
    problem = decoder_problem(ts)
    if problem:
        raise DicomReadError(path, problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:
        raise DicomReadError(path, f"pixel data cannot be decoded (transfer syntax {ts or '?'}: {describe_error(exc)})") from None
    if arr.ndim != 2:
        raise DicomReadError(path, f"expected one 2D grey-scale frame, got pixel array of shape {arr.shape}")
    raw = arr
    # BitsStored smaller than the data need (pydicom masks the high bits), or garbage above BitsStored.
    if ts in _NATIVE_SYNTAXES and "PixelData" in ds:
        dtype, bits, stored = _stored_dtype(ds), _int(ds.get("BitsAllocated")), _int(ds.get("BitsStored"))
        if dtype is not None and 0 < stored < bits:
            full = np.frombuffer(ds.PixelData, dtype=dtype, count=arr.size).reshape(arr.shape)
            if not np.array_equal(full, arr):
                if _implausible(full, slope, intercept, _padding_mask(ds, full)) < \
                        _implausible(arr, slope, intercept, _padding_mask(ds, arr)):
                    raw = full.astype(full.dtype.newbyteorder("="))
                    msg = f"BitsStored {stored} is smaller than the pixel data need: all {bits} bits used"
                else:
                    msg = f"bits above BitsStored {stored} ignored"
                if notes is not None:
                    notes.append(msg)
                log.debug("%s: %s", path, msg)
    hu = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    hu[_padding_mask(ds, raw)] = -1024.0
    # Values below air come from padding outside the reconstruction circle.
    np.maximum(hu, -1024.0, out=hu)
    return hu


def _majority(values: Sequence) -> object:
    vals, counts = np.unique(np.array([str(v) for v in values]), return_counts=True)
    return vals[int(np.argmax(counts))]


def load_series(files: pd.DataFrame) -> Series:
    """Load the files of one series (rows of the header index) as HU, sorted along the slice normal.

    Files that fail to decode are dropped and reported in `Series.rejected`; so are slices whose
    size or orientation differs from the series' majority and second copies of a slice position.
    Raises DicomReadError when nothing usable remains.
    """
    files = files.reset_index(drop=True)
    first = files.iloc[0]
    suid = first["series_uid"]
    rejected: list[Rejection] = []
    # majority size and orientation; the others are not part of this stack
    size_key = [f"{r}x{c}" for r, c in zip(files["rows"], files["columns"])]
    major_size = _majority(size_key)
    orient = np.array([o for o in files["orientation"]], float)
    orient_key = [",".join(f"{v:.2f}" for v in o) for o in orient]
    major_orient = orient[orient_key.index(_majority(orient_key))]
    keep = []
    for i, (sk, o, path) in enumerate(zip(size_key, orient, files["path"])):
        if sk != major_size:
            rejected.append(Rejection(path, f"image size {sk} differs from the series' {major_size}", "load"))
        elif np.abs(o - major_orient).max() > 0.01:
            rejected.append(Rejection(path, "image orientation differs from the rest of the series", "load"))
        else:
            keep.append(i)
    files = files.iloc[keep]
    normal = slice_normal(files.iloc[0]["orientation"])
    files = files.assign(_z=[float(np.dot(normal, p)) for p in files["position"]])
    files = files.sort_values(["_z", "instance_number", "sop_uid"]).drop_duplicates("sop_uid")
    dup = np.r_[False, np.diff(files["_z"].to_numpy(float)) < 1e-3]
    for path in files["path"][dup]:
        rejected.append(Rejection(path, "a second slice at the same position along the slice normal", "load"))
    files = files[~dup]
    rows, cols = (int(v) for v in major_size.split("x"))
    hu = np.empty((len(files), rows, cols), np.float32)     # filled in place: no second copy of the volume
    keep, notes = [], []
    for i, path in enumerate(files["path"]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
            hu[len(keep)] = _pixels_to_hu(ds, path, notes)
            keep.append(i)
        except DicomReadError as exc:
            rejected.append(Rejection(exc.path, exc.reason, "load"))
        except Exception as exc:
            rejected.append(Rejection(path, f"unreadable ({describe_error(exc)})", "load"))
    if not keep:
        reasons = sorted({r.reason for r in rejected})[:3]
        raise DicomReadError(suid, "no slice of the series could be decoded" + (f" ({'; '.join(reasons)})" if reasons else ""))
    files = files.iloc[keep]
    z = files["_z"].to_numpy(float)
    ends = np.array([files.iloc[0]["position"], files.iloc[-1]["position"]], float)
    tilt = stack_tilt_deg(normal, ends if len(files) > 1 else ends[:1])
    ps = files.iloc[0]["pixel_spacing"] or (np.nan, np.nan)
    th = float(np.nanmedian(files["slice_thickness"].astype(float))) if files["slice_thickness"].notna().any() else float("nan")
    return Series(
        patient_id=first["patient_id"], study_uid=first["study_uid"], series_uid=suid,
        hu=hu[:len(keep)] if len(keep) < len(hu) else hu, sop_uids=list(files["sop_uid"]), positions=z,
        instance_numbers=files["instance_number"].to_numpy(int), pixel_spacing=(float(ps[0]), float(ps[1])),
        slice_thickness=th, tilt_deg=tilt, spacing=np.diff(z), rejected=rejected,
        notes=sorted(set(notes)),
    )


def rejections_frame(rejections: Iterable[Rejection]) -> pd.DataFrame:
    return pd.DataFrame([{"stage": r.stage, "item": r.item, "reason": r.reason} for r in rejections],
                        columns=["stage", "item", "reason"])
