"""Localisation metrics, brain-masked score, ICH subtypes, fold assignment read-back and config guards,
on constructed cases with known answers (and the real CTFSH / CQ500 label files)."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ichbench.cohort import assignment, guards, splits, subtypes
from ichbench.evaluation import localisation
from ichbench.config import ConfigError


def _maps_and_truth(n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, size, size), bool)
    truth[0, 3:7, 4:9] = True
    truth[2, 10:14, 1:3] = True
    maps = rng.random((n, size, size)).astype(np.float32)
    return maps, truth


@pytest.mark.parametrize("rate", [1.0, 0.25])
def test_perfect_map_has_pixel_auroc_and_dice_one(rate):
    _, truth = _maps_and_truth()
    acc = localisation.PixelAccumulator(rate, seed=0, fold=0)
    acc.add(truth.astype(np.float32) * 5 + 1, truth)
    r = acc.result()
    assert r["pixel_auroc"] == 1.0
    assert r["dice_best"] == pytest.approx(1.0)
    assert r["max_in_truth"] == 1.0
    assert r["n_anomalous_slices"] == 2 and r["n_truth_pixels"] == int(truth.sum())


def test_pixel_auroc_matches_sklearn_and_inverted_map_is_zero():
    maps, truth = _maps_and_truth(seed=4)
    acc = localisation.PixelAccumulator(1.0)
    acc.add(maps, truth)
    assert acc.result()["pixel_auroc"] == pytest.approx(roc_auc_score(truth.ravel(), maps.ravel()))
    inv = localisation.PixelAccumulator(1.0)
    inv.add(-truth.astype(np.float32), truth)
    assert inv.result()["pixel_auroc"] == 0.0


def test_best_dice_by_hand_and_sampling_weight():
    # truth pixels score 3, 2; normals 2.5, 1, 0: threshold 3 -> 2*1/(1+0+2) = 2/3; threshold 2 -> 2*2/(2+1+2) = 0.8
    d, t = localisation.best_dice(np.array([3.0, 2.0]), np.array([2.5, 1.0, 0.0]))
    assert d == pytest.approx(0.8) and t == 2.0
    # each sampled normal pixel standing for 4: threshold 2 -> 4/(2+4+2) = 0.5, threshold 3 -> 2/3
    d, t = localisation.best_dice(np.array([3.0, 2.0]), np.array([2.5, 1.0, 0.0]), neg_weight=4.0)
    assert d == pytest.approx(2 / 3) and t == 3.0


def test_map_maximum_in_box_share():
    truth = np.zeros((3, 8, 8), bool)
    truth[:, 2:4, 2:4] = True
    maps = np.zeros((3, 8, 8), np.float32)
    maps[0, 3, 3] = 1          # inside
    maps[1, 7, 7] = 1          # outside
    maps[2, 2, 2] = 1          # inside
    acc = localisation.PixelAccumulator(1.0)
    acc.add(maps, truth)
    assert acc.result()["max_in_truth"] == pytest.approx(2 / 3)


def test_pixel_sample_is_seeded_and_shape_mismatch_is_named():
    maps, truth = _maps_and_truth()
    a, b = localisation.PixelAccumulator(0.1, 3, 1), localisation.PixelAccumulator(0.1, 3, 1)
    a.add(maps, truth)
    b.add(maps, truth)
    assert a.result() == b.result()
    with pytest.raises(ValueError, match="ground truth"):
        a.add(maps[:, :8], truth)


def test_brain_mean_score():
    maps = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    brain = np.zeros((2, 4, 4), bool)
    brain[0, 1:3, 1:3] = True           # values 5, 6, 9, 10
    out = localisation.brain_mean(maps, brain)
    assert out[0] == pytest.approx(7.5)
    assert np.isnan(out[1])             # empty brain mask
    assert not localisation.has_pixel_scores("GANomaly") and localisation.has_pixel_scores("AE")



class NumpyAccumulator(localisation.PixelAccumulator):
    """An independent NumPy version of `add` (boolean indexing, argmax per slice): the oracle for the
    accumulator's torch code."""

    def add(self, maps, truth):
        import torch

        maps, truth = np.asarray(maps, np.float32), np.asarray(truth, bool)
        self.n_slices += len(maps)
        self.pos.append(torch.from_numpy(maps[truth]))
        negs = maps[~truth]
        self.n_neg_total += negs.size
        self.neg.append(torch.from_numpy(negs if self.rate >= 1 else negs[self.rng.random(negs.size) < self.rate]))
        anomalous = truth.reshape(len(truth), -1).any(axis=1)
        if anomalous.any():
            top = maps[anomalous].reshape(int(anomalous.sum()), -1).argmax(axis=1)
            self.hits_found.append(int(truth[anomalous].reshape(len(top), -1)[np.arange(len(top)), top].sum()))
            self.n_anomalous += int(anomalous.sum())


