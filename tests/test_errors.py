"""The cases each row misses (issue 20 item 3): constructed scores whose false negatives and positives are known."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ichbench.evaluation import errors
from ichbench.evaluation.operating import quantile_threshold

H = 16


def _series(tmp_path, name, areas, has_gt=True):
    """A cached series NPZ with one slice per bleed area (mm^2; the mask is a square of about that many pixels)."""
    k = len(areas)
    gt = np.zeros((k, H, H), bool)
    for i, a in enumerate(areas):
        side = int(round(np.sqrt(a)))
        gt[i, :side, :side] = True
    images = np.random.default_rng(len(name)).integers(0, 255, (k, 3, H, H)).astype(np.uint8)
    path = tmp_path / f"{name}.npz"
    np.savez(path, images=images, gt_mask=gt, has_gt=np.bool_(has_gt), gt_area_mm2=np.asarray(areas, np.float32))
    return str(path)


def _cohort(tmp_path):
    """Two folds. Per fold: validation normals scored 0..19 (threshold = their 0.95-quantile = 18), and a test part:

    fold 0: patient A (ICH, 3 slices: 900 mm^2 at 5.0, 400 mm^2 at 6.0, 100 mm^2 at 25.0 (caught)), patient B
    (ICH, 1600 mm^2 at 30.0: caught; truth-0 slice at 1.0: not a false negative), patient C (ICH, 200 mm^2 at 17.0),
    normal patients N1 (slices at 40, 35: one entry, 40), N2 (at 19), N3 (at 10: below the threshold);
    fold 1 (scores x 100, threshold 1800): patient D (ICH, 2500 mm^2 at 3000: caught), normals N4 (at 2500:
    relative score (2500 - 950) / (1800 - 950) = 1.82, below N1's (40 - 9.5) / (18 - 9.5) = 3.59, above N2's
    1.12 although its raw score is far higher) and N5 (at 5000: 4.76)."""
    rows = []

    def add(fold, part, pid, scan_label, truths, scores, areas=None, subtypes=""):
        npz = _series(tmp_path, f"{fold}-{part}-{pid}", areas if areas is not None else [0.0] * len(scores))
        for i, (t, s) in enumerate(zip(truths, scores)):
            rows.append({"method": "M", "fold": fold, "part": part, "patient_id": pid, "series_uid": f"{pid}-s",
                         "sop_uid": f"{fold}-{pid}-{i}", "slice_index": i, "scan_label": scan_label,
                         "slice_truth": t, "label": scan_label, "score": float(s), "slice_score_brain": np.nan,
                         "npz": npz, "subtypes": subtypes})

    for fold, scale in ((0, 1.0), (1, 100.0)):
        add(fold, "val", f"V{fold}", 0, [0] * 20, scale * np.arange(20.0))
        add(fold, "val", f"W{fold}", 1, [1, 1], scale * np.array([30.0, 3.0]), [500.0, 500.0], "IPH")
    add(0, "test", "A", 1, [1, 1, 1], [5.0, 6.0, 25.0], [900.0, 400.0, 100.0], "SDH")
    add(0, "test", "B", 1, [1, 0], [30.0, 1.0], [1600.0, 0.0], "EDH")
    add(0, "test", "C", 1, [1], [17.0], [200.0], "IPH;SAH")
    add(0, "test", "N1", 0, [0, 0], [40.0, 35.0])
    add(0, "test", "N2", 0, [0], [19.0])
    add(0, "test", "N3", 0, [0], [10.0])
    add(1, "test", "D", 1, [1], [3000.0], [2500.0], "IVH")
    add(1, "test", "N4", 0, [0], [2500.0])
    add(1, "test", "N5", 0, [0], [5000.0])
    frame = pd.DataFrame(rows)
    scores = frame.drop(columns=["npz", "subtypes"])
    manifests = frame[["fold", "part", "patient_id", "series_uid", "sop_uid", "slice_index", "npz", "scan_label",
                       "slice_truth", "label", "subtypes"]]
    return scores, manifests


def test_threshold_is_the_validation_normals_quantile(tmp_path):
    scores, _ = _cohort(tmp_path)
    thr = errors.fold_thresholds(scores)
    assert thr.loc[0, "threshold"] == 18.0 == quantile_threshold(np.arange(20.0), 0.95)
    assert thr.loc[1, "threshold"] == 1800.0                   # the ICH validation patient W does not enter
    assert thr.loc[0, "normal_median"] == 9.5


def test_error_table_lists_the_constructed_misses(tmp_path):
    scores, manifests = _cohort(tmp_path)
    cases = errors.error_cases(scores, manifests, n=5)
    assert list(cases.columns) == ["method"] + errors.COLUMNS + ["npz"]
    fn = cases[cases["kind"] == "false_negative"]
    fp = cases[cases["kind"] == "false_positive"]
    # the biggest missed bleed first; one slice per patient (A's 400 mm^2 miss is not listed); caught slices
    # (B's 1600, D's 2500 mm^2: above the threshold) and truth-0 slices are no false negatives
    assert fn["patient_id"].tolist() == ["A", "C"]
    assert fn["sop_uid"].tolist() == ["0-A-0", "0-C-0"]
    assert fn["bleed_area_mm2"].tolist() == [900.0, 200.0]
    assert fn["subtypes"].tolist() == ["SDH", "IPH;SAH"]
    assert (fn["score"] <= fn["threshold"]).all() and (fn["threshold"] == 18.0).all()
    # the highest-scored normal patients first (relative to their fold's validation normals), one slice each;
    # N3 (below the threshold) is not a false positive
    assert fp["patient_id"].tolist() == ["N5", "N1", "N4", "N2"]
    assert fp.loc[fp["patient_id"] == "N1", "score"].item() == 40.0
    assert (fp["score"] > fp["threshold"]).all() and (fp["subtypes"] == "").all()
    assert fp["relative_score"].iloc[1] == pytest.approx((40 - 9.5) / (18 - 9.5))
    # top n of each kind
    few = errors.error_cases(scores, manifests, n=1)
    assert few.groupby("kind")["patient_id"].apply(list).to_dict() == {"false_negative": ["A"],
                                                                       "false_positive": ["N5"]}


def test_fold_scale_does_not_change_the_ranking(tmp_path):
    scores, manifests = _cohort(tmp_path)
    base = errors.error_cases(scores, manifests, n=5)
    scaled = scores.copy()
    one = scaled["fold"] == 1
    scaled.loc[one, "score"] = scaled.loc[one, "score"] / 1e4         # fold 1's model on another scale
    again = errors.error_cases(scaled, manifests, n=5)
    assert again["sop_uid"].tolist() == base["sop_uid"].tolist()


def test_series_without_pixel_truth_rank_last(tmp_path):
    scores, manifests = _cohort(tmp_path)
    npz = _series(tmp_path, "nogt", [5000.0], has_gt=False)
    extra = {"method": "M", "fold": 0, "part": "test", "patient_id": "E", "series_uid": "E-s", "sop_uid": "0-E-0",
             "slice_index": 0, "scan_label": 1, "slice_truth": 1, "label": 1, "score": 2.0, "slice_score_brain": np.nan}
    scores = pd.concat([scores, pd.DataFrame([extra])], ignore_index=True)
    man = pd.concat([manifests, pd.DataFrame([{**extra, "npz": npz, "subtypes": "SAH"}])[manifests.columns]],
                    ignore_index=True)
    fn = errors.error_cases(scores, man, n=5).query("kind == 'false_negative'")
    assert fn["patient_id"].tolist() == ["A", "C", "E"] and np.isnan(fn["bleed_area_mm2"].iloc[-1])


class _Batches:
    def __init__(self, images):
        self.images = torch.from_numpy(images.astype(np.float32))

    def batch(self, idx):
        return {"x": self.images[idx]}


class _Method:
    """A row whose map is the slice's first channel."""

    def score(self, batch):
        x = batch["x"]
        return x.mean(dim=(1, 2, 3)), x[:, 0] * 2


