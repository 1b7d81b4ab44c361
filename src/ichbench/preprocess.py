"""DICOM folder -> header index and series choice -> one cached NPZ of windowed slices per series.

Cache format (`<cache>/<SeriesInstanceUID>.npz`, uncompressed so that loading is a plain read):

    images        uint8  (n, C, S, S)  windowed slices, x = code / 127.5 - 1 (see windowing.py)
    head_mask     bool   (n, S, S)     head (non-air) mask
    brain_mask    bool   (n, S, S)     brain tissue inside the skull
    gt_mask       bool   (n, S, S)     hemorrhage ground truth (all False where none is known)
    has_gt        bool   ()            whether gt_mask comes from a ground-truth source
    sop_uids      str    (n,)          SOPInstanceUID of each slice
    positions     float32 (n,)         mm along the slice normal, increasing
    instance_numbers int32 (n,)
    slice_index   int32  (n,)          0 .. n-1 after sorting by position
    patient_id, study_uid, series_uid  str (pseudonymous dataset IDs only)
    pixel_spacing float32 (2,), slice_thickness, tilt_deg  float32
    windows       str    JSON list of the windows used; image_size int

No name, birth date, institution or other identifying field is read, so none can be written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import dicomio
from .masks import masks_for_volume
from .windowing import Window, apply_windows, quantise, resize, resize_mask

log = logging.getLogger(__name__)

_TUPLE_COLUMNS = ("pixel_spacing", "orientation", "position")


def _tuple_to_str(v) -> str:
    return "" if v is None else "\\".join(f"{x:.6g}" for x in v)


def _str_to_tuple(s) -> tuple[float, ...] | None:
    if not isinstance(s, str) or not s:
        return None
    return tuple(float(x) for x in s.split("\\"))


def write_index(index: pd.DataFrame, path: str | os.PathLike) -> None:
    out = index.copy()
    for c in _TUPLE_COLUMNS:
        out[c] = out[c].map(_tuple_to_str)
    out.to_csv(path, index=False)


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"patient_id": str, "study_uid": str, "series_uid": str, "sop_uid": str,
                                  "image_type": str, "series_description": str, "kernel": str,
                                  "transfer_syntax": str}, keep_default_na=False)
    for c in _TUPLE_COLUMNS:
        df[c] = df[c].map(_str_to_tuple)
    df["slice_thickness"] = pd.to_numeric(df["slice_thickness"], errors="coerce")
    return df


def build_index(dicom_dir: str | os.PathLike, index_csv, series_csv, rejected_csv, *,
                min_slices: int = 8, min_extent_mm: float = 60.0, workers: int = 1) -> pd.DataFrame:
    """Index the DICOM folder by headers and choose one series per scan (patient).

    Writes the file index, the per-series candidates with the choice and its reason, and the files
    rejected while indexing. Returns the candidates.
    """
    if not Path(dicom_dir).is_dir():
        raise FileNotFoundError(f"DICOM folder {dicom_dir} does not exist")
    index, rejected = dicomio.index_folder(dicom_dir, workers=workers)
    for r in rejected:
        log.warning("skipped %s: %s", r.item, r.reason)
    if index.empty:
        dicomio.rejections_frame(rejected).to_csv(rejected_csv, index=False)
        raise RuntimeError(f"no usable CT image in {dicom_dir} ({len(rejected)} files rejected, see {rejected_csv})")
    candidates = dicomio.select_series(dicomio.describe_series(index), min_slices=min_slices,
                                       min_extent_mm=min_extent_mm)
    for pid, g in candidates.groupby("patient_id"):
        if not g["selected"].any():
            reasons = "; ".join(f"{u}: {w}" for u, w in zip(g["series_uid"], g["why_not"]))
            rejected.append(dicomio.Rejection(pid, f"no usable series ({reasons})", "select"))
    write_index(index, index_csv)
    candidates.to_csv(series_csv, index=False)
    dicomio.rejections_frame(rejected).to_csv(rejected_csv, index=False)
    return candidates


def shard_of(series_uid: str, n_shards: int) -> int:
    """Stable shard of a series (independent of Python's hash seed)."""
    return int(hashlib.sha1(series_uid.encode()).hexdigest(), 16) % n_shards


def load_gt_masks(gt_dir: str | os.PathLike | None, series_uid: str) -> dict[str, np.ndarray] | None:
    """Ground-truth hemorrhage masks of a series, keyed by SOPInstanceUID (`<dir>/<series>.npz`
    holding `sop_uids` and `masks`), or None where the folder has no file for it."""
    if not gt_dir:
        return None
    path = Path(gt_dir) / f"{series_uid}.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {str(u): m for u, m in zip(z["sop_uids"], z["masks"])}


def cache_series(series: dicomio.Series, out_path: str | os.PathLike, windows: Sequence[Window],
                 size: int, gt: dict[str, np.ndarray] | None = None) -> dict:
    """Window, resize and write one series; the NPZ appears atomically (temp file, then rename)."""
    hu_small = resize(series.hu[:, None], size)[:, 0]
    images = quantise(resize(apply_windows(series.hu, windows), size))
    head, brain = masks_for_volume(hu_small)
    n = len(series.sop_uids)
    if gt is not None:
        full = np.stack([gt.get(u, np.zeros(series.hu.shape[1:], bool)) for u in series.sop_uids])
        if full.shape[1:] != series.hu.shape[1:]:
            raise ValueError(f"ground-truth masks of series {series.series_uid} have shape {full.shape[1:]}, "
                             f"the images {series.hu.shape[1:]}")
        gt_small = resize_mask(full, size)
    else:
        gt_small = np.zeros((n, size, size), bool)
    arrays = dict(
        images=images, head_mask=head, brain_mask=brain, gt_mask=gt_small, has_gt=np.bool_(gt is not None),
        sop_uids=np.array(series.sop_uids), positions=series.positions.astype(np.float32),
        instance_numbers=series.instance_numbers.astype(np.int32), slice_index=np.arange(n, dtype=np.int32),
        patient_id=np.array(series.patient_id), study_uid=np.array(series.study_uid),
        series_uid=np.array(series.series_uid), pixel_spacing=np.array(series.pixel_spacing, np.float32),
        slice_thickness=np.float32(series.slice_thickness), tilt_deg=np.float32(series.tilt_deg),
        windows=np.array(json.dumps([w.__dict__ for w in windows])), image_size=np.int32(size),
    )
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out_path)
    gaps = series.spacing
    return {
        "patient_id": series.patient_id, "study_uid": series.study_uid, "series_uid": series.series_uid,
        "npz": out_path.name, "n_slices": n, "slice_thickness": series.slice_thickness,
        "tilt_deg": round(series.tilt_deg, 3),
        "spacing_median_mm": float(np.median(gaps)) if len(gaps) else float("nan"),
        "spacing_max_mm": float(np.max(gaps)) if len(gaps) else float("nan"),
        "uneven_spacing": bool(len(gaps) and (np.max(gaps) - np.min(gaps)) > 0.1 * max(np.median(gaps), 1e-6)),
        "has_gt": gt is not None, "gt_slices": int(gt_small.any(axis=(1, 2)).sum()),
    }


