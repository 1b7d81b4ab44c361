"""Inputs as given: slice truth at full resolution, the mask rule "> 0", non-HU series, non-square slices,
and the confound table (trivial image statistics as slice scores)."""
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from ichbench.inputs import dicom_index, dicomio, nifti
from ichbench.evaluation.confounds import confound_table, confounds_markdown
from ichbench.inputs.inputcheck import hu_problem, mask_truth, square_padding
from ichbench.cache.preprocess import SERIES_COLUMNS, build_index, cache_series, preprocess_shard
from ichbench.cohort.splits import collect_slices
from ichbench.inputs.windowing import PAPER_WINDOWS


def head(rows: int, cols: int, radius: float, n: int = 2) -> np.ndarray:
    """(n, rows, cols) HU: a round head (skull ring, brain 35 HU) of `radius` pixels in the centre, air around."""
    y, x = np.mgrid[:rows, :cols]
    r = np.hypot(y - (rows - 1) / 2, x - (cols - 1) / 2) / radius
    sl = np.where(r < 1.0, 1000.0, -1000.0).astype(np.float32)
    sl[r < 0.88] = 35.0
    return np.repeat(sl[None], n, axis=0)


def series_of(hu: np.ndarray, uid: str = "S1", spacing: float = 0.5) -> dicomio.Series:
    n = len(hu)
    return dicomio.Series(patient_id=f"P-{uid}", study_uid=f"st-{uid}", series_uid=uid, hu=hu,
                          sop_uids=[f"{uid}.{k}" for k in range(n)], positions=np.arange(n) * 5.0,
                          instance_numbers=np.arange(1, n + 1), pixel_spacing=(spacing, spacing),
                          slice_thickness=5.0, tilt_deg=0.0, spacing=np.full(n - 1, 5.0))


def write_shard(shard: Path, rows: list[dict]) -> None:
    pd.DataFrame(rows, columns=SERIES_COLUMNS).to_csv(shard / "series.csv", index=False)


# 1. slice truth from the full-resolution mask


def test_one_voxel_bleed_makes_its_slice_anomalous(tmp_path):
    s = series_of(head(512, 512, 200, n=3), spacing=0.5)
    gt = {u: np.zeros((512, 512), bool) for u in s.sop_uids}
    gt["S1.1"][300, 260] = True                      # one voxel: 0.25 mm^2
    gt["S1.2"][200:240, 200:240] = True              # 1600 voxels: 400 mm^2
    row = cache_series(s, tmp_path / "S1.npz", PAPER_WINDOWS, 128, gt)
    write_shard(tmp_path, [row])
    with np.load(tmp_path / "S1.npz") as z:
        assert z["gt_mask"].any(axis=(1, 2)).tolist() == [False, False, True]   # the voxel vanishes at 128 px
        assert z["gt_pixels"].tolist() == [0, 1, 1600]
        np.testing.assert_allclose(z["gt_area_mm2"], [0.0, 0.25, 400.0])
    assert row["gt_slices"] == 2
    assert collect_slices([tmp_path])["slice_truth"].tolist() == [0, 1, 1]
    assert collect_slices([tmp_path], min_area_mm2=0.2)["slice_truth"].tolist() == [0, 1, 1]
    assert collect_slices([tmp_path], min_area_mm2=1.0)["slice_truth"].tolist() == [0, 0, 1]


def test_one_pixel_box_counts_too(tmp_path):
    s = series_of(head(512, 512, 200, n=2))
    boxes = pd.DataFrame({"sop_uid": ["S1.0"], "x": [100.2], "y": [300.0], "width": [0.5], "height": [0.5]})
    row = cache_series(s, tmp_path / "S1.npz", PAPER_WINDOWS, 128, boxes=boxes)
    write_shard(tmp_path, [row])
    assert row["gt_source"] == "boxes" and row["gt_slices"] == 1
    assert collect_slices([tmp_path])["slice_truth"].tolist() == [1, 0]


def test_pixel_truth_wins_over_the_slice_label_file(tmp_path):
    from ichbench.cohort.splits import apply_slice_labels

    slices = pd.DataFrame({"sop_uid": ["a", "b", "c"], "slice_truth": [1, 0, -1]})
    labels = pd.DataFrame({"sop_uid": ["a", "b", "c"], "hemorrhage": [0, 0, 1]})
    assert apply_slice_labels(slices, labels)["slice_truth"].tolist() == [1, 0, 1]