def test_score_job_keeps_the_maps_of_the_pooled_cases(tmp_path):
    from ichbench.training.error_maps import write_error_maps

    scores, manifests = _cohort(tmp_path)
    out_maps = []
    for fold in (0, 1):
        rows = manifests[(manifests["fold"] == fold)].sample(frac=1.0, random_state=fold).reset_index(drop=True)
        imgs = np.stack([np.load(r.npz)["images"][r.slice_index] for r in rows.itertuples()])
        csv = tmp_path / f"fold-{fold}.csv"
        scores[scores["fold"] == fold].to_csv(csv, index=False, float_format="%.8g")
        out = tmp_path / f"fold-{fold}.errors.npz"
        kept = write_error_maps(out, _Method(), _Batches(imgs), rows, csv, method_name="M", fold=fold,
                                map_is_score=False, n=2)
        with np.load(out) as z:
            assert z["sop_uids"].tolist() == kept["sop_uid"].tolist()
            assert z["kind"].tolist() == kept["kind"].tolist() and not bool(z["map_is_score"])
            for u, m in zip(z["sop_uids"], z["maps"]):
                r = rows[rows["sop_uid"] == u].iloc[0]
                img = np.load(r["npz"])["images"][r["slice_index"], 0].astype(np.float32)
                np.testing.assert_array_equal(m, 2 * img)
        out_maps.append(str(out))
    assert kept["sop_uid"].tolist() == ["1-N5-0", "1-N4-0"]     # fold 1 has no false negative
    maps = errors.read_error_maps(out_maps)
    pooled = errors.error_cases(scores, manifests, n=2)
    assert set(pooled["sop_uid"]) <= set(maps["M"]["maps"])


