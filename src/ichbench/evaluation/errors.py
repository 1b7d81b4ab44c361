"""The cases each row misses: its worst false negatives and positives at the validation threshold, table and picture.

Per row and fold the threshold is `spec95 (validation)` of `operating`: the 0.95-quantile of the fold's
validation normal slices' scores (slices of normal scans, `operating.quantile_threshold`); a slice is called
anomalous when its score is above it. On the fold's test part:

- false negatives: slices of anomalous scans with slice truth 1 scored at or below the threshold, the
  largest bleeds first (`gt_area_mm2` of the cached series; series without pixel truth come last, lowest
  score first);
- false positives: slices of normal scans scored above the threshold, highest score first.

One slice per patient and kind (its worst), the top `n` of each kind pooled over folds (a patient is in one
fold's test part). Scores of different folds come from different models, on scales of their own: the false
positives are ranked by `relative_score` = (score - m) / (threshold - m), m the median of the fold's
validation normals (0 at m, 1 at the threshold), which orders a fold's slices as its raw scores do. The
score job keeps the maps of each fold's top `n` of each kind (`fold-K.errors.npz`, `training.error_maps`);
the pooled top `n` lie among them, since both use `rank_cases` on the same score table.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .operating import quantile_threshold

#: the target specificity of the threshold the cases are taken at (`spec95 (validation)`)
SPECIFICITY = 0.95
KINDS = ("false_negative", "false_positive")
COLUMNS = ["kind", "fold", "patient_id", "series_uid", "sop_uid", "slice_index", "score", "threshold",
           "bleed_area_mm2", "subtypes", "relative_score"]


def fold_thresholds(scores: pd.DataFrame, q: float = SPECIFICITY) -> pd.DataFrame:
    """Per fold (index): `threshold`, the q-quantile of the fold's validation normal slices' scores, and
    `normal_median`, their median."""
    v = scores[(scores["part"] == "val") & (scores["scan_label"] == 0)]
    rows = {int(f): {"threshold": quantile_threshold(g["score"].to_numpy(float), q),
                     "normal_median": float(np.median(g["score"].to_numpy(float)))}
            for f, g in v.groupby("fold", sort=True)}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["threshold", "normal_median"], dtype=float)


def bleed_areas(rows: pd.DataFrame) -> np.ndarray:
    """Per manifest row (npz, slice_index): the cached slice's bleed area in mm^2 (`gt_area_mm2`), NaN where
    the series has no pixel truth."""
    out = np.full(len(rows), np.nan)
    r = rows.reset_index(drop=True)
    for path, g in r.groupby("npz", sort=False):
        with np.load(path, allow_pickle=False) as z:
            if "gt_area_mm2" in z.files and ("has_gt" not in z.files or bool(z["has_gt"])):
                out[g.index.to_numpy()] = z["gt_area_mm2"][g["slice_index"].to_numpy(int)]
    return out


def rank_cases(test: pd.DataFrame, thresholds: pd.DataFrame, n: int) -> pd.DataFrame:
    """The top `n` false negatives and false positives of test slices (columns fold, patient_id, sop_uid,
    scan_label, slice_truth, score, bleed_area_mm2), at most one per patient and kind, worst first;
    `thresholds`: `fold_thresholds`."""
    ref = thresholds.reindex(test["fold"].astype(int).to_numpy())
    t = test.assign(threshold=ref["threshold"].to_numpy(float))
    med = ref["normal_median"].to_numpy(float)
    span = t["threshold"].to_numpy(float) - med          # > 0 unless most validation normals tie at the top
    span = np.where(span > 0, span, 1e-9 * np.maximum(np.abs(med), 1.0))
    t = t.assign(relative_score=(t["score"].to_numpy(float) - med) / span)
    t = t[np.isfinite(t["threshold"].to_numpy(float))]
    fn = t[(t["scan_label"] == 1) & (t["slice_truth"] == 1) & (t["score"] <= t["threshold"])]
    area = fn["bleed_area_mm2"].to_numpy(float)
    fn = fn.assign(_area=np.where(np.isfinite(area), area, -np.inf))
    fn = fn.sort_values(["_area", "score", "sop_uid"], ascending=[False, True, True], kind="mergesort")
    fp = t[(t["scan_label"] == 0) & (t["score"] > t["threshold"])]
    fp = fp.sort_values(["relative_score", "score", "sop_uid"], ascending=[False, False, True], kind="mergesort")
    parts = [f.drop_duplicates("patient_id").head(max(int(n), 0)).assign(kind=k)
             for k, f in zip(KINDS, (fn.drop(columns="_area"), fp))]
    return pd.concat(parts, ignore_index=True)


def error_cases(scores: pd.DataFrame, manifests: pd.DataFrame, n: int = 5,
                q: float = SPECIFICITY) -> pd.DataFrame:
    """One row per listed case and method: COLUMNS plus method and npz (the cached series), false negatives
    first. `scores`: the score tables of any methods and folds; `manifests`: the fold manifests, concatenated."""
    man = manifests[["fold", "sop_uid", "npz"] + (["subtypes"] if "subtypes" in manifests else [])]
    out = []
    for method, s in scores.groupby("method", sort=False):
        test = s[s["part"] == "test"].merge(man, on=["fold", "sop_uid"], how="left", validate="many_to_one")
        need = ((test["scan_label"] == 1) & (test["slice_truth"] == 1)).to_numpy() & test["npz"].notna().to_numpy()
        area = np.full(len(test), np.nan)
        area[need] = bleed_areas(test[need])
        test = test.assign(bleed_area_mm2=area)
        out.append(rank_cases(test, fold_thresholds(s, q), n).assign(method=method))
    if not out:
        return pd.DataFrame(columns=["method"] + COLUMNS + ["npz"])
    cases = pd.concat(out, ignore_index=True)
    if "subtypes" not in cases:
        cases["subtypes"] = ""
    cases["subtypes"] = cases["subtypes"].fillna("").astype(str).where(cases["kind"] == KINDS[0], "")
    return cases[["method"] + COLUMNS + ["npz"]]


def read_error_maps(paths: Sequence[str]) -> dict[str, dict]:
    """-> {method: {"maps": {sop_uid: map}, "map_is_score": bool}} from the score rule's fold-K.errors.npz."""
    out: dict[str, dict] = {}
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            d = out.setdefault(str(z["method"]), {"maps": {}, "map_is_score": bool(z["map_is_score"])})
            for u, m in zip(z["sop_uids"].astype(str), z["maps"]):
                d["maps"][u] = m
    return out


