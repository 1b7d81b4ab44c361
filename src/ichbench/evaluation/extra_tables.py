"""Result tables beside Table 1: localisation, the brain-masked slice score, and ICH subtypes / "ICH only".

- `localisation.csv`: per row, the score jobs' localisation metrics (localisation.py) of the test
  parts, mean +- std over folds: pixel AUROC, best-threshold Dice, share of anomalous slices whose map
  maximum lies in the ground truth (BHX: in a box). n/a for rows without pixel scores or without truth.
- `table_brain.csv`: slice AUC / AP of `slice_score_brain` (mean of the map over the brain mask)
  beside the paper's whole-image mean, on the same test slices and label protocol. Slices with an
  empty brain mask have no brain score and are left out of the brain columns (counted in
  `slices_without_brain`).
- `table_subtypes.csv`: slice AUC / AP under the configured protocol, on subsets of the test patients
  (subtypes.subsets): every scan; normals + one bleed subtype; "ICH only"; normals + pathological
  scans without a bleed code.
All in %, mean +- std over the folds whose test subset has both classes (`folds` counts them; the std
of a single fold is n/a).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from ..cohort import subtypes
from .aggregate import read_scores  # noqa: F401 (extra_tables.read_scores stays)


def _auc_ap(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    if len(np.unique(y)) < 2:
        return np.nan, np.nan
    return 100 * roc_auc_score(y, s), 100 * average_precision_score(y, s)


def _summary(values: Sequence[float], ddof: int) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return np.nan, np.nan, 0
    # one fold has no spread to report: its std is n/a, not 0.0
    return float(v.mean()), float(v.std(ddof=ddof)) if len(v) > max(ddof, 1) else np.nan, len(v)


def _fmt(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    if not np.isfinite(mean):
        return "n/a"
    sd = "n/a" if not np.isfinite(std) else f"{scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f} +- {sd}"


def localisation_table(loc_paths: Sequence[str], method_order: Sequence[str], ddof: int = 0) -> pd.DataFrame:
    per = {}
    for p in loc_paths:
        d = json.loads(Path(p).read_text())
        per.setdefault(d["method"], []).append(d)
    rows = []
    for m in method_order:
        ds = per.get(m, [])
        if not ds:
            continue
        avail = [d for d in ds if d.get("available")]
        row = {"method": m, "available": bool(avail),
               "reason": "" if avail else (ds[0].get("reason", "") if ds else "")}
        for key, name in (("pixel_auroc", "pixel_AUROC"), ("dice_best", "Dice_best"), ("max_in_truth", "max_in_truth"),
                          ("dice_val", "Dice_val"), ("iou_val", "IoU_val"),
                          ("test_pixel_specificity_val", "test_pixel_specificity_val")):
            mean, std, n = _summary([d.get(key) for d in avail], ddof)
            row[name] = _fmt(mean, std, 100.0)
            row[f"{key}_mean"], row[f"{key}_std"], row[f"{key}_folds"] = mean, std, n
        row["test_slices_with_truth"] = int(sum(d.get("n_slices", 0) for d in avail))
        row["anomalous_slices_with_truth"] = int(sum(d.get("n_anomalous_slices", 0) for d in avail))
        row["negative_rate"] = avail[0]["negative_rate"] if avail else np.nan
        if avail and row["anomalous_slices_with_truth"] == 0:
            row["reason"] = "no test slice has pixel ground truth"
        rows.append(row)
    return pd.DataFrame(rows)


def _test_scores_by_method(scores: pd.DataFrame, method_order: Sequence[str]):
    """(method, its test-part score rows) for each method in `method_order` that has any."""
    test = scores[scores["part"] == "test"]
    for m in method_order:
        t = test[test["method"] == m]
        if not t.empty:
            yield m, t


def brain_table(scores: pd.DataFrame, method_order: Sequence[str], ddof: int = 0) -> pd.DataFrame:
    rows = []
    for m, t in _test_scores_by_method(scores, method_order):
        whole, brain = [], []
        for _, g in t.groupby("fold"):
            y = g["label"].to_numpy(int)
            whole.append(_auc_ap(y, g["score"].to_numpy(float)))
            bs = g["slice_score_brain"].to_numpy(float) if "slice_score_brain" in g else np.full(len(g), np.nan)
            brain.append(_auc_ap(y, bs) if np.isfinite(bs).any() else (np.nan, np.nan))
        row = {"method": m}
        for name, vals in (("", whole), ("_brain", brain)):
            for i, metric in enumerate(("AUC", "AP")):
                mean, std, n = _summary([v[i] for v in vals], ddof)
                row[metric + name] = _fmt(mean, std)
                row[f"{metric.lower()}{name}_mean"], row[f"{metric.lower()}{name}_std"] = mean, std
            row[f"folds{name}"] = _summary([v[0] for v in vals], ddof)[2]
        bs = t["slice_score_brain"] if "slice_score_brain" in t else pd.Series(np.nan, index=t.index)
        row["slices_without_brain"] = int(bs.isna().sum()) if bs.notna().any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def subtype_table(scores: pd.DataFrame, manifests: Sequence[str], method_order: Sequence[str],
                  ddof: int = 0) -> pd.DataFrame:
    info = pd.concat([pd.read_csv(p, dtype={"patient_id": str, "series_uid": str, "diagnosis": str,
                                            "subtypes": str},
                                  keep_default_na=False) for p in manifests], ignore_index=True)
    if "subtypes" not in info:
        return pd.DataFrame(columns=["method", "subset", "AUC", "AP"])
    # subsets of scans (one chosen series each): a patient's studies may differ in subtypes (RSNA)
    patients = info.groupby("series_uid", as_index=False)[["scan_label", "subtypes", "reader_ich_votes"]].first()
    patients["reader_ich_votes"] = pd.to_numeric(patients["reader_ich_votes"], errors="coerce").fillna(-1).astype(int)
    keep = {name: set(patients.loc[sel, "series_uid"]) for name, sel in subtypes.subsets(patients).items()}
    has_diag = (patients["subtypes"] != "").any() or (patients["reader_ich_votes"] >= 0).any()
    rows = []
    for m, t in _test_scores_by_method(scores, method_order):
        for name, ids in keep.items():
            if name != "all" and not has_diag:
                continue
            sub = t[t["series_uid"].isin(ids)]
            vals = [_auc_ap(g["label"].to_numpy(int), g["score"].to_numpy(float)) for _, g in sub.groupby("fold")]
            row = {"method": m, "subset": name,
                   "test_patients_normal": int(sub.loc[sub["scan_label"] == 0, "patient_id"].nunique()),
                   "test_patients_pathological": int(sub.loc[sub["scan_label"] == 1, "patient_id"].nunique())}
            for i, metric in enumerate(("AUC", "AP")):
                mean, std, n = _summary([v[i] for v in vals], ddof)
                row[metric] = _fmt(mean, std)
                row[f"{metric.lower()}_mean"], row[f"{metric.lower()}_std"] = mean, std
                row["folds"] = n
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(loc: pd.DataFrame, brain: pd.DataFrame, sub: pd.DataFrame, protocol: str, ddof: int) -> str:
    lines = ["# Extra results beside Table 1", "",
             f"In %, mean +- std (ddof {ddof}) over the folds whose test part allows the metric; label protocol `{protocol}`.",
             "", "## Localisation (test slices with pixel ground truth)", "",
             "Pixel AUROC: all ground-truth pixels and a seeded uniform sample of the other pixels "
             "(share in `negative_rate`). Dice (best): pooled over the test slices, at the best threshold "
             "(oracle: chosen on the test truth, an upper bound). Dice / IoU (validation threshold): at the "
             "threshold fixed before the test, the validation normal slices' map-pixel quantile "
             "`evaluation.pixel_specificity` (test pixel specificity at it beside them). "
             "Max in truth: share of anomalous slices whose map maximum lies in the ground truth (a BHX box "
             "where the truth is boxes). n/a: the row's slice score is not the mean of a pixel map, or no "
             "test slice has pixel truth.", "",
             "| method | pixel AUROC | Dice (best threshold, oracle) | Dice (validation threshold) | "
             "IoU (validation threshold) | test pixel specificity | max in truth | anomalous slices |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in loc.iterrows():
        lines.append(f"| {r['method']} | {r['pixel_AUROC']} | {r['Dice_best']} | {r.get('Dice_val', 'n/a')} | "
                     f"{r.get('IoU_val', 'n/a')} | {r.get('test_pixel_specificity_val', 'n/a')} | {r['max_in_truth']} | "
                     f"{r['anomalous_slices_with_truth'] if r['available'] else 'n/a'} |")
    lines += ["", "## Brain-masked slice score", "",
              "Slice score = mean of the map over the brain mask, beside the paper's whole-image mean "
              "(same test slices; slices with an empty brain mask are left out of the brain columns).", "",
              "| method | AUC (whole image) | AP (whole image) | AUC (brain) | AP (brain) |", "|---|---|---|---|---|"]
    for _, r in brain.iterrows():
        lines.append(f"| {r['method']} | {r['AUC']} | {r['AP']} | {r['AUC_brain']} | {r['AP_brain']} |")
    lines += ["", "## ICH subtypes and \"ICH only\"", "",
              "Subsets of the test patients: a subtype = normals + pathological scans with that bleed "
              "(CTFSH diagnosis, ASDH/CSDH as SDH; or the reads majority); ICH only = pathological scans with a "
              f"bleed code + normals without ICH by at least {subtypes.READER_ICH_MAJORITY} of 3 readers; "
              "no bleed code = normals + pathological scans without any bleed subtype.", ""]
    if sub.empty or set(sub["subset"]) == {"all"}:
        lines.append("No diagnosis or reader votes are known for this dataset: only `all` is shown.")
    subsets = list(dict.fromkeys(sub["subset"])) if not sub.empty else []
    if subsets:
        lines += ["", "| method | " + " | ".join(f"{s} AUC" for s in subsets) + " |",
                  "|---|" + "---|" * len(subsets)]
        for m, g in sub.groupby("method", sort=False):
            vals = dict(zip(g["subset"], g["AUC"]))
            lines.append(f"| {m} | " + " | ".join(vals.get(s, "n/a") for s in subsets) + " |")
        first = sub[sub["method"] == sub["method"].iloc[0]]
        lines += ["", "Test patients per subset (normal / pathological): " + ", ".join(
            f"{r['subset']} {r['test_patients_normal']}/{r['test_patients_pathological']}" for _, r in first.iterrows())]
    return "\n".join(lines) + "\n"
