"""Reading CT pixel data: one DICOM file's pixels as HU, one series as an HU volume sorted along the slice normal.

Decoding: native and compressed transfer syntaxes (JPEG Lossless, JPEG-LS, JPEG 2000, RLE, ...)
through pydicom's pixel handlers (pylibjpeg plugins or GDCM). HU = stored * RescaleSlope +
RescaleIntercept; padding (PixelPaddingValue, and anything below -1024 HU) becomes air; a native
file whose BitsStored disagrees with its pixel data is read the way that gives plausible HU.
Slices are sorted by position along the slice normal (never by InstanceNumber); gaps, uneven
spacing and gantry tilt are recorded, the slices themselves stay as acquired (no resampling).

The files of a series come from the header index (`dicom_index`), the series of a scan from
`series_select`; the stack geometry (normal, tilt, spacing) is in `geometry`.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pydicom

from . import pixelfix
from .geometry import slice_normal, stack_order, stack_tilt_deg
from .indexrows import IndexRows, first_of_each
from .native import native_pixels as _native_pixels
from .native import plain_rescale as _rescale
from .native import us as _us

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


# --------------------------------------------------------------------------- series loading

@dataclass
class Series:
    patient_id: str
    study_uid: str
    series_uid: str
    hu: np.ndarray | None              # (n, rows, cols) float32 HU, sorted along the slice normal (None: streamed)
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
    bits = _us(ds, "BitsAllocated", 0x00280100)
    if bits not in (8, 16, 32):
        return None
    kind = "i" if _us(ds, "PixelRepresentation", 0x00280103) == 1 else "u"
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
    mask = raw == values.pop()
    for v in values:                # == per value: the same pixels as np.isin, several times faster
        mask |= raw == v
    return mask


def _pixels_to_hu(ds, path: str, notes: list[str] | None = None, out: np.ndarray | None = None,
                  jit: bool = False) -> np.ndarray:
    """One file's pixels as float32 HU (written into `out` where given: a (rows, cols) float32 array).
    `jit`: the conversion compiled (`sweep_jit.to_hu`) where it is available: the same values."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    elements = ds._dict       # (tags looked up directly: `keyword in ds` converts the keyword first)
    if 0x7FE00010 not in elements and 0x7FE00008 not in elements and 0x7FE00009 not in elements:
        raise DicomReadError(path, "no pixel data")     # PixelData, FloatPixelData, DoubleFloatPixelData
    if 0x00281053 not in elements or 0x00281052 not in elements:      # RescaleSlope, RescaleIntercept
        raise DicomReadError(path, "missing RescaleSlope/RescaleIntercept: HU cannot be computed")
    plain = _rescale(ds)                     # (the raw text, as pydicom's DS would give it, where plain)
    slope, intercept = ((plain[0],), (plain[1],)) if plain else \
        (_floats(ds.get("RescaleSlope"), 1), _floats(ds.get("RescaleIntercept"), 1))
    if slope is None or intercept is None or slope[0] == 0:
        raise DicomReadError(path, "RescaleSlope/RescaleIntercept not usable numbers: HU cannot be computed")
    slope, intercept = slope[0], intercept[0]
    problem = decoder_problem(ts)
    if problem:
        raise DicomReadError(path, problem)
    try:
        arr = _native_pixels(ds, ts)
        if arr is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = ds.pixel_array
    except Exception as exc:
        raise DicomReadError(path, f"pixel data cannot be decoded (transfer syntax {ts or '?'}: {describe_error(exc)})") from None
    if arr.ndim != 2:
        raise DicomReadError(path, f"expected one 2D grey-scale frame, got pixel array of shape {arr.shape}")
    raw = arr
    # BitsStored smaller than the data need (pydicom masks the high bits), or garbage above BitsStored.
    if ts in _NATIVE_SYNTAXES and 0x7FE00010 in elements:
        dtype, bits, stored = (_stored_dtype(ds), _us(ds, "BitsAllocated", 0x00280100),
                               _us(ds, "BitsStored", 0x00280101))
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
    padding = _padding_mask(ds, raw) if 0x00280120 in elements else None   # PixelPaddingValue (without: none)
    raw, intercept, fixed = pixelfix.apply_fix(raw, _us(ds, "BitsStored", 0x00280101),
                                               _us(ds, "PixelRepresentation", 0x00280103), intercept)
    if fixed and notes is not None:
        notes.append(pixelfix.NOTE)
    if out is None or out.shape != raw.shape or out.dtype != np.float32:
        out = np.empty(raw.shape, np.float32)
    if jit:
        from . import sweep_jit

        if sweep_jit.to_hu(raw, slope, intercept, out):       # the clip to -1024 done, padding -1024 after
            if padding is not None:
                np.copyto(out, np.float32(-1024.0), where=padding)
            return out
    # the float32 operations of raw.astype(float32) * slope + intercept, without temporaries
    if np.float32(slope) == 1:            # x * 1 is x: the conversion alone
        np.copyto(out, raw, casting="unsafe")
    else:
        np.multiply(raw, np.float32(slope), out=out, dtype=np.float32)
    np.add(out, np.float32(intercept), out=out)
    if padding is not None:
        np.copyto(out, np.float32(-1024.0), where=padding)
    # Values below air come from padding outside the reconstruction circle. (np.clip with an infinite
    # upper bound gives np.maximum's values, NaN included, at a third of its cost in numpy 2.4.)
    np.clip(out, np.float32(-1024.0), np.float32(np.inf), out=out)
    return out