def _cache_one(args) -> tuple[dict | None, list[dicomio.Rejection]]:
    files, out_path, windows, size, gt_dir = args
    suid = files.iloc[0]["series_uid"]
    try:
        series = dicomio.load_series(files)
        row = cache_series(series, out_path, windows, size, load_gt_masks(gt_dir, suid))
        return row, series.rejected
    except dicomio.DicomReadError as exc:
        return None, [dicomio.Rejection(exc.path, exc.reason, "load")]
    except Exception as exc:  # one bad series must not stop the shard
        return None, [dicomio.Rejection(suid, f"series failed ({type(exc).__name__}: {exc})", "load")]


def preprocess_shard(index_csv, series_csv, out_dir, *, shard: int, n_shards: int,
                     windows: Sequence[Window], size: int, gt_dir=None, workers: int = 1) -> pd.DataFrame:
    """Cache the selected series of one shard into `out_dir`, with `series.csv` and `rejected.csv` beside."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = read_index(index_csv)
    chosen = pd.read_csv(series_csv, dtype={"patient_id": str, "series_uid": str})
    chosen = chosen[chosen["selected"].astype(bool)]
    chosen = chosen[[shard_of(u, n_shards) == shard for u in chosen["series_uid"]]]
    jobs = [(index[index["series_uid"] == suid], out_dir / f"{suid}.npz", tuple(windows), size, gt_dir)
            for suid in chosen["series_uid"]]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_cache_one, jobs))
    else:
        results = [_cache_one(j) for j in jobs]
    rows, rejected = [], []
    for row, rej in results:
        rejected.extend(rej)
        if row is not None:
            rows.append(row)
    for r in rejected:
        log.warning("skipped %s: %s", r.item, r.reason)
    table = pd.DataFrame(rows, columns=["patient_id", "study_uid", "series_uid", "npz", "n_slices",
                                        "slice_thickness", "tilt_deg", "spacing_median_mm", "spacing_max_mm",
                                        "uneven_spacing", "has_gt", "gt_slices"])
    table.to_csv(out_dir / "series.csv", index=False)
    dicomio.rejections_frame(rejected).to_csv(out_dir / "rejected.csv", index=False)
    return table
