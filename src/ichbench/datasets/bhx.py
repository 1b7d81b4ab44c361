"""BHX (Brain Hemorrhage Extended, Reis et al., PhysioNet 2020): hemorrhage bounding boxes on CQ500 slices.

A BHX file (`1_Initial_Manual_Labeling.csv`, `2_Extrapolation_to_Selected_Series.csv`, ...) has one
row per box: `SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID, data, labelName, labelType`,
`data` a Python dict literal `{'x': .., 'y': .., 'width': .., 'height': ..}` in pixels of the
original (512 x 512) slice, x along columns and y along rows from the top-left corner.
Boxes are matched to slices by SOPInstanceUID only.

Uses: the slice-level protocol (a slice of an anomalous scan is anomalous where a box lies on it;
a series with no box at all has no slice truth) and localisation: boxes are rasterised into the
cached `gt_mask` at the cache's size and listed, matched to the cached slices, in
`results/data/boxes.csv`.
"""
from __future__ import annotations

import ast
import logging
import os
from typing import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

BOX_COLUMNS = ["sop_uid", "bhx_series_uid", "bhx_study_uid", "x", "y", "width", "height", "label_name", "label_type"]


#: Columns of a box file written by bhx_transfer.py, kept when present.
EXTRA_COLUMNS = ["transfer", "source_sop_uid", "source_series_uid", "distance_mm"]


class BoxError(ValueError):
    pass


def _parse_box(text) -> tuple[float, float, float, float] | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        d = ast.literal_eval(text.strip())
        box = tuple(float(d[k]) for k in ("x", "y", "width", "height"))
    except Exception:
        return None
    if not all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
        return None
    return box


def read_bhx(paths: str | os.PathLike | Sequence[str | os.PathLike] | None) -> pd.DataFrame:
    """One or more BHX box files -> DataFrame(BOX_COLUMNS); rows whose `data` is not a box are dropped
    with a warning. Identical boxes listed in several files are kept once."""
    if paths is None or (isinstance(paths, (str, os.PathLike)) and not str(paths)):
        return pd.DataFrame(columns=BOX_COLUMNS)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = []
    for path in [p for p in paths if str(p)]:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:
            raise BoxError(f"{path}: cannot read as a BHX box file ({type(exc).__name__})") from None
        need = {"SOPInstanceUID", "data"}
        if not need <= set(df.columns):
            raise BoxError(f"{path}: not a BHX box file (needs columns SOPInstanceUID and data; "
                           f"has {', '.join(df.columns[:8])})")
        boxes = [_parse_box(t) for t in df["data"]]
        ok = np.array([b is not None for b in boxes], bool)
        if (~ok).any():
            log.warning("%s: %d of %d rows are not a box (x, y, width, height) and are ignored", path, int((~ok).sum()), len(df))
        arr = np.array([b for b in boxes if b is not None], float).reshape(-1, 4)
        d = df[ok]
        frames.append(pd.DataFrame({
            "sop_uid": d["SOPInstanceUID"].str.strip().to_numpy(),
            "bhx_series_uid": d.get("SeriesInstanceUID", pd.Series([""] * len(d), index=d.index)).str.strip().to_numpy(),
            "bhx_study_uid": d.get("StudyInstanceUID", pd.Series([""] * len(d), index=d.index)).str.strip().to_numpy(),
            "x": arr[:, 0], "y": arr[:, 1], "width": arr[:, 2], "height": arr[:, 3],
            "label_name": d.get("labelName", pd.Series([""] * len(d), index=d.index)).to_numpy(),
            "label_type": d.get("labelType", pd.Series([""] * len(d), index=d.index)).to_numpy(),
            # written by bhx_transfer.py: how a box came onto the chosen series
            **{c: d[c].to_numpy() for c in EXTRA_COLUMNS if c in d},
        }))
    if not frames:
        return pd.DataFrame(columns=BOX_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    return out.drop_duplicates(["sop_uid", "x", "y", "width", "height", "label_name"]).reset_index(drop=True)


def rasterise(boxes: pd.DataFrame, rows: int, cols: int, size: int) -> np.ndarray:
    """Boxes of one slice (pixels of a rows x cols slice) -> a (size, size) boolean mask.

    Every output pixel the box overlaps by at least half (per axis) is set, and a box always sets
    at least one pixel, so a slice with a box is never lost at a small cache size.
    """
    mask = np.zeros((size, size), bool)
    sy, sx = size / float(rows), size / float(cols)
    for x, y, w, h in boxes[["x", "y", "width", "height"]].to_numpy(float):
        x0, x1 = np.clip([x * sx, (x + w) * sx], 0, size)
        y0, y1 = np.clip([y * sy, (y + h) * sy], 0, size)
        if x1 <= x0 or y1 <= y0:
            continue
        c0, c1 = int(np.floor(x0 + 0.5)), int(np.floor(x1 + 0.5))
        r0, r1 = int(np.floor(y0 + 0.5)), int(np.floor(y1 + 0.5))
        if c1 <= c0:
            c0, c1 = min(int(x0), size - 1), min(int(x0), size - 1) + 1
        if r1 <= r0:
            r0, r1 = min(int(y0), size - 1), min(int(y0), size - 1) + 1
        mask[r0:r1, c0:c1] = True
    return mask


def boxes_by_sop(boxes: pd.DataFrame | None, sop_uids: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The boxes lying on each of the given slices (only slices with at least one box)."""
    if boxes is None or boxes.empty:
        return {}
    hit = boxes[boxes["sop_uid"].isin(set(sop_uids))]
    return {u: g for u, g in hit.groupby("sop_uid", sort=False)}


def match_boxes(slices: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """Boxes matched to cached slices: patient, series, slice index, NPZ and the box (original pixels)."""
    cols = ["patient_id", "series_uid", "sop_uid", "slice_index", "npz", "label_name", "x", "y", "width", "height"]
    if boxes is None or boxes.empty or slices.empty:
        return pd.DataFrame(columns=cols)
    keep = [c for c in ("patient_id", "series_uid", "sop_uid", "slice_index", "npz", "scan_label") if c in slices]
    m = boxes.merge(slices[keep], on="sop_uid", how="inner")
    out = m[[c for c in cols + ["scan_label"] + EXTRA_COLUMNS if c in m]]
    return out.sort_values(["patient_id", "series_uid", "slice_index", "label_name"]).reset_index(drop=True)
