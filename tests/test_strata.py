"""Strata (ichbench.evaluation.strata) on constructed scores whose answers are known: AUC 50 and 100, validation thresholds, too-few strata, matched normals."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ichbench.evaluation import stats, strata
from ichbench.evaluation.strata_report import size_figure, strata_markdown


def _scan(pid, part, label, scores, area=0.0, thickness=5.0, subtypes="", truth=None, fold=0):
    scores = np.asarray(scores, float)
    area = np.broadcast_to(np.asarray(area, float), scores.shape).copy()
    truth = np.where(area > 0, 1, 0) if truth is None else np.asarray(truth)
    return dict(pid=pid, part=part, label=label, scores=scores, area=area, thickness=thickness,
                subtypes=subtypes, truth=truth if label else np.zeros(len(scores), int), fold=fold)


def _build(tmp: Path, scans, method="A"):
    """Score rows (paper labels: a slice is labelled as its scan) and manifest rows, one NPZ per scan."""
    score_rows, man_rows = [], []
    for sc in scans:
        suid, n = f"1.2.{sc['pid']}", len(sc["scores"])
        sops = np.array([f"{suid}.{k}" for k in range(n)])
        npz = tmp / f"{suid}.npz"
        if not npz.exists():
            np.savez(npz, sop_uids=sops, gt_area_mm2=sc["area"].astype(np.float32),
                     slice_index=np.arange(n, dtype=np.int32), spacing=np.full(n - 1, sc["thickness"], np.float32),
                     slice_thickness=np.float32(sc["thickness"]), tilt_deg=np.float32(0),
                     pixel_spacing=np.array([0.9, 0.9], np.float32))
        common = dict(fold=sc["fold"], part=sc["part"], patient_id=sc["pid"], series_uid=suid, sop_uid=sops,
                      slice_index=np.arange(n), scan_label=sc["label"], slice_truth=sc["truth"], label=sc["label"])
        score_rows.append(pd.DataFrame({"method": method, **common, "score": sc["scores"],
                                        "slice_score_brain": sc["scores"]}))
        man_rows.append(pd.DataFrame({**common, "npz": str(npz), "subtypes": sc["subtypes"],
                                      "diagnosis": sc["subtypes"] or "HEALTHY"}))
    return pd.concat(score_rows, ignore_index=True), pd.concat(man_rows, ignore_index=True)


def _validation():
    """10 validation normals scored evenly on [0, 2] (spec90 -> 1.799, spec95 -> 1.8995, spec99 -> 1.98) and
    one validation bleed far above (youden -> 2.0, the highest validation normal)."""
    v = np.linspace(0, 2, 200)
    return ([_scan(f"VN{i}", "val", 0, v[i::10]) for i in range(10)]
            + [_scan("VA0", "val", 1, np.full(5, 50.0), area=3000)])


def _world(tmp: Path):
    rng = np.random.default_rng(0)
    normal = rng.permutation(np.linspace(0, 1, 200, endpoint=False))        # 200 test normal slices on [0, 1)
    scans = [_scan(f"N{i}", "test", 0, normal[10 * i:10 * i + 10]) for i in range(20)]
    # large bleeds far above every normal; two bleed-free slices per scan scored at 100 must count nowhere
    scans += [_scan(f"L{i}", "test", 1, np.r_[10 + np.arange(5) + 5 * i, 100, 100], area=np.r_[[3000] * 5, 0, 0],
                    subtypes="IPH") for i in range(4)]
    # small bleeds scored exactly like the normals (the same 200 values)
    scans += [_scan(f"S{i}", "test", 1, normal[20 * i:20 * i + 20], area=50, subtypes="SDH") for i in range(10)]
    # 500-2000 mm^2: 10 slices at 1.5 and 10 at 1.95 (above every test normal; against validation thresholds)
    scans += [_scan("M0", "test", 1, np.full(10, 1.5), area=1000, subtypes="SAH"),
              _scan("M1", "test", 1, np.full(10, 1.95), area=1000, subtypes="SAH")]
    scans += [_scan("T0", "test", 1, np.full(3, 5.0), area=200, subtypes="EDH")]        # 3 units: too few
    return _build(tmp, scans + _validation())


def _get(table, kind, stratum, metric, level="slice"):
    r = table[(table["stratum_kind"] == kind) & (table["stratum"] == stratum) & (table["metric"] == metric)
              & (table["level"] == level)]
    assert len(r) == 1, (kind, stratum, metric, level)
    return r.iloc[0]


def test_bins():
    assert strata.bin_labels([0, 100, 500, 2000]) == ["<100", "100-500", "500-2000", ">2000"]
    assert list(strata.bin_of([0, 99.9, 100, 2500, np.nan], [0, 100, 500, 2000])) == \
        ["<100", "<100", "100-500", ">2000", None]
    assert strata.bin_labels([0, 5, 30]) == ["<5", "5-30", ">30"]
    with pytest.raises(ValueError):
        strata.bin_labels([0, 500, 100])


def test_known_strata(tmp_path):
    scores, man = _world(tmp_path)
    t = strata.strata_table(scores, man, None, ["A"], min_units=10, n_boot=200, seed=0)
    size = "bleed size (mm^2)"
    big = _get(t, size, ">2000", "AUC")
    assert big["value"] == pytest.approx(100) and (big["ci_low"], big["ci_high"]) == (100, 100)
    assert big["n_units"] == 20 and big["n_patients"] == 4 and big["n_normal_units"] == 200   # no bleed-free slices
    for rule in ("spec90", "spec95", "spec99", "youden"):
        assert _get(t, size, ">2000", f"sensitivity@{rule} (validation)")["value"] == pytest.approx(100)
    small = _get(t, size, "<100", "AUC")
    assert small["value"] == pytest.approx(50) and small["ci_low"] < 50 < small["ci_high"]
    # thresholds from validation (1.799, 1.8995, 1.98, 2.0), not from the test normals (below 1)
    mid = {r: _get(t, size, "500-2000", f"sensitivity@{r} (validation)")["value"]
           for r in ("spec90", "spec95", "spec99", "youden")}
    assert mid == pytest.approx({"spec90": 50, "spec95": 50, "spec99": 0, "youden": 0})
    assert _get(t, size, "500-2000", "AUC")["value"] == pytest.approx(100)
    few = t[(t["stratum_kind"] == size) & (t["stratum"] == "100-500")]
    assert few["too_few"].all() and few["value"].isna().all() and (few["n_units"] == 3).all()
    assert _get(t, "all", "all", "AUC")["n_units"] == 20 + 200 + 20 + 3
    ipH = _get(t, "subtype", "IPH", "AUC")
    assert ipH["value"] == pytest.approx(100) and ipH["n_patients"] == 4
    assert _get(t, "subtype", "SDH", "AUC")["value"] == pytest.approx(50)
    assert set(t.loc[t["stratum_kind"] == "slice position", "stratum"]) == set(strata.POSITIONS)
    # scan level (max) against every normal scan, as sklearn ranks the scan maxima
    scans = stats.scan_units(scores)
    assert _get(t, "all", "all", "AUC", "scan (max)")["value"] == pytest.approx(
        100 * roc_auc_score(scans["y"], scans["score"]))
    vol = t[(t["stratum_kind"] == "bleed volume (ml)") & (t["metric"] == "AUC")].set_index("stratum")
    # volumes: L 5 x 3000 mm^2 x 5 mm = 75 ml, S 20 x 50 x 5 = 5 ml, M 50 ml, T 3 ml
    assert vol.loc[">30", "n_units"] == 6 and vol.loc["5-30", "n_units"] == 10 and vol.loc["<5", "n_units"] == 1
    assert list(t.columns) == strata.COLUMNS
    md = strata_markdown(t, 10)
    assert "n<10" in md and "| A |" in md and ">2000 (n 20)" in md
    size_figure(t, tmp_path / "size.png")
    assert (tmp_path / "size.png").stat().st_size > 1000


def test_acquisition_strata_take_the_normals_of_their_stratum(tmp_path):
    # thick-slice normals score low, thin-slice normals high; thin-slice bleeds lie between the two
    scans = [_scan(f"K{i}", "test", 0, np.arange(10) / 10 + i / 100) for i in range(4)]
    scans += [_scan(f"H{i}", "test", 0, 3 + np.arange(10) / 10 + i / 100, thickness=1.0) for i in range(4)]
    scans += [_scan(f"B{i}", "test", 1, 2 + np.arange(10) / 20, area=800, thickness=1.0) for i in range(2)]
    scans += [_scan(f"C{i}", "test", 1, 5 + np.arange(10) / 20, area=800) for i in range(2)]
    scores, man = _build(tmp_path, scans + _validation())
    t = strata.strata_table(scores, man, None, ["A"], n_boot=0)
    thin, thick = (_get(t, "slice thickness (mm)", s, "AUC") for s in ("<1.5", ">3.5"))
    assert thin["value"] == pytest.approx(0) and thin["n_normal_units"] == 40 and thin["n_units"] == 20
    assert thick["value"] == pytest.approx(100) and thick["n_normal_units"] == 40
    # the same bleeds against every normal (size stratum): thin bleeds beat the 40 thick normals only
    expected = roc_auc_score(np.r_[np.zeros(80), np.ones(40)],
                             np.r_[scores.loc[(scores.part == "test") & (scores.scan_label == 0), "score"],
                                   scores.loc[(scores.part == "test") & (scores.scan_label == 1), "score"]])
    assert _get(t, "bleed size (mm^2)", "500-2000", "AUC")["value"] == pytest.approx(100 * expected)
    assert np.isnan(thin["ci_low"])                          # n_boot 0: no interval


def test_facts_position_volume_and_orientation(tmp_path):
    scores, man = _build(tmp_path, [_scan("P", "test", 1, np.zeros(9), area=np.r_[0, 1000, 1000, [0] * 6])])
    slices, series = strata.read_facts(man)
    assert list(slices["third"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]            # slice_index 0 = the lowest slice
    assert series["volume_ml"].iloc[0] == pytest.approx(2 * 1000 * 5 / 1000)
    feet = pd.DataFrame({"series_uid": ["1.2.P"] * 2, "orientation": ["1\\0\\0\\0\\-1\\0"] * 2,
                         "kernel": ["", "B30"], "manufacturer": ["X", "X"]})
    slices, series = strata.read_facts(man, feet)
    assert list(slices["third"]) == [2, 2, 2, 1, 1, 1, 0, 0, 0]            # normal towards the feet: turned round
    assert series["kernel"].iloc[0] == "B30" and series["manufacturer"].iloc[0] == "X"
    np.testing.assert_allclose(strata.slice_spacing([1.0, 3.0], 3, 9.0), [1.0, 2.0, 3.0])


def test_bootstrap_draws_equal_the_repeated_units_auc(tmp_path):
    rng = np.random.default_rng(1)
    scans = [_scan(f"N{i}", "test", 0, np.round(rng.normal(size=6), 1)) for i in range(7)]
    scans += [_scan(f"A{i}", "test", 1, np.round(rng.normal(size=5) + 1, 1), area=300) for i in range(5)]
    scores, _ = _build(tmp_path, scans)
    u = stats.slice_units(scores, from_truth=True)
    patients = stats.patient_table(u)
    counts = stats.patient_counts(patients, 50, 3)
    pos = pd.Series(np.arange(len(patients)), index=pd.MultiIndex.from_frame(patients[["fold", "patient_id"]]))
    pidx = pos.reindex(pd.MultiIndex.from_frame(u[["fold", "patient_id"]])).to_numpy()
    anom, normal = (u["y"] == 1).to_numpy(), (u["scan_label"] == 0).to_numpy()
    value, draws = strata._RowPairs(u, pidx, anom, normal).auc(anom, None, counts)
    ref = stats.curve_metrics(u["y"], u["score"], counts[:, pidx])["AUC"]
    assert value == pytest.approx(100 * roc_auc_score(u["y"], u["score"]))
    np.testing.assert_allclose(draws, ref)


def test_positions_of_categorical_ids_are_get_indexer_of_the_text():
    """The lookup kept from row to row gives pd.Index.get_indexer's rows for categorical IDs (unused categories,
    IDs without facts, missing values) and for plain text, before and after its categories change."""
    keys = ["s3", "s1", "s7", "s2"]
    at = strata.Positions(keys)
    text = pd.Series(["s1", "s9", None, "s2", "s1", "s7"], dtype=object)
    for cats in (["s1", "s2", "s7", "s9", "unused"], ["s0", "s1", "s2", "s7", "s9"]):
        ids = text.astype(pd.CategoricalDtype(cats))
        for _ in range(2):                                      # the second call reuses the categories' rows
            np.testing.assert_array_equal(at(ids), pd.Index(keys).get_indexer(text))
    np.testing.assert_array_equal(at(text), [1, -1, -1, 3, 1, 2])