def error_figure(cases: pd.DataFrame, maps: dict[str, np.ndarray], out_png: str | os.PathLike, *,
                 title: str = "", map_is_score: bool = True, percentile: float = 99.0) -> None:
    """One row per kind (false negatives, false positives), two panels per case: the brain window (channel 0
    of the cached slice) with the truth outline, and the row's map (normalised over the listed cases: min -> 0,
    `percentile` -> 1) with the same outline. Rows whose map is not their score are labelled so."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, max((int((cases["kind"] == k).sum()) for k in KINDS), default=1))
    fig, axes = plt.subplots(2, 2 * n, figsize=(1.5 * 2 * n, 2 * 1.75 + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    vals = [maps[u].ravel() for u in cases["sop_uid"] if u in maps]
    lo, hi = 0.0, 1.0
    if vals:
        v = np.concatenate(vals).astype(np.float64)
        lo, hi = float(v.min()), float(np.percentile(v, percentile))
        hi = hi if hi > lo else lo + 1e-12
    map_name = "anomaly map" if map_is_score else "figure map (not its score)"
    for i, kind in enumerate(KINDS):
        k = cases[cases["kind"] == kind].reset_index(drop=True)
        label = kind.replace("_", " ") + "s"
        axes[i, 0].text(-0.08, 0.5, label, rotation=90, ha="right", va="center", fontsize=7,
                        transform=axes[i, 0].transAxes)
        if k.empty:
            axes[i, 0].text(0.5, 0.5, f"no {label}", ha="center", va="center", fontsize=7,
                            transform=axes[i, 0].transAxes)
        for j, case in k.iterrows():
            with np.load(case["npz"], allow_pickle=False) as z:
                img = z["images"][int(case["slice_index"]), 0].astype(np.float32) / 255.0
                gt = z["gt_mask"][int(case["slice_index"])] if bool(z["has_gt"]) else None
            a, b = axes[i, 2 * j], axes[i, 2 * j + 1]
            a.imshow(img, cmap="gray", vmin=0, vmax=1)
            mp = maps.get(case["sop_uid"])
            if mp is not None:
                mp = np.asarray(mp, np.float64)
                mp = mp.mean(0) if mp.ndim == 3 else mp
                b.imshow(np.clip((mp - lo) / (hi - lo), 0, 1), cmap="inferno", vmin=0, vmax=1)
            else:
                b.text(0.5, 0.5, "no map kept", ha="center", va="center", fontsize=6, transform=b.transAxes)
            if gt is not None and gt.any():
                for ax in (a, b):
                    ax.contour(gt.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            area = case["bleed_area_mm2"]
            a.set_title(f"{case['patient_id']} #{int(case['slice_index'])} (fold {int(case['fold'])})", fontsize=5)
            b.set_title(f"score {case['score']:.4g} vs {case['threshold']:.4g}"
                        + (f"\n{area:.0f} mm²" if np.isfinite(area) else ""), fontsize=5)
    fig.suptitle(f"{title}: cases missed at the spec{100 * SPECIFICITY:g} (validation) threshold; "
                 f"brain window + truth outline | {map_name}", fontsize=7)
    fig.tight_layout(pad=0.3)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_errors(scores: pd.DataFrame, manifests: pd.DataFrame, maps: dict[str, dict], method_order: Sequence[str],
                 out_dir: str | os.PathLike, n: int = 5, display: dict[str, str] | None = None) -> pd.DataFrame:
    """`<out_dir>/<method>.csv` (COLUMNS) and `.png` for every method of `method_order`; -> all cases."""
    cases = error_cases(scores[scores["method"].isin(method_order)], manifests, n)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for m in method_order:
        c = cases[cases["method"] == m]
        c[COLUMNS].to_csv(out / f"{m}.csv", index=False, float_format="%.6g")
        got = maps.get(m, {"maps": {}, "map_is_score": True})
        error_figure(c, got["maps"], out / f"{m}.png", title=(display or {}).get(m, m),
                     map_is_score=got["map_is_score"])
    return cases
