import numpy as np
import pandas as pd
import pydicom
import pytest

from ichbench.inputs import dicom_index, dicomio, series_select
from ichbench.cache.preprocess import build_index, preprocess_shard, read_index
from ichbench.inputs.windowing import PAPER_WINDOWS


@pytest.fixture(scope="module")
def indexed(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    cand = build_index(tiny_synthetic / "dicom", out / "index.csv", out / "series.csv", out / "rejected.csv")
    return out, cand


def test_index_groups_by_headers_not_folders(tiny_synthetic, indexed):
    out, cand = indexed
    labels = pd.read_csv(tiny_synthetic / "slice_labels.csv", dtype=str)
    assert sorted(cand["patient_id"]) == sorted(labels["patient_id"].unique())
    assert cand["selected"].all() and len(cand) == 6
    index = read_index(out / "index.csv")
    assert len(index) == len(labels)
    assert set(index["sop_uid"]) == set(labels["sop_uid"])


def test_series_sorted_by_position_and_hu_matches_file(tiny_synthetic, indexed):
    out, cand = indexed
    index = read_index(out / "index.csv")
    for suid, files in index.groupby("series_uid"):
        s = dicomio.load_series(files)
        assert np.all(np.diff(s.positions) > 0)
        # the first sorted slice: compare with an independent HU computation of its file
        path = files.set_index("sop_uid").loc[s.sop_uids[0], "path"]
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        pad = ds.get("PixelPaddingValue")
        inside = np.ones(hu.shape, bool) if pad is None else ds.pixel_array != pad
        np.testing.assert_allclose(s.hu[0][inside], np.maximum(hu[inside], -1024), atol=1e-3)
        assert s.hu.min() >= -1024
        assert (s.hu > 300).any()                       # bone


def test_instance_numbers_do_not_decide_the_order(tiny_synthetic, indexed):
    out, _ = indexed
    index = read_index(out / "index.csv")
    reversed_any = False
    for suid, files in index.groupby("series_uid"):
        s = dicomio.load_series(files)
        reversed_any |= bool(np.all(np.diff(s.instance_numbers) < 0))
    assert reversed_any, "the synthetic data should contain a series with reversed InstanceNumbers"


def test_cache_contents_and_no_identifying_fields(tiny_synthetic, indexed, tmp_path):
    out, _ = indexed
    table = preprocess_shard(out / "index.csv", out / "series.csv", tmp_path, shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=128, gt_dir=tiny_synthetic / "masks")
    assert len(table) == 6 and table["has_gt"].all()
    labels = pd.read_csv(tiny_synthetic / "slice_labels.csv", dtype={"sop_uid": str})
    truth = dict(zip(labels["sop_uid"], labels["hemorrhage"]))
    for npz in tmp_path.glob("*.npz"):
        with np.load(npz, allow_pickle=False) as z:
            assert z["images"].dtype == np.uint8 and z["images"].shape[1:] == (3, 128, 128)
            assert z["brain_mask"].any(axis=(1, 2)).mean() > 0.5
            got = z["gt_mask"].any(axis=(1, 2))
            want = np.array([truth[u] for u in z["sop_uids"].astype(str)], bool)
            # a tiny lesion may vanish at 128 px, never appear from nothing
            assert not (got & ~want).any() and got.sum() >= 0.7 * want.sum()
    for p in list(tmp_path.iterdir()) + [out / "index.csv", out / "series.csv"]:
        blob = p.read_bytes()
        for needle in (b"SYNTHETIC^PATIENT", b"Synthetic General Hospital", b"19600101", b"ACC0"):
            assert needle not in blob, f"{needle!r} in {p.name}"


def test_non_dicom_and_non_ct_files_are_rejected_with_reasons(tiny_synthetic, tmp_path):
    src = next((tiny_synthetic / "dicom").rglob("*.dcm"))
    ds = pydicom.dcmread(src)
    ds.Modality = "MR"
    ds.save_as(tmp_path / "mr.dcm")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "trunc.dcm").write_bytes(src.read_bytes()[:200])
    index, rejected = dicom_index.index_folder(tmp_path)
    reasons = {r.item.split("/")[-1]: r.reason for r in rejected}
    assert index.empty
    assert "not CT" in reasons["mr.dcm"]
    assert "not a DICOM" in reasons["notes.txt"]
    assert "trunc.dcm" in reasons