@pytest.mark.parametrize("rate", [1.0, 0.1])
def test_device_accumulator_and_brain_mean_equal_the_host_ones(rate):
    """The score job's path (maps as tensors, in two batches) gives exactly a NumPy oracle's result."""
    import torch

    maps, truth = _maps_and_truth(n=8)
    maps[0, 4, 5] = maps[2, 11, 2] = 2.0      # slices 0 and 2: the maximum inside the truth
    maps[5, 0, 0] = 2.0                       # slice 5: outside
    truth[5, 8:12, 8:12] = True
    host, dev = NumpyAccumulator(rate, 2, 3), localisation.PixelAccumulator(rate, 2, 3)
    for part in (slice(0, 5), slice(5, 8)):
        host.add(maps[part], truth[part])
        dev.add(torch.from_numpy(maps[part]), truth[part])
    expect = host.result()
    assert expect["max_in_truth"] == pytest.approx(2 / 3)
    assert dev.result() == expect
    with pytest.raises(ValueError, match="ground truth"):
        dev.add(torch.from_numpy(maps[:, :8]), truth)
    brain = np.zeros((2, 4, 4), bool)
    brain[0, 1:3, 1:3] = True
    m = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    out = localisation.brain_mean(torch.from_numpy(m), brain).numpy()
    assert out[0] == pytest.approx(7.5) and np.isnan(out[1])

# -- ICH subtypes -------------------------------------------------------------------------------

def test_subtype_codes_and_subsets():
    assert subtypes.codes("LST;ASDH;CSDH") == {"SDH"}
    assert subtypes.codes("IPH;IVH;SDH;EDH;SAH;FRAC;MSE") == set(subtypes.SUBTYPES)
    assert subtypes.codes("") == set() and subtypes.codes("HEALTHY") == set()
    p = pd.DataFrame({"patient_id": list("ABCDE"), "scan_label": [0, 0, 1, 1, 1],
                      "subtypes": ["", "", "IPH;SAH", "", "SDH"], "reader_ich_votes": [0, 3, 2, 0, -1]})
    s = {k: set(p.loc[v, "patient_id"]) for k, v in subtypes.subsets(p).items()}
    assert s["all"] == set("ABCDE")
    assert s["IPH"] == {"A", "B", "C"} and s["SDH"] == {"A", "B", "E"} and s["EDH"] == {"A", "B"}
    assert s["ICH only"] == {"A", "C", "E"}          # B: normal with ICH by 3 readers; D: no bleed code
    assert s["no bleed code"] == {"A", "B", "D"}


