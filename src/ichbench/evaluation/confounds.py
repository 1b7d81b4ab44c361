"""Confounds: how well trivial image statistics alone (head area, brain HU, image size) separate the classes.

If the original image size or the head area of a slice predicts its label as well as a method's
anomaly score, Table 1 may measure the acquisition rather than the hemorrhage (on one public 2-D
set, the image size alone reached AUC 80). Each statistic is used as a slice score on the same test
parts and labels as Table 1; the statistics were stored per slice at preprocessing (see preprocess.py),
so this costs one small read per cached series.

Direction: a statistic may separate the classes with either sign. Per fold, the direction (higher or
lower value = anomalous) is chosen on the fold's validation part, never on its test part; where the
validation part holds one class only, the test part's own better direction is used and said so.
With small validation parts the chosen direction can be wrong, so max(AUC, 1 - AUC) on the test part
(the separation in either direction, an upper bound) is given too, and the warnings use it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ..cohort.splits import read_manifest
from ..inputs.npz import read_members as npz_members

#: statistic -> what it is (the table's wording).
STATISTICS = {
    "head_area_mm2": "head area of the slice (mm^2)",
    "brain_mean_hu": "mean HU inside the brain mask",
    "image_pixels": "original image size (rows x columns)",
    "pixel_spacing_mm": "pixel spacing (mm, mean of rows and columns)",
}
COLUMNS = ["protocol", "statistic", "fold", "n_test", "n_anomalous", "auc", "direction", "direction_from", "auc_higher", "auc_max"]


def slice_statistics(rows: pd.DataFrame) -> pd.DataFrame:
    """The STATISTICS of the slices named by manifest rows (npz, slice_index), in row order."""
    out = pd.DataFrame(index=rows.index, columns=list(STATISTICS), dtype=float)
    for path, g in rows.groupby("npz", sort=False):
        z = npz_members(path, ("head_area_mm2", "brain_mean_hu", "original_size", "pixel_spacing"))
        if "head_area_mm2" not in z:
            raise ValueError(f"{path} was cached without the per-slice statistics of the confound table; "
                             "rerun preprocessing (delete results/data/cache)")
        idx = g["slice_index"].to_numpy(int)
        rows_, cols = (int(v) for v in z["original_size"])
        out.loc[g.index, "head_area_mm2"] = z["head_area_mm2"][idx]
        out.loc[g.index, "brain_mean_hu"] = z["brain_mean_hu"][idx]
        out.loc[g.index, "image_pixels"] = float(rows_ * cols)
        out.loc[g.index, "pixel_spacing_mm"] = float(np.mean(z["pixel_spacing"]))
    return out


def _auc_higher(y: np.ndarray, x: np.ndarray) -> float:
    """AUC of x as a score (higher = anomalous); NaN values rank lowest; NaN with one class."""
    if len(np.unique(y)) < 2:
        return np.nan
    finite = np.isfinite(x)
    if not finite.any():
        return 0.5
    x = np.where(finite, x, np.min(x[finite]) - 1.0)
    return float(roc_auc_score(y, x))


def _label_sets(m: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(protocol, labels, slices used) as Table 1 scores them: the manifest's label under its protocol and,
    where slice truth exists for anomalous scans, the slice protocol too (see aggregate.fold_metrics)."""
    protocol = str(m["protocol"].iloc[0]) if "protocol" in m else ""
    sets = [(protocol, m["label"].to_numpy(int), np.ones(len(m), bool))]
    if protocol != "slice" and {"scan_label", "slice_truth"} <= set(m.columns):
        normal, known = (m["scan_label"] == 0).to_numpy(), (m["slice_truth"] >= 0).to_numpy()
        if (~normal & known).any():
            y = np.where(normal, 0, m["slice_truth"].to_numpy(int))
            sets.append(("slice", y, normal | known))
    return sets


