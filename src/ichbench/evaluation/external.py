"""External validation: every fold's model on each external set (all its scans test scans) -> Table 1's columns.

Per external set and row, each metric is computed once per fold model on the whole set: Table 1 shows the mean
+- std over the fold models, and a 95 % percentile bootstrap CI of that mean over the external set's patients.
A draw resamples the set's patients (stratified by class) once and applies the same draw to every fold model:
the fold models are judged on the same patients, so drawing them per fold would understate the spread.

Levels, as in Table 1's statistics (stats.unit_sets): slices under the configured protocol, slices under the
slice protocol where the set has slice truth, scans (aggregated slice scores); localisation (pixel AUROC, Dice)
from the score jobs' loc.json where the set has pixel truth (mean +- std over fold models, no CI).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from . import stats
from .extra_tables import localisation_table

LONG_COLUMNS = ["external", "method", "level", "protocol", "metric", "mean", "std", "folds", "ci_low", "ci_high",
                "n_patients", "n_units", "n_anomalous", "n_boot", "seed"]
#: the localisation metrics reported (localisation_table key -> name in the table)
PIXEL_METRICS = {"pixel_auroc": "pixel_AUROC", "dice_best": "Dice_best", "dice_val": "Dice_val"}


def shared_counts(patients: pd.DataFrame, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot x rows of `patients`) bootstrap counts where a patient has the same count in every fold: the
    set's patients (fold-free, stratified by class) are drawn once per draw (stats.patient_counts)."""
    base = patients.groupby("patient_id", as_index=False, sort=True)["scan_label"].max()
    counts = stats.patient_counts(base.assign(fold=0), n_boot, seed)
    pos = pd.Series(np.arange(len(base)), index=base["patient_id"])
    return counts[:, pos.reindex(patients["patient_id"]).to_numpy()]


def _summary(values: np.ndarray, ddof: int) -> tuple[float, float, int]:
    v = values[np.isfinite(values)]
    if not len(v):
        return np.nan, np.nan, 0
    return float(v.mean()), float(v.std(ddof=ddof)) if len(v) > max(ddof, 1) else np.nan, len(v)


def set_metrics(label: str, scores: pd.DataFrame, method_order: Sequence[str], protocol: str, *, n_boot: int = 1000,
                seed: int = 0, ddof: int = 0, scan_aggregation: str = "max", top_k: int = 3) -> pd.DataFrame:
    """LONG_COLUMNS rows of one external set: per row, level and AUC / AP over the fold models."""
    rows = []
    for lvl, prot, units in stats.unit_sets(scores, protocol, scan_aggregation, top_k):
        if units.empty:
            continue
        patients = stats.patient_table(units)
        counts = shared_counts(patients, n_boot, seed) if n_boot > 0 else None
        by_method = dict(tuple(units.groupby("method", sort=False)))
        for m in [m for m in method_order if m in by_method]:
            u = by_method[m]
            st = stats.row_stats(u, patients, counts)
            for metric in ("AUC", "AP"):
                mean, std, n = _summary(st.per_fold[metric], ddof)
                lo, hi = stats.percentile_ci(st.mean_draws[metric]) if counts is not None else (np.nan, np.nan)
                per_fold = u[u["fold"] == u["fold"].iloc[0]]
                rows.append({"external": label, "method": m, "level": lvl, "protocol": prot, "metric": metric,
                             "mean": mean, "std": std, "folds": n, "ci_low": lo, "ci_high": hi,
                             "n_patients": per_fold["patient_id"].nunique(), "n_units": len(per_fold),
                             "n_anomalous": int(per_fold["y"].sum()), "n_boot": n_boot, "seed": seed})
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def pixel_metrics(label: str, loc_paths: Sequence[str], method_order: Sequence[str], ddof: int = 0) -> pd.DataFrame:
    """LONG_COLUMNS rows of the localisation of one set (only rows and metrics with a value)."""
    if not loc_paths:
        return pd.DataFrame(columns=LONG_COLUMNS)
    loc = localisation_table(loc_paths, method_order, ddof)
    rows = []
    for _, r in loc[loc["available"]].iterrows() if len(loc) else []:
        for key, name in PIXEL_METRICS.items():
            if r[f"{key}_folds"] and np.isfinite(r[f"{key}_mean"]):
                rows.append({"external": label, "method": r["method"], "level": "pixel", "protocol": "pixel truth",
                             "metric": name, "mean": 100 * r[f"{key}_mean"], "std": 100 * r[f"{key}_std"],
                             "folds": int(r[f"{key}_folds"]), "ci_low": np.nan, "ci_high": np.nan,
                             "n_patients": np.nan, "n_units": r["test_slices_with_truth"],
                             "n_anomalous": r["anomalous_slices_with_truth"], "n_boot": 0, "seed": np.nan})
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def _fmt(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.1f} +- {std:.1f}" if np.isfinite(std) else f"{mean:.1f} +- n/a"


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) and np.isfinite(hi) else "n/a"


