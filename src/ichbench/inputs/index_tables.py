"""A DICOM folder's header index and series choice as the tables index.csv, series_candidates.csv and the rest.

`build_index` indexes the headers (`dicom_index`), chooses one series per scan (`series_select`) and writes the
tables; `read_index` reads index.csv back with pandas (`indexrows.read_series_rows` reads the rows of chosen
series without it). No pixel is decoded here.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from . import dicomio, rejections
from .indexrows import TUPLE_COLUMNS, parse_tuple

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("ichbench.cache.preprocess")     # the name its log lines always had

def _tuple_to_str(v) -> str:
    return "" if v is None else "\\".join(f"{x:.9g}" for x in v)


def write_index(index: pd.DataFrame, path: str | os.PathLike) -> None:
    """The header index as index.csv (tuples as backslash-separated numbers; read back by `read_index` or,
    without pandas, `indexrows.read_series_rows`)."""
    out = index.copy()
    for c in TUPLE_COLUMNS:
        out[c] = out[c].map(_tuple_to_str)
    out.to_csv(path, index=False)


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    import pandas as pd

    df = pd.read_csv(path, dtype={"patient_id": str, "study_uid": str, "series_uid": str, "sop_uid": str,
                                  "image_type": str, "series_description": str, "kernel": str,
                                  "transfer_syntax": str}, keep_default_na=False)
    for c in TUPLE_COLUMNS:
        df[c] = df[c].map(parse_tuple)
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
    import pandas as pd

    from . import dicom_index, series_select

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
        rejections.rejections_frame(rejected).to_csv(rejected_csv, index=False)
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
