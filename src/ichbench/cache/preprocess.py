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

import functools
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..datasets import bhx
from ..inputs import dicom_index, dicomio, rejections, series_select
from ..inputs.inputcheck import NON_HU_ACTIONS, mask_truth
from ..inputs.windowing import Window
from .slices import AIR_PAD_HU, SliceCacher, box_pixels as _box_pixels  # noqa: F401  (kept importable here)

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
                axial_tolerance_deg: float = 30.0, selected_csv=None, scan_key: str = "patient",
                file_list: str | os.PathLike | None = None) -> pd.DataFrame:
    """Index the DICOM folder by headers and choose one series per scan: per patient, or with
    `scan_key="study"` per study (series_select.SCAN_KEYS). `file_list`: only the files it names (one a
    line, relative to the folder; dicom_index.listed_files), e.g. a dataset adapter's scans of a large folder.

    Writes the file index, the per-series candidates with the choice and its reason, the per-scan
    manifest of the choice (`series_selected.csv` beside the candidates unless `selected_csv`) and
    the files and scans rejected while indexing. Returns the candidates. Raises where no scan has a
    usable series (after writing the files).
    """
    if not Path(dicom_dir).is_dir():
        raise FileNotFoundError(f"DICOM folder {dicom_dir} does not exist")
    override = series_select.read_series_override(series_override)
    t0 = time.perf_counter()
    index, rejected = dicom_index.index_folder(dicom_dir, workers=workers, file_list=file_list)
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


def cache_series(series: dicomio.Series, out_path: str | os.PathLike, windows: Sequence[Window],
                 size: int, gt: dict[str, np.ndarray] | None = None, boxes: pd.DataFrame | None = None,
                 chunk: int = 32, not_hu: bool = False) -> dict:
    """Window, resize and write one series held in memory; the NPZ appears atomically (temp file, then rename).

    A non-square slice is first padded to a centred square with air (-1024 HU), so that its aspect
    ratio is kept; the padding lies outside the head and brain masks. Slices are processed one at a
    time (`slices.SliceCacher`; `chunk` is kept for callers and no longer used). `gt`: full-size
    masks by SOPInstanceUID; `boxes`: BHX boxes. The series has ground truth (`has_gt`) where `gt` is
    given or at least one box lies on one of its slices. The slice truth comes from the
    full-resolution masks and boxes (`gt_pixels`, `gt_area_mm2`); `gt_mask` at `size` is for
    localisation only. `not_hu`: the series was accepted although its values do not look like HU
    (flagged in the cache and series.csv). DICOM series are cached without a volume (`_cache_one`).
    """
    n, rows, cols = series.hu.shape
    cacher = SliceCacher(rows, cols, windows, size, n, gt=gt, boxes=boxes, series_uid=series.series_uid)
    for hu, sop in zip(series.hu, series.sop_uids):
        cacher.add(hu, sop)
    return cacher.write(series, out_path, not_hu=not_hu)


def _stream_dicom(files: pd.DataFrame, windows, size, gt_dir, boxes, spool=None, jit: bool = False, out_path=None):
    """Decode, window, resize and mask a DICOM series one file at a time: (Series without `hu`, cacher).

    `spool`: folder for the cacher's per-slice arrays (see slices.SliceCacher), None to keep them in memory;
    with `out_path` (the NPZ the cacher's `write` will be given) the images go straight into it.
    `jit`: the compiled HU conversion and windows-and-resize sweep (inputs.sweep_jit; the same values)."""
    plan = dicomio.plan_series(files)
    gt = load_gt_masks(gt_dir, plan.series_uid, plan.notes)
    cacher = SliceCacher(plan.rows, plan.cols, windows, size, len(plan.files), gt=gt, boxes=boxes,
                         series_uid=plan.series_uid, spool=spool, jit=jit, out_path=out_path)
    try:
        for sop, hu in dicomio.iter_hu(plan, jit=jit):
            cacher.add(hu, sop)
        return dicomio.finish_series(plan), cacher
    except BaseException:
        cacher.close()
        raise