def test_real_label_facts(shared_data):
    from ichbench.datasets.labels import read_ctfsh

    ctfsh = read_ctfsh(shared_data / "ctfsh" / "cq500_labels.csv")
    info = subtypes.scan_info(ctfsh, str(shared_data / "cq500" / "reads.csv"))
    c = ctfsh[["scan_id", "label"]].merge(info, on="scan_id")
    path = c[c["label"] == 1]
    assert len(path) == 247 and len(c[c["label"] == 0]) == 117
    assert (path["subtypes"] == "").sum() == 92
    assert (path["reader_ich_votes"] == 0).sum() == 79
    normal_ich = c[(c["label"] == 0) & (c["reader_ich_votes"] == 3)]["scan_id"]
    assert set(normal_ich) == {"CQ500-CT-203", "CQ500-CT-384"}
    counts = subtypes.cohort_counts(c.rename(columns={"scan_id": "patient_id", "label": "scan_label"})).set_index("scan_class")
    assert counts.loc["pathological", "patients_no_bleed_code"] == 92
    assert counts.loc["normal", "patients_reader_ich"] == 2
    assert counts.loc["pathological", "patients_IPH"] == int(path["subtypes"].str.contains("IPH").sum()) > 50
    # without CTFSH, subtypes come from the reads majority: CQ500-CT-1 has IPH (and ICH) by all 3 readers
    reads_only = subtypes.scan_info(None, str(shared_data / "cq500" / "reads.csv")).set_index("scan_id")
    assert "IPH" in reads_only.loc["CQ500-CT-1", "subtypes"] and reads_only.loc["CQ500-CT-1", "reader_ich_votes"] == 3


# -- fold assignment ----------------------------------------------------------------------------

def _patients(n_normal=20, n_path=30):
    ids = [f"P{i:03d}" for i in range(n_normal + n_path)]
    return pd.DataFrame({"patient_id": ids, "scan_label": [0] * n_normal + [1] * n_path})


def test_assignment_read_back_keeps_folds_when_one_patient_is_dropped(tmp_path):
    pats = _patients()
    parts = splits.assign_folds(pats, 5, 0.11, seed=0)
    path = tmp_path / "assignment.csv"
    assignment.to_table(parts, pats).to_csv(path, index=False)
    back, notes = assignment.parts_from(assignment.read(path), pats, 5)
    key = ["fold", "patient_id", "part"]
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True),
                                  parts.sort_values(key).reset_index(drop=True))
    assert notes == []
    dropped = pats[pats["patient_id"] != "P007"]
    redrawn = splits.assign_folds(dropped, 5, 0.11, seed=0)
    t_orig = parts[parts["part"] == "test"].set_index("patient_id")["fold"]
    t_new = redrawn[redrawn["part"] == "test"].set_index("patient_id")["fold"]
    assert (t_new != t_orig.loc[t_new.index]).sum() > 0      # redrawing moves other patients
    kept, notes = assignment.parts_from(assignment.read(path), dropped, 5)
    expect = parts[parts["patient_id"] != "P007"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept.sort_values(key).reset_index(drop=True), expect)
    assert len(notes) == 1 and "P007" in notes[0] and "ignored" in notes[0]


def test_assignment_missing_patient_and_bad_file(tmp_path):
    pats = _patients()
    table = assignment.to_table(splits.assign_folds(pats, 5, 0.11, seed=0), pats)
    table[table["patient_id"] != "P003"].to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(assignment.AssignmentError, match="P003"):
        assignment.parts_from(assignment.read(tmp_path / "a.csv"), pats, 5)
    with pytest.raises(assignment.AssignmentError, match="0..2"):
        assignment.parts_from(assignment.read(tmp_path / "a.csv"), pats[pats["patient_id"] != "P003"], 3)
    (tmp_path / "b.csv").write_text("patient,fold\nP1,0\n")
    with pytest.raises(assignment.AssignmentError, match="needs columns"):
        assignment.read(tmp_path / "b.csv")
    with pytest.raises(assignment.AssignmentError, match="does not exist"):
        assignment.read(tmp_path / "none.csv")


# -- guards -------------------------------------------------------------------------------------