def test_ichbench_errors_writes_a_table_and_a_picture_per_row(tmp_path):
    from ichbench.cli import build_parser, main

    scores, manifests = _cohort(tmp_path)
    scores = scores.assign(method="AE")
    paths = []
    for fold in (0, 1):
        scores[scores["fold"] == fold].to_csv(tmp_path / f"s{fold}.csv", index=False)
        manifests[manifests["fold"] == fold].to_csv(tmp_path / f"m{fold}.csv", index=False)
        sel = errors.error_cases(scores[scores["fold"] == fold], manifests, n=3)
        np.savez(tmp_path / f"e{fold}.npz", sop_uids=sel["sop_uid"].to_numpy(str),
                 maps=np.ones((len(sel), H, H), np.float32), kind=sel["kind"].to_numpy(str),
                 score=sel["score"].to_numpy(), threshold=sel["threshold"].to_numpy(), method=np.array("AE"),
                 fold=np.int32(fold), map_is_score=np.bool_(True))
        paths.append(str(tmp_path / f"e{fold}.npz"))
    out = tmp_path / "errors"
    rc = main(["errors", "--scores", str(tmp_path / "s0.csv"), str(tmp_path / "s1.csv"), "--errors-npz", *paths,
               "--manifests", str(tmp_path / "m0.csv"), str(tmp_path / "m1.csv"), "--methods", json.dumps(["AE"]),
               "--out-dir", str(out), "--n", "3"])
    assert rc == 0
    table = pd.read_csv(out / "AE.csv", dtype={"patient_id": str, "subtypes": str})
    assert list(table.columns) == errors.COLUMNS
    assert table["patient_id"].tolist() == ["A", "C", "N5", "N1", "N4"]
    assert (out / "AE.png").stat().st_size > 1000
    score = build_parser().parse_args(["score", "--model", "m", "--manifest", "f", "--out-csv", "c", "--out-maps",
                                       "p", "--out-errors", "e.npz", "--error-cases", "4"])
    assert (score.out_errors, score.error_cases) == ("e.npz", 4)


def test_figure_with_no_case_of_a_kind(tmp_path):
    scores, manifests = _cohort(tmp_path)
    cases = errors.error_cases(scores, manifests, n=2).query("kind == 'false_positive'")
    errors.error_figure(cases, {}, tmp_path / "x.png", title="M", map_is_score=False)
    assert (tmp_path / "x.png").exists()