# 2. mask values: "> 0 = hemorrhage"


def test_float_mask_at_0_4_is_hemorrhage_with_a_warning(tmp_path):
    truth, warning = mask_truth(np.array([0.0, 0.4, 1.0, -1.0, np.nan], np.float32), "m.nii.gz")
    assert truth.tolist() == [False, True, True, False, False]
    assert "1 voxels with values in (0, 0.5]" in warning and "1 NaN" in warning and "1 voxels with negative" in warning
    assert mask_truth(np.array([0, 1, 2], np.uint8), "labels")[1] is None       # integer labels: nothing to say

    vol = np.transpose(head(40, 40, 16, n=10), (2, 1, 0)).copy()     # (x, y, z)
    mask = np.zeros(vol.shape, np.float32)
    mask[18:22, 18:22, 4] = 0.4
    aff = np.diag([0.9, 0.9, 5.0, 1.0])
    nib.save(nib.Nifti1Image(vol.astype(np.int16), aff), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(mask, aff), str(tmp_path / "mask.nii.gz"))
    series, gt = nifti.load_volume({"path": str(tmp_path / "ct.nii.gz"), "mask_path": str(tmp_path / "mask.nii.gz"),
                                    "patient_id": "ct", "series_uid": "ct"})
    assert [k for k, u in enumerate(series.sop_uids) if gt[u].any()] == [4]
    assert gt[series.sop_uids[4]].sum() == 16
    assert any("(0, 0.5]" in n for n in series.notes)


# 3. series that are not HU (DICOM as NIfTI)


def test_hu_judgement():
    assert hu_problem(head(64, 64, 20)) is None
    assert "do not look like CT in HU" in hu_problem(np.clip(head(64, 64, 30), 0, 80))
    assert hu_problem(np.random.default_rng(0).uniform(0, 1, (2, 64, 64))) is not None


