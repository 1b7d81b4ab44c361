"""BHX boxes drawn on another series of a study, moved onto the series the pipeline chose, by patient coordinates.

BHX boxes are keyed by the SOPInstanceUID of the slice they were drawn on, often not a slice of the
series the paper's rule picks (all six boxes of CQ500-CT-0 lie on another series). Per box:

1. its source slice is found in the header index (index.csv holds the geometry of every series);
2. on the chosen series of the same patient and study the box stays as it is when the source slice is
   one of its slices (`transfer` = `on chosen series`);
3. otherwise its four corners go to patient coordinates (ImagePositionPatient, ImageOrientationPatient,
   PixelSpacing of the source slice; continuous pixel coordinates, pixel k spanning [k, k + 1) as in
   bhx.rasterise), and every chosen slice whose plane lies within half a slice thickness of the box
   centre, measured along the chosen series' slice normal, receives the box: the corners are projected
   into that slice's pixel grid and their bounding box is kept (`transfer` = `by patient coordinates`,
   `distance_mm` = the centre's distance from the slice plane). Half a slice thickness is half of the
   thicker of the two slices, so a thick source slice reaches every thin chosen slice in its slab and
   a thin source slice its one thick chosen slice. Gantry tilt needs nothing special: the geometry is
   that of patient space.
4. a box that cannot be moved (source slice not indexed, no chosen series, another study, no chosen
   slice close enough) is kept in the record with the reason, and nowhere else.

Outputs: a BHX-format box file on the chosen slices (read by bhx.read_bhx, with the columns
`transfer, source_sop_uid, source_series_uid, distance_mm` kept into results/data/boxes.csv) and a
record of every input box (`box_id`, patient, source slice, label, outcome, chosen slices reached).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..inputs.geometry import slice_normal
from . import bhx

log = logging.getLogger(__name__)

ON_CHOSEN = "on chosen series"
BY_COORDS = "by patient coordinates"
TRANSFER_COLUMNS = ["transfer", "source_sop_uid", "source_series_uid", "distance_mm"]
RECORD_COLUMNS = ["box_id", "patient_id", "study_uid", "source_series_uid", "source_sop_uid", "label_name",
                  "chosen_series_uid", "outcome", "target_slices"]


def _frame(orientation, position, spacing):
    """-> (origin, row direction * column spacing, column direction * row spacing, unit normal)."""
    o = np.asarray(orientation, float)
    r, c = o[:3] / np.linalg.norm(o[:3]), o[3:6] / np.linalg.norm(o[3:6])
    return np.asarray(position, float), r * float(spacing[1]), c * float(spacing[0]), slice_normal(o)


def to_patient(u: np.ndarray, v: np.ndarray, orientation, position, spacing) -> np.ndarray:
    """Continuous pixel coordinates (u along columns, v along rows; pixel k spans [k, k+1)) -> (n, 3) mm."""
    p0, du, dv, _ = _frame(orientation, position, spacing)
    return p0 + np.outer(np.asarray(u, float) - 0.5, du) + np.outer(np.asarray(v, float) - 0.5, dv)


def to_pixels(points: np.ndarray, orientation, position, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) mm -> continuous pixel coordinates (u, v) of the slice plane (orthogonal projection)."""
    p0, du, dv, _ = _frame(orientation, position, spacing)
    d = np.asarray(points, float) - p0
    return d @ du / (du @ du) + 0.5, d @ dv / (dv @ dv) + 0.5


def _thickness(row) -> float:
    t = float(row["slice_thickness"]) if pd.notna(row["slice_thickness"]) else np.nan
    return t if np.isfinite(t) and t > 0 else np.nan