def _majority(values: Sequence) -> object:
    vals, counts = np.unique(np.array([str(v) for v in values]), return_counts=True)
    return vals[int(np.argmax(counts))]


@dataclass
class SeriesPlan:
    """The files of one series in stack order, before any pixel is decoded (see `plan_series`)."""
    files: IndexRows                   # rows of the header index, sorted along the slice normal (column _z)
    rows: int
    cols: int
    normal: np.ndarray
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ids: dict = field(default_factory=dict)            # patient_id, study_uid, series_uid (first file)
    decoded: list[int] = field(default_factory=list)   # positions in `files` decoded so far

    @property
    def series_uid(self) -> str:
        return self.ids["series_uid"]


def plan_series(files) -> SeriesPlan:
    """The files of one series (rows of the header index: a DataFrame or `IndexRows`) that form its stack, in
    order along the slice normal.

    Slices whose size or orientation differs from the series' majority, and second copies of a slice
    position, are left out and named in `SeriesPlan.rejected`. Reads headers only (from the index). The
    stack is sorted along the normal, then by InstanceNumber and SOPInstanceUID (a stable sort, ties in
    index order), and a SOPInstanceUID seen twice keeps its first row.
    """
    files = IndexRows.of(files)
    ids = {k: files.first(k) for k in ("patient_id", "study_uid", "series_uid")}
    rejected: list[Rejection] = []
    # majority size and orientation; the others are not part of this stack
    size_key = [f"{r}x{c}" for r, c in zip(files["rows"].tolist(), files["columns"].tolist())]
    major_size = _majority(size_key)
    orient = np.array(files["orientation"].tolist(), float)
    orient_key = [",".join(f"{v:.2f}" for v in o) for o in orient]
    major_orient = orient[orient_key.index(_majority(orient_key))]
    paths = files["path"].tolist()
    keep = []
    for i, (sk, o, path) in enumerate(zip(size_key, orient, paths)):
        if sk != major_size:
            rejected.append(Rejection(path, f"image size {sk} differs from the series' {major_size}", "load"))
        elif np.abs(o - major_orient).max() > 0.01:
            rejected.append(Rejection(path, "image orientation differs from the rest of the series", "load"))
        else:
            keep.append(i)
    keep = np.asarray(keep, np.intp)
    normal = slice_normal(files["orientation"][keep[0]])
    positions = files["position"].tolist()
    z = np.array([float(np.dot(normal, positions[i])) for i in keep], float)
    perm = stack_order(z, files["instance_number"][keep], files["sop_uid"][keep])
    order, z = keep[perm], z[perm]
    sop = files["sop_uid"][order]
    once = first_of_each(sop)                     # drop_duplicates: a UID's first row in this order
    order, z, sop = order[once], z[once], sop[once]
    dup = np.r_[False, np.diff(z) < 1e-3]
    kept = np.maximum.accumulate(np.where(dup, 0, np.arange(len(dup))))   # the first file at each position
    for j in np.flatnonzero(dup):
        rejected.append(Rejection(paths[order[j]], "a second slice at the same position along the slice normal "
                                                   f"(kept {sop[kept[j]]})", "load"))
    rows, cols = (int(v) for v in major_size.split("x"))
    stack = files.take(order[~dup]).assign(_z=z[~dup])
    return SeriesPlan(files=stack, rows=rows, cols=cols, normal=normal, rejected=rejected, ids=ids)


