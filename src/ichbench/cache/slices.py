"""One slice at a time into a cached series: HU slice -> windows, head and brain masks, brain mean and truth at S x S.

The arithmetic of the cache (see preprocess.py for the NPZ format), shared by the in-memory path
(`preprocess.cache_series`, a Series with its HU volume) and the streaming path (`preprocess._cache_one`,
which decodes one DICOM file at a time): a slice is padded to a square with air, windowed at full
resolution into reused buffers, area-resized, quantised, and its masks are computed at S x S, so
memory holds one full-resolution slice and the small arrays of the series. Every value is computed
with the same float32 operations, in the same order, as the former whole-series code (chunks of 32
slices), so the NPZ arrays are identical to it (tests/test_stream.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..datasets import bhx
from ..inputs.geometry import spacing_summary
from ..inputs.inputcheck import HuSample, square_padding
from ..inputs.masks import brain_mask, head_mask
from ..inputs.windowing import Window, apply_windows, quantise, resize, resize_mask

AIR_PAD_HU = -1024.0   # what a non-square slice is padded with


def box_pixels(boxes: pd.DataFrame, rows: int, cols: int) -> np.ndarray:
    """BHX boxes of one slice -> the (rows, cols) pixels they cover (at least one per box)."""
    mask = np.zeros((rows, cols), bool)
    for x, y, w, h in boxes[["x", "y", "width", "height"]].to_numpy(float):
        c0, r0 = min(max(int(np.floor(x)), 0), cols - 1), min(max(int(np.floor(y)), 0), rows - 1)
        c1, r1 = max(min(int(np.ceil(x + w)), cols), c0 + 1), max(min(int(np.ceil(y + h)), rows), r0 + 1)
        mask[r0:r1, c0:c1] = True
    return mask


class SliceCacher:
    """Collects the cached arrays of one series, slice by slice (`add`), and writes its NPZ (`write`).

    `capacity`: most slices that will come (the arrays at S x S are allocated once). `gt`: full-size
    ground-truth masks by SOPInstanceUID (None: no masks); `boxes`: BHX boxes of the series' slices.
    The values' HU check (`hu_problem`) is gathered on the way, as `inputcheck.hu_problem` judges a volume.
    """

    def __init__(self, rows: int, cols: int, windows: Sequence[Window], size: int, capacity: int,
                 gt: dict[str, np.ndarray] | None = None, boxes: pd.DataFrame | None = None,
                 series_uid: str = ""):
        self.rows, self.cols, self.windows, self.size = rows, cols, tuple(windows), size
        self.gt, self.series_uid = gt, series_uid
        self.hits = ({} if boxes is None or not len(boxes) else
                     {u: g for u, g in boxes.groupby("sop_uid", sort=False)})   # as bhx.boxes_by_sop
        self.top, self.bottom, self.left, self.right = square_padding(rows, cols)
        self.side = rows + self.top + self.bottom
        self.padded = (self.top, self.bottom, self.left, self.right) != (0, 0, 0, 0)
        inside = np.ones((self.side, self.side), bool)
        if self.padded:
            inside[:] = False
            inside[self.top:self.top + rows, self.left:self.left + cols] = True
        self.inside_small = resize_mask(inside[None], size)[0]
        self._pad = np.full((self.side, self.side), AIR_PAD_HU, np.float32) if self.padded else None
        self._win = np.empty((len(self.windows), self.side, self.side), np.float32)
        n = max(int(capacity), 0)
        self.images = np.empty((n, len(self.windows), size, size), np.uint8)
        self.head = np.empty((n, size, size), bool)
        self.brain = np.empty((n, size, size), bool)
        self.brain_mean = np.full(n, np.nan, np.float32)
        self.gt_small = np.zeros((n, size, size), bool)
        self.gt_pixels = np.zeros(n, np.int64)
        self.sop_uids: list[str] = []
        self.box_hit = False
        self.hu_check = HuSample()

    @property
    def n(self) -> int:
        return len(self.sop_uids)

    def add(self, hu: np.ndarray, sop_uid: str) -> None:
        """One (rows, cols) float32 HU slice, the next along the slice normal."""
        k = self.n
        if k >= len(self.images):
            raise ValueError(f"series {self.series_uid}: more slices than the {len(self.images)} planned")
        if hu.shape != (self.rows, self.cols):
            raise ValueError(f"series {self.series_uid}: slice of shape {hu.shape}, the series' {(self.rows, self.cols)}")
        self.hu_check.add(hu)
        if self.padded:
            self._pad[self.top:self.top + self.rows, self.left:self.left + self.cols] = hu
            hu = self._pad
        size = self.size
        self.images[k] = quantise(resize(apply_windows(hu, self.windows, out=self._win)[None], size)[0])
        hu_small = resize(hu[None, None], size)[0, 0]
        h = head_mask(hu_small)
        b = brain_mask(hu_small, h)
        self.head[k], self.brain[k] = h & self.inside_small, b & self.inside_small
        if self.brain[k].any():
            self.brain_mean[k] = hu_small[self.brain[k]].mean()
        self._add_truth(k, sop_uid)
        self.sop_uids.append(sop_uid)

    def _add_truth(self, k: int, sop_uid: str) -> None:
        rows, cols = self.rows, self.cols
        boxes = self.hits.get(sop_uid)
        if self.gt is not None:
            part = self.gt.get(sop_uid)
            part = np.zeros((rows, cols), bool) if part is None else np.asarray(part) > 0
            if part.shape != (rows, cols):
                raise ValueError(f"ground-truth masks of series {self.series_uid} have shape {part.shape}, "
                                 f"the images {(rows, cols)}")
            self.gt_pixels[k] = part.sum() if boxes is None else (part | box_pixels(boxes, rows, cols)).sum()
            if self.padded:
                part = np.pad(part, ((self.top, self.bottom), (self.left, self.right)))
            self.gt_small[k] = resize_mask(part[None], self.size)[0]
        if boxes is not None:
            self.box_hit = True
            if self.gt is None:
                self.gt_pixels[k] = box_pixels(boxes, rows, cols).sum()
            shifted = boxes.assign(x=boxes["x"] + self.left, y=boxes["y"] + self.top)
            self.gt_small[k] |= bhx.rasterise(shifted, self.side, self.side, self.size)

    def hu_problem(self) -> str | None:
        """Why the slices added do not look like CT in HU (as inputcheck.hu_problem), or None."""
        return self.hu_check.problem()

    def write(self, series, out_path: str | os.PathLike, not_hu: bool = False) -> dict:
        """Write the NPZ of `series` (its IDs and geometry; its slices are the ones added, in order)
        atomically (temp file, then rename); return its row of series.csv."""
        n, rows, cols = self.n, self.rows, self.cols
        if list(series.sop_uids) != self.sop_uids:
            raise ValueError(f"series {series.series_uid}: the slices added are not the series' slices")
        sources = (["masks"] if self.gt is not None else []) + (["boxes"] if self.box_hit else [])
        has_gt = bool(sources)
        ps = np.asarray(series.pixel_spacing, float)
        pixel_mm2 = float(ps[0] * ps[1])
        head, gt_pixels = self.head[:n], self.gt_pixels[:n]
        head_area = head.sum(axis=(1, 2)) * (pixel_mm2 * (self.side / self.size) ** 2)
        top, bottom, left, right = self.top, self.bottom, self.left, self.right
        arrays = dict(
            images=self.images[:n], head_mask=head, brain_mask=self.brain[:n], gt_mask=self.gt_small[:n],
            has_gt=np.bool_(has_gt),
            gt_pixels=gt_pixels.astype(np.int32), gt_area_mm2=(gt_pixels * pixel_mm2).astype(np.float32),
            gt_source=np.array("+".join(sources)), source=np.array(series.source),
            sop_uids=np.array(series.sop_uids), positions=series.positions.astype(np.float32),
            instance_numbers=series.instance_numbers.astype(np.int32), slice_index=np.arange(n, dtype=np.int32),
            patient_id=np.array(series.patient_id), study_uid=np.array(series.study_uid),
            series_uid=np.array(series.series_uid), pixel_spacing=np.array(series.pixel_spacing, np.float32),
            slice_thickness=np.float32(series.slice_thickness), tilt_deg=np.float32(series.tilt_deg),
            spacing=np.asarray(series.spacing, np.float32),
            original_size=np.array([rows, cols], np.int32), padding=np.array([top, bottom, left, right], np.int32),
            head_area_mm2=head_area.astype(np.float32), brain_mean_hu=self.brain_mean[:n], not_hu=np.bool_(not_hu),
            windows=np.array(json.dumps([w.__dict__ for w in self.windows])), image_size=np.int32(self.size),
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
        if self.padded:
            notes.append(f"{rows} x {cols} slices padded with air to {self.side} x {self.side} (aspect ratio kept) "
                         f"before resizing to {self.size} x {self.size}")
        return {
            "patient_id": series.patient_id, "study_uid": series.study_uid, "series_uid": series.series_uid,
            "npz": out_path.name, "n_slices": n, "slice_thickness": series.slice_thickness,
            "tilt_deg": round(series.tilt_deg, 3), **spacing_summary(series.spacing),
            "has_gt": has_gt, "gt_source": "+".join(sources), "gt_slices": int((gt_pixels > 0).sum()),
            "rows": rows, "columns": cols, "pad_top": top, "pad_bottom": bottom, "pad_left": left,
            "pad_right": right, "not_hu": not_hu, "source": series.source, "rejected_slices": len(series.rejected),
            "notes": "; ".join(notes),
        }