#: slices one process caches from which the compiled kernels (inputs/sweep_jit.py: HU, windows sweep, masks) pay
#: for their start-up (numba's import and first dispatch, less OpenCV's import that they do without: about 0.22
#: CPU-s more, against about 0.9 ms saved a 512 px slice; break-even near 240 slices, docs/performance.md)
JIT_MIN_SLICES = 300
#: the same where numba's disk cache does not hold the kernels yet (a fresh installation: compiling them costs
#: about 7.5 CPU-s, once; the demo's 900 slices would lose 14 CPU-s to it in two workers)
JIT_MIN_SLICES_COLD = 10_000


def use_jit(slices_per_process: float) -> bool:
    """Whether a process caching this many slices uses the compiled sweep: ICHBENCH_JIT=1 / 0 forces it
    on / off; otherwise from JIT_MIN_SLICES on where the kernels are in numba's disk cache, from
    JIT_MIN_SLICES_COLD where they would be compiled first (the values are the same either way)."""
    from ..inputs.sweep_jit import forced

    on = forced()
    if on is not None:
        return on
    if slices_per_process < JIT_MIN_SLICES:
        return False
    return slices_per_process >= JIT_MIN_SLICES_COLD or kernels_cached()


def kernels_cached() -> bool:
    """Whether numba's disk cache seems to hold the preprocessing kernels for their source (an index file of
    each, newer than inputs/sweep_jit.py, where numba puts them: NUMBA_CACHE_DIR, else the `__pycache__`
    beside that file or the user-wide `~/.cache/numba`), without importing numba. A wrong answer costs time
    only: a compile (about 7.5 CPU-s) or the numpy path."""
    import glob
    import sys

    from ..inputs import sweep_jit

    src = os.path.abspath(sweep_jit.__file__)
    try:
        stamp = os.stat(src).st_mtime
    except OSError:
        return False
    stem = os.path.splitext(os.path.basename(src))[0]
    ext = f"py{sys.version_info[0]}{sys.version_info[1]}.nbi"
    if os.environ.get("NUMBA_CACHE_DIR"):
        roots = [(os.environ["NUMBA_CACHE_DIR"], True)]
    else:
        user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        roots = [(os.path.join(os.path.dirname(src), "__pycache__"), False), (os.path.join(user, "numba"), True)]

    def found(name: str) -> bool:
        for root, nested in roots:
            pattern = os.path.join(root, "**", name) if nested else os.path.join(root, name)
            for path in glob.iglob(pattern, recursive=nested):
                try:
                    if os.stat(path).st_mtime >= stamp:
                        return True
                except OSError:
                    continue
        return False

    return all(found(f"{stem}.{fn}-*.{ext}") for fn in sweep_jit.PREPROCESS_KERNELS)


SERIES_COLUMNS = ["patient_id", "study_uid", "series_uid", "npz", "n_slices", "slice_thickness", "tilt_deg",
                  "spacing_median_mm", "spacing_max_mm", "n_gaps", "uneven_spacing", "has_gt", "gt_source",
                  "gt_slices", "rows", "columns", "pad_top", "pad_bottom", "pad_left", "pad_right", "not_hu",
                  "source", "rejected_slices", "notes"]


@functools.cache
def _one_opencv_thread() -> None:
    """OpenCV's own threads off in a preprocessing process (once): its masks at 128 x 128 are too small to
    split, and its idle pool threads spin (sched_yield) on the other cores; that cost 0.2-0.3 CPU-seconds
    (mostly system time) per 1,000 slices. The masks are the same either way. (OpenCV itself is imported only
    where a mask is computed with it: the compiled masks do without.)"""
    from ..inputs.masks import single_threaded_opencv

    single_threaded_opencv()