@pytest.fixture(scope="module")
def windowed_dicom(tiny_synthetic, tmp_path_factory):
    """One normal synthetic scan as it is, and one stored as an 8-bit brain-windowed CT DICOM (values 0..80)."""
    root = tmp_path_factory.mktemp("windowed") / "dicom"
    files = {}
    for p in sorted((tiny_synthetic / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if "soft tissue" in str(ds.get("SeriesDescription", "")):
            files.setdefault(ds.PatientID, []).append(p)
    (pid_a, keep), (pid_b, conv) = sorted(files.items())[:2]
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i, p in enumerate(keep):
        shutil.copy(p, root / "a" / f"{i:03d}.dcm")
    for i, p in enumerate(conv):
        ds = pydicom.dcmread(p)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored = np.clip(np.rint(hu), 0, 80).astype(np.uint8)
        for tag in ("PixelPaddingValue", "PixelPaddingRangeLimit", "SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in ds:
                delattr(ds, tag)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OB"
        ds.save_as(root / "b" / f"{i:03d}.dcm", enforce_file_format=False)
    out = root.parent / "data"
    out.mkdir()
    build_index(root, out / "index.csv", out / "series_candidates.csv", out / "rejected_index.csv")
    return out, pid_a, pid_b


@pytest.mark.parametrize("non_hu", ["reject", "accept"])
def test_8bit_windowed_dicom_series(windowed_dicom, tmp_path, non_hu):
    data, good, windowed = windowed_dicom
    table = preprocess_shard(data / "index.csv", data / "series_candidates.csv", tmp_path, shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=64, non_hu=non_hu)
    rej = pd.read_csv(tmp_path / "rejected.csv", dtype=str, keep_default_na=False)
    t = table.set_index("patient_id")
    assert not t.loc[good, "not_hu"]
    if non_hu == "reject":
        assert set(t.index) == {good}
        assert rej["reason"].str.contains(r"values 0 \.\. 80 do not look like CT in HU \(no air, no bone\)").any()
        assert ((rej["item"] == windowed) & rej["reason"].str.contains("not CT in HU")).any()
    else:
        assert set(t.index) == {good, windowed} and bool(t.loc[windowed, "not_hu"])
        assert "NOT HU" in t.loc[windowed, "notes"]
        with np.load(tmp_path / t.loc[windowed, "npz"]) as z:
            assert bool(z["not_hu"])


# 4. non-square slices keep their aspect ratio


def test_512_by_384_slice_is_padded_not_stretched(tmp_path):
    assert square_padding(512, 384) == (0, 0, 64, 64) and square_padding(383, 512) == (64, 65, 0, 0)
    hu = head(512, 384, 150)
    gt = {u: np.zeros((512, 384), bool) for u in ("S1.0", "S1.1")}
    gt["S1.1"][248:264, 184:200] = True              # 16 x 16 in the centre of the slice
    boxes = pd.DataFrame({"sop_uid": ["S1.0"], "x": [0.0], "y": [0.0], "width": [40.0], "height": [40.0]})
    row = cache_series(series_of(hu), tmp_path / "S1.npz", PAPER_WINDOWS, 128, gt, boxes)
    assert (row["rows"], row["columns"]) == (512, 384)
    assert (row["pad_top"], row["pad_bottom"], row["pad_left"], row["pad_right"]) == (0, 0, 64, 64)
    assert "padded with air to 512 x 512" in row["notes"]
    with np.load(tmp_path / "S1.npz") as z:
        assert z["images"].shape == (2, 3, 128, 128)
        assert z["original_size"].tolist() == [512, 384] and z["padding"].tolist() == [0, 0, 64, 64]
        head_mask = z["head_mask"][0]
        rows, cols = np.nonzero(head_mask.any(axis=1))[0], np.nonzero(head_mask.any(axis=0))[0]
        # a round head stays round: 300 px across in both directions -> 75 px at 128 / 512
        assert abs(len(rows) - len(cols)) <= 1 and abs(len(rows) - 75) <= 2
        assert not z["head_mask"][:, :, :16].any() and not z["head_mask"][:, :, -16:].any()
        assert (z["images"][:, :, :, :16] == 0).all()                       # air padding: bottom of every window
        # the hemorrhage in the slice centre lands in the cache centre; the box at the left edge after the padding
        r, c = np.nonzero(z["gt_mask"][1])
        assert (r.min(), r.max(), c.min(), c.max()) == (62, 65, 62, 65)
        r, c = np.nonzero(z["gt_mask"][0])
        assert (r.min(), r.max(), c.min(), c.max()) == (0, 9, 16, 25)
        np.testing.assert_allclose(z["head_area_mm2"][0], head_mask.sum() * 4 * 4 * 0.25)


# 6. confounds


def _confound_cohort(tmp_path: Path, size_of) -> list[str]:
    """12 patients (6 normal, 6 with hemorrhage), 2 slices each, in 3 folds; `size_of(label)` their slice size."""
    rows, manifests = [], []
    for i in range(12):
        label = int(i >= 6)
        n = size_of(label)
        s = series_of(head(n, n, n * 0.35), uid=f"S{i:02d}")
        cache_series(s, tmp_path / f"S{i:02d}.npz", PAPER_WINDOWS, 32)
        rows += [{"patient_id": s.patient_id, "npz": str(tmp_path / f"S{i:02d}.npz"), "slice_index": k,
                  "scan_label": label, "slice_truth": int(label and k == 0), "label": label, "protocol": "paper",
                  "k": i} for k in range(2)]
    rows = pd.DataFrame(rows)
    for fold in range(3):
        test = rows["k"] % 3 == fold
        val = rows["k"].isin([(fold + 1) % 3, (fold + 1) % 3 + 6])
        m = rows.assign(fold=fold, part=np.where(test, "test", np.where(val, "val", "train")))
        path = tmp_path / f"fold-{fold}.csv"
        m.to_csv(path, index=False)
        manifests.append(str(path))
    return manifests


def test_image_size_that_predicts_the_label_gives_auc_100(tmp_path):
    table = confound_table(_confound_cohort(tmp_path, lambda label: 48 if label else 64))
    size = table[(table["statistic"] == "image_pixels") & (table["protocol"] == "paper")]
    assert len(size) == 3 and (size["auc"] == 100).all() and (size["direction"] == "lower").all()
    assert (size["direction_from"] == "val").all() and (size["auc_higher"] == 0).all()
    assert (size["n_test"] == 8).all() and (size["n_anomalous"] == 4).all()
    t1 = tmp_path / "table1.csv"
    pd.DataFrame({"method": ["AE", "NSA"], "auc_mean": [61.0, 80.0], "auc_slice_mean": [90.0, 95.0]}).to_csv(t1, index=False)
    md = confounds_markdown(table, str(t1))
    assert "## Protocol paper" in md and "## Protocol slice" in md
    assert "separates the classes with AUC 83.3" not in md          # under 90 and 95: no warning for slice
    assert (size["auc_max"] == 100).all()
    # slice protocol: each anomalous scan has 1 anomalous and 1 normal slice (same size); per test part
    # 2 anomalous slices against 4 slices of normal scans (smaller: AUC 1) and 2 ties (0.5): 10 / 12
    sl = table[(table["statistic"] == "image_pixels") & (table["protocol"] == "slice")]
    assert len(sl) == 3 and np.allclose(sl["auc"], 100 * 10 / 12) and (sl["n_test"] == 8).all()
    assert ("**Warning: original image size (rows x columns) alone separates the classes with AUC 100.0 "
            "(either direction; 100.0 with the direction chosen on validation), at or above 2 of 2") in md
    pd.DataFrame({"method": ["AE"], "auc_mean": [100.0], "auc_slice_mean": [80.0]}).to_csv(t1, index=False)
    md = confounds_markdown(table, str(t1))                          # ties count as reached
    assert "AUC 83.3 (either direction; 83.3 with the direction chosen on validation), at or above 1 of 1" in md
    assert "at or above 1 of 1 Table 1 rows, all of them" in confounds_markdown(table, str(t1))


def test_image_size_that_does_not_vary_gives_auc_50(tmp_path):
    table = confound_table(_confound_cohort(tmp_path, lambda label: 64))
    size = table[table["statistic"] == "image_pixels"]
    assert len(size) == 6 and (size["auc"] == 50).all() and (size["auc_max"] == 50).all()
    t1 = tmp_path / "table1.csv"
    pd.DataFrame({"method": ["AE"], "auc_mean": [60.0], "auc_slice_mean": [55.0]}).to_csv(t1, index=False)
    md = confounds_markdown(table, str(t1))
    assert "Table 1 rows under this protocol: AUC 60.0" in md and "Warning" not in md


def test_real_ct_is_hu_and_its_brain_window_is_not(shared_data):
    for sub in ("cq500/dicom/CQ500-CT-1", "dcm_qa_ct/GE_human_head_tilt"):
        index, _ = dicom_index.index_folder(shared_data / sub)
        hu = dicomio.load_series(index).hu
        assert hu_problem(hu) is None, sub
        assert "values 0 .. 80 do not look like CT in HU" in hu_problem(np.clip(np.rint(hu), 0, 80)), sub


def test_real_bhx_boxes_give_full_resolution_area(shared_data, tmp_path):
    from ichbench.datasets import bhx

    index, _ = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-1")
    series = dicomio.load_series(index)
    hits = bhx.boxes_by_sop(bhx.read_bhx(shared_data / "bhx" / "1_Initial_Manual_Labeling.csv"), series.sop_uids)
    boxes = hits[series.sop_uids[0]]
    cache_series(series, tmp_path / "s.npz", PAPER_WINDOWS, 128, boxes=boxes)
    px = float(np.prod(series.pixel_spacing))
    areas = boxes["width"] * boxes["height"] * px
    with np.load(tmp_path / "s.npz") as z:
        area = float(z["gt_area_mm2"][0])
    # the union of the 3 boxes: at least the largest, at most their sum (plus the pixel rounding at each edge)
    assert areas.max() <= area <= (areas + (boxes["width"] + boxes["height"] + 2) * px).sum()


def test_a_series_shifted_above_soft_tissue_is_not_hu():
    """A wrong RescaleIntercept that moves the whole head up by 20,000 keeps a 'bone' high end, but nothing is as
    low as soft tissue: not CT in HU. A head in HU (air, tissue, bone) passes."""
    from ichbench.inputs.inputcheck import HuSample, hu_problem

    rng = np.random.default_rng(0)
    head = np.concatenate([np.full(4000, -1000.0), rng.normal(35, 10, 8000), np.full(1000, 1200.0)])
    head = head.reshape(1, 13, 1000).astype(np.float32)
    assert hu_problem(head, stride=1) is None
    said = hu_problem(head + 21024, stride=1)
    assert said is not None and "no soft tissue" in said
    sample = HuSample(stride=1)
    sample.add((head + 21024)[0])
    assert "no soft tissue" in (sample.problem() or "")