def iter_hu(plan: SeriesPlan, reuse: bool = True, jit: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Decode the planned files one at a time: (SOPInstanceUID, (rows, cols) float32 HU) per decoded file.

    Files that fail are skipped and named in `plan.rejected`; the decoded ones are recorded in
    `plan.decoded` (for `finish_series`). With `reuse`, every slice is written into the same buffer:
    use (or copy) it before taking the next. Only one file's bytes and pixels are held at a time.
    `jit`: HU by the compiled conversion (`sweep_jit.to_hu`, the same values).
    """
    buf = np.empty((plan.rows, plan.cols), np.float32)
    for i, (path, sop) in enumerate(zip(plan.files["path"], plan.files["sop_uid"])):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
            hu = _pixels_to_hu(ds, path, plan.notes, out=buf if reuse else None, jit=jit)
            del ds
        except DicomReadError as exc:
            plan.rejected.append(Rejection(exc.path, exc.reason, "load"))
            continue
        except Exception as exc:
            plan.rejected.append(Rejection(path, f"unreadable ({describe_error(exc)})", "load"))
            continue
        plan.decoded.append(i)
        yield str(sop), hu


def finish_series(plan: SeriesPlan, hu: np.ndarray | None = None) -> Series:
    """The Series of the decoded files of `plan` (geometry, IDs, spacing), holding `hu` (None when
    the pixels went elsewhere slice by slice). Raises DicomReadError when nothing was decoded."""
    if not plan.decoded:
        reasons = sorted({r.reason for r in plan.rejected})[:3]
        raise DicomReadError(plan.series_uid, "no slice of the series could be decoded"
                             + (f" ({'; '.join(reasons)})" if reasons else ""))
    files = plan.files.take(plan.decoded)
    z = np.asarray(files["_z"], float)
    ends = np.array([files["position"][0], files["position"][-1]], float)
    tilt = stack_tilt_deg(plan.normal, ends if len(files) > 1 else ends[:1])
    ps = files.first("pixel_spacing") or (np.nan, np.nan)
    thickness = np.asarray(files["slice_thickness"], float)      # None and NaN: not known
    th = float(np.nanmedian(thickness)) if not np.isnan(thickness).all() else float("nan")
    notes = list(plan.notes)
    if np.isnan(th) and len(z) > 1:       # stripped headers (RSNA): the spacing along the slice normal
        th = float(np.median(np.diff(z)))
        notes.append("no SliceThickness: the median spacing along the slice normal is used")
    fixed = notes.count(pixelfix.NOTE)
    if fixed:
        notes = [n for n in notes if n != pixelfix.NOTE] + [f"{pixelfix.NOTE}: {fixed} of {len(files)} slices"]
        log.info("series %s: %s applied to %d of %d slices", plan.series_uid, pixelfix.NOTE, fixed, len(files))
    return Series(
        patient_id=plan.ids["patient_id"], study_uid=plan.ids["study_uid"], series_uid=plan.ids["series_uid"],
        hu=hu, sop_uids=list(files["sop_uid"]), positions=z,
        instance_numbers=np.asarray(files["instance_number"]).astype(int), pixel_spacing=(float(ps[0]), float(ps[1])),
        slice_thickness=th, tilt_deg=tilt, spacing=np.diff(z), rejected=plan.rejected,
        notes=sorted(set(notes)),
    )


def load_series(files) -> Series:
    """Load the files of one series (rows of the header index) as HU, sorted along the slice normal.

    Files that fail to decode are dropped and reported in `Series.rejected`; so are slices whose
    size or orientation differs from the series' majority and second copies of a slice position.
    Raises DicomReadError when nothing usable remains. Holds the whole volume: the cache streams
    instead (`plan_series`, `iter_hu`, `finish_series`).
    """
    plan = plan_series(files)
    hu = np.empty((len(plan.files), plan.rows, plan.cols), np.float32)   # filled in place
    for k, (_, slice_hu) in enumerate(iter_hu(plan)):
        hu[k] = slice_hu
    return finish_series(plan, hu[:len(plan.decoded)] if len(plan.decoded) < len(hu) else hu)
