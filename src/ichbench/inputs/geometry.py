"""Geometry of a stack of CT slices: slice normal, axial or not, gantry tilt, spacing between slices, stack order."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    n = np.cross(row, col)
    return n / (np.linalg.norm(n) or 1.0)


def normal_angle_deg(orientation: Sequence[float]) -> float:
    """Angle between the slice normal and the patient's head-foot (z) axis."""
    return float(np.degrees(np.arccos(np.clip(abs(slice_normal(orientation)[2]), 0.0, 1.0))))


def is_axial(orientation: Sequence[float], tolerance_deg: float = 30.0) -> bool:
    """Axial (or gantry-tilted axial): the slice normal lies within tolerance of the z axis."""
    return normal_angle_deg(orientation) <= tolerance_deg


def stack_tilt_deg(normal: np.ndarray, positions: np.ndarray) -> float:
    """Gantry tilt of a stack: the larger of the slice normal's angle to z (tilt written into the
    orientation, as CQ500 and GE do) and the angle between the stack direction and the normal
    (tilt written as sheared positions)."""
    tilt = float(np.degrees(np.arccos(np.clip(abs(normal[2]), 0.0, 1.0))))
    if len(positions) > 1:
        d = np.asarray(positions[-1], float) - np.asarray(positions[0], float)
        if np.linalg.norm(d) > 0:
            tilt = max(tilt, float(np.degrees(np.arccos(np.clip(abs(np.dot(d, normal)) / np.linalg.norm(d), 0.0, 1.0)))))
    return tilt


def spacing_summary(spacing: np.ndarray) -> dict:
    """Median / max gap, number of gaps (> 1.5 x median: missing slices) and whether spacing is uneven."""
    gaps = np.asarray(spacing, float)
    if not len(gaps):
        return {"spacing_median_mm": float("nan"), "spacing_max_mm": float("nan"), "n_gaps": 0, "uneven_spacing": False}
    med = float(np.median(gaps))
    return {
        "spacing_median_mm": med,
        "spacing_max_mm": float(np.max(gaps)),
        "n_gaps": int((gaps > 1.5 * med).sum()),
        "uneven_spacing": bool((np.max(gaps) - np.min(gaps)) > 0.1 * max(med, 1e-6)),
    }


def stack_order(z: np.ndarray, instance: np.ndarray, sop: np.ndarray) -> np.ndarray:
    """Positions that sort the rows by z, then InstanceNumber, then SOPInstanceUID, stably: pandas'
    `sort_values` of the three columns (NaN last), computed with np.lexsort where the keys are plain numbers
    and strings, else by pandas."""
    if instance.dtype.kind in "iuf" and all(type(s) is str and not s.endswith("\x00") for s in sop):
        return np.lexsort((np.array(sop.tolist(), dtype=str), instance, z))
    import pandas as pd

    frame = pd.DataFrame({"_z": z, "instance_number": instance, "sop_uid": sop})
    return frame.sort_values(["_z", "instance_number", "sop_uid"]).index.to_numpy()
