"""The scan's own geometry for an anomaly map: back to the original rows x columns, in a NIfTI volume with the scan's affine.

The affine comes from the DICOM geometry (LPS -> RAS) or is the input NIfTI's own.

DICOM: voxel (i, j, k) = column i, row j of grid slice k lies at
    ImagePositionPatient_0 + i * PixelSpacing[1] * IOP[:3] + j * PixelSpacing[0] * IOP[3:] + k * step
in LPS millimetres, `step` the typical vector between neighbouring slices' positions (with a gantry tilt it
is not normal to the slices, and the affine is sheared, as it must be); nibabel's RAS world negates x and y.
The origin and step are fitted to all slice positions (least squares over their grid places); slices missing
from a regular stack (a gap of whole steps) are grid slices of zeros; a stack that fits no regular grid gets
the mean step; a note says by how many millimetres slices lie off their places where it is over 0.01 mm.

NIfTI: the map goes back through the inverse of the reader's reorientation onto the input's own voxel grid
and affine, voxel for voxel.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: a slice whose position lies further than this share of a step from its grid place breaks the regular grid
GRID_TOLERANCE = 0.2


@dataclass
class Grid:
    """Where each cached slice lies in the output volume, and the volume's affine (RAS, as nibabel expects)."""

    kind: str                          # dicom | nifti
    affine: np.ndarray                 # 4 x 4 voxel -> RAS world (mm)
    shape: tuple[int, int, int]        # the NIfTI array's shape
    slice_k: np.ndarray                # (n,) each cached slice's index along the volume's slice axis
    slice_axis: int                    # that axis of the NIfTI array (2 for DICOM; the input's S axis for NIfTI)
    z_mm: np.ndarray                   # (n,) world z (superior +) of each slice's first pixel as displayed
    notes: list[str] = field(default_factory=list)
    ornt: np.ndarray | None = None     # NIfTI: the input's orientation (io_orientation of its affine)
    max_offset_mm: float = 0.0         # furthest a slice lies from its place in the volume (uneven spacing)


def dicom_grid(ipp: np.ndarray, iop: Sequence[float], pixel_spacing: Sequence[float], rows: int,
               cols: int) -> Grid:
    """The grid of a DICOM stack: `ipp` (n, 3) ImagePositionPatient of the cached slices in their order,
    `iop` ImageOrientationPatient, `pixel_spacing` (row spacing, column spacing) in mm."""
    ipp = np.asarray(ipp, float).reshape(-1, 3)
    iop = np.asarray(iop, float)
    x_dir, y_dir = iop[:3], iop[3:6]
    normal = np.cross(x_dir, y_dir)
    n = len(ipp)
    notes: list[str] = []
    steps = np.diff(ipp, axis=0)
    origin = ipp[0]
    if n == 1:
        step, k, off = normal * 1.0, np.zeros(1, int), np.zeros(1)
        notes.append("a single slice: its thickness along the normal is set to 1 mm in the map")
    else:
        norms = np.linalg.norm(steps, axis=1)
        base = float(np.median(norms))
        near = np.abs(norms - base) <= GRID_TOLERANCE * base
        step = np.median(steps[near], axis=0)
        k = np.rint((ipp - ipp[0]) @ step / float(step @ step)).astype(int)
        regular = k[0] == 0 and np.all(np.diff(k) >= 1)
        if regular:             # origin and step fitted to all slices (least squares over their grid places)
            design = np.c_[np.ones(n), k]
            origin, step = np.linalg.lstsq(design, ipp, rcond=None)[0]
            off = np.linalg.norm(ipp - (origin + k[:, None] * step), axis=1)
            regular = off.max() <= GRID_TOLERANCE * np.linalg.norm(step)
        if regular:
            missing = int(k[-1] + 1 - n)
            if missing:
                notes.append(f"{missing} slice position(s) of the regular {np.linalg.norm(step):.4g} mm stack have "
                             "no image (gaps in the series): those slices of the map are 0")
        else:
            origin, step, k = ipp[0], (ipp[-1] - ipp[0]) / (n - 1), np.arange(n)
            off = np.linalg.norm(ipp - (origin + k[:, None] * step), axis=1)
            notes.append(f"uneven slice spacing fits no regular grid: the map's slices are placed at the mean step "
                         f"of {np.linalg.norm(step):.4g} mm")
    if off.max() > 0.01:
        notes.append(f"slices lie up to {off.max():.3g} mm from their places in the map volume (uneven spacing; "
                     "one affine holds one step)")
    row_mm, col_mm = float(pixel_spacing[0]), float(pixel_spacing[1])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = x_dir * col_mm, y_dir * row_mm, step, origin
    return Grid("dicom", LPS_TO_RAS @ lps, (int(cols), int(rows), int(k[-1] + 1)), k, 2, ipp[:, 2].copy(), notes,
                max_offset_mm=float(off.max()))


