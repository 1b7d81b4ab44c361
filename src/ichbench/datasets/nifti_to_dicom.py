"""Pixel truth for DICOM slices from NIfTI masks drawn on volumes rebuilt from them (BHSD, HemSeg on RSNA scans).

BHSD and HemSeg ship masks for RSNA stage-2 train scans, as NIfTI volumes that carry no SOPInstanceUIDs. A
mask is matched to its RSNA scan by name (BHSD `<PatientID>_<StudyInstanceUID>`; HemSeg the 10 hex digits of
a Study or Series Instance UID without `ID_`, which one is unconfirmed: both are tried), then put onto each
DICOM slice:

- by stack order (`slices_by_index`) where the mask has one slice per file and the files' matrix: voxel
  slice k is the k-th file along the slice normal, as ITK / GDCM stack a series, with the in-plane axes,
  flips and the direction of k read from the affine. HemSeg's volumes are rebuilt by SimpleITK, whose
  affine has no room for a gantry tilt (the k axis is the slice normal), so patient coordinates would
  shift a tilted scan's mask in-plane by about 1 mm per slice.
- else by patient coordinates (`resample_slices`): pixel (r, c) of a slice lies at IPP + c dc u + r dr v
  (LPS, u and v the rows of ImageOrientationPatient), the NIfTI affine maps voxels to RAS (x, y of LPS
  negated); the nearest mask voxel is taken.

The result is the gt_masks_dir format of the cache (`<SeriesInstanceUID>.npz`: sop_uids, masks).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..inputs.nifti import scan_id_of

_BHSD = re.compile(r"(ID_[0-9a-fA-F]+)_(ID_[0-9a-fA-F]+)")


def mask_files(folders) -> dict[str, Path]:
    """Every .nii / .nii.gz below the folders -> {name without suffix: path} (first one wins)."""
    out: dict[str, Path] = {}
    for f in folders:
        for p in sorted(Path(f).rglob("*")):
            sid = scan_id_of(p) if p.is_file() else None
            if sid:
                out.setdefault(sid, p)
    return out


def candidate_ids(name: str) -> list[str]:
    """The RSNA Study/Series UIDs a mask name may stand for."""
    m = _BHSD.fullmatch(name)
    if m:
        return [m.group(2)]
    if re.fullmatch(r"[0-9a-fA-F]{10}", name):
        return [f"ID_{name}"]
    return [name]


def _floats(s: str) -> np.ndarray:
    return np.array([float(v) for v in str(s).split("\\")], float)


def resample_slices(mask: np.ndarray, affine: np.ndarray, files: pd.DataFrame) -> dict[str, np.ndarray]:
    """mask (i, j, k) with its RAS affine -> {sop_uid: (rows, cols) uint8} for the DICOM slices of `files`
    (index rows: sop_uid, position, orientation, pixel_spacing, rows, columns)."""
    inv = np.linalg.inv(affine)
    shape = np.array(mask.shape[:3])
    out = {}
    for f in files.itertuples(index=False):
        ipp, iop, ps = _floats(f.position), _floats(f.orientation), _floats(f.pixel_spacing)
        rows, cols = int(f.rows), int(f.columns)
        r, c = np.mgrid[0:rows, 0:cols]
        lps = ipp[None, None] + (c[..., None] * ps[1]) * iop[:3] + (r[..., None] * ps[0]) * iop[3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        vox = np.rint(ras @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
        ok = np.all((vox >= 0) & (vox < shape), axis=-1)
        sl = np.zeros((rows, cols), np.uint8)
        v = vox[ok]
        sl[ok] = (mask[v[:, 0], v[:, 1], v[:, 2]] > 0).astype(np.uint8)
        out[f.sop_uid] = sl
    return out


def slices_by_index(mask: np.ndarray, affine: np.ndarray, files: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """mask (i, j, k) of a volume rebuilt from exactly these DICOM files (as ITK / GDCM stack them: voxel
    slice k = the k-th file along the slice normal, i and j = the pixel columns and rows) -> {sop_uid: (rows,
    cols) uint8}. Which in-plane axis is which, their flips and the direction of k are read from the affine;
    the positions are not, so a gantry tilt the rebuilt affine ignores shifts nothing. None where the mask's
    shape does not fit the files (another slice count or matrix): resample_slices then."""
    rows, cols = files["rows"].astype(int), files["columns"].astype(int)
    if mask.ndim != 3 or mask.shape[2] != len(files) or rows.nunique() != 1 or cols.nunique() != 1:
        return None
    iop = _floats(files["orientation"].iloc[0])
    u, v = iop[:3], iop[3:]
    normal = np.cross(u, v)
    along = np.array([_floats(p) @ normal for p in files["position"]])
    order = np.argsort(along, kind="stable")
    lps = affine[:3, :3] * np.array([[-1.0], [-1.0], [1.0]])        # voxel axes in LPS
    d = lps / np.maximum(np.linalg.norm(lps, axis=0), 1e-12)
    if d[:, 2] @ normal < 0:
        order = order[::-1]
    first_is_col = abs(d[:, 0] @ u) >= abs(d[:, 0] @ v)
    s0 = np.sign(d[:, 0] @ (u if first_is_col else v)) or 1.0
    s1 = np.sign(d[:, 1] @ (v if first_is_col else u)) or 1.0
    out = {}
    sops = files["sop_uid"].to_numpy()
    for k, f in enumerate(order):
        sl = np.asarray(mask[:, :, k]) > 0
        sl = sl[::int(s0), ::int(s1)]
        arr = sl.T if first_is_col else sl                           # -> (rows, cols)
        if arr.shape != (int(rows.iloc[0]), int(cols.iloc[0])):
            return None
        out[sops[f]] = arr.astype(np.uint8)
    return out


def write_masks(folders, index: pd.DataFrame, out: str | os.PathLike) -> dict[str, int]:
    """Match the masks below `folders` to the index's studies / series, resample them, write one
    `<series>.npz` per matched series into `out`: by stack order where the mask fits the series' files
    (slices_by_index), else by patient coordinates. -> counts (masks, matched, unmatched, series,
    slices_with_gt, by_order, by_coordinates)."""
    import nibabel as nib

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = mask_files(folders)
    by_study = {s: g for s, g in index.groupby("study_uid")}
    by_series = {s: g for s, g in index.groupby("series_uid")}
    counts = {"masks": len(files), "matched": 0, "unmatched": 0, "series": 0, "slices_with_gt": 0, "by_order": 0,
              "by_coordinates": 0}
    for name, path in files.items():
        hit = next((g for cid in candidate_ids(name) for g in (by_study.get(cid), by_series.get(cid))
                    if g is not None), None)
        if hit is None:
            counts["unmatched"] += 1
            continue
        counts["matched"] += 1
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        data = data[..., 0] if data.ndim == 4 else data
        for suid, g in hit.groupby("series_uid"):
            masks = slices_by_index(data, img.affine, g)
            counts["by_order" if masks is not None else "by_coordinates"] += 1
            if masks is None:
                masks = resample_slices(data, img.affine, g)
            sops = list(masks)
            np.savez_compressed(out / f"{suid}.npz", sop_uids=np.array(sops),
                                masks=np.stack([masks[s] for s in sops]))
            counts["series"] += 1
            counts["slices_with_gt"] += int(sum(m.any() for m in masks.values()))
    return counts
