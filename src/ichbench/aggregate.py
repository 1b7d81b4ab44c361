"""Table 1 (AUC and AP, mean +- std over folds) and Figure 1 (anomaly maps of ICH cases)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from . import deviations

GROUP_ORDER = {"reconstruction": 0, "self-supervised": 1}


def _metric_rows(g: pd.DataFrame, y: np.ndarray, protocol: str) -> list[dict]:
    s = g["score"].to_numpy(float)
    both = len(np.unique(y)) == 2
    base = {"protocol": protocol, "n_slices": len(y), "n_anomalous": int(y.sum())}
    return [{"metric": "AUC", "value": 100 * roc_auc_score(y, s) if both else np.nan, **base},
            {"metric": "AP", "value": 100 * average_precision_score(y, s) if both else np.nan, **base}]


def fold_metrics(scores: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Long format: one row per (method, fold, part, protocol, metric); NaN where a part has one class.

    Besides the configured protocol (the `label` column), the slice-level protocol is scored too
    wherever slice ground truth exists for the anomalous scans (normal scans: every slice normal;
    anomalous scans: slices with known truth only)."""
    rows = []
    for (method, fold, part), g in scores.groupby(["method", "fold", "part"], sort=True):
        keys = {"method": method, "fold": fold, "part": part}
        rows += [{**keys, **r} for r in _metric_rows(g, g["label"].to_numpy(int), protocol)]
        if protocol != "slice" and "slice_truth" in g and ((g["scan_label"] == 1) & (g["slice_truth"] >= 0)).any():
            known = g[(g["scan_label"] == 0) | (g["slice_truth"] >= 0)]
            y = np.where(known["scan_label"] == 0, 0, known["slice_truth"]).astype(int)
            rows += [{**keys, **r} for r in _metric_rows(known, y, "slice")]
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float) -> str:
    return "n/a" if not np.isfinite(mean) else f"{mean:.1f} +- {std:.1f}"


def _summary(values: np.ndarray, ddof: int) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return np.nan, np.nan
    return float(values.mean()), float(values.std(ddof=ddof)) if len(values) > ddof else np.nan


