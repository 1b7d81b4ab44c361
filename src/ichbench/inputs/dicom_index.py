"""The header index of a DICOM folder: every file's header read once, unusable files rejected with a reason.

Scans and series are identified by DICOM headers (PatientID, StudyInstanceUID, SeriesInstanceUID),
never by folder or file names. Patient-identifying fields (names, birth dates, institution,
accession numbers, ...) are never read into the index: only the fields listed in `_INDEX_FIELDS`
leave this module, and reasons for rejecting a file name tags, UIDs and geometry, never values of
other header fields. A file whose transfer syntax has no installed decoder is rejected here, with
the plugin to install.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from .dicomio import _DEFLATED, Rejection, _floats, _int, _text, decoder_problem, describe_error

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_STORAGE, LEGACY_ENHANCED_CT_STORAGE)
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

#: Columns of the header index (one row per file). Nothing identifying a person is among them.
_INDEX_FIELDS = [
    "path", "patient_id", "study_uid", "series_uid", "sop_uid", "modality", "image_type",
    "series_description", "kernel", "rows", "columns", "pixel_spacing", "slice_thickness",
    "orientation", "position", "instance_number", "transfer_syntax", "has_pixels",
    "bits_allocated", "bits_stored", "pixel_representation", "gantry_tilt",
]

_MISSING = object()
#: Tags of the header fields read here, looked up once (ds.get("Keyword") looks the keyword up every call).
_TAGS = {kw: tag_for_keyword(kw) for kw in (
    "BitsAllocated", "BitsStored", "Columns", "ConvolutionKernel", "GantryDetectorTilt",
    "ImageOrientationPatient", "ImagePositionPatient", "ImageType", "InstanceNumber", "Modality",
    "NumberOfFrames", "PatientID", "PixelRepresentation", "PixelSpacing", "RescaleIntercept", "RescaleSlope",
    "Rows", "SOPClassUID", "SOPInstanceUID", "SamplesPerPixel", "SeriesDescription", "SeriesInstanceUID",
    "SliceThickness", "StudyInstanceUID",
)}

#: What the index reads of a header (the other elements, sequences among them, are skipped unparsed).
_READ_TAGS = sorted(set(_TAGS.values()) | {tag_for_keyword("SpecificCharacterSet")})


def _get(ds, keyword: str, default=None):
    """ds.get(keyword) of a top-level element, by its tag: the value, or `default` where absent."""
    tag = _TAGS[keyword]
    if tag not in ds._dict:
        return default
    return ds[tag].value


#: Words of a series description that mark a localizer / scout / topogram.
LOCALIZER_WORDS = ("LOCALIZER", "LOCALISER", "SCOUT", "TOPOGRAM", "TOPO", "SURVIEW", "SCANOGRAM", "PILOT")


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
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    bits, spp = _int(_get(ds, "BitsAllocated"), 16), _int(_get(ds, "SamplesPerPixel"), 1) or 1
    frames = max(_int(_get(ds, "NumberOfFrames"), 1), 1)
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
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_READ_TAGS)
            tsyntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
            if tsyntax == _DEFLATED:
                has_pixels, pixel_problem = _has_pixel_data_slow(path), ""
            else:
                has_pixels, pixel_problem = _probe_pixel_data(fp, ds, size)
                if not has_pixels:     # where the header ends needs every element: read it whole
                    fp.seek(0)
                    if _header_cut_off(pydicom.dcmread(fp, stop_before_pixels=True), size):
                        return Rejection(path, "truncated file: it ends inside the header, before any pixel data")
    except InvalidDicomError:
        return Rejection(path, "not a DICOM file (no DICM preamble)")
    except Exception as exc:  # truncated or corrupt headers raise many different errors
        return Rejection(path, f"unreadable DICOM header ({describe_error(exc)})")
    try:
        with warnings.catch_warnings():     # e.g. "Invalid value for VR UI" (RSNA's ID_... UIDs): counted once
            warnings.simplefilter("ignore")     # per run by index_folder (invalid_uid_files), not once per file
            return _header_row(path, ds, tsyntax, has_pixels, pixel_problem)
    except Exception as exc:  # a malformed value of a field we need
        return Rejection(path, f"malformed DICOM header ({describe_error(exc)})")


def _header_row(path, ds, tsyntax, has_pixels, pixel_problem) -> dict | Rejection:
    modality = _text(_get(ds, "Modality"))
    sop_class = _text(_get(ds, "SOPClassUID"))
    if modality != "CT":
        if modality or sop_class not in CT_SOP_CLASSES:
            return Rejection(path, f"modality is {modality or 'missing'}, not CT")
    if sop_class and sop_class not in CT_SOP_CLASSES:
        return Rejection(path, f"SOP class {sop_class} is not a CT image (e.g. a secondary capture or dose report)")
    image_type = _text(_get(ds, "ImageType"))
    description = _text(_get(ds, "SeriesDescription"))
    row = {
        "path": path,
        "patient_id": _text(_get(ds, "PatientID")),
        "study_uid": _text(_get(ds, "StudyInstanceUID")),
        "series_uid": _text(_get(ds, "SeriesInstanceUID")),
        "sop_uid": _text(_get(ds, "SOPInstanceUID")),
        "modality": modality or "CT",
        "image_type": image_type,
        "series_description": description,
        "kernel": _text(_get(ds, "ConvolutionKernel")),
        "rows": _int(_get(ds, "Rows")),
        "columns": _int(_get(ds, "Columns")),
        "pixel_spacing": _floats(_get(ds, "PixelSpacing"), 2),
        "slice_thickness": (_floats(_get(ds, "SliceThickness"), 1) or (np.nan,))[0],
        "orientation": _floats(_get(ds, "ImageOrientationPatient"), 6),
        "position": _floats(_get(ds, "ImagePositionPatient"), 3),
        "instance_number": _int(_get(ds, "InstanceNumber")),
        "transfer_syntax": tsyntax,
        "has_pixels": has_pixels,
        "bits_allocated": _int(_get(ds, "BitsAllocated")),
        "bits_stored": _int(_get(ds, "BitsStored")),
        "pixel_representation": _int(_get(ds, "PixelRepresentation")),
        "gantry_tilt": (_floats(_get(ds, "GantryDetectorTilt"), 1) or (np.nan,))[0],
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
    frames = _int(_get(ds, "NumberOfFrames"), 1)
    if frames > 1:
        return Rejection(path, f"multi-frame image ({frames} frames); only single-slice CT files are read")
    spp = _int(_get(ds, "SamplesPerPixel"), 1)
    if spp != 1:
        return Rejection(path, f"not a grey-scale image (SamplesPerPixel {spp})")
    if row["rows"] <= 0 or row["columns"] <= 0:
        return Rejection(path, "missing Rows / Columns")
    if _get(ds, "RescaleSlope", _MISSING) is _MISSING or _get(ds, "RescaleIntercept", _MISSING) is _MISSING:
        return Rejection(path, "missing RescaleSlope/RescaleIntercept: HU cannot be computed")
    if _floats(_get(ds, "RescaleSlope"), 1) is None or _floats(_get(ds, "RescaleIntercept"), 1) is None:
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


def listed_files(root: str | os.PathLike, file_list: str | os.PathLike) -> tuple[list[str], list[Rejection]]:
    """The files a list names (one path a line, absolute or relative to root; blank lines and `#` comments
    skipped; repeats once) -> (existing files, rejections of the listed paths that are not files). A dataset
    adapter whose scans are a few of a large folder (HemSeg's of RSNA's 750 k slices) indexes only those."""
    out, missing, seen = [], [], set()
    for line in Path(file_list).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = line if os.path.isabs(line) else os.path.join(root, line)
        if path in seen:
            continue
        seen.add(path)
        if os.path.isfile(path):
            out.append(path)
        else:
            missing.append(Rejection(path, f"listed in {file_list} but not a file"))
    return out, missing


def index_folder(root: str | os.PathLike, workers: int = 1,
                 file_list: str | os.PathLike | None = None) -> tuple[pd.DataFrame, list[Rejection]]:
    """Read the headers of every file below root (or only those `file_list` names), each file opened once.

    Returns the header index (one row per usable CT image file) and the rejected files with reasons.
    """
    files, unlisted = listed_files(root, file_list) if file_list else (iter_files(root), [])
    if workers > 1 and len(files) > 64:
        chunk = max(16, min(256, len(files) // (workers * 8) or 16))
        from concurrent.futures import ProcessPoolExecutor     # (11 ms of imports one worker skips)

        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_read_header, files, chunksize=chunk))
    else:
        results = [_read_header(f) for f in files]
    rows = [r for r in results if not isinstance(r, Rejection)]
    rejected = unlisted + [r for r in results if isinstance(r, Rejection)]
    index = pd.DataFrame(rows, columns=_INDEX_FIELDS)
    dup = index["sop_uid"].duplicated(keep="first")
    for path, sop in zip(index.loc[dup, "path"], index.loc[dup, "sop_uid"]):
        rejected.append(Rejection(path, f"duplicate SOPInstanceUID {sop} (another copy is used)"))
    index = index[~dup].reset_index(drop=True)
    bad = invalid_uid_files(index)
    if bad:
        log.info("%d of %d files carry Study/Series/SOP Instance UIDs that are not valid DICOM UIDs (e.g. RSNA's "
                 "ID_... strings); pydicom's 'Invalid value for VR UI' warning is silenced for each and counted "
                 "here once; the IDs are used as they are", bad, len(index))
    return index, rejected


_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def invalid_uid_files(index: pd.DataFrame) -> int:
    """Files of the index whose Study, Series or SOP Instance UID is not a valid DICOM UID (digits and dots,
    at most 64 characters): those pydicom warns about ("Invalid value for VR UI") when it reads them."""
    bad = np.zeros(len(index), bool)
    for c in ("study_uid", "series_uid", "sop_uid"):
        v = index[c].astype(str)
        bad |= ~v.str.fullmatch(_VALID_UID).to_numpy(bool) | (v.str.len() > 64).to_numpy(bool)
    return int(bad.sum())
