"""DICOM (or NIfTI) folder -> header index and series choice -> one cached NPZ of windowed slices per series.

Cache format (`<cache>/<SeriesInstanceUID>.npz`, uncompressed so that loading is a plain read):

    images        uint8  (n, C, S, S)  windowed slices, x = code / 127.5 - 1 (see windowing.py); a
                                       non-square slice is padded to a square with air first
    head_mask     bool   (n, S, S)     head (non-air) mask
    brain_mask    bool   (n, S, S)     brain tissue inside the skull
    gt_mask       bool   (n, S, S)     hemorrhage ground truth at S, for localisation (all False where
                                       none is known): masks (gt_masks_dir, NIfTI masks; > 0) and/or BHX
                                       boxes rasterised at S. Not the slice truth: a small bleed can vanish at S
    gt_pixels     int32  (n,)          hemorrhage pixels of each slice at the original resolution (masks
                                       and boxes); the slice truth (see splits.collect_slices)
    gt_area_mm2   float32 (n,)         the same in mm^2 (gt_pixels x pixel area)
    has_gt        bool   ()            whether gt_mask comes from a ground-truth source
    original_size int32  (2,)          rows, columns of the original slices
    padding       int32  (4,)          air pixels added top, bottom, left, right to make them square
    head_area_mm2 float32 (n,)         head area of each slice (from head_mask)
    brain_mean_hu float32 (n,)         mean HU inside brain_mask (NaN where empty); with head_area_mm2
                                       and original_size the inputs of the confound table (confounds.py)
    not_hu        bool   ()            values did not look like HU and preprocess.non_hu is accept
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

from ..datasets import bhx
from ..inputs import dicom_index, dicomio, rejections, series_select
from ..inputs.geometry import spacing_summary
from ..inputs.inputcheck import NON_HU_ACTIONS, hu_problem, mask_truth, square_padding
from ..inputs.masks import masks_for_volume
from ..inputs.windowing import Window, apply_windows, quantise, resize, resize_mask

log = logging.getLogger(__name__)

_TUPLE_COLUMNS = ("pixel_spacing", "orientation", "position")
AIR_PAD_HU = -1024.0   # what a non-square slice is padded with


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
                axial_tolerance_deg: float = 30.0, selected_csv=None, scan_key: str = "patient") -> pd.DataFrame:
    """Index the DICOM folder by headers and choose one series per scan: per patient, or with
    `scan_key="study"` per study (series_select.SCAN_KEYS).

    Writes the file index, the per-series candidates with the choice and its reason, the per-scan
    manifest of the choice (`series_selected.csv` beside the candidates unless `selected_csv`) and
    the files and scans rejected while indexing. Returns the candidates. Raises where no scan has a
    usable series (after writing the files).
    """
    if not Path(dicom_dir).is_dir():
        raise FileNotFoundError(f"DICOM folder {dicom_dir} does not exist")
    override = series_select.read_series_override(series_override)
    t0 = time.perf_counter()
    index, rejected = dicom_index.index_folder(dicom_dir, workers=workers)
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
    candidates = series_select.select_series(
        series_select.describe_series(index, bone_patterns=bone_patterns, axial_tolerance_deg=axial_tolerance_deg,
                                      scan_key=scan_key),
        min_slices=min_slices, min_extent_mm=min_extent_mm, override=override)
    # files with their scan and series (where the header names them): a scan whose every file was rejected
    # (e.g. only localizers) still gets its series in series_candidates.csv, with why
    file_rejections = rejections.rejections_frame(rejected, with_scan=True)
    candidates = rejections.add_unindexed_series(candidates,
                                                 rejections.unindexed_series(file_rejections, candidates))
    key = series_select.scan_key_column(scan_key)
    candidates["scan_id"] = candidates["scan_id"].where(candidates["scan_id"].notna(), candidates[key])
    choices = series_select.scan_choices(candidates)
    scan_rejected = [dicomio.Rejection(c["scan_id"], f"no usable series: {c['choice']}", "select")
                     for _, c in choices[choices["series_uid"] == ""].iterrows()]
    scan_rejected += [dicomio.Rejection(pid, "named in series_override but no CT image of this scan was indexed",
                                        "select") for pid in sorted(set(override) - set(candidates["scan_id"]))]
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


def load_gt_masks(gt_dir: str | os.PathLike | None, series_uid: str,
                  notes: list[str] | None = None) -> dict[str, np.ndarray] | None:
    """Ground-truth hemorrhage masks of a series, keyed by SOPInstanceUID (`<dir>/<series>.npz`
    holding `sop_uids` and `masks`, hemorrhage where > 0), or None where the folder has no file for
    it. Values the rule treats oddly are named in `notes` (see inputcheck.mask_truth)."""
    if not gt_dir:
        return None
    path = Path(gt_dir) / f"{series_uid}.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        masks, warning = mask_truth(z["masks"], str(path))
        if warning and notes is not None:
            notes.append(warning)
        return {str(u): m for u, m in zip(z["sop_uids"], masks)}


def _box_pixels(boxes: pd.DataFrame, rows: int, cols: int) -> np.ndarray:
    """BHX boxes of one slice -> the (rows, cols) pixels they cover (at least one per box)."""
    mask = np.zeros((rows, cols), bool)
    for x, y, w, h in boxes[["x", "y", "width", "height"]].to_numpy(float):
        c0, r0 = min(max(int(np.floor(x)), 0), cols - 1), min(max(int(np.floor(y)), 0), rows - 1)
        c1, r1 = max(min(int(np.ceil(x + w)), cols), c0 + 1), max(min(int(np.ceil(y + h)), rows), r0 + 1)
        mask[r0:r1, c0:c1] = True
    return mask


def cache_series(series: dicomio.Series, out_path: str | os.PathLike, windows: Sequence[Window],
                 size: int, gt: dict[str, np.ndarray] | None = None, boxes: pd.DataFrame | None = None,
                 chunk: int = 32, not_hu: bool = False) -> dict:
    """Window, resize and write one series; the NPZ appears atomically (temp file, then rename).

    A non-square slice is first padded to a centred square with air (-1024 HU), so that its aspect
    ratio is kept; the padding lies outside the head and brain masks. Slices are processed `chunk` at
    a time, so memory stays near one HU volume. `gt`: full-size masks by SOPInstanceUID; `boxes`: BHX
    boxes. The series has ground truth (`has_gt`) where `gt` is given or at least one box lies on one
    of its slices. The slice truth comes from the full-resolution masks and boxes (`gt_pixels`,
    `gt_area_mm2`); `gt_mask` at `size` is for localisation only. `not_hu`: the series was accepted
    although its values do not look like HU (flagged in the cache and series.csv).
    """
    n, rows, cols = series.hu.shape
    top, bottom, left, right = square_padding(rows, cols)
    side = rows + top + bottom
    padded = (top, bottom, left, right) != (0, 0, 0, 0)
    inside = np.ones((side, side), bool)
    if padded:
        inside[:] = False
        inside[top:top + rows, left:left + cols] = True
    inside_small = resize_mask(inside[None], size)[0]
    ps = np.asarray(series.pixel_spacing, float)
    pixel_mm2 = float(ps[0] * ps[1])
    images = np.empty((n, len(windows), size, size), np.uint8)
    head = np.empty((n, size, size), bool)
    brain = np.empty((n, size, size), bool)
    brain_mean = np.full(n, np.nan, np.float32)
    for s in range(0, n, chunk):
        hu = series.hu[s:s + chunk]
        if padded:
            hu = np.pad(hu, ((0, 0), (top, bottom), (left, right)), constant_values=AIR_PAD_HU)
        images[s:s + len(hu)] = quantise(resize(apply_windows(hu, windows), size))
        hu_small = resize(hu[:, None], size)[:, 0]
        h, b = masks_for_volume(hu_small)
        head[s:s + len(hu)], brain[s:s + len(hu)] = h & inside_small, b & inside_small
        for k in range(len(hu)):
            if brain[s + k].any():
                brain_mean[s + k] = hu_small[k][brain[s + k]].mean()
    gt_small = np.zeros((n, size, size), bool)
    gt_pixels = np.zeros(n, np.int64)
    sources = []
    hits = bhx.boxes_by_sop(boxes, series.sop_uids)
    if gt is not None:
        for s in range(0, n, chunk):
            part = np.stack([gt.get(u, np.zeros((rows, cols), bool)) for u in series.sop_uids[s:s + chunk]]) > 0
            if part.shape[1:] != (rows, cols):
                raise ValueError(f"ground-truth masks of series {series.series_uid} have shape {part.shape[1:]}, "
                                 f"the images {(rows, cols)}")
            gt_pixels[s:s + len(part)] = part.sum(axis=(1, 2))
            for k, u in enumerate(series.sop_uids[s:s + chunk]):
                if u in hits:        # masks and boxes together: the union counts once
                    gt_pixels[s + k] = (part[k] | _box_pixels(hits[u], rows, cols)).sum()
            if padded:
                part = np.pad(part, ((0, 0), (top, bottom), (left, right)))
            gt_small[s:s + len(part)] = resize_mask(part, size)
        sources.append("masks")
    if hits:
        for k, u in enumerate(series.sop_uids):
            if u in hits:
                if gt is None:
                    gt_pixels[k] = _box_pixels(hits[u], rows, cols).sum()
                shifted = hits[u].assign(x=hits[u]["x"] + left, y=hits[u]["y"] + top)
                gt_small[k] |= bhx.rasterise(shifted, side, side, size)
        sources.append("boxes")
    has_gt = bool(sources)
    head_area = head.sum(axis=(1, 2)) * (pixel_mm2 * (side / size) ** 2)
    arrays = dict(
        images=images, head_mask=head, brain_mask=brain, gt_mask=gt_small, has_gt=np.bool_(has_gt),
        gt_pixels=gt_pixels.astype(np.int32), gt_area_mm2=(gt_pixels * pixel_mm2).astype(np.float32),
        gt_source=np.array("+".join(sources)), source=np.array(series.source),
        sop_uids=np.array(series.sop_uids), positions=series.positions.astype(np.float32),
        instance_numbers=series.instance_numbers.astype(np.int32), slice_index=np.arange(n, dtype=np.int32),
        patient_id=np.array(series.patient_id), study_uid=np.array(series.study_uid),
        series_uid=np.array(series.series_uid), pixel_spacing=np.array(series.pixel_spacing, np.float32),
        slice_thickness=np.float32(series.slice_thickness), tilt_deg=np.float32(series.tilt_deg),
        spacing=np.asarray(series.spacing, np.float32),
        original_size=np.array([rows, cols], np.int32), padding=np.array([top, bottom, left, right], np.int32),
        head_area_mm2=head_area.astype(np.float32), brain_mean_hu=brain_mean, not_hu=np.bool_(not_hu),
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
    notes = list(series.notes)
    if padded:
        notes.append(f"{rows} x {cols} slices padded with air to {side} x {side} (aspect ratio kept) "
                     f"before resizing to {size} x {size}")
    return {
        "patient_id": series.patient_id, "study_uid": series.study_uid, "series_uid": series.series_uid,
        "npz": out_path.name, "n_slices": n, "slice_thickness": series.slice_thickness,
        "tilt_deg": round(series.tilt_deg, 3), **spacing_summary(series.spacing),
        "has_gt": has_gt, "gt_source": "+".join(sources), "gt_slices": int((gt_pixels > 0).sum()),
        "rows": rows, "columns": cols, "pad_top": top, "pad_bottom": bottom, "pad_left": left,
        "pad_right": right, "not_hu": not_hu, "source": series.source, "rejected_slices": len(series.rejected),
        "notes": "; ".join(notes),
    }


SERIES_COLUMNS = ["patient_id", "study_uid", "series_uid", "npz", "n_slices", "slice_thickness", "tilt_deg",
                  "spacing_median_mm", "spacing_max_mm", "n_gaps", "uneven_spacing", "has_gt", "gt_source",
                  "gt_slices", "rows", "columns", "pad_top", "pad_bottom", "pad_left", "pad_right", "not_hu",
                  "source", "rejected_slices", "notes"]


def _cache_one(args) -> tuple[dict | None, list[dicomio.Rejection]]:
    kind, item, out_path, windows, size, gt_dir, boxes, non_hu = args
    suid = item["series_uid"] if kind == "nifti" else item.iloc[0]["series_uid"]
    pid = item["patient_id"] if kind == "nifti" else item.iloc[0]["patient_id"]
    left_out = dicomio.Rejection(pid, f"scan left out: its series {suid} could not be loaded", "load")
    try:
        if kind == "nifti":
            from ..inputs.nifti import load_volume

            series, gt = load_volume(item)
        else:
            series = dicomio.load_series(item)
            gt = load_gt_masks(gt_dir, suid, series.notes)
        problem = hu_problem(series.hu)
        if problem and non_hu != "accept":
            advice = ("convert the volume to HU first" if kind == "nifti" else
                      "an image saved in a display window? set preprocess.non_hu: accept to use it anyway")
            where = item["path"] if kind == "nifti" else suid
            return None, series.rejected + [dicomio.Rejection(where, f"{problem}; {advice}", "load"),
                                            dicomio.Rejection(pid, f"scan left out: its series {suid} is not "
                                                                   "CT in HU", "load")]
        if problem:
            log.warning("!!! series %s of scan %s: %s; ACCEPTED because preprocess.non_hu is accept: "
                        "windows, head and brain masks assume HU and are wrong for it (series.csv not_hu)",
                        suid, pid, problem)
            series.notes.append(f"NOT HU, accepted: {problem}")
        row = cache_series(series, out_path, windows, size, gt, boxes, not_hu=bool(problem))
        return row, series.rejected
    except dicomio.DicomReadError as exc:
        return None, [dicomio.Rejection(exc.path, exc.reason, "load"), left_out]
    except Exception as exc:  # one bad series must not stop the shard
        return None, [dicomio.Rejection(suid, f"series failed ({dicomio.describe_error(exc)})", "load"), left_out]


def preprocess_shard(index_csv, series_csv, out_dir, *, shard: int, n_shards: int,
                     windows: Sequence[Window], size: int, gt_dir=None, workers: int = 1,
                     boxes=None, non_hu: str = "reject") -> pd.DataFrame:
    """Cache the selected series of one shard into `out_dir`, with `series.csv` and `rejected.csv` beside.

    `boxes`: BHX box file(s) or a box table (see bhx.py), rasterised into `gt_mask`. DICOM and NIfTI
    indexes (series_candidates.csv column `source`) are both handled. A series whose values do not
    look like CT in HU is rejected, or with `non_hu="accept"` cached with a warning and flagged.
    """
    if non_hu not in NON_HU_ACTIONS:
        raise ValueError(f"non_hu must be one of {', '.join(NON_HU_ACTIONS)}, not {non_hu!r}")
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
        jobs = [("nifti", volumes.loc[suid].to_dict(), out_dir / f"{suid}.npz", tuple(windows), size, None, None, non_hu)
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
            jobs.append(("dicom", files, out_dir / f"{suid}.npz", tuple(windows), size, gt_dir, b, non_hu))
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
