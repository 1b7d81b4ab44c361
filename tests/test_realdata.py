"""Readers, geometry and labels against the small real files in ../shared/data (skipped where absent)."""
import time

import numpy as np
import pandas as pd
import pydicom
import pytest

from ichbench.datasets import bhx
from ichbench.inputs import dicom_index, dicomio, series_select
from ichbench.inputs.geometry import spacing_summary
from ichbench.cli import main
from ichbench.datasets.labels import read_ctfsh, read_reads_majority
from ichbench.cache.preprocess import preprocess_shard, read_index
from ichbench.inputs.windowing import PAPER_WINDOWS


@pytest.fixture(scope="module")
def cq500_ct0(shared_data):
    index, rejected = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    assert len(index) == 238 and not rejected
    return dicomio.load_series(index)


def test_cq500_whole_series_jpeg_lossless(cq500_ct0):
    s = cq500_ct0
    assert s.hu.shape == (238, 512, 512) and s.hu.dtype == np.float32
    assert np.all(np.diff(s.positions) > 0)
    assert not s.rejected
    assert abs(s.tilt_deg - 8.5) < 0.2
    # one slice is missing: one gap of about 2 x 0.625 mm along the (tilted) normal
    summary = spacing_summary(s.spacing)
    assert summary["n_gaps"] == 1
    assert abs(summary["spacing_max_mm"] - 2 * summary["spacing_median_mm"]) < 0.05
    mid = s.hu[119]
    assert s.hu.min() >= -1024
    assert abs(np.median(mid[:20, :20]) + 1000) < 60                     # air in the corner
    brain = mid[(mid > 0) & (mid < 80)]
    assert brain.size > 10000 and 20 < np.median(brain) < 50              # grey / white matter
    assert (mid > 300).sum() > 1000                                        # skull


def test_cq500_series_choice_and_manifest(shared_data, tmp_path):
    rc = main(["index", "--dicom-dir", str(shared_data), "--out", str(tmp_path)])
    assert rc == 0
    chosen = pd.read_csv(tmp_path / "series_selected.csv", dtype=str, keep_default_na=False).set_index("patient_id")
    assert chosen.loc["CQ500-CT-0", "choice"].startswith("thinnest eligible series")
    assert chosen.loc["CQ500-CT-0", "n_files"] == "238"
    # single slices are kept out with a reason, not a crash
    assert chosen.loc["CQ500-CT-1", "series_uid"] == ""
    rej = pd.read_csv(tmp_path / "rejected_index.csv", dtype=str)
    reasons = dict(zip(rej["item"], rej["reason"]))
    assert "fewer than 8 slices" in reasons["CQ500-CT-1"]
    assert "not a DICOM file" in reasons[str(shared_data / "cq500" / "reads.csv")]
    # the Philips files have no .dcm suffix and are indexed all the same
    assert (chosen.loc["PLASTIC", "n_files"]) == "28"


def test_bhx_boxes_on_the_cq500_slice(shared_data, tmp_path):
    boxes = bhx.read_bhx(shared_data / "bhx" / "1_Initial_Manual_Labeling.csv")
    assert len(boxes) == 6283 and boxes["sop_uid"].nunique() == 3558
    index, _ = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-1")
    sop = index["sop_uid"].item()
    hits = bhx.boxes_by_sop(boxes, [sop])
    assert len(hits[sop]) == 3
    assert sorted(hits[sop]["label_name"]) == ["Intraparenchymal", "Intraventricular", "Subarachnoid"]
    # rasterised into the cache: the slice gets ground truth from the boxes
    from ichbench.cache.preprocess import write_index

    write_index(index, tmp_path / "index.csv")
    cand = series_select.select_series(series_select.describe_series(index), min_slices=1)
    cand.to_csv(tmp_path / "series.csv", index=False)
    table = preprocess_shard(tmp_path / "index.csv", tmp_path / "series.csv", tmp_path / "cache", shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=128, boxes=boxes)
    assert table["has_gt"].item() and table["gt_source"].item() == "boxes" and table["gt_slices"].item() == 1
    with np.load(tmp_path / "cache" / table["npz"].item()) as z:
        gt = z["gt_mask"][0]
        # every box covers its area scaled to 128 px
        for _, b in hits[sop].iterrows():
            r, c = int((b.y + b.height / 2) / 4), int((b.x + b.width / 2) / 4)
            assert gt[r, c]
        full = np.zeros((512, 512), bool)
        for _, b in hits[sop].iterrows():
            full[int(round(b.y)):int(round(b.y + b.height)), int(round(b.x)):int(round(b.x + b.width))] = True
        assert abs(gt.mean() - full.mean()) < 0.01
        assert abs(float(z["tilt_deg"]) - 15.0) < 0.1


