"""Streaming preprocessing (issue 24 item 1) gives the arrays of the former whole-series algorithm, bit for bit.

`_reference_cache` below is the former `cache_series` (whole HU volume, chunks of 32 slices, torch's area
interpolation, `masks_for_volume`, `hu_problem` on the volume), kept here as the reference.
"""
import json
import tracemalloc

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
import torch.nn.functional as F

from ichbench.cache import preprocess
from ichbench.cache.preprocess import build_index, cache_series, preprocess_shard, read_index
from ichbench.datasets import bhx
from ichbench.inputs import dicom_index, dicomio
from ichbench.inputs.inputcheck import HuSample, hu_problem, square_padding
from ichbench.inputs import masks, sweep_jit
from scipy import ndimage
from ichbench.inputs.sweep import window_resize
from ichbench.inputs.windowing import PAPER_WINDOWS, apply_windows, area_resize, quantise

# --------------------------------------------------------------------------- the former algorithm


def _torch_resize(images, size):
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    mode = "area" if h >= size and w >= size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=(size, size), mode=mode, **kw).numpy()


def _old_windows(hu, windows):
    out = np.empty(hu.shape[:-2] + (len(windows),) + hu.shape[-2:], dtype=np.float32)
    for c, w in enumerate(windows):
        channel = (hu - np.float32(w.low)) * np.float32(2.0 / w.width) - np.float32(1.0)
        np.clip(channel, -1.0, 1.0, out=out[..., c, :, :])
    return out


def _old_mask_resize(m, size):
    return _torch_resize(m[:, None].astype(np.float32), size)[:, 0] >= 0.5


def _old_largest_component(mask):
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _old_head_mask(hu):
    m = _old_largest_component(hu > masks.AIR_HU)
    return ndimage.binary_fill_holes(m)


def _old_brain_mask(hu, head):
    soft = (hu >= masks.BRAIN_HU[0]) & (hu <= masks.BRAIN_HU[1]) & head
    bone = hu >= masks.BONE_HU
    if bone.any():
        closed = ndimage.binary_closing(bone, iterations=2)
        inside = ndimage.binary_fill_holes(closed) & ~closed
        brain = inside & soft
        if brain.sum() > 0.05 * max(head.sum(), 1):
            return ndimage.binary_opening(brain, iterations=1)
    radius = max(1, int(round(0.06 * np.sqrt(max(head.sum(), 1)))))
    inner = ndimage.binary_erosion(head, iterations=radius)
    return ndimage.binary_opening(soft & inner, iterations=1)


def masks_for_volume(hu):
    heads = np.zeros(hu.shape, dtype=bool)
    brains = np.zeros(hu.shape, dtype=bool)
    for i in range(hu.shape[0]):
        heads[i] = _old_head_mask(hu[i])
        brains[i] = _old_brain_mask(hu[i], heads[i])
    return heads, brains


def _reference_cache(hu, sop_uids, windows, size, gt=None, boxes=None, chunk=32):
    """The arrays the former cache_series computed from a whole (n, rows, cols) HU volume."""
    n, rows, cols = hu.shape
    top, bottom, left, right = square_padding(rows, cols)
    side = rows + top + bottom
    padded = (top, bottom, left, right) != (0, 0, 0, 0)
    inside = np.ones((side, side), bool)
    if padded:
        inside[:] = False
        inside[top:top + rows, left:left + cols] = True
    inside_small = _old_mask_resize(inside[None], size)[0]
    images = np.empty((n, len(windows), size, size), np.uint8)
    head = np.empty((n, size, size), bool)
    brain = np.empty((n, size, size), bool)
    brain_mean = np.full(n, np.nan, np.float32)
    for s in range(0, n, chunk):
        h = hu[s:s + chunk]
        if padded:
            h = np.pad(h, ((0, 0), (top, bottom), (left, right)), constant_values=-1024.0)
        images[s:s + len(h)] = quantise(_torch_resize(_old_windows(h, windows), size))
        small = _torch_resize(h[:, None], size)[:, 0]
        hm, bm = masks_for_volume(small)
        head[s:s + len(h)], brain[s:s + len(h)] = hm & inside_small, bm & inside_small
        for k in range(len(h)):
            if brain[s + k].any():
                brain_mean[s + k] = small[k][brain[s + k]].mean()
    gt_small = np.zeros((n, size, size), bool)
    gt_pixels = np.zeros(n, np.int64)
    hits = bhx.boxes_by_sop(boxes, sop_uids)
    if gt is not None:
        for s in range(0, n, chunk):
            part = np.stack([gt.get(u, np.zeros((rows, cols), bool)) for u in sop_uids[s:s + chunk]]) > 0
            gt_pixels[s:s + len(part)] = part.sum(axis=(1, 2))
            for k, u in enumerate(sop_uids[s:s + chunk]):
                if u in hits:
                    gt_pixels[s + k] = (part[k] | preprocess._box_pixels(hits[u], rows, cols)).sum()
            if padded:
                part = np.pad(part, ((0, 0), (top, bottom), (left, right)))
            gt_small[s:s + len(part)] = _old_mask_resize(part, size)
    for k, u in enumerate(sop_uids):
        if u in hits:
            if gt is None:
                gt_pixels[k] = preprocess._box_pixels(hits[u], rows, cols).sum()
            shifted = hits[u].assign(x=hits[u]["x"] + left, y=hits[u]["y"] + top)
            gt_small[k] |= bhx.rasterise(shifted, side, side, size)
    return dict(images=images, head_mask=head, brain_mask=brain, brain_mean_hu=brain_mean, gt_mask=gt_small,
                gt_pixels=gt_pixels.astype(np.int32), not_hu=np.bool_(hu_problem(hu) is not None))


