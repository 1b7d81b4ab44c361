"""Operating points fixed before the test: thresholds set on each fold's validation part, applied to its test part.

A unit (slice or scan) is called anomalous when its score is above the threshold (`score > t`). Per row and fold:

- `spec<q>` (validation): t = the q-quantile of the validation normals' scores (the smallest validation
  normal score with at least a share q of the validation normals at or below it), so that the specificity on
  validation normals is at least q; q from `evaluation.target_specificity` (e.g. 0.90, 0.95, 0.99).
- `youden` (validation): the t that maximises sensitivity + specificity - 1 on the validation part (both
  classes needed; NaN otherwise).
- `oracle spec<q> (test labels)`: the same quantile rule on the test normals themselves, i.e. the threshold a
  test-chosen number uses: an upper bound, never a result to quote.

On the test part at each threshold: sensitivity, specificity, PPV, NPV and F1 (in %), per fold and as the
mean over folds, with percentile CIs from the same patient bootstrap as Table 1 (`stats.patient_counts`,
same seed: the draws are paired with Table 1's): per patient the four confusion counts are summed once, and
a draw is a matrix product of its patient counts with them, so the bootstrap costs no per-slice work (one
product per fold for every row and rule, the fold's patients only).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from . import stats

#: the default target specificities of `evaluation.target_specificity`
TARGETS = (0.90, 0.95, 0.99)
RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")


def rule_name(kind: str, q: float | None = None) -> str:
    """`spec95 (validation)`, `youden (validation)`, `oracle spec95 (test labels)`."""
    if kind == "youden":
        return "youden (validation)"
    tag = f"spec{100 * q:g}"
    return f"oracle {tag} (test labels)" if kind == "oracle" else f"{tag} (validation)"


def quantile_threshold(normal_scores: np.ndarray, q: float) -> float:
    """The smallest normal score with at least a share q of the normals at or below it (NaN: no normals)."""
    s = np.sort(np.asarray(normal_scores, float))
    if len(s) == 0:
        return np.nan
    k = min(len(s) - 1, max(0, int(np.ceil(q * len(s) - 1e-9)) - 1))
    return float(s[k])


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The threshold t (a unit is positive when its score > t) maximising TPR - FPR; the lowest such t."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, float)
    if y.all() or not y.any():
        return np.nan
    cand = np.unique(s)                       # t = each distinct score
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tpr = 1.0 - np.searchsorted(pos, cand, side="right") / len(pos)
    fpr = 1.0 - np.searchsorted(neg, cand, side="right") / len(neg)
    return float(cand[int(np.argmax(tpr - fpr))])       # the first (lowest) maximum


def thresholds(val_units: pd.DataFrame, test_units: pd.DataFrame,
               targets: Sequence[float] = TARGETS) -> pd.DataFrame:
    """One row per (method, fold, rule): the threshold, and the validation specificity / sensitivity it gives.
    `*_units`: stats.slice_units / scan_units frames (method, fold, y, score) of the validation / test part."""
    rows = []
    test_parts = test_units.groupby(["method", "fold"], sort=False).indices       # one pass, not one per fold
    for (method, fold), v in val_units.groupby(["method", "fold"], sort=True):
        y, s = v["y"].to_numpy(bool), v["score"].to_numpy(float)
        t = test_units.iloc[test_parts.get((method, fold), np.zeros(0, int))]
        choices = [("spec", q, quantile_threshold(s[~y], q)) for q in targets]
        choices.append(("youden", None, youden_threshold(y, s)))
        tn = t["score"].to_numpy(float)[t["y"].to_numpy(int) == 0]
        choices += [("oracle", q, quantile_threshold(tn, q)) for q in targets]
        for kind, q, thr in choices:
            rows.append({"method": method, "fold": int(fold), "rule": rule_name(kind, q), "kind": kind,
                         "target_specificity": q, "threshold": thr,
                         "val_specificity": 100 * float(np.mean(s[~y] <= thr)) if (~y).any() and np.isfinite(thr)
                         else np.nan,
                         "val_sensitivity": 100 * float(np.mean(s[y] > thr)) if y.any() and np.isfinite(thr)
                         else np.nan,
                         "n_val_normal": int((~y).sum()), "n_val_anomalous": int(y.sum())})
    return pd.DataFrame(rows)


def rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV, F1 in % (NaN where undefined) of confusion counts (any shape)."""
    tp, fp, fn, tn = (np.asarray(a, float) for a in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": 100 * tp / (tp + fn), "specificity": 100 * tn / (tn + fp),
                "ppv": 100 * tp / (tp + fp), "npv": 100 * tn / (tn + fn), "f1": 100 * 2 * tp / (2 * tp + fp + fn)}