def test_ctfsh_and_reads_counts(shared_data):
    c = read_ctfsh(shared_data / "ctfsh" / "cq500_labels.csv")
    assert len(c) == 364 and (c["label"] == 0).sum() == 117 and (c["label"] == 1).sum() == 247
    assert c["scan_id"].str.fullmatch(r"CQ500-CT-\d+").all()
    r = read_reads_majority(shared_data / "cq500" / "reads.csv")
    assert len(r) == 491 and (r["label"] == 1).sum() == 205
    raw = pd.read_csv(shared_data / "cq500" / "reads.csv")
    assert (raw["Category"] == "B1").sum() == 214 and (raw["Category"] == "B2").sum() == 277
    # the CTFSH cohort is a subset of the CQ500 scans
    assert set(c["scan_id"]) <= set(r["scan_id"])


def test_ge_tilted_uneven_spacing_sorted(shared_data):
    index, rejected = dicom_index.index_folder(shared_data / "dcm_qa_ct" / "GE_human_head_tilt")
    assert len(index) == 28 and not rejected
    s = dicomio.load_series(index)
    assert np.all(np.diff(s.positions) > 0)
    # sorted by position: for this series the instance numbers then run 1..28
    assert list(s.instance_numbers) == list(range(1, 29))
    gaps = np.round(s.spacing, 1)
    assert {1.1, 4.0, 7.0} <= set(gaps.tolist())
    summary = spacing_summary(s.spacing)
    assert summary["uneven_spacing"]
    assert abs(s.tilt_deg - 18.5) < 0.2
    # stored values are HU (intercept 0); padding -1500 becomes air, nothing below -1024
    assert s.hu.min() >= -1024 and (s.hu == -1024).mean() > 0.05
    mid = s.hu[14]
    assert ((mid > 0) & (mid < 80)).sum() > 5000 and (mid > 300).sum() > 500


def test_philips_phantom_uint16_intercept(shared_data):
    index, _ = dicom_index.index_folder(shared_data / "dcm_qa_ct" / "Philips_phantom_S2010")
    s = dicomio.load_series(index)
    assert s.hu.shape[0] == 28 and s.hu.min() >= -1024
    assert np.allclose(np.diff(s.positions), 5.0, atol=0.01)


@pytest.mark.parametrize("name", ["693_UNCI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_odd_single_slices_decode(shared_data, name):
    path = shared_data / "single_slices" / name
    row = dicom_index._read_header(str(path))
    if isinstance(row, dicomio.Rejection):            # a clear reason is acceptable, a crash is not
        assert row.reason
        return
    s = dicomio.load_series(pd.DataFrame([row]))
    hu = s.hu[0]
    assert hu.shape == (512, 512) and np.isfinite(hu).all()
    assert hu.min() >= -1024 and (hu <= -990).mean() > 0.2              # air / padding
    assert ((hu > 0) & (hu < 80)).sum() > 5000                           # brain
    assert (hu > 300).sum() > 500                                        # bone


def test_index_reads_each_file_once_and_speed(shared_data, monkeypatch, capsys):
    opened = []
    real = dicom_index.pydicom.dcmread

    def counting(fp, *a, **k):
        opened.append(getattr(fp, "name", fp))
        return real(fp, *a, **k)

    monkeypatch.setattr(dicom_index.pydicom, "dcmread", counting)
    files = dicom_index.iter_files(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    t = time.perf_counter()
    index, _ = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    dt = time.perf_counter() - t
    assert len(opened) == len(files) == len(index)
    assert all(index["has_pixels"])
    with capsys.disabled():
        print(f"\n[index speed] {len(files) / dt:.0f} files/s (1 process, CQ500-CT-0)")


def test_header_index_has_no_identifying_values(shared_data, tmp_path):
    """The real files' own identifying values (where present) never reach the index."""
    rc = main(["index", "--dicom-dir", str(shared_data / "dcm_qa_ct"), "--out", str(tmp_path)])
    assert rc == 0
    ds = pydicom.dcmread(next((shared_data / "dcm_qa_ct" / "GE_human_head_tilt").glob("*.dcm")), stop_before_pixels=True)
    needles = [str(ds.get(k, "")).strip() for k in ("PatientName", "PatientBirthDate", "InstitutionName",
                                                   "AccessionNumber", "ReferringPhysicianName")]
    needles = [n.encode() for n in needles if len(n) >= 4]
    for p in tmp_path.iterdir():
        blob = p.read_bytes()
        for n in needles:
            assert n not in blob, f"{n!r} in {p.name}"
    assert len(read_index(tmp_path / "index.csv")) == 56