def table1_columns(table: pd.DataFrame, long: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Table 1 with, per external set (in `long`'s order), AUC_<set>, AP_<set> (mean +- std over the fold models,
    slices under the configured protocol) and AUC_<set>_ci, AP_<set>_ci (bootstrap over the set's patients)."""
    out = table.copy()
    main = long[(long["level"] == "slice") & (long["protocol"] == protocol)]
    for label in dict.fromkeys(long["external"]):
        for metric in ("AUC", "AP"):
            t = main[(main["external"] == label) & (main["metric"] == metric)].set_index("method")
            out[f"{metric}_{label}"] = [_fmt(t.loc[m, "mean"], t.loc[m, "std"]) if m in t.index else "n/a"
                                        for m in out["method"]]
            out[f"{metric}_{label}_ci"] = [_ci(t.loc[m, "ci_low"], t.loc[m, "ci_high"]) if m in t.index else "n/a"
                                           for m in out["method"]]
    return out


def markdown(long: pd.DataFrame, display: dict[str, str], sets: dict[str, dict]) -> str:
    """The table1.md section: per set its cohort line and one table of every level and metric it has.
    `sets`: label -> {"dataset": adapter name, "patients", "scans", "slices", "dropped"}."""
    lines = ["## External validation", "",
             "Every fold's model scores each external set; all its scans are test scans (never trained on). "
             "Values: mean +- std over the fold models, and in brackets a 95 % bootstrap CI of that mean over "
             "the set's patients (the same patients drawn for every fold model). Scans that are RSNA scans of "
             "the training dataset are dropped (overlap.csv); patients in both datasets are refused.", ""]
    for label, info in sets.items():
        t = long[long["external"] == label]
        lines.append(f"### {label} ({info.get('dataset', label)})")
        lines.append("")
        lines.append(f"{info.get('patients', '?')} patients, {info.get('scans', '?')} scans, "
                     f"{info.get('slices', '?')} slices; {info.get('dropped', 0)} scans dropped as RSNA scans of "
                     "the training dataset.")
        lines.append("")
        if t.empty:
            lines += ["No row has scores on this set.", ""]
            continue
        cols = list(dict.fromkeys(f"{r.level} ({r.protocol}) {r.metric}" if r.level == "slice"
                                  else f"{r.level} {r.metric}" for r in t.itertuples()))
        lines.append("| row | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for m in dict.fromkeys(t["method"]):
            cells = {}
            for r in t[t["method"] == m].itertuples():
                key = f"{r.level} ({r.protocol}) {r.metric}" if r.level == "slice" else f"{r.level} {r.metric}"
                ci = _ci(r.ci_low, r.ci_high)
                cells[key] = _fmt(r.mean, r.std) + (f" {ci}" if ci != "n/a" else "")
            lines.append(f"| {display.get(m, m)} | " + " | ".join(cells.get(c, "n/a") for c in cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
