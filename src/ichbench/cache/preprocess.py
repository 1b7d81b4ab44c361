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
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..inputs import dicomio, indexrows, rejections
from ..inputs.index_tables import build_index, read_index, write_index  # noqa: F401  (kept importable here)
from ..inputs.inputcheck import NON_HU_ACTIONS, mask_truth
from ..inputs.windowing import Window
from .slices import AIR_PAD_HU, SliceCacher, box_pixels as _box_pixels  # noqa: F401  (kept importable here)

if TYPE_CHECKING:    # pandas is imported where it is used: a DICOM preprocessing process does without it
    import pandas as pd

log = logging.getLogger(__name__)


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


def _stream_dicom(files, windows, size, gt_dir, boxes, spool=None, jit: bool = False, out_path=None):
    """Decode, window, resize and mask a DICOM series one file at a time: (Series without `hu`, cacher).
    `files`: its rows of the header index (IndexRows or a DataFrame).

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
    suid = item["series_uid"] if kind == "nifti" else item.first("series_uid")
    pid = item["patient_id"] if kind == "nifti" else item.first("patient_id")
    # the scan the cohort knows (a study where scans are studies, e.g. RSNA), so the split names why it is missing
    sid = pid if kind == "nifti" or "scan_id" not in item else item.first("scan_id")
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
    """Cache the selected series of one shard into `out_dir`, with `series.csv` and `rejected.csv` beside;
    -> series.csv as a DataFrame (`cache_shard` is the same without pandas: its rows).

    `boxes`: BHX box file(s) or a box table (see bhx.py), rasterised into `gt_mask`. DICOM and NIfTI
    indexes (series_candidates.csv column `source`) are both handled. A series whose values do not
    look like CT in HU is rejected, or with `non_hu="accept"` cached with a warning and flagged.
    """
    import pandas as pd

    rows = cache_shard(index_csv, series_csv, out_dir, shard=shard, n_shards=n_shards, windows=windows, size=size,
                       gt_dir=gt_dir, workers=workers, boxes=boxes, non_hu=non_hu)
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def cache_shard(index_csv, series_csv, out_dir, *, shard: int, n_shards: int, windows: Sequence[Window],
                size: int, gt_dir=None, workers: int = 1, boxes=None, non_hu: str = "reject") -> list[dict]:
    """`preprocess_shard` -> the rows of series.csv. A DICOM shard without boxes, from the tables `build_index`
    writes, is read and written without importing pandas (`inputs.indexrows`; its import is a third of a short
    series' start-up); NIfTI, boxes and tables of another shape go through pandas, with the same result."""
    if non_hu not in NON_HU_ACTIONS:
        raise ValueError(f"non_hu must be one of {', '.join(NON_HU_ACTIONS)}, not {non_hu!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = None
    if boxes is None:
        try:
            jobs, slices = _plain_dicom_jobs(index_csv, series_csv, out_dir, shard, n_shards, windows, size, gt_dir,
                                             non_hu)
        except indexrows.IndexFormatError as exc:
            log.debug("%s; read with pandas", exc)
    if jobs is None:
        jobs, slices = _jobs(index_csv, series_csv, out_dir, shard, n_shards, windows, size, gt_dir, boxes, non_hu)
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
    indexrows.write_csv(out_dir / "series.csv", rows, SERIES_COLUMNS)
    indexrows.write_csv(out_dir / "rejected.csv", rejections.rejections_rows(rejected), rejections.REJECTION_COLUMNS)
    if jobs and not rows:
        log.warning("shard %d: none of its %d series could be cached", shard, len(jobs))
    return rows


def _plain_dicom_jobs(index_csv, series_csv, out_dir: Path, shard, n_shards, windows, size, gt_dir, non_hu):
    """The jobs of a DICOM shard without boxes from the CSV files, without pandas (IndexFormatError where
    the tables are NIfTI ones or not as build_index writes them), and their slices."""
    chosen = [c for c in indexrows.read_chosen(series_csv) if shard_of(c["series_uid"], n_shards) == shard]
    if any(c.get("source", "dicom") != "dicom" for c in chosen):
        raise indexrows.IndexFormatError(f"{series_csv}: not DICOM series")
    groups = indexrows.read_series_rows(index_csv, [c["series_uid"] for c in chosen])
    jobs = []
    for c in chosen:
        files = groups.get(c["series_uid"])
        if files is None:
            continue
        if "scan_id" in c:
            files = files.assign(scan_id=c["scan_id"])
        jobs.append(("dicom", files, out_dir / f"{c['series_uid']}.npz", tuple(windows), size, gt_dir, None, non_hu))
    return jobs, sum(len(j[1]) for j in jobs)


def _jobs(index_csv, series_csv, out_dir: Path, shard, n_shards, windows, size, gt_dir, boxes, non_hu):
    """The jobs of a shard, read with pandas: NIfTI volumes, or DICOM series with their boxes; and their slices."""
    import pandas as pd

    from ..datasets import bhx

    if boxes is not None and not isinstance(boxes, pd.DataFrame):
        boxes = bhx.read_bhx(boxes)
    chosen = pd.read_csv(series_csv, dtype={"patient_id": str, "series_uid": str, "study_uid": str, "scan_id": str})
    chosen = chosen[chosen["selected"].astype(bool)]
    chosen = chosen[[shard_of(u, n_shards) == shard for u in chosen["series_uid"]]]
    nifti = "source" in chosen and (chosen["source"] == "nifti").any()
    if nifti:
        volumes = pd.read_csv(index_csv, dtype=str, keep_default_na=False).set_index("series_uid", drop=False)
        jobs = [("nifti", volumes.loc[suid].to_dict(), out_dir / f"{suid}.npz", tuple(windows), size, None, None,
                 non_hu) for suid in chosen["series_uid"]]
        slices = int(pd.to_numeric(chosen["n_slices"], errors="coerce").fillna(0).sum()) if "n_slices" in chosen else 0
        return jobs, slices
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
        jobs.append(("dicom", indexrows.IndexRows.from_frame(files), out_dir / f"{suid}.npz", tuple(windows), size,
                     gt_dir, b, non_hu))
    return jobs, sum(len(j[1]) for j in jobs)