def _assert_same(npz, ref):
    with np.load(npz) as z:
        for k, v in ref.items():
            got = z[k]
            assert got.dtype == v.dtype and got.shape == v.shape, k
            assert got.tobytes() == v.tobytes(), f"{k} differs from the former algorithm"


def _head_volume(n, rows, cols, seed=0):
    """A noisy round head (skull ring, brain, a bright blob) in HU, different on every slice."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    out = np.empty((n, rows, cols), np.float32)
    for k in range(n):
        r = np.hypot((y - rows / 2) / (0.42 * rows), (x - cols / 2) / (0.38 * cols)) * (1 + 0.02 * k)
        sl = np.where(r < 1.0, 900.0, -1000.0)
        sl[r < 0.88] = 30.0
        sl[(r < 0.3) & (x > cols / 2)] = 70.0
        out[k] = np.rint(sl + rng.normal(0, 8, sl.shape))
    return np.maximum(out, -1024)


# --------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("shape", [(512, 512, 128), (600, 600, 128), (513, 513, 128), (130, 130, 128),
                                   (256, 256, 100), (137, 211, 64)])
def test_area_resize_is_torch_area_interpolation_bit_for_bit(shape):
    h, w, s = shape
    x = np.random.default_rng(h).normal(0, 300, (2, 3, h, w)).astype(np.float32)
    ours = area_resize(x, s)
    theirs = F.interpolate(torch.from_numpy(x), size=(s, s), mode="area").numpy()
    assert ours.tobytes() == theirs.tobytes()


def test_area_resize_refuses_to_upsample():
    with pytest.raises(ValueError, match="downsamples only"):
        area_resize(np.zeros((1, 10, 10), np.float32), 20)


def test_windows_into_a_buffer_are_the_former_windows():
    hu = np.random.default_rng(1).normal(0, 900, (2, 64, 64)).astype(np.float32)
    hu[0, 0, 0] = np.nan
    out = np.empty((2, 3, 64, 64), np.float32)
    assert apply_windows(hu, PAPER_WINDOWS, out=out) is out
    assert out.tobytes() == _old_windows(hu, PAPER_WINDOWS).tobytes()
    with pytest.raises(ValueError, match="out has shape"):
        apply_windows(hu, PAPER_WINDOWS, out=np.empty((3, 64, 64), np.float32))


@pytest.mark.parametrize("case", range(8))
def test_hu_sample_slice_by_slice_is_hu_problem_of_the_volume(case):
    rng = np.random.default_rng(case)
    n, r, c = int(rng.integers(1, 6)), int(rng.integers(3, 70)), int(rng.integers(3, 70))
    v = [rng.normal(0, 600, (n, r, c)), np.rint(rng.normal(0, 600, (n, r, c))) * 0.5 - 1024,
         rng.uniform(-100, 150, (n, r, c)), np.rint(rng.uniform(0, 80, (n, r, c)))][case % 4].astype(np.float32)
    if case >= 4:
        v[0, 0, 0] = np.nan
    sample = HuSample(flush_at=int(rng.integers(1, 500)))
    for sl in v:
        sample.add(sl)
    strided = v[..., ::4, ::4]
    ref = np.percentile(strided[np.isfinite(strided)], [0.1, 99.9])
    got = sample.percentiles()
    assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()
    assert sample.problem() == hu_problem(v)
    assert (sample.problem() is not None) == (case % 4 >= 2)


def test_opencv_morphology_is_scipys():
    rng = np.random.default_rng(5)
    for i in range(300):
        shape = tuple(rng.integers(1, 40, 2))
        m = rng.random(shape) < rng.uniform(0.05, 0.95)
        if i % 3 == 0:                   # many components of equal size: the tie goes to the first in raster order
            m = np.zeros(shape, bool)
            m[::2, ::2] = rng.random(m[::2, ::2].shape) < 0.7
            m[1::4, ::4] |= m[::4, ::4][:m[1::4, ::4].shape[0]]
        if i % 5 == 1:
            m = m[:, ::-1]               # not contiguous
        k = int(rng.integers(1, 6))
        assert np.array_equal(masks._erode(m, k), ndimage.binary_erosion(m, iterations=k))
        assert np.array_equal(masks._dilate(m, k), ndimage.binary_dilation(m, iterations=k))
        assert np.array_equal(masks._fill_holes(m), ndimage.binary_fill_holes(m))
        assert np.array_equal(masks._largest_component(m), _old_largest_component(m))


def test_largest_component_tie_goes_to_the_first_in_raster_order():
    m = np.zeros((6, 8), bool)
    m[1, 0:2] = True                     # starts on row 1
    m[0, 5] = m[1, 5] = True             # starts on row 0: scipy's label 1, the one kept
    assert np.array_equal(masks._largest_component(m), _old_largest_component(m))
    assert masks._largest_component(m)[0, 5] and not masks._largest_component(m)[1, 0]


@pytest.mark.parametrize("shape, size", [((512, 512), 128), ((256, 256), 128), ((384, 256), 128), ((256, 256), 64),
                                         ((240, 200), 128), ((128, 128), 128), ((300, 300), 100)])
def test_window_resize_is_windows_then_area_resize(shape, size):
    rng = np.random.default_rng(shape[0] + size)
    hu = np.rint(rng.normal(0, 900, shape)).astype(np.float32)
    hu[:5, :7] = rng.normal(40, 30, (5, 7)).astype(np.float32)       # non-integer values inside the windows
    hu[0, 0], hu[-1, -1], hu[3, 3] = np.nan, -0.0, np.inf
    windows, small = window_resize(hu, PAPER_WINDOWS, size)
    ref_w = _torch_resize(_old_windows(hu, PAPER_WINDOWS)[None], size)[0]
    ref_hu = _torch_resize(hu[None, None], size)[0, 0]
    assert windows.shape == ref_w.shape and windows.tobytes() == ref_w.tobytes()
    assert small.shape == ref_hu.shape and small.tobytes() == ref_hu.tobytes()


def test_head_and_brain_masks_are_the_former_ones():
    vol = _head_volume(6, 128, 128, seed=2)
    vol[3] = np.where(vol[3] > 500, 30.0, vol[3])     # no skull: the eroded-head fallback
    vol[4, :, :20] = 900.0                            # bone touching the edge
    vol[5] = np.random.default_rng(3).normal(0, 600, (128, 128))
    for hu in vol:
        h = masks.head_mask(hu)
        assert np.array_equal(h, _old_head_mask(hu))
        assert np.array_equal(masks.brain_mask(hu, h), _old_brain_mask(hu, h))


def test_hu_sample_of_nothing_finite():
    sample = HuSample()
    sample.add(np.full((8, 8), np.nan, np.float32))
    assert sample.problem() == hu_problem(np.full((1, 8, 8), np.nan)) == "no finite value: not CT in HU"


# --------------------------------------------------------------------------- whole series


@pytest.mark.parametrize("rows, cols", [(256, 256), (240, 200), (180, 256)])
def test_cache_series_arrays_are_the_former_ones(tmp_path, rows, cols):
    hu = _head_volume(37, rows, cols)              # more than one former chunk of 32
    hu[5] = -1024.0                                 # all air
    hu[6, :3, -5:] = np.nan                         # a NaN in the air counts as content
    hu[7, -1, 0] = 3000.0                           # one bright pixel in the corner
    s = dicomio.Series(patient_id="P", study_uid="st", series_uid="S", hu=hu,
                       sop_uids=[f"S.{k}" for k in range(len(hu))], positions=np.arange(len(hu)) * 5.0,
                       instance_numbers=np.arange(len(hu)), pixel_spacing=(0.5, 0.5), slice_thickness=5.0,
                       tilt_deg=0.0, spacing=np.full(len(hu) - 1, 5.0))
    gt = {u: np.zeros((rows, cols), bool) for u in s.sop_uids[:20]}
    gt["S.3"][100:120, 90:130] = True
    gt["S.33"] = np.zeros((rows, cols), np.uint8)
    gt["S.33"][10:12, 10:12] = 1
    boxes = pd.DataFrame({"sop_uid": ["S.3", "S.3", "S.35"], "x": [5.5, 150.0, 20.0], "y": [7.0, 40.0, 30.0],
                          "width": [10.0, 30.5, 3.0], "height": [12.0, 8.0, 2.0]})
    row = cache_series(s, tmp_path / "S.npz", PAPER_WINDOWS, 128, gt, boxes)
    _assert_same(tmp_path / "S.npz", _reference_cache(hu, s.sop_uids, PAPER_WINDOWS, 128, gt, boxes))
    assert row["gt_source"] == "masks+boxes" and row["n_slices"] == 37
    for size in (32, 100):                          # another size (a multiple and not), boxes only
        cache_series(s, tmp_path / f"S{size}.npz", PAPER_WINDOWS, size, boxes=boxes)
        _assert_same(tmp_path / f"S{size}.npz", _reference_cache(hu, s.sop_uids, PAPER_WINDOWS, size, boxes=boxes))


@pytest.mark.parametrize("gt_kind", ["none", "boxes", "masks+boxes"])
@pytest.mark.parametrize("planned", [0, 3])
def test_spooled_and_streamed_npz_are_the_in_memory_one(tmp_path, gt_kind, planned):
    """The spool (masks bit-packed, an empty gt_mask not spooled) and the images written straight into the
    NPZ give the in-memory NPZ member for member, in the same order; with fewer slices than planned (files
    that failed to decode) the streamed member is rewritten under the right shape; nothing else is left."""
    rows, cols = 200, 180                               # padded to a square; 128 is not a multiple of 200
    hu = _head_volume(13, rows, cols)
    s = dicomio.Series(patient_id="P", study_uid="st", series_uid="S", hu=hu,
                       sop_uids=[f"S.{k}" for k in range(len(hu))], positions=np.arange(len(hu)) * 5.0,
                       instance_numbers=np.arange(len(hu)), pixel_spacing=(0.5, 0.5), slice_thickness=5.0,
                       tilt_deg=0.0, spacing=np.full(len(hu) - 1, 5.0))
    gt = boxes = None
    if gt_kind != "none":
        boxes = pd.DataFrame({"sop_uid": ["S.3", "S.11"], "x": [5.5, 60.0], "y": [7.0, 40.0],
                              "width": [10.0, 30.5], "height": [12.0, 8.0]})
    if gt_kind == "masks+boxes":
        gt = {u: np.zeros((rows, cols), bool) for u in s.sop_uids}
        gt["S.4"][100:120, 90:130] = True

    def cached(name, spool=False, stream=False):
        folder = tmp_path / name
        folder.mkdir()
        c = preprocess.SliceCacher(rows, cols, PAPER_WINDOWS, 128, len(hu) + planned, gt=gt, boxes=boxes,
                                   series_uid="S", spool=folder if spool else None,
                                   out_path=folder / "S.npz" if stream else None)
        for k, u in zip(hu, s.sop_uids):
            c.add(k, u)
        row = c.write(s, folder / "S.npz")
        assert sorted(p.name for p in folder.iterdir()) == ["S.npz"]
        with np.load(folder / "S.npz") as z:
            return row, {k: z[k] for k in z.files}

    ref_row, ref = cached("memory")
    for name, stream in (("spooled", False), ("streamed", True)):
        row, got = cached(name, spool=True, stream=stream)
        assert row == ref_row and list(got) == list(ref)
        for k, v in ref.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and got[k].tobytes() == v.tobytes(), k
    assert ref["gt_mask"].any() == (gt_kind != "none")


def test_a_streamed_series_given_up_leaves_nothing(tmp_path):
    c = preprocess.SliceCacher(64, 64, PAPER_WINDOWS, 32, 4, series_uid="S", spool=tmp_path,
                               out_path=tmp_path / "S.npz")
    c.add(_head_volume(1, 64, 64)[0], "S.0")
    c.close()
    assert not any(tmp_path.iterdir())


def _reference_of_dicom(files: pd.DataFrame, size, gt_dir=None):
    """The former path: the whole series as one HU volume (load_series), then the former cache."""
    series = dicomio.load_series(files)
    gt = preprocess.load_gt_masks(gt_dir, series.series_uid)
    return series, _reference_cache(series.hu, series.sop_uids, PAPER_WINDOWS, size, gt)


def test_streamed_dicom_cache_is_the_former_one(tiny_synthetic, tmp_path):
    out = tmp_path / "index"
    out.mkdir()
    build_index(tiny_synthetic / "dicom", out / "index.csv", out / "series.csv", out / "rejected.csv")
    table = preprocess_shard(out / "index.csv", out / "series.csv", tmp_path / "cache", shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=128, gt_dir=tiny_synthetic / "masks")
    assert len(table) == 6
    index = read_index(out / "index.csv")
    for suid, files in index.groupby("series_uid"):
        series, ref = _reference_of_dicom(files, 128, tiny_synthetic / "masks")
        _assert_same(tmp_path / "cache" / f"{suid}.npz", ref)
        with np.load(tmp_path / "cache" / f"{suid}.npz") as z:
            assert z["sop_uids"].tolist() == series.sop_uids
            np.testing.assert_array_equal(z["positions"], series.positions.astype(np.float32))
            assert json.loads(str(z["windows"]))[0]["name"] == "brain"


def test_real_series_streamed_is_the_former_cache(shared_data, tmp_path):
    """The first 40 slices of CQ500-CT-0 (JPEG Lossless): the streamed NPZ equals the former one."""
    index, _ = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    files = dicomio.plan_series(index).files.to_frame().iloc[:40].drop(columns="_z")
    for spool, out_path in ((None, None), (tmp_path, None), (tmp_path, tmp_path / "s.npz")):
        series, cacher = preprocess._stream_dicom(files, PAPER_WINDOWS, 128, None, None, spool=spool,
                                                  out_path=out_path)
        assert cacher.hu_problem() is None
        cacher.write(series, tmp_path / "s.npz")
        _, ref = _reference_of_dicom(files, 128)
        _assert_same(tmp_path / "s.npz", ref)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]       # no spool file left


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"])
def test_native_pixels_are_pydicoms_pixel_array(syntax):
    """The direct read of plain native files gives pixel_array's values and dtype (bits above BitsStored
    replaced by the sign, odd lengths padded); anything else (big endian, excess bytes) is left to pydicom."""
    import io
    import warnings

    from pydicom.dataset import Dataset, FileMetaDataset

    rng = np.random.default_rng(len(syntax))
    fast = 0
    for bits, stored, rep, (rows, cols), extra in [
            (16, 16, 1, (16, 16), 0), (16, 12, 1, (7, 5), 0), (16, 12, 0, (7, 5), 0), (16, 1, 1, (3, 3), 0),
            (8, 8, 0, (7, 5), 1), (8, 4, 1, (4, 4), 0), (32, 20, 1, (5, 4), 0), (32, 32, 0, (2, 3), 0),
            (16, 16, 1, (4, 4), 2)]:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = syntax, "1.2", "1.2.3"
        ds = Dataset()
        ds.file_meta = meta
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, bits, stored, stored - 1
        ds.PixelRepresentation, ds.SamplesPerPixel, ds.PhotometricInterpretation = rep, 1, "MONOCHROME2"
        ds.PixelData = rng.integers(0, 256, rows * cols * bits // 8 + extra, dtype=np.uint8).tobytes()
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
        buf = io.BytesIO()
        ds.save_as(buf, implicit_vr=syntax == "1.2.840.10008.1.2", little_endian=syntax != "1.2.840.10008.1.2.2",
                   enforce_file_format=True)
        ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
        ours = dicomio._native_pixels(ds, syntax)
        if ours is None:
            assert syntax == "1.2.840.10008.1.2.2" or extra == 2
            continue
        fast += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ds.pixel_array
        assert (ours.dtype.kind, ours.dtype.itemsize) == (ref.dtype.kind, ref.dtype.itemsize)
        assert np.array_equal(ours, ref), (bits, stored, rep)
    assert fast == (0 if syntax == "1.2.840.10008.1.2.2" else 8)


def test_hu_of_a_file_is_the_former_conversion(tiny_synthetic):
    index, _ = dicom_index.index_folder(tiny_synthetic / "dicom")
    for path in index["path"][:12]:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
        old = raw.astype(np.float32) * np.float32(float(ds.RescaleSlope)) + np.float32(float(ds.RescaleIntercept))
        pad = ds.get("PixelPaddingValue")
        if pad is not None:
            old[np.isin(raw, [int(pad)])] = -1024.0
        np.maximum(old, -1024.0, out=old)
        assert dicomio._pixels_to_hu(ds, path).tobytes() == old.tobytes()
        assert dicomio._pixels_to_hu(ds, path, jit=True).tobytes() == old.tobytes()     # compiled


# --------------------------------------------------------------------------- memory


def _synthetic_files(folder, n, rows=256, cols=256):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    hu = _head_volume(1, rows, cols)[0]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, f"1.2.3.{n}.{k}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, f"1.2.3.{n}.{k}", "CT"
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P", "1.2.3", f"1.2.3.{n}"
        ds.Rows, ds.Columns, ds.PixelSpacing, ds.SliceThickness = rows, cols, [0.5, 0.5], 5
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0, 0, 5.0 * k]
        ds.InstanceNumber, ds.SamplesPerPixel, ds.PhotometricInterpretation = k + 1, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu + 1024 + k).astype("<i2").tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)
    return dicom_index.index_folder(folder)[0]


def test_memory_of_the_streamed_path_does_not_grow_with_the_series(tmp_path):
    """Peak traced memory (numpy reports its buffers to tracemalloc) for 12 and for 60 slices of 256 x 256
    at 128 px: with the per-slice arrays spooled, 48 more slices add almost nothing; kept in memory they
    add their 97 kB a slice; the former whole-volume path held 256 kB of HU more per slice."""
    def peak(files, n, spool):
        tracemalloc.start()
        series, cacher = preprocess._stream_dicom(files, PAPER_WINDOWS, 128, None, None, spool=spool)
        cacher.write(series, tmp_path / f"{n}.npz")
        got = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert cacher.n == n
        return got

    files = {n: _synthetic_files(tmp_path / str(n), n) for n in (12, 60)}
    spooled = peak(files[60], 60, tmp_path / "spool") - peak(files[12], 12, tmp_path / "spool")
    held = peak(files[60], 60, None) - peak(files[12], 12, None)
    assert spooled < 1_000_000, f"peak grew by {spooled / 1e6:.1f} MB for 48 more slices"
    assert held > 48 * 90_000 > 4 * spooled
    assert not any((tmp_path / "spool").iterdir())
    with np.load(tmp_path / "60.npz") as z:
        assert z["images"].shape == (60, 3, 128, 128) and z["gt_mask"].shape == (60, 128, 128)
    tracemalloc.start()
    dicomio.load_series(files[60])                   # the whole volume: the test can tell
    whole = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert whole > 60 * 256 * 256 * 4


def test_a_rejected_series_leaves_no_spool_file(tmp_path):
    folder = tmp_path / "dicom"
    files = _synthetic_files(folder, 10, rows=64, cols=64)
    windowed = folder.parent / "windowed"
    windowed.mkdir()
    for path in files["path"]:                      # values 0 .. 80: a display window, not HU
        ds = pydicom.dcmread(path)
        ds.RescaleIntercept = 0
        ds.PixelData = np.clip(ds.pixel_array - 1000, 0, 80).astype("<i2").tobytes()
        ds.save_as(windowed / (path.rsplit("/", 1)[-1]), enforce_file_format=True)
    out = tmp_path / "index"
    out.mkdir()
    build_index(windowed, out / "index.csv", out / "series.csv", out / "rejected.csv")
    table = preprocess_shard(out / "index.csv", out / "series.csv", tmp_path / "cache", shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=32)
    assert table.empty
    assert "do not look like CT in HU" in (tmp_path / "cache" / "rejected.csv").read_text()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["rejected.csv", "series.csv"]


# --------------------------------------------------------------------------- the compiled sweep (numba)


def _awkward_hu(shape, seed):
    """HU with non-integer values everywhere (every rounding matters), NaN, infinities and -0.0."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(0, 900, shape).astype(np.float32)
    hu[: shape[0] // 2] = np.rint(hu[: shape[0] // 2])                 # integer HU too
    hu[5:40, 7:60] = rng.normal(40, 30, (35, 53)).astype(np.float32)    # inside the narrow windows
    hu[0, 0], hu[-1, -1], hu[3, 3], hu[9, 2], hu[11, 4] = np.nan, -0.0, np.inf, -np.inf, 0.0
    return hu


@pytest.mark.parametrize("shape, size", [((512, 512), 128), ((256, 256), 128), ((384, 256), 128),
                                         ((256, 256), 64), ((512, 512), 32), ((240, 200), 128)])
def test_compiled_sweep_is_the_former_windows_and_resize(shape, size):
    from ichbench.inputs import sweep_jit

    assert sweep_jit.kernel() is not None, "numba is a dependency: the compiled sweep must be available"
    for seed in range(3):
        hu = _awkward_hu(shape, seed)
        windows, small = window_resize(hu, PAPER_WINDOWS, size, jit=True)
        ref_w = _torch_resize(_old_windows(hu, PAPER_WINDOWS)[None], size)[0]
        ref_hu = _torch_resize(hu[None, None], size)[0, 0]
        assert windows.shape == ref_w.shape and windows.tobytes() == ref_w.tobytes()
        assert small.shape == ref_hu.shape and small.tobytes() == ref_hu.tobytes()
        numpy_w, numpy_hu = window_resize(hu, PAPER_WINDOWS, size)
        assert numpy_w.tobytes() == windows.tobytes() and numpy_hu.tobytes() == small.tobytes()


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")   # NaN HU quantised, as before
def test_compiled_sweep_in_the_cache_is_the_former_one(tmp_path):
    hu = _head_volume(5, 512, 512, seed=4)
    hu[1] = _awkward_hu((512, 512), 9)
    s = dicomio.Series(patient_id="P", study_uid="st", series_uid="S", hu=hu,
                       sop_uids=[f"S.{k}" for k in range(len(hu))], positions=np.arange(len(hu)) * 5.0,
                       instance_numbers=np.arange(len(hu)), pixel_spacing=(0.5, 0.5), slice_thickness=5.0,
                       tilt_deg=0.0, spacing=np.full(len(hu) - 1, 5.0))
    cacher = preprocess.SliceCacher(512, 512, PAPER_WINDOWS, 128, len(hu), series_uid="S", jit=True)
    for sl, sop in zip(hu, s.sop_uids):
        cacher.add(sl, sop)
    cacher.write(s, tmp_path / "S.npz")
    _assert_same(tmp_path / "S.npz", _reference_cache(hu, s.sop_uids, PAPER_WINDOWS, 128))


def test_compiled_sweep_without_any_cache_location(monkeypatch):
    """Where numba finds no usable cache folder (a read-only package, no writable home) the sweep is compiled
    for the process alone: the same values, no error."""
    from numba.core import caching

    from ichbench.inputs import sweep_jit

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator"):
        __import__("numba").njit(cache=True)(lambda x: x)
    fn = sweep_jit._compile(sweep_jit._sweep)
    hu = _awkward_hu((64, 64), 1)
    low = np.array([w.low for w in PAPER_WINDOWS], np.float32)
    scale = np.array([np.float32(2.0 / w.width) for w in PAPER_WINDOWS], np.float32)
    out, rows = np.empty((4, 16, 16), np.float32), np.empty((4, 4, 16), np.float32)
    fn(hu, low, scale, 4, 4, out, rows, np.empty((0, 0), np.float32))
    ref_w, ref_hu = window_resize(hu, PAPER_WINDOWS, 16)
    assert out[:3].tobytes() == ref_w.tobytes() and out[3].tobytes() == ref_hu.tobytes()


def test_compiled_sweep_cache_in_a_missing_folder_and_switched_off(tmp_path):
    """NUMBA_CACHE_DIR naming a folder that does not exist yet: it is made and used, and a second process
    loads the sweep from it instead of compiling; ICHBENCH_JIT=0: the numpy sweep, same values."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from ichbench.inputs import sweep, sweep_jit\n"
            "from ichbench.inputs.windowing import PAPER_WINDOWS\n"
            "hu = np.random.default_rng(0).normal(0, 900, (256, 256)).astype(np.float32)\n"
            "w, s = sweep.window_resize(hu, PAPER_WINDOWS, 64, jit=True)\n"
            "fn = sweep_jit.kernel()\n"
            "print(None if fn is None else sum(fn.stats.cache_hits.values()), hash(w.tobytes() + s.tobytes()))\n")
    cache = tmp_path / "no" / "such" / "folder"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONHASHSEED="0")
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,  # noqa: E731
                                   check=True).stdout.split()
    first, second = run(env), run(env)
    assert first[0] == "0" and second[0] == "1" and first[1] == second[1]
    assert any(cache.rglob("*.nbi")), "the cache index was not written into the missing folder"
    off = run(dict(env, ICHBENCH_JIT="0"))
    assert off == ["None", first[1]]


@pytest.mark.parametrize("dtype", ["<i2", "<u2", "<i4", "|u1", "<u4"])
def test_compiled_hu_is_the_former_conversion(dtype):
    from ichbench.inputs import sweep_jit

    info = np.iinfo(np.dtype(dtype))
    raw = np.random.default_rng(info.bits).integers(info.min, info.max, (37, 53), endpoint=True).astype(dtype)
    raw.flat[:2] = info.min, info.max
    for slope, intercept in [(1, -1024), (1.0, 0.0), (0.5, -1000.25), (2.5, 3.3), (1.0000001, -1024), (-1, 7)]:
        old = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        np.maximum(old, -1024.0, out=old)
        out = np.full(raw.shape, np.nan, np.float32)
        assert sweep_jit.to_hu(raw, slope, intercept, out)
        assert out.tobytes() == old.tobytes(), (slope, intercept)
    if raw.dtype.itemsize > 1:                                    # not in native order: left to numpy
        assert not sweep_jit.to_hu(raw.astype(raw.dtype.newbyteorder()), 1, 0, out)
    assert not sweep_jit.to_hu(raw.astype(np.float32), 1, 0, out)


@pytest.mark.parametrize("env, small, large", [(None, False, True), ("1", True, True), ("on", True, True),
                                               ("0", False, False), ("off", False, False), ("maybe", False, True)])
def test_compiled_sweep_is_used_from_its_break_even_unless_forced(monkeypatch, env, small, large):
    from ichbench.cache import preprocess

    if env is None:
        monkeypatch.delenv("ICHBENCH_JIT", raising=False)
    else:
        monkeypatch.setenv("ICHBENCH_JIT", env)
    monkeypatch.setattr(preprocess, "kernels_cached", lambda: True)
    assert preprocess.use_jit(preprocess.JIT_MIN_SLICES - 1) is small
    assert preprocess.use_jit(preprocess.JIT_MIN_SLICES) is large
    monkeypatch.setattr(preprocess, "kernels_cached", lambda: False)      # they would be compiled first
    assert preprocess.use_jit(preprocess.JIT_MIN_SLICES) is (large if env is not None and env != "maybe" else False)
    assert preprocess.use_jit(preprocess.JIT_MIN_SLICES_COLD) is large


def test_the_kernels_cache_is_warm_where_numba_has_their_index_files(monkeypatch, tmp_path):
    """kernels_cached looks where numba keeps its cache (here NUMBA_CACHE_DIR, nested as numba nests it) for an
    index file of each preprocessing kernel newer than the source; missing or older: cold."""
    import os
    import sys

    from ichbench.cache import preprocess

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not preprocess.kernels_cached()
    folder = tmp_path / "inputs_0123"
    folder.mkdir()
    ext = f"py{sys.version_info[0]}{sys.version_info[1]}.nbi"
    files = [folder / f"sweep_jit.{fn}-{10 + k}.{ext}" for k, fn in enumerate(sweep_jit.PREPROCESS_KERNELS)]
    for f in files[:-1]:
        f.write_bytes(b"")
    assert not preprocess.kernels_cached()                                   # one kernel missing
    files[-1].write_bytes(b"")
    assert preprocess.kernels_cached()
    old = os.stat(sweep_jit.__file__).st_mtime - 60
    os.utime(files[0], (old, old))                                      # written before the source changed
    assert not preprocess.kernels_cached()


def _mask_cases():
    """HU maps the compiled masks must get as OpenCV's: heads with and without a skull, bone on the edge, noise,
    ties of equal components, single rows and columns, NaN, all air, all tissue, float64."""
    rng = np.random.default_rng(11)
    vol = _head_volume(4, 128, 128, seed=5)
    cases = list(vol)
    cases.append(np.where(vol[1] > 500, 30.0, vol[1]).astype(np.float32))      # no skull: the eroded head
    edge = vol[2].copy()
    edge[:, :20] = 900.0
    cases.append(edge)
    open_skull = vol[3].copy()
    open_skull[60:68, :] = 30.0                                                  # a ring with a gap
    cases.append(open_skull)
    for i in range(240):
        shape = (1, int(rng.integers(1, 30))) if i % 17 == 0 else (int(rng.integers(1, 30)), 1) if i % 17 == 1 \
            else tuple(int(v) for v in rng.integers(2, 70, 2))
        kind = i % 5
        if kind == 0:
            hu = rng.normal(0, 600, shape)
        elif kind == 1:
            hu = rng.choice([-1000.0, 30.0, 500.0, -15.0, 100.0, -500.0, 300.0], shape)
        elif kind == 2:                                   # many components of equal size: the tie
            hu = np.full(shape, -1000.0)
            hu[::2, ::2] = 40.0
        elif kind == 3:
            hu = np.full(shape, -1000.0 if i % 2 else 40.0)
        else:
            hu = rng.choice([-1000.0, 30.0, 900.0], shape, p=[0.3, 0.5, 0.2])
        hu = hu.astype(np.float32) if i % 3 else hu
        if i % 7 == 3:
            hu = np.array(hu)
            hu.flat[int(rng.integers(hu.size))] = np.nan
        cases.append(hu)
    return cases


def test_compiled_masks_are_the_opencv_and_scipy_ones():
    from ichbench.inputs import sweep_jit

    assert sweep_jit._kernel(sweep_jit._masks) is not None, "numba is a dependency: the compiled masks must be there"
    for k, hu in enumerate(_mask_cases()):
        h = masks.head_mask(hu)
        b = masks.brain_mask(hu, h)
        ch, cb = masks.head_and_brain(hu, jit=True)
        assert ch.dtype == bool and cb.dtype == bool and ch.shape == hu.shape and cb.shape == hu.shape
        assert np.array_equal(ch, h) and np.array_equal(cb, b), (k, hu.shape, hu.dtype)
        if k % 4 == 0:                                    # and the scipy algorithms of before
            assert np.array_equal(ch, _old_head_mask(hu)) and np.array_equal(cb, _old_brain_mask(hu, ch))


def test_compiled_masks_of_real_slices(shared_data):
    index, _ = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    suid = index["series_uid"].value_counts().idxmax()
    plan = dicomio.plan_series(index[index["series_uid"] == suid])
    n = 0
    for _, hu in dicomio.iter_hu(plan, reuse=False):
        _, small = window_resize(hu, PAPER_WINDOWS, 128)
        h, b = masks.head_and_brain(small, jit=True)
        assert np.array_equal(h, masks.head_mask(small)) and np.array_equal(b, masks.brain_mask(small, h))
        n += 1
    assert n > 100


def test_compiled_masks_without_numba_cache_or_switched_off(monkeypatch):
    """No usable numba cache folder: the masks' kernel and its helpers compiled for the process, same masks;
    ICHBENCH_JIT=0: OpenCV's masks."""
    from numba.core import caching

    from ichbench.inputs import sweep_jit

    hu = _head_volume(1, 64, 64, seed=8)[0]
    ref = masks.head_mask(hu), masks.brain_mask(hu, masks.head_mask(hu))
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    fn = sweep_jit._compile(sweep_jit._masks)
    head, brain = np.empty(hu.shape, np.uint8), np.empty(hu.shape, np.uint8)
    fn(hu, masks.AIR_HU, masks.BONE_HU, masks.BRAIN_HU[0], masks.BRAIN_HU[1], head, brain)
    assert np.array_equal(head.view(bool), ref[0]) and np.array_equal(brain.view(bool), ref[1])
    monkeypatch.setenv("ICHBENCH_JIT", "0")
    monkeypatch.setattr(sweep_jit, "_STATE", {})
    assert sweep_jit.masks(hu, masks.AIR_HU, masks.BONE_HU, masks.BRAIN_HU) is None
    off = masks.head_and_brain(hu, jit=True)
    assert np.array_equal(off[0], ref[0]) and np.array_equal(off[1], ref[1])


def test_hu_sample_taken_by_the_compiled_sweep_is_the_strided_one():
    """window_resize_sampled: the windows and HU of window_resize, and hu[::4, ::4] bit for bit (NaN, -0.0,
    infinities, non-integer HU), so the series' HU check judges the same samples; other steps: no sample."""
    from ichbench.inputs.sweep import window_resize_sampled

    for seed in range(5):
        hu = _awkward_hu((512, 512), seed) if seed < 4 else _head_volume(1, 512, 512, seed=1)[0]   # integer HU
        if seed == 2:
            hu *= np.float32(0.37)                        # non-integer HU: the check's float table
        w, s, sample = window_resize_sampled(hu, PAPER_WINDOWS, 128, 4)
        ref_w, ref_s = window_resize(hu, PAPER_WINDOWS, 128)
        assert w.tobytes() == ref_w.tobytes() and s.tobytes() == ref_s.tobytes()
        assert sample is not None and sample.tobytes() == np.ascontiguousarray(hu[::4, ::4]).tobytes()
        a, b = HuSample(), HuSample()
        a.add(hu)
        b.add_sampled(sample)
        assert a.problem() == b.problem()
        assert np.array_equal(a.percentiles(), b.percentiles())
    w, s, sample = window_resize_sampled(_awkward_hu((256, 256), 0), PAPER_WINDOWS, 128, 4)
    assert sample is None and w.shape == (3, 128, 128)


def _plan_series_pandas(files):
    """plan_series as it was before its numpy rewrite (2026-12-06), the reference for the test below."""
    from ichbench.inputs.dicomio import Rejection, SeriesPlan, _majority
    from ichbench.inputs.geometry import slice_normal

    files = files.reset_index(drop=True)
    ids = {k: files.iloc[0][k] for k in ("patient_id", "study_uid", "series_uid")}
    rejected = []
    size_key = [f"{r}x{c}" for r, c in zip(files["rows"], files["columns"])]
    major_size = _majority(size_key)
    orient = np.array([o for o in files["orientation"]], float)
    orient_key = [",".join(f"{v:.2f}" for v in o) for o in orient]
    major_orient = orient[orient_key.index(_majority(orient_key))]
    keep = []
    for i, (sk, o, path) in enumerate(zip(size_key, orient, files["path"])):
        if sk != major_size:
            rejected.append(Rejection(path, f"image size {sk} differs from the series' {major_size}", "load"))
        elif np.abs(o - major_orient).max() > 0.01:
            rejected.append(Rejection(path, "image orientation differs from the rest of the series", "load"))
        else:
            keep.append(i)
    files = files.iloc[keep]
    normal = slice_normal(files.iloc[0]["orientation"])
    files = files.assign(_z=[float(np.dot(normal, p)) for p in files["position"]])
    files = files.sort_values(["_z", "instance_number", "sop_uid"]).drop_duplicates("sop_uid")
    dup = np.r_[False, np.diff(files["_z"].to_numpy(float)) < 1e-3]
    kept = files["sop_uid"].where(~pd.Series(dup, index=files.index)).ffill()
    for path, k in zip(files["path"][dup], kept[dup]):
        rejected.append(Rejection(path, f"a second slice at the same position along the slice normal (kept {k})",
                                  "load"))
    rows, cols = (int(v) for v in major_size.split("x"))
    return SeriesPlan(files=files[~dup].reset_index(drop=True), rows=rows, cols=cols, normal=normal,
                      rejected=rejected, ids=ids)


@pytest.mark.parametrize("seed", range(40))
def test_the_series_plan_is_the_pandas_one(seed):
    """The numpy plan (stable sort by z, InstanceNumber, SOPInstanceUID; a UID's first row; second copies of a
    position left out) equals the pandas code it replaced on header rows with every kind of tie: repeated
    UIDs, equal and near-equal positions, equal instance numbers, missing ones (NaN), other sizes and
    orientations, tilted stacks, an index not 0..n-1."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    tilt = rng.uniform(-0.3, 0.3) if seed % 3 else 0.0
    orient = [(1.0, 0.0, 0.0, 0.0, np.cos(tilt), np.sin(tilt))] * n
    z = np.round(rng.uniform(0, 20, n), int(rng.integers(0, 3)))              # rounding makes equal positions
    z[rng.random(n) < 0.1] += 0.0004                                           # near-equal ones
    rows = [{"path": f"/d/f{i}.dcm", "patient_id": "P1", "study_uid": "1.2", "series_uid": "1.2.3",
             "sop_uid": f"1.2.3.{int(rng.integers(0, n + 3))}", "rows": 512, "columns": 512,
             "orientation": orient[i], "position": (-100.0, -100.0 + 0.1 * z[i], float(z[i])),
             "instance_number": int(rng.integers(0, 5))} for i in range(n)]
    for r in rows:
        if rng.random() < 0.08:
            r["rows"] = 256
        elif rng.random() < 0.08:
            r["orientation"] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    frame = pd.DataFrame(rows, index=rng.permutation(np.arange(100, 100 + n)))
    if seed % 4 == 1:
        frame["instance_number"] = frame["instance_number"].astype(float)
        frame.loc[frame.index[rng.random(n) < 0.3], "instance_number"] = np.nan
    if seed % 5 == 2:
        frame["instance_number"] = frame["instance_number"].astype(object)   # not plain numbers: pandas sorts
    try:
        want = _plan_series_pandas(frame)
    except (IndexError, KeyError) as exc:                # no row kept: both fail the same way
        with pytest.raises(type(exc)):
            dicomio.plan_series(frame)
        return
    got = dicomio.plan_series(frame)
    pd.testing.assert_frame_equal(got.files.to_frame(), want.files)
    assert got.rejected == want.rejected and got.ids == want.ids
    assert (got.rows, got.cols) == (want.rows, want.cols) and np.array_equal(got.normal, want.normal)
