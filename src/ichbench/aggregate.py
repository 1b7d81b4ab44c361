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

GROUP_ORDER = {"reconstruction": 0, "self-supervised": 1}


def fold_metrics(scores: pd.DataFrame) -> pd.DataFrame:
    """Long format: one row per (method, fold, part, metric). AUC/AP are NaN where a part has one class."""
    rows = []
    for (method, fold, part), g in scores.groupby(["method", "fold", "part"], sort=True):
        y, s = g["label"].to_numpy(int), g["score"].to_numpy(float)
        both = len(np.unique(y)) == 2
        rows.append({"method": method, "fold": fold, "part": part, "metric": "AUC",
                     "value": 100 * roc_auc_score(y, s) if both else np.nan, "n_slices": len(g),
                     "n_anomalous": int(y.sum())})
        rows.append({"method": method, "fold": fold, "part": part, "metric": "AP",
                     "value": 100 * average_precision_score(y, s) if both else np.nan, "n_slices": len(g),
                     "n_anomalous": int(y.sum())})
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float) -> str:
    return "n/a" if not np.isfinite(mean) else f"{mean:.1f} +- {std:.1f}"


def table1(score_csvs: Sequence[str], records: dict[str, dict], method_order: Sequence[str],
           protocol: str, ddof: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (table in the paper's shape, per-fold long table). Std over folds with `ddof` (0: population)."""
    scores = pd.concat([pd.read_csv(p, dtype={"sop_uid": str, "patient_id": str}) for p in score_csvs],
                       ignore_index=True)
    long = fold_metrics(scores)
    long.insert(1, "group", long["method"].map(lambda m: records.get(m, {}).get("group", "")))
    test = long[long["part"] == "test"]
    rows = []
    for method in method_order:
        t = test[test["method"] == method]
        if t.empty:
            continue
        auc = t[t["metric"] == "AUC"]["value"].dropna().to_numpy()
        ap = t[t["metric"] == "AP"]["value"].dropna().to_numpy()
        rec = records.get(method, {})
        row = {"method": method, "group": rec.get("group", ""),
               "AUC": _fmt(auc.mean() if len(auc) else np.nan, auc.std(ddof=ddof) if len(auc) > ddof else 0.0),
               "AP": _fmt(ap.mean() if len(ap) else np.nan, ap.std(ddof=ddof) if len(ap) > ddof else 0.0),
               "auc_mean": auc.mean() if len(auc) else np.nan,
               "auc_std": auc.std(ddof=ddof) if len(auc) > ddof else np.nan,
               "ap_mean": ap.mean() if len(ap) else np.nan,
               "ap_std": ap.std(ddof=ddof) if len(ap) > ddof else np.nan,
               "folds": len(auc), "protocol": protocol, "epochs": rec.get("epochs"),
               "notes": "; ".join(rec.get("notes", []))}
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table["_g"] = table["group"].map(GROUP_ORDER).fillna(9)
        table["_o"] = table["method"].map({m: i for i, m in enumerate(method_order)})
        table = table.sort_values(["_g", "_o"]).drop(columns=["_g", "_o"]).reset_index(drop=True)
    return table, long


def table1_markdown(table: pd.DataFrame, protocol: str, n_folds: int, dataset: str) -> str:
    lines = [f"# Table 1: slice-level ICH detection ({dataset})", "",
             f"AUC and AP in %, mean +- std over {n_folds} patient-level folds (test parts); "
             f"label protocol: `{protocol}`.", "",
             "| group | method | AUC | AP | notes |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['group']} | {r['method']} | {r['AUC']} | {r['AP']} | {r['notes'] or ''} |")
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
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