def table1(score_csvs: Sequence[str], records: dict[str, dict], method_order: Sequence[str],
           protocol: str, ddof: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (table in the paper's shape, per-fold long table). Std over folds with `ddof` (0: population).

    AUC / AP follow the configured protocol; AUC_slice / AP_slice the slice-level protocol where
    slice ground truth exists (else n/a)."""
    scores = pd.concat([pd.read_csv(p, dtype={"sop_uid": str, "patient_id": str}) for p in score_csvs],
                       ignore_index=True)
    long = fold_metrics(scores, protocol)
    long.insert(1, "group", long["method"].map(lambda m: records.get(m, {}).get("group", "")))
    test = long[long["part"] == "test"]
    rows = []
    for method in method_order:
        t = test[test["method"] == method]
        if t.empty:
            continue
        rec = records.get(method, {})
        row = {"method": method, "group": rec.get("group", "")}
        for suffix, prot in (("", protocol), ("_slice", "slice")):
            tp = t[t["protocol"] == prot]
            if suffix and prot == protocol:
                tp = tp.iloc[0:0]
            for metric in ("AUC", "AP"):
                mean, std = _summary(tp[tp["metric"] == metric]["value"].to_numpy(float), ddof)
                row[metric + suffix] = _fmt(mean, std if np.isfinite(std) else 0.0)
                row[f"{metric.lower()}{suffix}_mean"] = mean
                row[f"{metric.lower()}{suffix}_std"] = std
        row.update({"folds": int(t[(t["protocol"] == protocol) & (t["metric"] == "AUC")]["value"].notna().sum()),
                    "protocol": protocol, "epochs": rec.get("epochs"), "notes": deviations.notes(method, rec)})
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table["_g"] = table["group"].map(GROUP_ORDER).fillna(9)
        table["_o"] = table["method"].map({m: i for i, m in enumerate(method_order)})
        table = table.sort_values(["_g", "_o"]).drop(columns=["_g", "_o"]).reset_index(drop=True)
    return table, long


def table1_markdown(table: pd.DataFrame, protocol: str, n_folds: int, dataset: str) -> str:
    slice_cols = protocol != "slice" and "AUC_slice" in table and (table["AUC_slice"] != "n/a").any()
    lines = [f"# Table 1: slice-level ICH detection ({dataset})", "",
             f"AUC and AP in %, mean +- std over {n_folds} patient-level folds (test parts); "
             f"label protocol: `{protocol}`."]
    if slice_cols:
        lines.append("AUC / AP (slice): the same scores against slice-level ground truth "
                     "(anomalous only where hemorrhage is on the slice).")
    head = "| group | method | AUC | AP |" + (" AUC (slice) | AP (slice) |" if slice_cols else "") + " notes |"
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for _, r in table.iterrows():
        extra = f" {r['AUC_slice']} | {r['AP_slice']} |" if slice_cols else ""
        lines.append(f"| {r['group']} | {r['method']} | {r['AUC']} | {r['AP']} |{extra} {r['notes'] or ''} |")
    return "\n".join(lines) + "\n"


def read_maps(paths: Sequence[str]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict]]:
    """-> ({method: {sop_uid: map}}, {method: run record}) from the score rule's map files."""
    maps: dict[str, dict[str, np.ndarray]] = {}
    records: dict[str, dict] = {}
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            method = str(z["method"])
            records.setdefault(method, json.loads(str(z["record"])))
            d = maps.setdefault(method, {})
            for u, m in zip(z["sop_uids"].astype(str), z["maps"]):
                d[u] = m
    return maps, records


def figure1(cases: pd.DataFrame, maps: dict[str, dict[str, np.ndarray]], method_order: Sequence[str],
            out_png: str | os.PathLike, percentile: float = 99.0) -> None:
    """Rows: ICH cases; columns: input (brain window), ground-truth outline, one heatmap per method.

    Each method's maps are normalised together over the cases (min -> 0, `percentile` -> 1), so that
    colours compare cases within a model, as in the paper's per-model normalisation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in method_order if m in maps]
    n_rows, n_cols = max(len(cases), 1), 2 + len(methods)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.75 * n_rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    norms = {}
    for m in methods:
        vals = [maps[m][u] for u in cases["sop_uid"] if u in maps[m]]
        if vals:
            v = np.concatenate([x.ravel() for x in vals])
            lo, hi = float(np.min(v)), float(np.percentile(v, percentile))
            norms[m] = (lo, hi if hi > lo else lo + 1e-12)
    for i, (_, case) in enumerate(cases.iterrows()):
        with np.load(case["npz"], allow_pickle=False) as z:
            img = z["images"][int(case["slice_index"]), 0].astype(np.float32) / 255.0
            gt = z["gt_mask"][int(case["slice_index"])] if bool(z["has_gt"]) else None
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(img, cmap="gray", vmin=0, vmax=1)
        if gt is not None and gt.any():
            axes[i, 1].contour(gt.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        else:
            axes[i, 1].text(0.5, 0.5, "no ground truth", color="yellow", ha="center", va="center",
                            transform=axes[i, 1].transAxes, fontsize=6)
        axes[i, 0].text(2, 10, f"{case['patient_id']} #{int(case['slice_index'])}", color="white", fontsize=5)
        for j, m in enumerate(methods):
            ax = axes[i, 2 + j]
            if case["sop_uid"] in maps[m]:
                lo, hi = norms[m]
                ax.imshow(np.clip((maps[m][case["sop_uid"]] - lo) / (hi - lo), 0, 1), cmap="inferno", vmin=0, vmax=1)
    for j, title in enumerate(["input (brain)", "ground truth"] + methods):
        axes[0, j].set_title(title, fontsize=7)
    fig.tight_layout(pad=0.3)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