def _cache_one(args) -> tuple[dict | None, list[dicomio.Rejection]]:
    kind, item, out_path, windows, size, gt_dir, boxes, non_hu, jit = args
    _one_opencv_thread()
    suid = item["series_uid"] if kind == "nifti" else item.iloc[0]["series_uid"]
    pid = item["patient_id"] if kind == "nifti" else item.iloc[0]["patient_id"]
    # the scan the cohort knows (a study where scans are studies, e.g. RSNA), so the split names why it is missing
    sid = pid if kind == "nifti" or "scan_id" not in item else item.iloc[0]["scan_id"]
    left_out = dicomio.Rejection(sid, f"scan left out: its series {suid} could not be loaded", "load")
    cacher = None
    try:
        if kind == "nifti":
            from ..inputs.nifti import load_volume

            series, gt = load_volume(item)
            cacher = SliceCacher(*series.hu.shape[1:], windows, size, len(series.hu), gt=gt, series_uid=suid,
                                 jit=jit)
            for hu, sop in zip(series.hu, series.sop_uids):
                cacher.add(hu, sop)
        else:   # one file at a time: memory does not grow with the series
            series, cacher = _stream_dicom(item, windows, size, gt_dir, boxes, spool=Path(out_path).parent, jit=jit,
                                           out_path=out_path)
        problem = cacher.hu_problem()      # inputcheck.hu_problem of the whole series
        if problem and non_hu != "accept":
            cacher.close()
            advice = ("convert the volume to HU first" if kind == "nifti" else
                      "an image saved in a display window? set preprocess.non_hu: accept to use it anyway")
            where = item["path"] if kind == "nifti" else suid
            return None, series.rejected + [dicomio.Rejection(where, f"{problem}; {advice}", "load"),
                                            dicomio.Rejection(sid, f"scan left out: its series {suid} is not "
                                                                   "CT in HU", "load")]
        if problem:
            log.warning("!!! series %s of scan %s: %s; ACCEPTED because preprocess.non_hu is accept: "
                        "windows, head and brain masks assume HU and are wrong for it (series.csv not_hu)",
                        suid, pid, problem)
            series.notes.append(f"NOT HU, accepted: {problem}")
        row = cacher.write(series, out_path, not_hu=bool(problem))
        return row, series.rejected
    except dicomio.DicomReadError as exc:
        return None, [dicomio.Rejection(exc.path, exc.reason, "load"), left_out]
    except Exception as exc:  # one bad series must not stop the shard
        return None, [dicomio.Rejection(suid, f"series failed ({dicomio.describe_error(exc)})", "load"), left_out]
    finally:
        if cacher is not None:
            cacher.close()      # its spool files, where any are left


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
    chosen = pd.read_csv(series_csv, dtype={"patient_id": str, "series_uid": str, "study_uid": str, "scan_id": str})
    chosen = chosen[chosen["selected"].astype(bool)]
    chosen = chosen[[shard_of(u, n_shards) == shard for u in chosen["series_uid"]]]
    nifti = "source" in chosen and (chosen["source"] == "nifti").any()
    if nifti:
        volumes = pd.read_csv(index_csv, dtype=str, keep_default_na=False).set_index("series_uid", drop=False)
        jobs = [("nifti", volumes.loc[suid].to_dict(), out_dir / f"{suid}.npz", tuple(windows), size, None, None, non_hu)
                for suid in chosen["series_uid"]]
        slices = int(pd.to_numeric(chosen["n_slices"], errors="coerce").fillna(0).sum()) if "n_slices" in chosen else 0
    else:
        index = read_index(index_csv)
        groups = {u: g for u, g in index[index["series_uid"].isin(set(chosen["series_uid"]))].groupby("series_uid")}
        scan_of = dict(zip(chosen["series_uid"], chosen["scan_id"].astype(str))) if "scan_id" in chosen else {}
        jobs = []
        for suid in chosen["series_uid"]:
            files = groups.get(suid)
            if files is None:
                continue
            b = None
            if boxes is not None and len(boxes):
                b = boxes[boxes["sop_uid"].isin(set(files["sop_uid"]))]
            if "scan_id" in chosen:
                files = files.assign(scan_id=scan_of[suid])
            jobs.append(("dicom", files, out_dir / f"{suid}.npz", tuple(windows), size, gt_dir, b, non_hu))
        slices = sum(len(j[1]) for j in jobs)
    jit = use_jit(slices / max(1, min(workers, len(jobs))))
    jobs = [j + (jit,) for j in jobs]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor     # (11 ms of imports a one-worker job skips)

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