def test_real_data_with_synthetic_labels_stops():
    cfg = {"dataset": {"source": "dicom", "dicom_dir": "/data/CQ500", "labels": "/data/cq500_labels.csv",
                       "reads": "/data/reads.csv", "slice_labels": "data/synthetic/slice_labels.csv",
                       "gt_masks_dir": None}, "synthetic": {"out_dir": "data/synthetic"}}
    with pytest.raises(ConfigError, match="dataset.slice_labels = data/synthetic/slice_labels.csv"):
        guards.check_label_paths(cfg)
    cfg["dataset"]["slice_labels"] = None
    guards.check_label_paths(cfg)
    cfg["dataset"].update(source="nifti", nifti_dir="/data/nii", nifti_labels="./data/synthetic/x.csv",
                          labels="data/synthetic/cq500_labels.csv")
    with pytest.raises(ConfigError, match="nifti_labels") as err:
        guards.check_label_paths(cfg)
    assert "dataset.labels" not in str(err.value)              # a NIfTI run does not read dataset.labels
    cfg["dataset"]["nifti_labels"] = None
    guards.check_label_paths(cfg)
    # the synthetic DICOM read as `dicom` keeps its own labels
    guards.check_label_paths({"dataset": {"source": "dicom", "dicom_dir": "data/synthetic/dicom",
                                          "labels": "data/synthetic/cq500_labels.csv"},
                              "synthetic": {"out_dir": "data/synthetic"}})


def test_expected_cohort_counts(caplog):
    summary = pd.DataFrame({"scan_class": ["normal", "pathological", "all"], "patients": [116, 247, 363]})
    assert guards.check_expected(summary, {"normal": 116, "pathological": 247}) == []
    with pytest.raises(ValueError, match="normal: 116 patients in the cohort, 117 expected"):
        guards.check_expected(summary, {"normal": 117, "pathological": 247}, "fail")
    assert len(guards.check_expected(summary, {"normal": 117}, "warn")) == 1
    assert "117 expected" in caplog.text


# -- BHX boxes moved onto the chosen series ------------------------------------------------------

def _series(prefix, series_uid, orientation, positions, spacing, thickness, patient="P1", study="ST1"):
    return pd.DataFrame({"patient_id": patient, "study_uid": study, "series_uid": series_uid,
                         "sop_uid": [f"{prefix}.{k}" for k in range(len(positions))],
                         "orientation": [tuple(orientation)] * len(positions),
                         "position": [tuple(p) for p in positions], "pixel_spacing": [tuple(spacing)] * len(positions),
                         "slice_thickness": float(thickness), "rows": 512, "columns": 512})


def _box(sop, x, y, w, h, label="IPH"):
    return {"sop_uid": sop, "bhx_series_uid": "", "bhx_study_uid": "", "x": x, "y": y, "width": w, "height": h,
            "label_name": label, "label_type": "handDrawn"}


def test_box_transfer_onto_a_tilted_series():
    from ichbench.datasets import bhx_transfer

    t = np.radians(20.0)
    tilted = (1, 0, 0, 0, np.cos(t), np.sin(t))                 # normal (0, -sin t, cos t)
    # chosen series B: 2 mm slices, 2 mm apart along its (tilted) normal, 0.7 mm pixels
    b_pos = [(-150.0, -120.0, 2.0 * k / np.cos(t)) for k in range(30)]
    chosen = _series("B", "SB", tilted, b_pos, (0.7, 0.7), 2.0)
    # the point at B pixel (300.5, 200.5) of slice 12, and an axial 5 mm source series A through it
    p = bhx_transfer.to_patient(np.array([300.5]), np.array([200.5]), tilted, b_pos[12], (0.7, 0.7))[0]
    a_pos = [(-128.0, -128.0, p[2] + 5.0 * (k - 3)) for k in range(8)]  # slice 3 lies at p's height
    source = _series("A", "SA", (1, 0, 0, 0, 1, 0), a_pos, (0.5, 0.5), 5.0)
    index = pd.concat([source, chosen], ignore_index=True)
    series = pd.DataFrame({"patient_id": ["P1", "P1"], "study_uid": ["ST1", "ST1"], "series_uid": ["SA", "SB"],
                           "selected": [False, True]})
    ua, va = (p[0] + 128.0) / 0.5 + 0.5, (p[1] + 128.0) / 0.5 + 0.5
    w, h = 40.0, 24.0
    boxes = pd.DataFrame([_box("A.3", ua - w / 2, va - h / 2, w, h), _box("B.5", 10, 20, 30, 40, "SDH"),
                          _box("A.99", 1, 1, 5, 5), _box("A.7", 1, 1, 5, 5)])
    moved, record = bhx_transfer.transfer(boxes, index, series)
    # box 0: every B slice within 2.5 mm (half of the thicker, 5 mm) of its centre: slices 11, 12, 13
    m0 = moved[moved["source_sop_uid"] == "A.3"].set_index("sop_uid")
    assert list(m0.index) == ["B.11", "B.12", "B.13"]
    assert m0["distance_mm"].tolist() == pytest.approx([2.0, 0.0, -2.0], abs=1e-6)
    assert (m0["transfer"] == "by patient coordinates").all()
    r = m0.loc["B.12"]
    assert r["x"] + r["width"] / 2 == pytest.approx(300.5) and r["y"] + r["height"] / 2 == pytest.approx(200.5)
    assert r["width"] == pytest.approx(w * 0.5 / 0.7)                   # x is along both row directions
    assert r["height"] == pytest.approx(h * 0.5 * np.cos(t) / 0.7)      # y foreshortened by the tilt
    # box 1 already on the chosen series: unchanged
    m1 = moved[moved["source_sop_uid"] == "B.5"].iloc[0]
    assert (m1["sop_uid"], m1["x"], m1["height"], m1["transfer"]) == ("B.5", 10, 40, "on chosen series")
    out = record.set_index("box_id")["outcome"]
    assert out[2] == "dropped: its slice is not in the index"
    assert out[3].startswith("dropped: no chosen slice within 2.50 mm")   # A.7: no B slice reaches it
    s = bhx_transfer.summary(record)
    assert (s["boxes"], s["boxes_on_chosen"], s["boxes_transferred"], s["boxes_dropped"], s["scans_kept"]) == (4, 1, 1, 2, 1)


