import numpy as np
import pandas as pd
import pytest

from ichbench.cohort.splits import assign_folds, build_cohort, make_manifests, slice_label


def _cohort(n_normal=23, n_path=31, slices=5):
    rows = []
    for i in range(n_normal + n_path):
        lab = int(i >= n_normal)
        for k in range(slices):
            rows.append({"patient_id": f"P{i}", "study_uid": f"st{i}", "series_uid": f"se{i}", "sop_uid": f"{i}.{k}",
                         "slice_index": k, "npz": f"x{i}.npz", "scan_label": lab,
                         "slice_truth": (1 if (lab and k in (2, 3)) else 0) if i % 7 else -1})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_folds", [3, 5])
def test_folds_no_leakage_every_patient_tested_once(n_folds):
    c = _cohort()
    patients = c.groupby("patient_id", as_index=False)["scan_label"].first()
    parts = assign_folds(patients, n_folds, 0.11, seed=1)
    tested = parts[parts["part"] == "test"]["patient_id"]
    assert sorted(tested) == sorted(patients["patient_id"])          # every patient tested exactly once
    for k, g in parts.groupby("fold"):
        assert not g["patient_id"].duplicated().any()                  # no patient in two parts of a fold
    train = parts[parts["part"] == "train"].merge(patients, on="patient_id")
    assert (train["scan_label"] == 0).all()                           # training patients are normal


def test_folds_are_stratified_and_validation_sized():
    c = _cohort(40, 60)
    patients = c.groupby("patient_id", as_index=False)["scan_label"].first()
    parts = assign_folds(patients, 5, 0.11, seed=0).merge(patients, on="patient_id")
    for k, g in parts.groupby("fold"):
        test = g[g["part"] == "test"]
        assert test["scan_label"].sum() == 12 and (test["scan_label"] == 0).sum() == 8
        val = g[g["part"] == "val"]
        assert (val["scan_label"] == 0).sum() == round(0.11 * 40)
        assert (val["scan_label"] == 1).sum() == round(0.11 * 60)


def test_folds_deterministic_and_seed_dependent():
    c = _cohort()
    patients = c.groupby("patient_id", as_index=False)["scan_label"].first()
    a = assign_folds(patients, 5, 0.11, seed=4)
    b = assign_folds(patients.sample(frac=1, random_state=3), 5, 0.11, seed=4)
    pd.testing.assert_frame_equal(a.sort_values(["fold", "patient_id"]).reset_index(drop=True),
                                  b.sort_values(["fold", "patient_id"]).reset_index(drop=True))
    assert not a.equals(assign_folds(patients, 5, 0.11, seed=5))


def test_too_few_patients_is_a_clear_error():
    patients = pd.DataFrame({"patient_id": ["a", "b", "c", "d", "e", "f"], "scan_label": [0, 0, 1, 1, 1, 1]})
    with pytest.raises(ValueError, match="at least 5 patients of each class"):
        assign_folds(patients, 5, 0.1, 0)


def test_protocols():
    c = _cohort()
    paper = slice_label(c, "paper")
    assert (paper == c["scan_label"]).all()
    sl = slice_label(c, "slice")
    assert (sl[c["scan_label"] == 0] == 0).all()
    path_known = (c["scan_label"] == 1) & (c["slice_truth"] >= 0)
    assert (sl[path_known] == c.loc[path_known, "slice_truth"]).all()
    assert sl[(c["scan_label"] == 1) & (c["slice_truth"] < 0)].isna().all()


def test_manifests_slice_protocol_drops_unknown_and_trains_on_normals():
    c = _cohort()
    for m in make_manifests(c, "slice", 5, 0.11, seed=0):
        assert set(m["part"]) == {"train", "val", "test"}
        assert (m.loc[m["part"] == "train", "label"] == 0).all()
        assert (m.loc[m["part"] == "train", "scan_label"] == 0).all()
        ev = m[m["part"] != "train"]
        assert set(ev["label"]) == {0, 1}
        unknown = ev[(ev["scan_label"] == 1) & (ev["slice_truth"] < 0)]
        assert unknown.empty


def test_cohort_reports_missing_and_unlabelled_scans():
    c = _cohort(3, 3)
    labels = pd.DataFrame({"scan_id": ["P0", "P1", "P2", "P3", "P4", "ZZ"], "label": [0, 0, 0, 1, 1, 1]})
    cohort, problems = build_cohort(c.drop(columns="scan_label"), labels)
    assert set(cohort["patient_id"]) == {"P0", "P1", "P2", "P3", "P4"}
    assert ("ZZ", "listed in the label file but no usable series was found") in problems
    assert any(s == "P5" for s, _ in problems)


def test_undecided_labels_are_reported_and_summary_has_totals():
    from ichbench.cohort.splits import cohort_summary

    c = _cohort(3, 3)
    labels = pd.DataFrame({"scan_id": ["P0", "P1", "P2", "P3", "P4", "P5"], "label": [0, 0, 0, 1, 1, np.nan]})
    cohort, problems = build_cohort(c.drop(columns="scan_label"), labels)
    assert "P5" not in set(cohort["patient_id"])
    assert any(s == "P5" and "label protocol" in r for s, r in problems)
    summary = cohort_summary(cohort, "paper", "reads").set_index("scan_class")
    assert summary.loc["all", "patients"] == 5 and summary.loc["all", "slices"] == 25
    assert (summary["label_source"] == "reads").all()
    assert summary["paper_cq500_slices"].isna().all()          # not CQ500: the paper's counts are not shown
    cq = cohort.assign(patient_id="CQ500-CT-" + cohort["patient_id"].str[1:])
    paper = cohort_summary(cq, "paper", "reads").set_index("scan_class")["paper_cq500_slices"]
    assert paper.to_dict() == {"normal": 27562, "pathological": 61246, "all": 88808}


def test_manifests_name_their_protocol():
    for protocol in ("paper", "slice"):
        for m in make_manifests(_cohort(), protocol, 3, 0.11, seed=0):
            assert set(m["protocol"]) == {protocol}
