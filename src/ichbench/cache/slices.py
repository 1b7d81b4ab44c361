"""One slice at a time into a cached series: HU slice -> windows, head and brain masks, brain mean and truth at S x S.

The arithmetic of the cache (see preprocess.py for the NPZ format), shared by the in-memory path
(`preprocess.cache_series`, a Series with its HU volume) and the streaming path (`preprocess._cache_one`,
which decodes one DICOM file at a time): a slice is padded to a square with air, windowed and
area-resized in one sweep (`sweep.window_resize`), quantised, and its masks are computed at S x S, so
memory holds one full-resolution slice and the small arrays of the series. Every value is computed
with the same float32 operations, in the same order, as the former whole-series code (chunks of 32
slices), so the NPZ arrays are identical to it (tests/test_stream.py).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from numpy.lib import format as npy

from ..inputs.geometry import spacing_summary
from ..inputs.inputcheck import HuSample, square_padding
from ..inputs.masks import head_and_brain
from ..inputs.sweep import window_resize, window_resize_sampled
from ..inputs.windowing import Window, quantise, resize_mask

if TYPE_CHECKING:       # pandas only where boxes are given (a preprocessing process does without it)
    import pandas as pd

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
    `spool`: a folder where the per-slice arrays at S x S are written as they come (then copied into the
    NPZ and removed), so that memory does not grow with the series; None keeps them in memory. Spooled,
    the masks are bit-packed (2 kB a slice at 128 px instead of 16), a gt_mask that cannot hold anything
    (no masks, no boxes) is not spooled at all, and with `out_path` (the NPZ that `write` will be given) the
    images go straight into the NPZ's first member, so that each cached byte is written once.
    `jit`: window and resize with the compiled sweep, and the masks in one compiled pass (`inputs.sweep_jit`)
    where numba is available (same values).
    """

    def __init__(self, rows: int, cols: int, windows: Sequence[Window], size: int, capacity: int,
                 gt: dict[str, np.ndarray] | None = None, boxes: pd.DataFrame | None = None,
                 series_uid: str = "", spool: str | os.PathLike | None = None, jit: bool = False,
                 out_path: str | os.PathLike | None = None):
        self.rows, self.cols, self.windows, self.size = rows, cols, tuple(windows), size
        self.jit = jit
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
        n = max(int(capacity), 0)
        self.capacity = n
        shapes = {"images": (len(self.windows), size, size), "head_mask": (size, size),
                  "brain_mask": (size, size), "gt_mask": (size, size)}
        self._shapes = {k: (v, np.uint8 if k == "images" else bool) for k, v in shapes.items()}
        self._spool, self._npz = None, None
        if spool is not None:     # the per-slice arrays go to files beside the NPZ, not to memory
            Path(spool).mkdir(parents=True, exist_ok=True)
            spooled = [k for k in shapes if k != "gt_mask" or gt is not None or self.hits]
            if out_path is not None:
                self._npz = _StreamedMember(_partial(out_path), "images", (n,) + shapes["images"], np.uint8)
                spooled.remove("images")
            stem = Path(spool) / f".{series_uid or 'series'}.{os.getpid()}.spool"
            paths = {k: stem.with_name(f"{stem.name}-{k}") for k in spooled}
            # 1 MiB buffers: a slice's arrays are copied there and written many slices at a time
            self._spool = {k: (path, open(path, "wb", buffering=1 << 20)) for k, path in paths.items()}
            self._arrays = None
        else:
            self._arrays = {k: np.empty((n,) + shape, dtype) for k, (shape, dtype) in self._shapes.items()}
        self.brain_mean = np.full(n, np.nan, np.float32)
        self.gt_pixels = np.zeros(n, np.int64)
        self.head_pixels = np.zeros(n, np.int64)
        self.sop_uids: list[str] = []
        self.box_hit = False
        self.hu_check = HuSample()

    @property
    def n(self) -> int:
        return len(self.sop_uids)

    def add(self, hu: np.ndarray, sop_uid: str) -> None:
        """One (rows, cols) float32 HU slice, the next along the slice normal."""
        k = self.n
        if k >= self.capacity:
            raise ValueError(f"series {self.series_uid}: more slices than the {self.capacity} planned")
        if hu.shape != (self.rows, self.cols):
            raise ValueError(f"series {self.series_uid}: slice of shape {hu.shape}, the series' {(self.rows, self.cols)}")
        if self.jit and not self.padded and hu.dtype == np.float32:   # the HU check's sample from the sweep
            windowed, hu_small, sample = window_resize_sampled(hu, self.windows, self.size, self.hu_check.stride)
        else:
            sample = None
            if self.padded:
                self._pad[self.top:self.top + self.rows, self.left:self.left + self.cols] = hu
            windowed, hu_small = window_resize(self._pad if self.padded else hu, self.windows, self.size,
                                               jit=self.jit)
        if sample is None:
            self.hu_check.add(hu)
        else:
            self.hu_check.add_sampled(sample)
        image = quantise(windowed)
        h, b = head_and_brain(hu_small, jit=self.jit)
        head, brain = h & self.inside_small, b & self.inside_small
        if brain.any():
            self.brain_mean[k] = hu_small[brain].mean()
        self.head_pixels[k] = head.sum()
        gt = self._add_truth(k, sop_uid)
        if self._spool is None:
            for name, value in (("images", image), ("head_mask", head), ("brain_mask", brain), ("gt_mask", gt)):
                self._arrays[name][k] = value
        else:
            if self._npz is not None:
                self._npz.write(image)
            else:
                self._spool["images"][1].write(np.ascontiguousarray(image).data)
            for name, value in (("head_mask", head), ("brain_mask", brain), ("gt_mask", gt)):
                if name in self._spool:
                    self._spool[name][1].write(np.packbits(value).data)
        self.sop_uids.append(sop_uid)

    def _add_truth(self, k: int, sop_uid: str) -> np.ndarray:
        """The (S, S) ground truth of slice k (and its full-resolution pixel count in gt_pixels)."""
        rows, cols = self.rows, self.cols
        gt_small = np.zeros((self.size, self.size), bool)
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
            gt_small = resize_mask(part[None], self.size)[0]
        if boxes is not None:
            self.box_hit = True
            if self.gt is None:
                self.gt_pixels[k] = box_pixels(boxes, rows, cols).sum()
            from ..datasets import bhx

            shifted = boxes.assign(x=boxes["x"] + self.left, y=boxes["y"] + self.top)
            gt_small |= bhx.rasterise(shifted, self.side, self.side, self.size)
        return gt_small

    def _big(self, name: str):
        """A per-slice array of the slices added: in memory, or where it is spooled."""
        shape, dtype = self._shapes[name]
        if self._spool is None:
            return self._arrays[name][:self.n]
        if name == "images" and self._npz is not None:
            return self._npz
        if name not in self._spool:
            return _Spooled(None, (self.n,) + shape, np.dtype(dtype), "zeros")
        path, f = self._spool[name]
        f.flush()
        return _Spooled(path, (self.n,) + shape, np.dtype(dtype), "raw" if name == "images" else "bits")

    def close(self) -> None:
        """Remove the spool files and an unfinished NPZ (after `write`, or when the series is given up)."""
        if self._npz is not None:
            self._npz.discard()
        if self._spool is not None:
            for path, f in self._spool.values():
                f.close()
                Path(path).unlink(missing_ok=True)

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
        gt_pixels = self.gt_pixels[:n]
        head_area = self.head_pixels[:n] * (pixel_mm2 * (self.side / self.size) ** 2)
        top, bottom, left, right = self.top, self.bottom, self.left, self.right
        arrays = dict(
            images=self._big("images"), head_mask=self._big("head_mask"), brain_mask=self._big("brain_mask"),
            gt_mask=self._big("gt_mask"), has_gt=np.bool_(has_gt),
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
        tmp = _partial(out_path)
        if self._npz is not None and self._npz.path != tmp:
            raise ValueError(f"series {series.series_uid}: streamed into {self._npz.path}, not {tmp}")
        try:
            if self._spool is None:
                np.savez(tmp, **arrays)
            else:
                _savez_spooled(tmp, arrays)
            os.replace(tmp, out_path)
        finally:
            if tmp.exists():
                tmp.unlink()
            self.close()
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


def _partial(out_path: str | os.PathLike) -> Path:
    """The temporary name an NPZ is written under before it is renamed into place."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".partial.npz")


class _Spooled:
    """An array (C order) to be copied into an NPZ without loading it: a raw file (`kind` "raw"), a file of
    bit-packed bool slices (`np.packbits` of each slice: "bits"), or all False / zero ("zeros", no file)."""

    def __init__(self, path, shape, dtype, kind: str = "raw"):
        self.path, self.shape, self.dtype, self.kind = (None if path is None else Path(path)), shape, dtype, kind

    def copy_to(self, member, chunk: int = 1 << 20) -> None:
        """The array's bytes, `chunk` bytes (about) at a time."""
        per = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        rows = max(1, chunk // max(per, 1))
        if self.kind == "zeros":
            block = bytes(per * min(rows, self.shape[0]))
            for i in range(0, self.shape[0], rows):
                member.write(block[:per * min(rows, self.shape[0] - i)])
            return
        with open(self.path, "rb") as f:
            if self.kind == "raw":
                while data := f.read(chunk):
                    member.write(data)
                return
            packed = -(-per // 8)                      # np.packbits of one slice
            for i in range(0, self.shape[0], rows):
                k = min(rows, self.shape[0] - i)
                bits = np.frombuffer(f.read(packed * k), np.uint8).reshape(k, packed)
                member.write(np.unpackbits(bits, axis=1, count=per).data)   # 0 / 1 bytes: numpy's bool


class _StreamedMember:
    """The temporary NPZ of a series, open on its first member (an .npy of `shape` slices), written slice by
    slice; `finish` writes the other members after it (`_savez_spooled`'s layout)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype):
        self.path, self.name, self.planned, self.dtype = path, name, shape, np.dtype(dtype)
        self.n = 0                          # slices written
        self.zip = _new_zip(path)
        self.member = self.zip.open(name + ".npy", "w", force_zip64=True)
        _npy_header(self.member, shape, self.dtype)

    def write(self, value: np.ndarray) -> None:
        self.member.write(np.ascontiguousarray(value, self.dtype).data)
        self.n += 1

    def finish(self, arrays: dict) -> None:
        """The other members into the same zip. Where fewer slices came than planned (files that failed to
        decode), the first member's header is wrong: its slices are copied into a new zip under the right one."""
        self.member.close()
        if self.n == self.planned[0]:
            _write_members(self.zip, arrays)
            self.zip.close()
            return
        self.zip.close()
        first = self.path.with_name(self.path.name + ".first")
        os.replace(self.path, first)
        try:
            with zipfile.ZipFile(first) as old, old.open(self.name + ".npy") as src, _new_zip(self.path) as zf:
                npy.read_magic(src)
                npy.read_array_header_1_0(src)
                per = int(np.prod(self.planned[1:], dtype=np.int64)) * self.dtype.itemsize
                with zf.open(self.name + ".npy", "w", force_zip64=True) as member:
                    _npy_header(member, (self.n,) + self.planned[1:], self.dtype)
                    left = per * self.n
                    while left:
                        data = src.read(min(left, 1 << 20))
                        member.write(data)
                        left -= len(data)
                _write_members(zf, arrays)
        finally:
            first.unlink(missing_ok=True)

    def discard(self) -> None:
        """Close and remove the temporary NPZ (after `finish` and the rename, nothing is left to remove)."""
        try:
            self.member.close()
            self.zip.close()
        except Exception:   # an unfinished member of a series given up: the file goes anyway
            pass
        self.path.unlink(missing_ok=True)


def _new_zip(path: Path) -> zipfile.ZipFile:
    """An NPZ open for writing, as np.savez makes it (uncompressed members)."""
    return zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)


def _npy_header(member, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The .npy header np.save writes for a C-order array of `shape` and `dtype`."""
    npy.write_array_header_1_0(member, {"shape": shape, "fortran_order": False, "descr": npy.dtype_to_descr(dtype)})


def _write_members(zf, arrays: dict) -> None:
    """Each array as an .npy member of the open zip `zf`, with the header np.save writes; `_Spooled` ones
    copied from their files."""
    for name, value in arrays.items():
        with zf.open(name + ".npy", "w", force_zip64=True) as member:
            if not isinstance(value, _Spooled):
                npy.write_array(member, np.asanyarray(value), allow_pickle=False)
                continue
            _npy_header(member, value.shape, value.dtype)
            value.copy_to(member)


def _savez_spooled(path: Path, arrays: dict) -> None:
    """np.savez(path, **arrays) where some arrays are `_Spooled` (the same members: an uncompressed zip of
    .npy files), or where the first is a `_StreamedMember` already writing into `path` (`SliceCacher.write`
    checks that it is)."""
    first = next(iter(arrays.values()))
    if isinstance(first, _StreamedMember):
        first.finish({k: v for k, v in arrays.items() if v is not first})
        return
    with _new_zip(path) as zf:
        _write_members(zf, arrays)
