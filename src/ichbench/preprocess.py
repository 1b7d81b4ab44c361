"""DICOM (or NIfTI) folder -> header index and series choice -> one cached NPZ of windowed slices per series.

Cache format (`<cache>/<SeriesInstanceUID>.npz`, uncompressed so that loading is a plain read):

    images        uint8  (n, C, S, S)  windowed slices, x = code / 127.5 - 1 (see windowing.py)
    head_mask     bool   (n, S, S)     head (non-air) mask
    brain_mask    bool   (n, S, S)     brain tissue inside the skull
    gt_mask       bool   (n, S, S)     hemorrhage ground truth (all False where none is known):
                                       masks (gt_masks_dir, NIfTI masks) and/or BHX boxes rasterised at S
    has_gt        bool   ()            whether gt_mask comes from a ground-truth source
    gt_source     str    ()            "", "masks", "boxes" or "masks+boxes"
    source        str    ()            "dicom" or "nifti"
    sop_uids      str    (n,)          SOPInstanceUID of each slice
    positions     float32 (n,)         mm along the slice normal, increasing
    instance_numbers int32 (n,)
    slice_index   int32  (n,)          0 .. n-1 after sorting by position
    patient_id, study_uid, series_uid  str (pseudonymous dataset IDs only)
    pixel_spacing float32 (2,), slice_thickness, tilt_deg  float32
    spacing       float32 (n-1,)       gaps between neighbouring slices along the normal (mm)
    windows       str    JSON list of the windows used; image_size int

No name, birth date, institution or other identifying field is read, so none can be written.
NIfTI slices carry the synthetic IDs `<scan>#<k>` (see nifti.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import bhx, dicomio, rejections
from .masks import masks_for_volume
from .windowing import Window, apply_windows, quantise, resize, resize_mask

log = logging.getLogger(__name__)

_TUPLE_COLUMNS = ("pixel_spacing", "orientation", "position")


def _tuple_to_str(v) -> str:
    return "" if v is None else "\\".join(f"{x:.9g}" for x in v)


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
                min_slices: int = 8, min_extent_mm: float = 60.0, workers: int = 1,
                series_override: str | os.PathLike | None = None, bone_patterns: Sequence[str] = (),
                axial_tolerance_deg: float = 30.0, selected_csv=None) -> pd.DataFrame:
    """Index the DICOM folder by headers and choose one series per scan (patient).

    Writes the file index, the per-series candidates with the choice and its reason, the per-scan
    manifest of the choice (`series_selected.csv` beside the candidates unless `selected_csv`) and
    the files and scans rejected while indexing. Returns the candidates. Raises where no scan has a
    usable series (after writing the files).
    """
    if not Path(dicom_dir).is_dir():
        raise FileNotFoundError(f"DICOM folder {dicom_dir} does not exist")
    override = dicomio.read_series_override(series_override)
    t0 = time.perf_counter()
    index, rejected = dicomio.index_folder(dicom_dir, workers=workers)
    rejected = rejections.refine_file_reasons(rejected)
    n_files = len(index) + len(rejected)
    dt = time.perf_counter() - t0
    log.info("indexed %d files in %.1f s (%.0f files/s, %d workers): %d usable CT images, %d rejected",
             n_files, dt, n_files / max(dt, 1e-9), workers, len(index), len(rejected))
    rejections.log_summary(((r.item, r.reason) for r in rejected), log, "files")
    if selected_csv is None:
        selected_csv = Path(series_csv).with_name("series_selected.csv")
    if index.empty:
        dicomio.rejections_frame(rejected).to_csv(rejected_csv, index=False)
        raise RuntimeError(f"no usable CT image in {dicom_dir} ({len(rejected)} files rejected, see {rejected_csv})")
    candidates = dicomio.select_series(
        dicomio.describe_series(index, bone_patterns=bone_patterns, axial_tolerance_deg=axial_tolerance_deg),
        min_slices=min_slices, min_extent_mm=min_extent_mm, override=override)
    # files with their scan and series (where the header names them): a scan whose every file was rejected
    # (e.g. only localizers) still gets its series in series_candidates.csv, with why
    file_rejections = rejections.rejections_frame(rejected, with_scan=True)
    candidates = rejections.add_unindexed_series(candidates,
                                                 rejections.unindexed_series(file_rejections, candidates))
    choices = dicomio.scan_choices(candidates)
    scan_rejected = [dicomio.Rejection(c["patient_id"], f"no usable series: {c['choice']}", "select")
                     for _, c in choices[choices["series_uid"] == ""].iterrows()]
    scan_rejected += [dicomio.Rejection(pid, "named in series_override but no CT image of this scan was indexed",
                                        "select") for pid in sorted(set(override) - set(candidates["patient_id"]))]
    rejections.log_summary(((r.item, r.reason) for r in scan_rejected), log, "scans")
    write_index(index, index_csv)
    candidates.to_csv(series_csv, index=False)
    choices.to_csv(selected_csv, index=False)
    pd.concat([file_rejections, rejections.rejections_frame(scan_rejected, with_scan=False)],
              ignore_index=True).to_csv(rejected_csv, index=False)
    if not candidates["selected"].any():
        raise RuntimeError(f"no scan in {dicom_dir} has a usable series; see {selected_csv} and {rejected_csv}")
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
                 size: int, gt: dict[str, np.ndarray] | None = None, boxes: pd.DataFrame | None = None,
                 chunk: int = 32) -> dict:
    """Window, resize and write one series; the NPZ appears atomically (temp file, then rename).

    Slices are processed `chunk` at a time, so memory stays near one HU volume. `gt`: full-size
    masks by SOPInstanceUID; `boxes`: BHX boxes (rasterised at `size`). The series has ground truth
    (`has_gt`) where `gt` is given or at least one box lies on one of its slices.
    """
    n, rows, cols = series.hu.shape
    images = np.empty((n, len(windows), size, size), np.uint8)
    head = np.empty((n, size, size), bool)
    brain = np.empty((n, size, size), bool)
    for s in range(0, n, chunk):
        hu = series.hu[s:s + chunk]
        images[s:s + len(hu)] = quantise(resize(apply_windows(hu, windows), size))
        head[s:s + len(hu)], brain[s:s + len(hu)] = masks_for_volume(resize(hu[:, None], size)[:, 0])
    gt_small = np.zeros((n, size, size), bool)
    sources = []
    if gt is not None:
        for s in range(0, n, chunk):
            part = np.stack([gt.get(u, np.zeros((rows, cols), bool)) for u in series.sop_uids[s:s + chunk]])
            if part.shape[1:] != (rows, cols):
                raise ValueError(f"ground-truth masks of series {series.series_uid} have shape {part.shape[1:]}, "
                                 f"the images {(rows, cols)}")
            gt_small[s:s + len(part)] = resize_mask(part, size)
        sources.append("masks")
    hits = bhx.boxes_by_sop(boxes, series.sop_uids)
    if hits:
        for k, u in enumerate(series.sop_uids):
            if u in hits:
                gt_small[k] |= bhx.rasterise(hits[u], rows, cols, size)
        sources.append("boxes")
    has_gt = bool(sources)
    arrays = dict(
        images=images, head_mask=head, brain_mask=brain, gt_mask=gt_small, has_gt=np.bool_(has_gt),
        gt_source=np.array("+".join(sources)), source=np.array(series.source),
        sop_uids=np.array(series.sop_uids), positions=series.positions.astype(np.float32),
        instance_numbers=series.instance_numbers.astype(np.int32), slice_index=np.arange(n, dtype=np.int32),
        patient_id=np.array(series.patient_id), study_uid=np.array(series.study_uid),
        series_uid=np.array(series.series_uid), pixel_spacing=np.array(series.pixel_spacing, np.float32),
        slice_thickness=np.float32(series.slice_thickness), tilt_deg=np.float32(series.tilt_deg),
        spacing=np.asarray(series.spacing, np.float32),
        windows=np.array(json.dumps([w.__dict__ for w in windows])), image_size=np.int32(size),
    )
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".partial.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "patient_id": series.patient_id, "study_uid": series.study_uid, "series_uid": series.series_uid,
        "npz": out_path.name, "n_slices": n, "slice_thickness": series.slice_thickness,
        "tilt_deg": round(series.tilt_deg, 3), **dicomio.spacing_summary(series.spacing),
        "has_gt": has_gt, "gt_source": "+".join(sources), "gt_slices": int(gt_small.any(axis=(1, 2)).sum()),
        "rows": rows, "columns": cols, "source": series.source, "rejected_slices": len(series.rejected),
        "notes": "; ".join(series.notes),
    }


SERIES_COLUMNS = ["patient_id", "study_uid", "series_uid", "npz", "n_slices", "slice_thickness", "tilt_deg",
                  "spacing_median_mm", "spacing_max_mm", "n_gaps", "uneven_spacing", "has_gt", "gt_source",
                  "gt_slices", "rows", "columns", "source", "rejected_slices", "notes"]


def _cache_one(args) -> tuple[dict | None, list[dicomio.Rejection]]:
    kind, item, out_path, windows, size, gt_dir, boxes = args
    suid = item["series_uid"] if kind == "nifti" else item.iloc[0]["series_uid"]
    pid = item["patient_id"] if kind == "nifti" else item.iloc[0]["patient_id"]
    try:
        if kind == "nifti":
            from .nifti import load_volume

            series, gt = load_volume(item)
        else:
            series = dicomio.load_series(item)
            gt = load_gt_masks(gt_dir, suid)
        row = cache_series(series, out_path, windows, size, gt, boxes)
        return row, series.rejected
    except dicomio.DicomReadError as exc:
        return None, [dicomio.Rejection(exc.path, exc.reason, "load"),
                      dicomio.Rejection(pid, f"scan left out: its series {suid} could not be loaded", "load")]
    except Exception as exc:  # one bad series must not stop the shard
        return None, [dicomio.Rejection(suid, f"series failed ({dicomio.describe_error(exc)})", "load"),
                      dicomio.Rejection(pid, f"scan left out: its series {suid} could not be loaded", "load")]


def preprocess_shard(index_csv, series_csv, out_dir, *, shard: int, n_shards: int,
                     windows: Sequence[Window], size: int, gt_dir=None, workers: int = 1,
                     boxes=None) -> pd.DataFrame:
    """Cache the selected series of one shard into `out_dir`, with `series.csv` and `rejected.csv` beside.

    `boxes`: BHX box file(s) or a box table (see bhx.py), rasterised into `gt_mask`. DICOM and NIfTI
    indexes (series_candidates.csv column `source`) are both handled.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if boxes is not None and not isinstance(boxes, pd.DataFrame):
        boxes = bhx.read_bhx(boxes)
    chosen = pd.read_csv(series_csv, dtype={"patient_id": str, "series_uid": str, "study_uid": str})
    chosen = chosen[chosen["selected"].astype(bool)]
    chosen = chosen[[shard_of(u, n_shards) == shard for u in chosen["series_uid"]]]
    nifti = "source" in chosen and (chosen["source"] == "nifti").any()
    if nifti:
        volumes = pd.read_csv(index_csv, dtype=str, keep_default_na=False).set_index("series_uid", drop=False)
        jobs = [("nifti", volumes.loc[suid].to_dict(), out_dir / f"{suid}.npz", tuple(windows), size, None, None)
                for suid in chosen["series_uid"]]
    else:
        index = read_index(index_csv)
        groups = {u: g for u, g in index[index["series_uid"].isin(set(chosen["series_uid"]))].groupby("series_uid")}
        jobs = []
        for suid in chosen["series_uid"]:
            files = groups.get(suid)
            if files is None:
                continue
            b = None
            if boxes is not None and len(boxes):
                b = boxes[boxes["sop_uid"].isin(set(files["sop_uid"]))]
            jobs.append(("dicom", files, out_dir / f"{suid}.npz", tuple(windows), size, gt_dir, b))
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
    rejections.log_summary(((r.item, r.reason) for r in rejected), log, "items")
    table = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    table.to_csv(out_dir / "series.csv", index=False)
    dicomio.rejections_frame(rejected).to_csv(out_dir / "rejected.csv", index=False)
    if jobs and table.empty:
        log.warning("shard %d: none of its %d series could be cached", shard, len(jobs))
    return table
