"""Operating points fixed on the validation part (evaluation.operating), the ranking stability
(evaluation.ranking) and the pixel threshold from validation normals (evaluation.localisation), on
constructed scores whose answers are known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichbench.evaluation import localisation, operating, stats


def constructed(n_folds=5, patients=80, slices=10, shift=1.5, seed=0, method="A"):
    """Normal scores N(0, 1), anomalous N(shift, 1); val and test parts from the same distribution."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(n_folds):
        for part in ("val", "test"):
            for p in range(patients):
                lab = int(p < patients // 4)
                for k in range(slices):
                    rows.append({"method": method, "fold": fold, "part": part, "patient_id": f"{fold}{part}{p}",
                                 "series_uid": f"s{fold}{part}{p}", "sop_uid": f"{fold}{part}{p}-{k}",
                                 "scan_label": lab, "label": lab, "slice_truth": lab,
                                 "score": rng.normal(lab * shift)})
    return pd.DataFrame(rows)


def test_quantile_threshold_is_an_order_statistic():
    s = np.arange(1, 101, dtype=float)
    assert operating.quantile_threshold(s, 0.95) == 95.0            # 95 of 100 at or below it
    assert operating.quantile_threshold(s, 0.955) == 96.0
    assert np.isnan(operating.quantile_threshold(np.array([]), 0.9))


def test_validation_threshold_gives_the_target_specificity_on_test_within_sampling_error():
    sc = constructed(patients=200, slices=10)
    summ, folds = operating.operating_points(stats.slice_units(sc, part="val"), stats.slice_units(sc), ["A"],
                                             n_boot=200, seed=1)
    spec = summ[(summ["metric"] == "specificity")].set_index("rule")["mean"]
    # 1500 test normal slices per fold: the sampling error of a 95 % specificity is about 0.6 points per fold
    for q in (90, 95, 99):
        assert abs(spec[f"spec{q} (validation)"] - q) < 1.5, spec
    # on validation the rule meets its target by construction
    v = folds[folds["rule"] == "spec95 (validation)"]
    assert (v["val_specificity"] >= 95).all() and (v["val_specificity"] < 95.2).all()
    ci = summ[summ["metric"] == "sensitivity"]
    assert ((ci["ci_low"] <= ci["mean"]) & (ci["mean"] <= ci["ci_high"])).all()
    # the oracle is the test normals' own quantile: its specificity is the target up to ties
    assert abs(spec["oracle spec95 (test labels)"] - 95) < 0.2


def test_youden_on_separable_scores_is_perfect():
    y = np.array([0] * 50 + [1] * 50)
    s = np.r_[np.linspace(0, 1, 50), np.linspace(2, 3, 50)]
    t = operating.youden_threshold(y, s)
    assert 1 <= t < 2
    assert np.isnan(operating.youden_threshold(np.zeros(5), np.arange(5.0)))


def test_rates_by_hand():
    r = operating.rates(8, 2, 2, 88)
    assert r["sensitivity"] == 80 and r["specificity"] == pytest.approx(100 * 88 / 90)
    assert r["ppv"] == 80 and r["npv"] == pytest.approx(100 * 88 / 90) and r["f1"] == 80


def test_every_evaluation_gets_operating_points_and_the_markdown_names_the_oracle():
    sc = constructed(n_folds=2, patients=40, slices=4)
    summ, folds = operating.all_operating_points(sc, "paper", ["A"], n_boot=50)
    assert set(summ["level"]) == {"slice", "scan (max)"}
    assert set(folds["fold"]) == {0, 1} and folds["threshold"].notna().all()
    md = operating.operating_markdown(summ)
    assert "Operating points fixed on the validation part" in md and "oracle" in md and "| A | spec95 |" in md


def test_ranking_counts_how_often_a_row_is_first():
    from ichbench.evaluation.ranking import ranking_rows

    rng = np.random.default_rng(0)
    draws = {"good": 80 + rng.normal(0, 1, 500), "mid": 70 + rng.normal(0, 1, 500), "bad": 60 + rng.normal(0, 1, 500)}
    rows = {r["method"]: r for r in ranking_rows(draws, {k: float(v.mean()) for k, v in draws.items()}, "slice", "paper")}
    assert rows["good"]["p_first"] == 1.0 and rows["good"]["rank"] == 1 and rows["bad"]["rank_median"] == 3
    tie = ranking_rows({"a": 70 + rng.normal(0, 1, 2000), "b": 70 + rng.normal(0, 1, 2000)},
                       {"a": 70.0, "b": 70.0}, "slice", "paper")
    assert all(0.4 < r["p_first"] < 0.6 for r in tie)


def test_analyse_adds_the_ranking_family():
    a, b = constructed(n_folds=2, patients=20, slices=3, shift=2.0), constructed(n_folds=2, patients=20, slices=3,
                                                                                shift=0.2, method="B")
    _, cmp = stats.analyse(pd.concat([a, b]), ["A", "B"], "paper", n_boot=100)
    rk = cmp[(cmp["family"] == "ranking") & (cmp["level"] == "slice") & (cmp["protocol"] == "paper")].set_index("method")
    assert rk.loc["A", "rank"] == 1 and rk.loc["A", "p_first"] > 0.9


def test_pixel_threshold_from_validation_normals():
    acc = localisation.PixelAccumulator(negative_rate=1.0, pixel_specificity=0.99)
    rng = np.random.default_rng(0)
    acc.add_validation_normals(rng.uniform(0, 1, (20, 16, 16)).astype(np.float32))
    maps = rng.uniform(0, 1, (4, 16, 16)).astype(np.float32)
    truth = np.zeros((4, 16, 16), bool)
    truth[:, 4:8, 4:8] = True
    maps[truth] = 2.0                                          # every truth pixel far above the normals
    acc.add(maps, truth)
    out = acc.result()
    assert 0.98 < out["pixel_threshold_val"] < 1.0
    fp = float((maps[~truth] > out["pixel_threshold_val"]).sum())
    assert out["dice_val"] == pytest.approx(2 * 64 / (2 * 64 + fp)) and out["iou_val"] == pytest.approx(64 / (64 + fp))
    assert out["test_pixel_specificity_val"] == pytest.approx(1 - fp / (~truth).sum())
    with pytest.raises(ValueError, match="pixel specificity"):
        localisation.PixelAccumulator(pixel_specificity=1.0)