def transfer(boxes: pd.DataFrame, index: pd.DataFrame, chosen: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """boxes: bhx.read_bhx; index: preprocess.read_index (geometry as tuples); chosen: series_candidates
    rows (patient_id, study_uid, series_uid, selected). -> (boxes on chosen slices in BHX box columns
    plus TRANSFER_COLUMNS, one record row per input box)."""
    sel = chosen[chosen["selected"].astype(bool)] if "selected" in chosen else chosen
    chosen_by_patient = {p: g.iloc[0] for p, g in sel.groupby("patient_id")}
    by_sop = index.drop_duplicates("sop_uid").set_index("sop_uid")
    series_files = {u: g for u, g in index[index["series_uid"].isin(set(sel["series_uid"]))].groupby("series_uid")}
    out, record = [], []
    for box_id, b in boxes.reset_index(drop=True).iterrows():
        rec = {"box_id": box_id, "patient_id": "", "study_uid": b.get("bhx_study_uid", ""),
               "source_series_uid": b.get("bhx_series_uid", ""), "source_sop_uid": b["sop_uid"],
               "label_name": b.get("label_name", ""), "chosen_series_uid": "", "outcome": "", "target_slices": 0}
        record.append(rec)
        if b["sop_uid"] not in by_sop.index:
            rec["outcome"] = "dropped: its slice is not in the index"
            continue
        src = by_sop.loc[b["sop_uid"]]
        rec.update(patient_id=src["patient_id"], study_uid=src["study_uid"], source_series_uid=src["series_uid"])
        target = chosen_by_patient.get(src["patient_id"])
        if target is None:
            rec["outcome"] = "dropped: the scan has no chosen series"
            continue
        rec["chosen_series_uid"] = target["series_uid"]
        base = {c: b[c] for c in bhx.BOX_COLUMNS}
        if src["series_uid"] == target["series_uid"]:
            out.append({**base, "transfer": ON_CHOSEN, "source_sop_uid": b["sop_uid"],
                        "source_series_uid": src["series_uid"], "distance_mm": 0.0})
            rec.update(outcome=ON_CHOSEN, target_slices=1)
            continue
        if str(target.get("study_uid", src["study_uid"])) != str(src["study_uid"]):
            rec["outcome"] = "dropped: the chosen series is in another study"
            continue
        files = series_files.get(target["series_uid"])
        if files is None or src["orientation"] is None or src["position"] is None or src["pixel_spacing"] is None:
            rec["outcome"] = "dropped: no geometry for the source or chosen slices"
            continue
        x, y, w, h = (float(b[k]) for k in ("x", "y", "width", "height"))
        corners = to_patient(np.array([x, x + w, x, x + w]), np.array([y, y, y + h, y + h]),
                             src["orientation"], src["position"], src["pixel_spacing"])
        centre = corners.mean(axis=0)
        tol = 0.5 * np.nanmax([_thickness(src), np.nanmedian(files["slice_thickness"].to_numpy(float))])
        if not np.isfinite(tol):
            rec["outcome"] = "dropped: slice thickness unknown"
            continue
        n = slice_normal(files.iloc[0]["orientation"])
        dist = np.array([float(n @ (centre - np.asarray(p, float))) for p in files["position"]])
        hits = np.nonzero(np.abs(dist) <= tol + 1e-6)[0]
        if not len(hits):
            rec["outcome"] = f"dropped: no chosen slice within {tol:.2f} mm (nearest {np.abs(dist).min():.2f} mm)"
            continue
        for k in hits:
            t = files.iloc[k]
            u, v = to_pixels(corners, t["orientation"], t["position"], t["pixel_spacing"])
            out.append({**base, "sop_uid": t["sop_uid"], "x": float(u.min()), "y": float(v.min()),
                        "width": float(u.max() - u.min()), "height": float(v.max() - v.min()),
                        "transfer": BY_COORDS, "source_sop_uid": b["sop_uid"],
                        "source_series_uid": src["series_uid"], "distance_mm": round(float(dist[k]), 4)})
        rec.update(outcome=BY_COORDS, target_slices=len(hits))
    moved = pd.DataFrame(out, columns=bhx.BOX_COLUMNS + TRANSFER_COLUMNS)
    return moved, pd.DataFrame(record, columns=RECORD_COLUMNS)


def to_bhx_format(moved: pd.DataFrame) -> pd.DataFrame:
    """Boxes on chosen slices -> the BHX CSV layout (SOPInstanceUID, ..., data, labelName, labelType) + TRANSFER_COLUMNS."""
    data = [repr({"x": float(r.x), "y": float(r.y), "width": float(r.width), "height": float(r.height)})
            for r in moved.itertuples()]
    return pd.DataFrame({"SOPInstanceUID": moved["sop_uid"], "SeriesInstanceUID": moved["bhx_series_uid"],
                         "StudyInstanceUID": moved["bhx_study_uid"], "data": data,
                         "labelName": moved["label_name"], "labelType": moved["label_type"],
                         **{c: moved[c] for c in TRANSFER_COLUMNS}})


def summary(record: pd.DataFrame) -> dict:
    """Boxes and scans kept: on the chosen series, moved there, dropped (by reason)."""
    out = {"boxes": len(record), "scans": int(record.loc[record["patient_id"] != "", "patient_id"].nunique())}
    for name, sel in (("on_chosen", record["outcome"] == ON_CHOSEN), ("transferred", record["outcome"] == BY_COORDS)):
        out[f"boxes_{name}"] = int(sel.sum())
    kept = record["outcome"].isin([ON_CHOSEN, BY_COORDS])
    out["boxes_dropped"] = int((~kept).sum())
    out["scans_kept"] = int(record.loc[kept, "patient_id"].nunique())
    out["dropped_by_reason"] = record.loc[~kept, "outcome"].str.replace(r"\(nearest.*\)", "", regex=True).value_counts().to_dict()
    return out