def nifti_grid(path: str | os.PathLike) -> Grid:
    """The grid of an input NIfTI volume: its own shape and affine (slices along its canonical S axis)."""
    import nibabel as nib

    img = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape[:3])
    ornt = nib.orientations.io_orientation(img.affine)
    canon_shape = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        canon_shape[int(axis)] = shape[i]
    canon = img.affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    nx, ny, nz = canon_shape
    # the reader shows canonical slice k with rows anterior -> posterior, columns right -> left (nifti.py):
    # its first pixel is canonical voxel (nx - 1, ny - 1, k)
    first = canon @ np.c_[np.full(nz, nx - 1), np.full(nz, ny - 1), np.arange(nz), np.ones(nz)].T
    axis = int(np.nonzero(ornt[:, 0] == 2)[0][0])        # the input's axis that runs inferior <-> superior
    k = np.arange(nz)
    return Grid("nifti", np.asarray(img.affine, float), shape, (nz - 1 - k) if ornt[axis, 1] < 0 else k, axis,
                first[2], [], ornt)


def to_original_size(maps: np.ndarray | torch.Tensor, original_size: Sequence[int], padding: Sequence[int],
                     chunk: int = 16) -> np.ndarray:
    """(n, h, w) maps of the padded square slices -> (n, rows, cols) float32 at the original size: resized
    bilinearly to the padded square, then the air padding cut away (the inverse of the cache's steps)."""
    rows, cols = (int(v) for v in original_size)
    top, bottom, left, right = (int(v) for v in padding)
    side = rows + top + bottom
    maps = torch.as_tensor(np.asarray(maps, np.float32) if not isinstance(maps, torch.Tensor) else maps).float()
    out = np.empty((len(maps), rows, cols), np.float32)
    for s in range(0, len(maps), chunk):
        part = maps[s:s + chunk, None].cpu()
        big = part[:, 0] if part.shape[-2:] == (side, side) else \
            F.interpolate(part, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        out[s:s + len(part)] = big[:, top:top + rows, left:left + cols].numpy()
    return out


def to_volume(grid: Grid, maps: np.ndarray) -> np.ndarray:
    """(n, rows, cols) slice maps in the cache's slice order -> the NIfTI array of `grid`."""
    import nibabel as nib

    if grid.kind == "dicom":
        vol = np.zeros(grid.shape, np.float32)
        for i, k in enumerate(grid.slice_k):
            vol[:, :, k] = maps[i].T
        return vol
    canon = maps.transpose(2, 1, 0)[::-1, ::-1, :]        # the inverse of nifti._to_slices
    ras = nib.orientations.axcodes2ornt("RAS")
    vol = nib.orientations.apply_orientation(canon, nib.orientations.ornt_transform(ras, grid.ornt))
    return np.ascontiguousarray(vol, dtype=np.float32)


def write_nifti(path: str | os.PathLike, grid: Grid, volume: np.ndarray, description: str = "") -> None:
    """The map volume as NIfTI-1 with the grid's affine as sform (and as qform, less any shear). Stored as int16
    scaled by scl_slope / scl_inter (which viewers and nibabel apply): half the bytes of float32, and an error
    below 1/65535 of the map's range."""
    import nibabel as nib

    img = nib.Nifti1Image(volume.astype(np.float32, copy=False), grid.affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    img.header.set_sform(grid.affine, code=1)          # scanner coordinates
    img.header.set_qform(grid.affine, code=1)          # nibabel keeps the closest rigid one where sheared
    if description:
        img.header["descrip"] = description[:79].encode()
    nib.save(img, str(path))