def _patient_confusion(y: np.ndarray, score: np.ndarray, pidx: np.ndarray, thr: float, n_patients: int) -> np.ndarray:
    """(patients x 4) counts TP, FP, FN, TN of units (labels `y`, patient rows `pidx`) at `thr`."""
    pred = score > thr
    cells = np.stack([y & pred, ~y & pred, y & ~pred, ~y & ~pred], 1)
    return np.stack([np.bincount(pidx, weights=cells[:, k], minlength=n_patients) for k in range(4)],
                    1).astype(np.int64)


def operating_points(val_units: pd.DataFrame, test_units: pd.DataFrame, method_order: Sequence[str], *,
                     targets: Sequence[float] = TARGETS, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (summary: one row per method, rule, metric with mean over folds, CI, pooled value and the folds used;
    per fold: one row per method, fold, rule with threshold, validation and test rates and confusion counts)."""
    thr = thresholds(val_units, test_units, targets)
    patients = stats.patient_table(test_units)
    counts = stats.patient_counts(patients, n_boot, seed) if n_boot > 0 else None
    per_fold, summary = [], []
    by_method = dict(tuple(test_units.groupby("method", sort=False)))
    plan = []                         # (method, rule, kind, target, [(fold record, rates, block, column)])
    blocks: dict = {}                 # (first, last + 1) patient column -> the confusion rows of every row and rule
    for method in [m for m in method_order if (thr["method"] == m).any()]:
        units_m = by_method.get(method, test_units.iloc[:0])
        y_m, s_m = units_m["y"].to_numpy(bool), units_m["score"].to_numpy(float)
        pidx_m, fold_m = stats.patient_index(units_m, patients), units_m["fold"].to_numpy()
        for rule, g in thr[thr["method"] == method].groupby("rule", sort=False):
            folds = []
            for r in g.itertuples(index=False):
                sel = fold_m == r.fold
                if not sel.any() or not np.isfinite(r.threshold):
                    continue
                conf = _patient_confusion(y_m[sel], s_m[sel], pidx_m[sel], r.threshold, len(patients))
                # only the fold's patients: the others' confusion rows are 0 (the table is sorted by fold)
                lo, hi = int(pidx_m[sel].min()), int(pidx_m[sel].max()) + 1
                cols = blocks.setdefault((lo, hi), [])
                cols.append(conf[lo:hi])
                folds.append((r, conf.sum(0), (lo, hi), len(cols) - 1))
            plan.append((method, rule, g["kind"].iloc[0], g["target_specificity"].iloc[0], folds))
    # one product per block of patients for every row and rule: (draws x 4 k), exact integers in float64 (BLAS)
    draws_of = {b: counts[:, b[0]:b[1]].astype(float) @ np.hstack(cols) for b, cols in blocks.items()} \
        if counts is not None else {}
    for method, rule, kind, target, folds in plan:
        fold_vals, fold_draws, pooled = {k: [] for k in RATES}, {k: [] for k in RATES}, np.zeros(4, np.int64)
        for r, total, block, col in folds:
            pooled += total
            point = rates(*total)
            per_fold.append({**r._asdict(), **{k: float(v) for k, v in point.items()},
                             **dict(zip(("tp", "fp", "fn", "tn"), map(int, total)))})
            for k in RATES:
                fold_vals[k].append(float(point[k]))
            if counts is not None:
                d = draws_of[block][:, 4 * col:4 * col + 4]
                for k, v in rates(*d.T).items():
                    fold_draws[k].append(v)
        pooled_rates = rates(*pooled)
        for k in RATES:
            vals = np.asarray(fold_vals[k], float)
            ok = np.isfinite(vals)
            lo = hi = np.nan
            if counts is not None and ok.any():
                draws = np.stack(fold_draws[k], 1)[:, ok].mean(1)
                lo, hi = stats.percentile_ci(draws, level)
            summary.append({"method": method, "rule": rule, "kind": kind, "target_specificity": target, "metric": k,
                            "mean": float(vals[ok].mean()) if ok.any() else np.nan, "ci_low": lo, "ci_high": hi,
                            "pooled": float(pooled_rates[k]), "folds_used": int(ok.sum()),
                            "n_boot": n_boot, "seed": seed})
    return pd.DataFrame(summary), pd.DataFrame(per_fold)


def all_operating_points(scores: pd.DataFrame, protocol: str, method_order: Sequence[str], *,
                         scan_aggregation: str = "max", top_k: int = 3, targets: Sequence[float] = TARGETS,
                         n_boot: int = 1000, seed: int = 0, sets=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`operating_points` for every evaluation of `stats.unit_sets` (the validation part's units of the same
    evaluation set the thresholds), with the evaluation's `level` and `protocol` in front. `sets`: the test
    part's unit sets, when already built (with the same options)."""
    val = {(lvl, prot): u for lvl, prot, u in stats.unit_sets(scores, protocol, scan_aggregation, top_k, part="val")}
    out_s, out_f = [], []
    for lvl, prot, test_units in sets if sets is not None else stats.unit_sets(scores, protocol, scan_aggregation,
                                                                                top_k):
        val_units = val.get((lvl, prot))
        if val_units is None or val_units.empty or test_units.empty:
            continue
        summ, folds = operating_points(val_units, test_units, method_order, targets=targets, n_boot=n_boot, seed=seed)
        out_s.append(summ.assign(level=lvl, protocol=prot))
        out_f.append(folds.assign(level=lvl, protocol=prot))
    return _front(out_s), _front(out_f)


def _front(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    f = pd.concat(frames, ignore_index=True)
    return f[["level", "protocol"] + [c for c in f if c not in ("level", "protocol")]]


def operating_markdown(summary: pd.DataFrame, display: dict[str, str] | None = None) -> str:
    """Table 1's section on thresholds fixed on validation, beside the oracle (test-chosen) numbers."""
    if summary.empty:
        return ""
    display = display or {}
    n_boot = int(summary["n_boot"].iloc[0])
    lines = ["## Operating points fixed on the validation part", "",
             "Thresholds set per fold on its validation part only (specX: the validation normals' X % quantile; "
             "youden: the validation part's best sensitivity + specificity), applied to the test part; mean over "
             f"folds [95 % CI, {n_boot} patient-bootstrap draws as above]. The oracle sensitivity uses the test "
             "normals' own quantile (test labels): an upper bound, not a result; gap = oracle - validation. "
             "All rules and levels: `operating_points.csv`.", ""]
    def cell(r, k):                                                   # noqa: E306
        v = r.get(k)
        if v is None or not np.isfinite(v["mean"]):
            return "n/a"
        return f"{v['mean']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}]" if np.isfinite(v["ci_low"]) else \
            f"{v['mean']:.1f}"
    for (lvl, prot), g in summary.groupby(["level", "protocol"], sort=False):
        lines += [f"**{stats.evaluation_name(lvl, prot)}**", "",
                  "| method | rule | sensitivity | specificity | PPV | F1 | oracle sensitivity | gap |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, gm in g.groupby("method", sort=False):
            by_rule = {rule: {r.metric: {"mean": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high}
                              for r in gr.itertuples()} for rule, gr in gm.groupby("rule", sort=False)}
            for rule, r in by_rule.items():
                if rule.startswith("oracle"):
                    continue
                q = gm.loc[gm["rule"] == rule, "target_specificity"].iloc[0]
                orc = by_rule.get(rule_name("oracle", q), {}) if np.isfinite(q) else {}
                o = orc.get("sensitivity", {}).get("mean", np.nan)
                gap = o - r["sensitivity"]["mean"] if np.isfinite(o) else np.nan
                lines.append(f"| {display.get(m, m)} | {rule.split(' ')[0]} | {cell(r, 'sensitivity')} | "
                             f"{cell(r, 'specificity')} | {cell(r, 'ppv')} | {cell(r, 'f1')} | "
                             f"{'n/a' if not np.isfinite(o) else f'{o:.1f}'} | "
                             f"{'' if not np.isfinite(gap) else f'{gap:+.1f}'} |")
        lines.append("")
    return "\n".join(lines)