def test_transferred_box_file_reads_back_with_its_record(tmp_path):
    from ichbench.datasets import bhx, bhx_transfer

    moved = pd.DataFrame([{**_box("S.1", 10.5, 20.25, 30, 40), "transfer": "by patient coordinates",
                           "source_sop_uid": "O.1", "source_series_uid": "SO", "distance_mm": 0.3}])
    bhx_transfer.to_bhx_format(moved).to_csv(tmp_path / "b.csv", index=False)
    back = bhx.read_bhx(tmp_path / "b.csv")
    assert back.loc[0, ["sop_uid", "x", "y", "width", "height"]].tolist() == ["S.1", 10.5, 20.25, 30, 40]
    assert back.loc[0, "transfer"] == "by patient coordinates" and back.loc[0, "source_sop_uid"] == "O.1"


# -- the split stage end to end on the tiny synthetic data ----------------------------------------

@pytest.fixture(scope="module")
def tiny_cache(tiny_synthetic, tmp_path_factory):
    from ichbench.cli import main

    out = tmp_path_factory.mktemp("evalx_cache")
    assert main(["index", "--dicom-dir", str(tiny_synthetic / "dicom"), "--out", str(out / "data")]) == 0
    assert main(["preprocess", "--data", str(out / "data"), "--out", str(out / "shard-0"), "--size", "64",
                 "--gt-dir", str(tiny_synthetic / "masks")]) == 0
    return out


def _split(tiny_synthetic, cache, out, *extra):
    from ichbench.cli import main

    return main(["split", "--shards", str(cache / "shard-0"), "--labels", str(tiny_synthetic / "cq500_labels.csv"),
                 "--reads", str(tiny_synthetic / "reads.csv"), "--scan-id-format", "SYN-CT-{n}", "--n-folds", "3",
                 "--out", str(out), "--cohort", str(out / "cohort.csv"), "--rejected-out", str(out / "rejected.csv"),
                 *extra])