def test_real_cq500_series_decodes_sorted(shared_data):
    index, rejected = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    assert len(index) == 238 and not rejected
    s = dicomio.load_series(index)
    assert s.hu.shape == (238, 512, 512)
    assert np.all(np.diff(s.positions) > 0)
    assert abs(s.tilt_deg - 8.5) < 0.2
    mid = s.hu[119]
    assert np.percentile(mid, 1) < -900                       # air
    assert mid.max() > 300                                     # bone
    brain = mid[(mid > 0) & (mid < 80)]
    assert brain.size > 10000


def _first_file(tiny_synthetic):
    return sorted((tiny_synthetic / "dicom").rglob("*.dcm"))[0]


def test_bits_stored_too_small_uses_all_bits(tiny_synthetic):
    ds = pydicom.dcmread(_first_file(tiny_synthetic))
    hu = np.full((ds.Rows, ds.Columns), -1000, np.int16)
    hu[100:140, 100:140] = 40
    hu[10:60, :] = 2600                                   # dense bone / metal beyond 12-bit signed
    ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if "PixelPaddingValue" in ds:
        del ds.PixelPaddingValue
    ds.PixelData = hu.astype("<i2").tobytes()
    notes = []
    out = dicomio._pixels_to_hu(ds, "x.dcm", notes)
    assert np.allclose(out, np.maximum(hu, -1024)) and "smaller than the pixel data need" in notes[0]


def test_bits_above_bits_stored_are_ignored_when_garbage(tiny_synthetic):
    ds = pydicom.dcmread(_first_file(tiny_synthetic))
    stored = np.full((ds.Rows, ds.Columns), 24, np.uint16)     # -1000 HU
    stored[100:140, 100:140] = 1064                             # 40 HU
    ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 0, 16, 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if "PixelPaddingValue" in ds:
        del ds.PixelPaddingValue
    ds.PixelData = (stored | 0xE000).astype("<u2").tobytes()     # overlay bits set above bit 11
    notes = []
    out = dicomio._pixels_to_hu(ds, "x.dcm", notes)
    assert out[120, 120] == 40 and out[0, 0] == -1000 and "ignored" in notes[0]


def test_padding_value_becomes_air(tiny_synthetic):
    ds = pydicom.dcmread(_first_file(tiny_synthetic))
    stored = np.full((ds.Rows, ds.Columns), 1064, np.int16)
    stored[:5] = -2000
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = stored.astype("<i2").tobytes()
    ds.PixelPaddingValue = -2000
    out = dicomio._pixels_to_hu(ds, "x.dcm")
    assert (out[:5] == -1024).all() and (out[5:] == 40).all()


def test_error_messages_never_quote_values():
    exc = ValueError("Invalid value for VR PN: 'SYNTHETIC^PATIENT1' in b'19600101'")
    text = dicomio.describe_error(exc)
    assert "SYNTHETIC" not in text and "19600101" not in text and text.startswith("ValueError")


def test_select_series_thinnest_covering_and_fallback():
    base = {"study_uid": "s", "series_description": "", "kernel": "STANDARD", "axial": True, "bone_kernel": False,
            "normal_angle_deg": 0.0}
    series = pd.DataFrame([
        {**base, "patient_id": "A", "series_uid": "thick", "n_files": 30, "slice_thickness": 5.0, "extent_mm": 145},
        {**base, "patient_id": "A", "series_uid": "thin", "n_files": 240, "slice_thickness": 0.625, "extent_mm": 150},
        {**base, "patient_id": "A", "series_uid": "partial", "n_files": 40, "slice_thickness": 0.5, "extent_mm": 20},
        {**base, "patient_id": "A", "series_uid": "bone", "n_files": 240, "slice_thickness": 0.5, "extent_mm": 150,
         "bone_kernel": True},
        {**base, "patient_id": "A", "series_uid": "coronal", "n_files": 200, "slice_thickness": 0.5, "extent_mm": 150,
         "axial": False, "normal_angle_deg": 90.0},
        {**base, "patient_id": "B", "series_uid": "short1", "n_files": 10, "slice_thickness": 1.0, "extent_mm": 10},
        {**base, "patient_id": "B", "series_uid": "short2", "n_files": 10, "slice_thickness": 2.0, "extent_mm": 20},
    ])
    s = series_select.select_series(series).set_index("series_uid")
    assert s.loc["thin", "selected"] and s["selected"].sum() == 2
    assert s.loc["short2", "selected"] and "the longest" in s.loc["short2", "choice"]
    assert s.loc["bone", "why_not"] == "bone kernel" and s.loc["coronal", "why_not"].startswith("not axial")
    o = series_select.select_series(series, override={"A": "thick", "B": ""}).set_index("series_uid")
    assert o.loc["thick", "selected"] and not o.loc[["short1", "short2"], "selected"].any()
