"""Slice and scan labels of NIfTI datasets: the slice IDs nifti.py gives, and what each mask slice holds.

inputs/nifti.py reorients every volume to RAS+ and names its axial slices `<scan>#<k>`, k = 0 the most
inferior. A dataset whose labels count slices along the file's own third axis (CT-ICH's 1-based
SliceNumber) maps them here; masks are read slice by slice in the file's order and mapped the same way.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..inputs.nifti import scan_id_of


class NiftiLabelError(ValueError):
    pass


def slice_order(path: str | os.PathLike) -> tuple[int, bool]:
    """-> (slices along the file's third axis, whether that axis runs superior -> inferior, i.e. is reversed
    in the RAS+ slice order). Raises where the third axis is not the head's long axis."""
    import nibabel as nib

    img = nib.load(str(path))
    ornt = nib.orientations.io_orientation(img.affine)
    axis, flip = int(ornt[2][0]), float(ornt[2][1])
    if axis != 2:
        raise NiftiLabelError(f"{path}: the third axis of the volume is not the inferior-superior axis "
                              f"(axis codes {''.join(nib.aff2axcodes(img.affine))}); its slice labels cannot be mapped")
    return int(img.shape[2]), flip < 0


def slice_id(scan: str, k_file: int, n: int, reversed_: bool) -> str:
    """The pipeline's slice ID of the file's slice k_file (0-based along its third axis)."""
    return f"{scan}#{n - 1 - k_file if reversed_ else k_file}"


def mask_slice_values(path: str | os.PathLike, scan: str | None = None) -> pd.DataFrame:
    """-> one row per axial slice of a mask: sop_uid (`<scan>#<k>`), hemorrhage (any voxel > 0), values
    (the nonzero integer values present, ';'-joined) and voxels (> 0)."""
    import nibabel as nib

    scan = scan or scan_id_of(path)
    n, rev = slice_order(path)
    data = np.asanyarray(nib.load(str(path)).dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    rows = []
    for k in range(n):
        sl = np.asarray(data[:, :, k])
        vals = np.unique(sl[sl > 0]) if (sl > 0).any() else np.zeros(0)
        rows.append({"sop_uid": slice_id(scan, k, n, rev), "hemorrhage": int(len(vals) > 0),
                     "values": ";".join(str(int(v)) if float(v).is_integer() else f"{float(v):g}" for v in vals),
                     "voxels": int((sl > 0).sum())})
    return pd.DataFrame(rows, columns=["sop_uid", "hemorrhage", "values", "voxels"])


def nifti_index(index_csv: str | os.PathLike) -> pd.DataFrame:
    """The NIfTI header index (one row per volume: patient_id = scan, path, mask_path, n_slices)."""
    return pd.read_csv(index_csv, dtype=str, keep_default_na=False)