def test_split_writes_assignment_diagnosis_and_checks_counts(tiny_synthetic, tiny_cache, tmp_path, capsys):
    out = tmp_path / "a"
    assert _split(tiny_synthetic, tiny_cache, out, "--assignment-out", str(tmp_path / "assignment.csv"),
                  "--expected", '{"normal": 3, "pathological": 3}') == 0
    a = pd.read_csv(tmp_path / "assignment.csv", dtype={"val_folds": str}, keep_default_na=False)
    assert len(a) == 6 and sorted(a["test_fold"].value_counts()) == [2, 2, 2]
    fold0 = pd.read_csv(out / "fold-0.csv", keep_default_na=False)
    labels = pd.read_csv(tiny_synthetic / "cq500_labels.csv", sep=";", dtype=str, keep_default_na=False)
    diag = dict(zip("SYN-CT-" + labels["name"].str[3:], labels["diagnosis"]))
    assert (fold0["diagnosis"] == fold0["patient_id"].map(diag)).all()
    cohort = pd.read_csv(out / "cohort.csv").set_index("scan_class")
    assert cohort.loc["pathological", "patients_no_bleed_code"] == 0
    # the same folds come back from the file; a count mismatch stops the split, naming the counts
    out_b = tmp_path / "b"
    assert _split(tiny_synthetic, tiny_cache, out_b, "--assignment-in", str(tmp_path / "assignment.csv"), "--seed", "5") == 0
    for k in range(3):
        pd.testing.assert_frame_equal(pd.read_csv(out / f"fold-{k}.csv"), pd.read_csv(out_b / f"fold-{k}.csv"))
    assert _split(tiny_synthetic, tiny_cache, tmp_path / "c", "--expected", '{"normal": 117}') == 1
    assert "normal: 3 patients in the cohort, 117 expected" in capsys.readouterr().err


def test_snakemake_stops_before_any_job_when_real_data_has_synthetic_labels(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["dataset"].update(source="dicom", dicom_dir=str(tmp_path), labels="data/synthetic/cq500_labels.csv")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory",
                           str(tmp_path), "-n", "--cores", "1"], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(root / "src")})
    assert proc.returncode != 0
    assert "dataset.labels = data/synthetic/cq500_labels.csv" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_score_job_writes_brain_score_and_localisation(tiny_synthetic, tiny_cache, tmp_path, one_torch_thread):
    import json

    import torch

    from ichbench.cli import main
    from ichbench.cohort.splits import read_manifest
    from ichbench.training.data import DeviceBatches, load_slices
    from ichbench.training.train import load_trained

    assert _split(tiny_synthetic, tiny_cache, tmp_path / "s") == 0
    manifest = tmp_path / "s" / "fold-0.csv"
    params = json.dumps({"epochs": 1, "batch_size": 16, "width": 8, "hidden": 64})
    assert main(["train", "--method", "AE", "--params", params, "--manifest", str(manifest), "--out",
                 str(tmp_path / "m"), "--device", "cpu", "--no-progress"]) == 0
    assert main(["score", "--model", str(tmp_path / "m" / "model.pt"), "--manifest", str(manifest),
                 "--out-csv", str(tmp_path / "s.csv"), "--out-maps", str(tmp_path / "s.npz"), "--device", "cpu",
                 "--out-loc", str(tmp_path / "s.loc.json"), "--pixel-negative-rate", "1"]) == 0
    scores = pd.read_csv(tmp_path / "s.csv", dtype={"sop_uid": str})
    # the brain score, recomputed from the model's maps and the cached brain masks
    method, _ = load_trained(tmp_path / "m" / "model.pt", "cpu")
    rows = read_manifest(manifest)
    rows = rows[rows["part"].isin(["val", "test"])].reset_index(drop=True)
    data = load_slices(rows)
    _, maps = method.score(DeviceBatches(data, torch.device("cpu")).batch(torch.arange(len(rows))))
    maps = maps.numpy()
    brain = data.masks["brain_mask"]
    expect = [maps[i][brain[i]].mean() if brain[i].any() else np.nan for i in range(len(rows))]
    np.testing.assert_allclose(scores["slice_score_brain"].to_numpy(float), expect, rtol=1e-5)
    # localisation over the test slices (synthetic masks: every series has pixel truth), all pixels
    loc = json.loads((tmp_path / "s.loc.json").read_text())
    test = rows["part"] == "test"
    gt = np.stack([np.load(p)["gt_mask"][k] for p, k in zip(rows["npz"], rows["slice_index"])])
    assert loc["available"] and loc["n_slices"] == int(test.sum())
    assert loc["n_anomalous_slices"] == int(gt[test.to_numpy()].any(axis=(1, 2)).sum()) > 0
    t = test.to_numpy()
    assert loc["pixel_auroc"] == pytest.approx(roc_auc_score(gt[t].ravel(), maps[t].ravel()), abs=1e-6)


