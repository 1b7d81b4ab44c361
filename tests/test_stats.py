"""Table 1 statistics (ichbench.evaluation.stats) on constructed cases whose answers are known."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ichbench.evaluation import stats
from ichbench.evaluation.aggregate import table1


def test_curve_metrics_match_sklearn_on_repeated_units_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.normal(size=60) + y, 1)          # rounded: many ties
    w = rng.integers(0, 3, size=(4, 60))
    got = stats.curve_metrics(y, s, w)
    for b in range(4):
        yy, ss = np.repeat(y, w[b]), np.repeat(s, w[b])
        assert got["AUC"][b] == pytest.approx(100 * roc_auc_score(yy, ss))
        assert got["AP"][b] == pytest.approx(100 * average_precision_score(yy, ss))
        fpr, tpr, _ = roc_curve(yy, ss)
        assert got["sens@90spec"][b] == pytest.approx(100 * tpr[fpr <= 0.1 + 1e-12].max())


def test_curve_metrics_one_class_is_nan():
    got = stats.curve_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert all(np.isnan(v[0]) for v in got.values())


def test_sensitivity_at_specificity_hand_built():
    # 20 normals scored 1..20; 10 anomalous: 3 at 20.5, 5 at 18.5, 2 at 0. 95 % specificity allows one
    # false positive (the normal at 20): 3 of 10 detected. 90 % allows two (19, 20): threshold 18.5 -> 8.
    y = np.r_[np.zeros(20), np.ones(10)]
    s = np.r_[np.arange(1, 21), [18.5] * 5, [20.5] * 3, [0, 0]]
    got = stats.curve_metrics(y, s)
    assert got["sens@95spec"][0] == pytest.approx(30.0)
    assert got["sens@90spec"][0] == pytest.approx(80.0)


def test_scan_aggregation_hand_built():
    scores = pd.DataFrame({
        "method": "AE", "fold": 0, "part": ["test"] * 5 + ["val"],
        "patient_id": ["a", "a", "a", "b", "b", "c"], "series_uid": ["sa", "sa", "sa", "sb", "sb", "sc"],
        "sop_uid": list("123456"), "scan_label": [1, 1, 1, 0, 0, 0], "slice_truth": -1, "label": [1, 1, 1, 0, 0, 0],
        "score": [1.0, 5.0, 3.0, 2.0, 4.0, 9.0]})
    for how, k, want in (("mean", 3, [3.0, 3.0]), ("max", 3, [5.0, 4.0]), ("topk", 2, [4.0, 3.0]),
                         ("topk", 5, [3.0, 3.0])):
        u = stats.scan_units(scores, how, k)
        assert u["patient_id"].tolist() == ["a", "b"]            # the val scan is not a test scan
        assert u["score"].tolist() == want, (how, k)
        assert u["y"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="scan_aggregation"):
        stats.scan_units(scores, "median")


def _slow_delong(y, a, b):
    """DeLong et al. 1988 from the definitions: psi kernel over all pairs, plain loops."""
    pos, neg = np.nonzero(y)[0], np.nonzero(1 - y)[0]

    def comps(s):
        psi = lambda u, v: 1.0 if u > v else 0.5 if u == v else 0.0  # noqa: E731
        v10 = np.array([np.mean([psi(s[i], s[j]) for j in neg]) for i in pos])
        v01 = np.array([np.mean([psi(s[i], s[j]) for i in pos]) for j in neg])
        return v10.mean(), v10, v01

    auc_a, a10, a01 = comps(a)
    auc_b, b10, b01 = comps(b)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    cov = s10 / len(pos) + s01 / len(neg)
    return np.array([auc_a, auc_b]), cov


def test_delong_matches_slow_definition():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    a = np.round(rng.normal(size=50) + 1.0 * y, 1)
    b = np.round(rng.normal(size=50) + 0.3 * y, 1)
    auc, cov = stats.delong(y, np.vstack([a, b]))
    auc_slow, cov_slow = _slow_delong(y, a, b)
    np.testing.assert_allclose(auc, auc_slow)
    np.testing.assert_allclose(cov, cov_slow)
    assert auc[0] == pytest.approx(roc_auc_score(y, a))


def test_delong_paired_p_from_the_variance():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    a, b = rng.normal(size=80) + y, rng.normal(size=80) + 0.2 * y
    ua = pd.DataFrame({"fold": 0, "sop_uid": np.arange(80).astype(str), "y": y, "score": a})
    diff, p = stats.delong_paired_p(ua, ua.assign(score=b))
    auc, cov = _slow_delong(y, a, b)
    z = (auc[0] - auc[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert diff == pytest.approx(100 * (auc[0] - auc[1]))
    assert p == pytest.approx(2 * norm.sf(abs(z)))


def test_holm():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(stats.holm([0.5, 0.4]), [0.8, 0.8])


def test_bootstrap_p():
    assert stats.bootstrap_p(np.r_[np.ones(99), -np.ones(1)]) == pytest.approx(2 * 2 / 101)
    assert stats.bootstrap_p(np.ones(10)) == pytest.approx(2 / 11)


def test_patient_counts_keep_fold_class_sizes_and_are_reproducible():
    patients = pd.DataFrame({"fold": [0] * 5 + [1] * 3, "patient_id": list("abcdefgh"),
                             "scan_label": [0, 0, 0, 1, 1, 0, 1, 1]})
    c = stats.patient_counts(patients, 50, seed=7)
    assert c.shape == (50, 8)
    np.testing.assert_array_equal(c[:, :3].sum(1), 3)
    np.testing.assert_array_equal(c[:, 3:5].sum(1), 2)
    np.testing.assert_array_equal(c[:, 5:6].sum(1), 1)
    np.testing.assert_array_equal(c[:, 6:8].sum(1), 2)
    np.testing.assert_array_equal(c, stats.patient_counts(patients, 50, seed=7))


def _simulated_scores(rng, n_folds=2, n_pat=(12, 8), slices=6, shift=1.0, methods=("AE",)):
    """Patients with a random effect (slices of a patient correlated); anomalous patients shifted by `shift`."""
    rows = []
    for f in range(n_folds):
        for cls, n in enumerate(n_pat):
            for p in range(n):
                pid = f"f{f}c{cls}p{p}"
                u = rng.normal(size=len(methods))
                for k in range(slices):
                    for j, m in enumerate(methods):
                        rows.append({"method": m, "fold": f, "part": "test", "patient_id": pid, "series_uid": pid,
                                     "sop_uid": f"{pid}-{k}", "slice_index": k, "scan_label": cls,
                                     "slice_truth": -1, "label": cls,
                                     "score": shift * cls + u[j] + rng.normal()})
    return pd.DataFrame(rows)


def test_bootstrap_ci_covers_the_true_auc_at_about_the_nominal_rate():
    # Score of a slice = shift * class + patient effect + slice noise, both N(0, 1): the population AUC is
    # P(N(shift, 2) > N(0, 2)) = Phi(shift / 2). 200 simulated studies; the 95 % CI must cover it in
    # about 95 % of them (binomial sd 1.5 %; the percentile bootstrap with few patients runs a bit short).
    rng = np.random.default_rng(11)
    true_auc = 100 * norm.cdf(1.0 / 2)
    hits = 0
    for _ in range(200):
        units = stats.slice_units(_simulated_scores(rng))
        patients = stats.patient_table(units)
        st = stats.row_stats(units, patients, stats.patient_counts(patients, 200, int(rng.integers(1 << 30))))
        lo, hi = stats.percentile_ci(st.mean_draws["AUC"])
        hits += lo <= true_auc <= hi
    assert 0.86 <= hits / 200 <= 0.99, hits


def test_slice_bootstrap_ignoring_patients_would_undercover():
    # The same study with slices resampled one by one (each slice its own "patient") gives narrower
    # intervals: patient-level resampling is what makes the CI honest for correlated slices.
    rng = np.random.default_rng(5)
    units = stats.slice_units(_simulated_scores(rng, n_pat=(30, 20), slices=10))
    pat = stats.patient_table(units)
    by_patient = stats.row_stats(units, pat, stats.patient_counts(pat, 300, 0))
    flat = units.assign(patient_id=units["sop_uid"])
    pat_flat = stats.patient_table(flat)
    by_slice = stats.row_stats(flat, pat_flat, stats.patient_counts(pat_flat, 300, 0))
    width = lambda st: np.subtract(*stats.percentile_ci(st.mean_draws["AUC"])[::-1])  # noqa: E731
    assert by_slice.mean["AUC"] == pytest.approx(by_patient.mean["AUC"])
    assert width(by_slice) < 0.8 * width(by_patient)


def test_analyse_pairs_rows_and_pools_folds():
    rng = np.random.default_rng(2)
    scores = _simulated_scores(rng, n_folds=3, methods=("AE", "VAE", "NSA"))
    scores.loc[scores["method"] == "NSA", "score"] += 2.0 * scores["label"]     # clearly the best row
    ci, cmp = stats.analyse(scores, ["AE", "VAE", "NSA"], "paper", n_boot=300, seed=0)
    s = ci[(ci["level"] == "slice") & (ci["metric"] == "AUC")].set_index("method")
    for m in ("AE", "VAE", "NSA"):
        u = scores[scores["method"] == m]
        per_fold = [roc_auc_score(g["label"], g["score"]) for _, g in u.groupby("fold")]
        assert s.loc[m, "mean"] == pytest.approx(100 * np.mean(per_fold))
        assert s.loc[m, "pooled"] == pytest.approx(100 * roc_auc_score(u["label"], u["score"]))
        assert s.loc[m, "ci_low"] < s.loc[m, "mean"] < s.loc[m, "ci_high"]
        assert s.loc[m, "folds_used"] == "0 1 2"
    best = cmp[(cmp["family"] == "vs best") & (cmp["level"] == "slice")]
    assert set(best["reference"]) == {"NSA"} and set(best["method"]) == {"AE", "VAE"}
    assert (best["diff"] < 0).all() and (best["ci_high"] < 0).all() and (best["p_bootstrap_holm"] < 0.05).all()
    assert (best["p_delong_holm"] < 0.05).all()
    vs_ae = cmp[(cmp["family"] == "vs AE") & (cmp["level"] == "slice")]
    assert set(vs_ae["method"]) == {"VAE", "NSA"}
    assert cmp[cmp["level"].str.startswith("scan")]["p_delong"].isna().all()
    # the scan level ranks one aggregated score per patient
    assert (ci[ci["level"] == "scan (max)"]["n_units"] == 3 * 20).all()


def test_single_class_fold_is_shown_and_std_of_one_fold_undefined(tmp_path):
    rng = np.random.default_rng(1)
    scores = _simulated_scores(rng, n_folds=2)
    # fold 1's test part: normals only
    scores = scores[~((scores["fold"] == 1) & (scores["label"] == 1))]
    path = tmp_path / "fold.csv"
    scores.to_csv(path, index=False)
    table, long = table1([str(path)], {"AE": {"group": "reconstruction"}}, ["AE"], "paper", ddof=1)
    row = table.iloc[0]
    assert row["folds"] == 1
    assert np.isnan(row["auc_std"])
    assert "n/a" in row["AUC"] and "0.0" not in row["AUC"].split("+-")[-1]
    assert "fold 1" in row["folds_note"]
    ci, _ = stats.analyse(scores, ["AE"], "paper", n_boot=50)
    auc = ci[(ci["level"] == "slice") & (ci["metric"] == "AUC")].iloc[0]
    assert auc["folds_used"] == "0" and auc["folds_one_class"] == "1"
    assert np.isfinite(auc["ci_low"])


def test_patient_weighted_draws_equal_curve_metrics_on_the_same_weights():
    rng = np.random.default_rng(8)
    pidx = rng.integers(0, 9, 70)
    y = rng.integers(0, 2, 70)
    s = np.round(rng.normal(size=70) + y, 1)
    counts = rng.integers(0, 3, size=(5, 9))
    fast = stats._weighted(y, s, pidx, counts)
    slow = stats.curve_metrics(y, s, counts[:, pidx])
    for k in stats.METRICS:
        np.testing.assert_allclose(fast[k], slow[k])


def _write_run(tmp_path, scores):
    """Score CSVs and map files as the score rule writes them, one per method and fold."""
    import json

    scores_paths, maps_paths = [], []
    for (m, f), g in scores.groupby(["method", "fold"]):
        scores_paths.append(str(tmp_path / f"{m}-{f}.csv"))
        g.to_csv(scores_paths[-1], index=False)
        maps_paths.append(str(tmp_path / f"{m}-{f}.maps.npz"))
        np.savez(maps_paths[-1], sop_uids=np.array([], str), maps=np.zeros((0, 1, 1), np.float32), method=np.array(m),
                 fold=np.int32(f), record=np.array(json.dumps({"method": m, "group": "reconstruction", "notes": []})))
    return scores_paths, maps_paths


def test_table_command_writes_cis_comparisons_and_an_honest_markdown(tmp_path):
    from ichbench.cli import main

    rng = np.random.default_rng(6)
    scores = _simulated_scores(rng, n_folds=3, methods=("AE", "VAE"))
    scores = scores[~((scores["fold"] == 2) & (scores["label"] == 1))]          # fold 2: normals only
    scores_paths, maps_paths = _write_run(tmp_path, scores)
    pd.DataFrame([{"scan_class": "normal", "patients": 36, "slices": 216},
                  {"scan_class": "pathological", "patients": 16, "slices": 96}]).to_csv(tmp_path / "cohort.csv")
    out = {k: str(tmp_path / f"{k}") for k in ("t.csv", "l.csv", "t.md", "ci.csv", "cmp.csv", "f.png", "r.png")}
    rc = main(["table", "--scores", *scores_paths, "--maps", *maps_paths, "--methods", '["AE", "VAE"]',
               "--n-folds", "3", "--ddof", "1", "--out", out["t.csv"], "--out-long", out["l.csv"],
               "--out-md", out["t.md"], "--out-ci", out["ci.csv"], "--out-comparisons", out["cmp.csv"],
               "--cohort", str(tmp_path / "cohort.csv"), "--label-source", "ctfsh", "--bootstrap", "100",
               "--scan-aggregation", "mean"])
    assert rc in (0, None)
    md = Path(out["t.md"]).read_text()
    for text in ("36 normal patients (216 slices)", "16 pathological patients (96 slices)", "`paper`",
                 "CTFSH `is_pathl`", "ddof=1", "Folds in the means (every row): 0 1.",
                 "fold 2: test part has only normal slices", "(one class: 2)", "100 bootstrap draws (seed 0)",
                 "| slice level, paper labels | vs AE | VAE | AE |", "scan level (mean)"):
        assert text in md, text
    # chance-level AP of the slice evaluation: anomalous share of folds 0 and 1 (2 has no AP), and pooled
    assert f"| {100 * 8 / 20:.1f} / {100 * 16 / 52:.1f} |" in md
    ci = pd.read_csv(out["ci.csv"])
    assert set(ci["level"]) == {"slice", "scan (mean)"} and (ci["n_boot"] == 100).all()
    cmp = pd.read_csv(out["cmp.csv"])
    assert set(cmp["family"]) == {"vs best", "vs AE", "ranking"}
    rc = main(["stats-figures", "--scores", *scores_paths, "--ci", out["ci.csv"], "--methods", '["AE", "VAE"]',
               "--out-forest", out["f.png"], "--out-roc", out["r.png"]])
    assert rc in (0, None)
    assert Path(out["f.png"]).stat().st_size > 5000 and Path(out["r.png"]).stat().st_size > 5000


def test_table_command_rejects_an_unknown_scan_aggregation(tmp_path, capsys):
    from ichbench.cli import main

    with pytest.raises(SystemExit):
        main(["table", "--scores", "x", "--maps", "y", "--methods", "[]", "--out", "a", "--out-long", "b",
              "--out-md", "c", "--scan-aggregation", "median"])
    assert "median" in capsys.readouterr().err


def test_no_bootstrap_gives_point_values_only():
    rng = np.random.default_rng(9)
    scores = _simulated_scores(rng, methods=("AE", "VAE"))
    ci, cmp = stats.analyse(scores, ["AE", "VAE"], "paper", n_boot=0)
    assert ci["mean"].notna().all() and ci["ci_low"].isna().all() and cmp.empty


def test_unit_sets_follow_the_protocol():
    rng = np.random.default_rng(10)
    scores = _simulated_scores(rng)
    truth = (rng.random(len(scores)) < 0.4).astype(int)
    scores["slice_truth"] = np.where(scores["scan_label"] == 1, truth, -1)
    paper = stats.unit_sets(scores, "paper", "topk", 2)
    assert [(lvl, prot) for lvl, prot, _ in paper] == [("slice", "paper"), ("slice", "slice"),
                                                       ("scan (top2)", "scan label")]
    # the slice evaluation under `paper`: normal scans 0, anomalous scans their slice truth
    u = paper[1][2]
    np.testing.assert_array_equal(u["y"], np.where(u["scan_label"] == 1, scores.loc[u.index, "slice_truth"], 0))
    sliced = scores.assign(label=np.where(scores["scan_label"] == 1, scores["slice_truth"], 0))
    assert [lvl for lvl, _, _ in stats.unit_sets(sliced, "slice")] == ["slice", "scan (max)"]
