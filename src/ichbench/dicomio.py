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
import struct
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from .geometry import is_axial, normal_angle_deg, slice_normal, stack_tilt_deg

log = logging.getLogger(__name__)
# pydicom's own log lines may quote element values; keep them out of the run logs.
logging.getLogger("pydicom").setLevel(logging.ERROR)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_STORAGE, LEGACY_ENHANCED_CT_STORAGE)
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

#: Columns of the header index (one row per file). Nothing identifying a person is among them.
_INDEX_FIELDS = [
    "path", "patient_id", "study_uid", "series_uid", "sop_uid", "modality", "image_type",
    "series_description", "kernel", "rows", "columns", "pixel_spacing", "slice_thickness",
    "orientation", "position", "instance_number", "transfer_syntax", "has_pixels",
    "bits_allocated", "bits_stored", "pixel_representation", "gantry_tilt",
]

#: Words of a series description that mark a localizer / scout / topogram.
LOCALIZER_WORDS = ("LOCALIZER", "LOCALISER", "SCOUT", "TOPOGRAM", "TOPO", "SURVIEW", "SCANOGRAM", "PILOT")


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


def _probe_pixel_data(fp, ds, file_size: int) -> tuple[bool, str]:
    """After `dcmread(fp, stop_before_pixels=True)` the file stands at the top-level pixel data element
    (or at its end where there is none). Read that element's header: (has pixel data, problem)."""
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = False, True
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        return False, ""
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", head[:4])
    if (group << 16 | elem) not in _PIXEL_TAGS:
        return False, ""
    if implicit:
        length, value_start = struct.unpack(e + "L", head[4:8])[0], start + 8
    elif head[4:6] in _LONG_VRS:
        extra = fp.read(4)
        if len(extra) < 4:
            return True, "truncated file: the pixel data element is cut off"
        length, value_start = struct.unpack(e + "L", extra)[0], start + 12
    else:
        length, value_start = struct.unpack(e + "H", head[6:8])[0], start + 8
    if length == 0:
        return False, ""
    if length == 0xFFFFFFFF:          # encapsulated (compressed) frames: checked when decoded
        return True, ""
    if file_size - value_start < length:
        return True, (f"truncated file: the pixel data element declares {length} bytes, "
                      f"the file holds {max(file_size - value_start, 0)}")
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    bits, spp = _int(ds.get("BitsAllocated"), 16), _int(ds.get("SamplesPerPixel"), 1) or 1
    frames = max(_int(ds.get("NumberOfFrames"), 1), 1)
    need = rows * cols * spp * frames * ((bits + 7) // 8) if bits >= 8 else 0
    if need and length < need:
        return True, f"pixel data holds {length} bytes, Rows x Columns x BitsAllocated need {need}"
    return True, ""


def _header_cut_off(ds, file_size: int) -> bool:
    """Whether a file without pixel data ends inside (or right after part of) a data element,
    i.e. was truncated in its header. pydicom stops quietly at the end of such a file."""
    tags = list(ds._dict.keys())
    if not tags:
        return True
    last = ds._dict[tags[-1]]
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return False
    return tell + length != file_size


def _has_pixel_data_slow(path: str) -> bool:
    """Fallback for deflated files, whose byte positions do not match the dataset."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, specific_tags=["PixelData", "FloatPixelData", "DoubleFloatPixelData"])
        return any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:
        return False


def _is_localizer(image_type: str, description: str) -> bool:
    if "LOCALIZER" in image_type.upper():
        return True
    words = set(re.findall(r"[A-Z]+", description.upper()))
    return any(w in words for w in LOCALIZER_WORDS)


def _read_header(path: str) -> dict | Rejection:
    """Header of one file, or the reason it is unusable. Runs in worker processes.

    The file is opened once: the header is parsed up to the pixel data, whose element header is
    then read in place (length, truncation) without loading the pixel bytes.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            tsyntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
            if tsyntax == _DEFLATED:
                has_pixels, pixel_problem = _has_pixel_data_slow(path), ""
            else:
                has_pixels, pixel_problem = _probe_pixel_data(fp, ds, size)
                if not has_pixels and _header_cut_off(ds, size):
                    return Rejection(path, "truncated file: it ends inside the header, before any pixel data")
    except InvalidDicomError:
        return Rejection(path, "not a DICOM file (no DICM preamble)")
    except Exception as exc:  # truncated or corrupt headers raise many different errors
        return Rejection(path, f"unreadable DICOM header ({describe_error(exc)})")
    try:
        return _header_row(path, ds, tsyntax, has_pixels, pixel_problem)
    except Exception as exc:  # a malformed value of a field we need
        return Rejection(path, f"malformed DICOM header ({describe_error(exc)})")


def _header_row(path, ds, tsyntax, has_pixels, pixel_problem) -> dict | Rejection:
    modality = _text(ds.get("Modality"))
    sop_class = _text(ds.get("SOPClassUID"))
    if modality != "CT":
        if modality or sop_class not in CT_SOP_CLASSES:
            return Rejection(path, f"modality is {modality or 'missing'}, not CT")
    if sop_class and sop_class not in CT_SOP_CLASSES:
        return Rejection(path, f"SOP class {sop_class} is not a CT image (e.g. a secondary capture or dose report)")
    image_type = _text(ds.get("ImageType"))
    description = _text(ds.get("SeriesDescription"))
    row = {
        "path": path,
        "patient_id": _text(ds.get("PatientID")),
        "study_uid": _text(ds.get("StudyInstanceUID")),
        "series_uid": _text(ds.get("SeriesInstanceUID")),
        "sop_uid": _text(ds.get("SOPInstanceUID")),
        "modality": modality or "CT",
        "image_type": image_type,
        "series_description": description,
        "kernel": _text(ds.get("ConvolutionKernel")),
        "rows": _int(ds.get("Rows")),
        "columns": _int(ds.get("Columns")),
        "pixel_spacing": _floats(ds.get("PixelSpacing"), 2),
        "slice_thickness": (_floats(ds.get("SliceThickness"), 1) or (np.nan,))[0],
        "orientation": _floats(ds.get("ImageOrientationPatient"), 6),
        "position": _floats(ds.get("ImagePositionPatient"), 3),
        "instance_number": _int(ds.get("InstanceNumber")),
        "transfer_syntax": tsyntax,
        "has_pixels": has_pixels,
        "bits_allocated": _int(ds.get("BitsAllocated")),
        "bits_stored": _int(ds.get("BitsStored")),
        "pixel_representation": _int(ds.get("PixelRepresentation")),
        "gantry_tilt": (_floats(ds.get("GantryDetectorTilt"), 1) or (np.nan,))[0],
    }
    missing = [k for k in ("patient_id", "series_uid", "sop_uid") if not row[k]]
    if missing:
        return Rejection(path, f"missing {', '.join(missing)}")
    if _is_localizer(image_type, description):
        return Rejection(path, "localizer / scout image")
    problem = decoder_problem(tsyntax)
    if problem and has_pixels:
        return Rejection(path, problem)
    if pixel_problem:
        return Rejection(path, pixel_problem)
    if not has_pixels:
        return Rejection(path, "no pixel data")
    frames = _int(ds.get("NumberOfFrames"), 1)
    if frames > 1:
        return Rejection(path, f"multi-frame image ({frames} frames); only single-slice CT files are read")
    spp = _int(ds.get("SamplesPerPixel"), 1)
    if spp != 1:
        return Rejection(path, f"not a grey-scale image (SamplesPerPixel {spp})")
    if row["rows"] <= 0 or row["columns"] <= 0:
        return Rejection(path, "missing Rows / Columns")
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return Rejection(path, "missing RescaleSlope/RescaleIntercept: HU cannot be computed")
    if _floats(ds.get("RescaleSlope"), 1) is None or _floats(ds.get("RescaleIntercept"), 1) is None:
        return Rejection(path, "RescaleSlope/RescaleIntercept not a number: HU cannot be computed")
    if row["orientation"] is None or row["position"] is None:
        return Rejection(path, "missing ImageOrientationPatient / ImagePositionPatient")
    return row


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
    """Read the headers of every file below root, each file opened once.

    Returns the header index (one row per usable CT image file) and the rejected files with reasons.
    """
    files = iter_files(root)
    if workers > 1 and len(files) > 64:
        chunk = max(16, min(256, len(files) // (workers * 8) or 16))
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_read_header, files, chunksize=chunk))
    else:
        results = [_read_header(f) for f in files]
    rows = [r for r in results if not isinstance(r, Rejection)]
    rejected = [r for r in results if isinstance(r, Rejection)]
    index = pd.DataFrame(rows, columns=_INDEX_FIELDS)
    dup = index["sop_uid"].duplicated(keep="first")
    for path, sop in zip(index.loc[dup, "path"], index.loc[dup, "sop_uid"]):
        rejected.append(Rejection(path, f"duplicate SOPInstanceUID {sop} (another copy is used)"))
    index = index[~dup].reset_index(drop=True)
    return index, rejected


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