def test_cq500_ct0_boxes_lie_on_another_series(shared_data):
    """The issue's fact: CQ500-CT-0's six BHX boxes are on a series other than the one shipped (and chosen)."""
    from ichbench.datasets import bhx, bhx_transfer
    from ichbench.inputs import dicom_index

    index, _ = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    boxes = bhx.read_bhx(shared_data / "bhx" / "1_Initial_Manual_Labeling.csv")
    ct0 = boxes[boxes["bhx_study_uid"] == index["study_uid"].iloc[0]]
    assert len(ct0) == 6
    assert not set(ct0["bhx_series_uid"]) & set(index["series_uid"])
    chosen = index.drop_duplicates("series_uid")[["patient_id", "study_uid", "series_uid"]].assign(selected=True)
    moved, record = bhx_transfer.transfer(ct0, index, chosen)
    assert moved.empty and (record["outcome"] == "dropped: its slice is not in the index").all()


def test_box_moved_onto_the_real_tilted_cq500_series(shared_data):
    """A box on a constructed axial 5 mm series, moved onto CQ500-CT-0's real 8.5-degree-tilted 0.625 mm series:
    on each reached slice the box centre is the orthogonal projection of the source centre."""
    from ichbench.datasets import bhx_transfer
    from ichbench.inputs import dicom_index
    from ichbench.inputs.geometry import slice_normal

    index, _ = dicom_index.index_folder(shared_data / "cq500" / "dicom" / "CQ500-CT-0")
    pid, study = index["patient_id"].iloc[0], index["study_uid"].iloc[0]
    z = np.array([p[2] for p in index["position"]])
    zc = float(np.median(z))
    source = _series("X", "SX", (1, 0, 0, 0, 1, 0), [(-120.0, -110.0, zc)], (0.5, 0.5), 5.0, patient=pid, study=study)
    idx = pd.concat([index, source], ignore_index=True)
    chosen = pd.DataFrame({"patient_id": [pid, pid], "study_uid": [study, study],
                           "series_uid": [index["series_uid"].iloc[0], "SX"], "selected": [True, False]})
    moved, record = bhx_transfer.transfer(pd.DataFrame([_box("X.0", 230, 250, 30, 20)]), idx, chosen)
    c = bhx_transfer.to_patient(np.array([245.0]), np.array([260.0]), (1, 0, 0, 0, 1, 0), (-120.0, -110.0, zc), (0.5, 0.5))[0]
    n = slice_normal(index["orientation"].iloc[0])
    dist = np.array([n @ (c - np.asarray(p)) for p in index["position"]])
    assert record["outcome"].tolist() == ["by patient coordinates"]
    assert len(moved) == int((np.abs(dist) <= 2.5).sum()) >= 6          # 0.625 mm slices in a 5 mm slab
    geo = index.set_index("sop_uid")
    for _, r in moved.iterrows():
        g = geo.loc[r["sop_uid"]]
        back = bhx_transfer.to_patient(np.array([r["x"] + r["width"] / 2]), np.array([r["y"] + r["height"] / 2]),
                                       g["orientation"], g["position"], g["pixel_spacing"])[0]
        np.testing.assert_allclose(back, c - r["distance_mm"] * n, atol=1e-3)


def test_new_config_keys_have_schema_defaults_equal_to_config_yaml():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    schema = yaml.safe_load((root / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    for section, key in (("dataset", "expected"), ("dataset", "expected_action"), ("dataset", "bhx_transfer"),
                         ("splits", "assignment"), ("evaluation", "pixel_negative_rate"), ("evaluation", "seed")):
        entry = schema[section]["properties"][key]
        assert entry["description"] and entry["default"] == cfg[section][key], (section, key)