def confound_table(manifests: Sequence[str]) -> pd.DataFrame:
    """One row per (protocol, statistic, fold): its test AUC (%) in the direction chosen on validation."""
    rows = []
    for path in manifests:
        m = read_manifest(path)
        m = m[m["part"].isin(["val", "test"])].reset_index(drop=True)
        if m.empty:
            continue
        fold = int(m["fold"].iloc[0])
        stats = slice_statistics(m)
        for protocol, y, used in _label_sets(m):
            val, test = used & (m["part"] == "val").to_numpy(), used & (m["part"] == "test").to_numpy()
            for name in STATISTICS:
                x = stats[name].to_numpy(float)
                higher = _auc_higher(y[test], x[test])
                on_val = _auc_higher(y[val], x[val])
                if np.isfinite(on_val):
                    up, source = on_val >= 0.5, "val"
                else:
                    up, source = (not np.isfinite(higher)) or higher >= 0.5, "test"
                auc = higher if up else 1.0 - higher
                rows.append({"protocol": protocol, "statistic": name, "fold": fold, "n_test": int(test.sum()),
                             "n_anomalous": int(y[test].sum()), "auc": 100 * auc,
                             "direction": "higher" if up else "lower", "direction_from": source,
                             "auc_higher": 100 * higher, "auc_max": 100 * max(higher, 1.0 - higher)})
    return pd.DataFrame(rows, columns=COLUMNS)


def confounds_markdown(table: pd.DataFrame, table1_csv: str | None = None) -> str:
    """The confound table for a reader, with a warning where a statistic reaches Table 1's AUCs."""
    lines = ["# Confounds: trivial image statistics used alone as the slice score", "",
             "AUC (%) on the same test parts and labels as Table 1, mean +- std (ddof 0) over folds. "
             "`AUC`: direction (which values count as anomalous) chosen per fold on the validation part "
             "(`direction_from` in confounds.csv says where that part held one class only); "
             "`either direction`: max(AUC, 1 - AUC) on the test part, an upper bound."]
    t1 = pd.read_csv(table1_csv) if table1_csv else pd.DataFrame()
    protocols = list(dict.fromkeys(table["protocol"]))
    for protocol in protocols:
        col = "auc_mean" if protocol == protocols[0] else f"auc_{protocol}_mean"
        rows = t1[["method", col]].dropna().rename(columns={col: "auc"}) if {"method", col} <= set(t1.columns) \
            else pd.DataFrame()
        lines += _protocol_lines(table[table["protocol"] == protocol], protocol, rows)
    return "\n".join(lines) + "\n"


def _protocol_lines(table: pd.DataFrame, protocol: str, rows: pd.DataFrame) -> list[str]:
    lines = ["", f"## Protocol {protocol or '(unnamed)'}", "",
             "| statistic | AUC | either direction | direction | AUC per fold |", "|---|---|---|---|---|"]
    means = {}
    for name, what in STATISTICS.items():
        t = table[table["statistic"] == name].sort_values("fold")
        v, w = t["auc"].to_numpy(float), t["auc_max"].to_numpy(float)
        v, w = v[np.isfinite(v)], w[np.isfinite(w)]
        if not len(v):
            lines.append(f"| {what} | n/a | n/a | | |")
            continue
        means[name] = (float(v.mean()), float(w.mean()))
        dirs = ", ".join(f"{d} x {n}" for d, n in t["direction"].value_counts().items())
        folds = " ".join(f"{a:.1f}" for a in t["auc"])
        lines.append(f"| {what} | {v.mean():.1f} +- {v.std():.1f} | {w.mean():.1f} +- {w.std():.1f} | {dirs} | {folds} |")
    lines.append("")
    if not rows.empty:
        best = rows.loc[rows["auc"].idxmax()]
        lines.append(f"Table 1 rows under this protocol: AUC {rows['auc'].min():.1f} .. {best['auc']:.1f} "
                     f"(best: {best['method']}).")
        for name, (fair, either) in sorted(means.items(), key=lambda kv: -kv[1][1]):
            reached = int((rows["auc"] <= either).sum())
            if reached and either > 50.0:        # chance level (e.g. a constant statistic) is no warning
                lines.append(f"**Warning: {STATISTICS[name]} alone separates the classes with AUC {either:.1f} "
                             f"(either direction; {fair:.1f} with the direction chosen on validation), at or above "
                             f"{reached} of {len(rows)} Table 1 rows" + (", all of them**." if reached == len(rows) else "**."))
    if means:
        top = max(means, key=lambda k: means[k][1])
        lines.append(f"Strongest statistic: {STATISTICS[top]}, AUC {means[top][1]:.1f} in either direction.")
    return lines
