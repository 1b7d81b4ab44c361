"""Statistics behind Table 1: patient-level bootstrap CIs, paired row comparisons, scan-level and pooled metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .compare import check_row, compare_rows
from .delong import DeLongPairs, delong, delong_paired_p, midranks  # noqa: F401 (stats.delong, ... stay)
from .ranking import ranking_rows
from .weighted import Ranking

#: Specificities at which the sensitivity is reported.
SPECIFICITIES = (0.90, 0.95)
METRICS = ("AUC", "AP", "sens@90spec", "sens@95spec")
SCAN_AGGREGATIONS = ("mean", "max", "topk")


# --- metrics of one ranking, for many (bootstrap) weightings at once -----------------------------------------


def curve_metrics(y, s, weights=None, specificities: Sequence[float] = SPECIFICITIES) -> dict[str, np.ndarray]:
    """AUC, AP and sensitivity at each specificity of scores `s` for labels `y` (1 = anomalous), in %.

    `weights` (draws x units, integer counts of a bootstrap draw) gives one value per draw; None: one
    value with every unit once. A weight w is the unit repeated w times, so every value equals sklearn's
    `roc_auc_score` / `average_precision_score` on the repeated units (ties: AUC counts half, AP steps
    at each distinct score). Sensitivity at specificity q: the highest TPR among thresholds with
    FPR <= 1 - q. NaN where a weighting leaves one class."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, float)
    w = np.ones((1, len(y))) if weights is None else np.atleast_2d(np.asarray(weights, float))
    order = np.argsort(-s, kind="mergesort")
    return sorted_curve_metrics(y[order], s[order], w[:, order], specificities)


def sorted_curve_metrics(y, s, w=None, specificities: Sequence[float] = SPECIFICITIES) -> dict[str, np.ndarray]:
    """`curve_metrics` of units already in its order (descending score, stable; `weights` as there, None: once)."""
    w = np.ones((1, len(y))) if w is None else w
    ends = _group_ends(s)
    tp = np.cumsum(w * y, axis=1)[:, ends]
    fp = np.cumsum(w * ~y, axis=1)[:, ends]
    return _metrics(tp, fp, specificities)


def _group_ends(s_desc: np.ndarray) -> np.ndarray:
    """Last index of each run of equal scores in descending order (one ROC point per distinct score)."""
    return np.r_[np.nonzero(np.diff(s_desc))[0], len(s_desc) - 1] if len(s_desc) else np.zeros(0, int)


def _metrics(tp: np.ndarray, fp: np.ndarray, specificities: Sequence[float] = SPECIFICITIES) -> dict[str, np.ndarray]:
    """Metrics from the (draws x distinct scores) true / false positive weights at or above each score.

    Row-wise dot products instead of temporaries: this is the inner loop of the bootstrap."""
    tp, fp = np.asarray(tp), np.asarray(fp)
    if tp.dtype != np.float32:      # float32 only from _weighted, whose counts it holds exactly
        tp, fp = tp.astype(float), fp.astype(float)
    d_tp, d_fp = np.empty_like(tp), np.empty_like(fp)
    d_tp[:, :1], d_fp[:, :1] = tp[:, :1], fp[:, :1]
    np.subtract(tp[:, 1:], tp[:, :-1], out=d_tp[:, 1:])
    np.subtract(fp[:, 1:], fp[:, :-1], out=d_fp[:, 1:])
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    ok = (n_pos > 0) & (n_neg > 0)
    out = {}
    rows = np.arange(len(tp))
    with np.errstate(invalid="ignore", divide="ignore"):
        # trapezoid under the ROC steps: sum over scores of dFP * (TP before + TP after) / 2
        pairs = (np.einsum("ij,ij->i", d_fp, tp, dtype=float)
                 - 0.5 * np.einsum("ij,ij->i", d_fp, d_tp, dtype=float))
        out["AUC"] = pairs / (n_pos * n_neg)
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp > 0)
        out["AP"] = np.einsum("ij,ij->i", d_tp, precision, dtype=float) / n_pos
        for q in specificities:
            # TP at the last score whose FP share is within 1 - q (FP rises along the scores); none: 0
            k = np.sum(fp <= ((1 - q) * n_neg.astype(float) + 1e-6).astype(fp.dtype)[:, None], axis=1)
            sens = np.where(k > 0, tp[rows, np.maximum(k - 1, 0)], 0.0)
            out[f"sens@{round(100 * q)}spec"] = sens / n_pos
    return {k: np.where(ok, 100 * np.asarray(v, float), np.nan) for k, v in out.items()}


# --- units: what a metric ranks ------------------------------------------------------------------------------


def slice_units(scores: pd.DataFrame, from_truth: bool = False, part: str = "test") -> pd.DataFrame:
    """Slices of a part (test) with their label `y`: the `label` column (the configured protocol, as the split
    wrote it), or with `from_truth` the slice protocol rebuilt from the slice truth (normal scans 0, anomalous
    scans their slice truth, slices of unknown truth left out)."""
    t = scores[scores["part"] == part]
    if from_truth:
        t = t[(t["scan_label"] == 0) | (t["slice_truth"] >= 0)]
        t = t.assign(y=np.where(t["scan_label"] == 0, 0, t["slice_truth"]).astype(int))
    else:
        t = t.assign(y=t["label"].astype(int))
    return t[["method", "fold", "patient_id", "series_uid", "sop_uid", "scan_label", "y", "score"]]


def scan_units(scores: pd.DataFrame, how: str = "max", top_k: int = 3, part: str = "test") -> pd.DataFrame:
    """Scans of a part (test): slice scores aggregated per scan (`mean`, `max`, or `topk`: mean of the `top_k`
    highest; a scan with fewer slices takes all), label = the scan label."""
    if how not in SCAN_AGGREGATIONS:
        raise ValueError(f"table.scan_aggregation: {how!r} is not one of {', '.join(SCAN_AGGREGATIONS)}")
    t = scores[scores["part"] == part]
    keys = ["method", "fold", "patient_id", "series_uid"]
    if how == "topk":
        if top_k < 1:
            raise ValueError(f"table.scan_top_k must be >= 1, not {top_k}")
        t = t.sort_values(keys + ["score"], ascending=[True] * 4 + [False])
        t = t[t.groupby(keys, sort=False).cumcount() < top_k]
    g = t.groupby(keys, as_index=False, sort=True)
    out = g.agg(scan_label=("scan_label", "first"), score=("score", "mean" if how == "topk" else how),
                n_slices=("score", "size"))
    return out.assign(y=out["scan_label"].astype(int), sop_uid=out["series_uid"])


def evaluation_name(level: str, protocol: str) -> str:
    """How tables and figures name an evaluation, e.g. `slice level, paper labels`, `scan level (max)`."""
    if level.startswith("scan"):
        return level.replace("scan", "scan level", 1)
    return f"{level} level, {protocol} labels"


# --- the bootstrap ---------------------------------------------------------------------------------------------


def patient_counts(patients: pd.DataFrame, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot x patients) counts: each draw resamples, with replacement, the patients of each fold's test
    part separately per scan class (`scan_label`), so every draw keeps each fold's class sizes.

    `patients` rows: fold, patient_id, scan_label (one per patient and fold), in a fixed order: the same
    table and seed give the same draws for every method, which makes the comparisons paired."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(patients)), np.int32)
    for _, idx in patients.groupby(["fold", "scan_label"], sort=True).indices.items():
        k = len(idx)
        draws = rng.integers(0, k, size=(n_boot, k)) + (np.arange(n_boot) * k)[:, None]
        counts[:, idx] = np.bincount(draws.ravel(), minlength=n_boot * k).reshape(n_boot, k)
    return counts


def patient_table(units: pd.DataFrame) -> pd.DataFrame:
    """One row per (fold, test patient): the bootstrap resamples patients, not scans or slices. A patient's
    class is its highest scan label (pathological where any of its scans is), so a patient with several
    studies (RSNA) is drawn once, with all its scans."""
    t = units.groupby(["fold", "patient_id"], as_index=False, sort=False)["scan_label"].max()
    return t.sort_values(["fold", "scan_label", "patient_id"]).reset_index(drop=True)


def _weighted(y, s, pidx, counts) -> dict[str, np.ndarray]:
    """curve_metrics for every draw of patient `counts` (draws x patients; unit i belongs to patient
    pidx[i]), from per-class cumulative counts (`evaluation.weighted`)."""
    return Ranking(y, s, pidx).metrics(counts, SPECIFICITIES)


def _point_and_draws(y, s, pidx, counts) -> tuple[dict, dict | None]:
    """(curve_metrics of the units, their metrics under every draw of `counts` or None), sorted once for both."""
    if counts is None:
        return curve_metrics(y, s), None
    r = Ranking(y, s, pidx)
    return sorted_curve_metrics(r.pos, r.s), r.metrics(counts, SPECIFICITIES)


@dataclass
class RowStats:
    """One row's metrics on one set of units: per fold, mean over the defined folds, pooled; with draws."""
    folds: list[int]
    per_fold: dict[str, np.ndarray]            # metric -> value per fold (NaN: one class)
    mean: dict[str, float]                     # metric -> mean over folds with a value
    pooled: dict[str, float]                   # metric -> all folds' test units ranked together
    mean_draws: dict[str, np.ndarray] = field(default_factory=dict)
    pooled_draws: dict[str, np.ndarray] = field(default_factory=dict)


def patient_index(units: pd.DataFrame, patients: pd.DataFrame) -> np.ndarray:
    """Each unit's row in the patient table (`patient_table`), by (fold, patient_id), as int64."""
    pos = pd.Series(np.arange(len(patients)), index=pd.MultiIndex.from_frame(patients[["fold", "patient_id"]]))
    pidx = pos.reindex(pd.MultiIndex.from_frame(units[["fold", "patient_id"]])).to_numpy()
    if np.isnan(pidx.astype(float)).any():
        raise ValueError("units of a patient missing from the patient table")
    return pidx.astype(np.int64)


def row_stats(units: pd.DataFrame, patients: pd.DataFrame, counts: np.ndarray | None) -> RowStats:
    """Point values and (with `counts`) bootstrap draws of one method's units (fold, patient_id, y, score)."""
    pidx = patient_index(units, patients)
    y, s, fold = units["y"].to_numpy(int), units["score"].to_numpy(float), units["fold"].to_numpy()
    folds = sorted(int(f) for f in np.unique(fold))
    per_fold = {m: np.full(len(folds), np.nan) for m in METRICS}
    fold_draws = {m: np.full((0 if counts is None else len(counts), len(folds)), np.nan) for m in METRICS}
    for j, f in enumerate(folds):
        sel = fold == f
        point, draws = _point_and_draws(y[sel], s[sel], pidx[sel], counts)
        for m, v in point.items():
            per_fold[m][j] = v[0]
            if counts is not None:
                fold_draws[m][:, j] = draws[m]
    point, pooled_draws = _point_and_draws(y, s, pidx, counts)
    pooled = {m: float(v[0]) for m, v in point.items()}
    mean = {m: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else np.nan for m, v in per_fold.items()}
    st = RowStats(folds, per_fold, mean, pooled)
    if counts is not None:
        for m in METRICS:
            used = np.isfinite(per_fold[m])   # the folds of the point estimate; a draw NaN there is dropped
            st.mean_draws[m] = fold_draws[m][:, used].mean(axis=1) if used.any() else np.full(len(counts), np.nan)
        st.pooled_draws = pooled_draws
    return st


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    d = draws[np.isfinite(draws)]
    if not len(d):
        return np.nan, np.nan
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_p(diff_draws: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being 0: twice the smaller share of draws on either side
    of 0, with the (1 + k) / (1 + B) correction so that p is never 0."""
    d = diff_draws[np.isfinite(diff_draws)]
    if not len(d):
        return np.nan
    k = min((d <= 0).sum(), (d >= 0).sum())
    return float(min(1.0, 2 * (1 + k) / (1 + len(d))))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count)."""
    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    ok = np.nonzero(np.isfinite(p))[0]
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((len(ok) - np.arange(len(ok))) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


# --- everything for Table 1 ------------------------------------------------------------------------------------


def paired_family(stats: dict, pairs, family: str, metric: str, units, lvl: str, prot: str,
                  level: float = 0.95) -> list[dict]:
    """comparisons.csv records of (method, reference) pairs on one evaluation: diff = method - reference of the
    mean over folds, its percentile interval and bootstrap p on the same (paired) draws, Holm-adjusted over the
    pairs; at slice level also DeLong's p for AUC. `stats`: method -> RowStats with draws; `units`: the units of
    every method (a frame, or `DeLongPairs` of them, which keeps each row's DeLong placements for every pair)."""
    rows = []
    for m, ref in pairs:
        d = stats[m].mean_draws[metric] - stats[ref].mean_draws[metric]
        lo, hi = percentile_ci(d, level)
        row = {"family": family, "level": lvl, "protocol": prot, "metric": metric, "method": m, "reference": ref,
               "diff": stats[m].mean[metric] - stats[ref].mean[metric], "ci_low": lo, "ci_high": hi,
               "p_bootstrap": bootstrap_p(d)}
        if lvl == "slice" and metric == "AUC":
            if not isinstance(units, DeLongPairs):
                units = DeLongPairs(dict(tuple(units.groupby("method", sort=False))))
            row["p_delong"] = units.paired_p(m, ref)[1]
        rows.append(row)
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    frame["p_bootstrap_holm"] = holm(frame["p_bootstrap"])
    if "p_delong" in frame:
        frame["p_delong_holm"] = holm(frame["p_delong"])
    return frame.to_dict("records")


def unit_sets(scores: pd.DataFrame, protocol: str, scan_aggregation: str = "max",
              top_k: int = 3, part: str = "test") -> list[tuple[str, str, pd.DataFrame]]:
    """(level, protocol, units) of a part: slices under the configured protocol; slices under the slice
    protocol where slice truth exists and the configured one is `paper`; scans (aggregated slice scores)."""
    sets = [("slice", protocol, slice_units(scores, part=part))]
    t = scores[scores["part"] == part]
    if protocol != "slice" and "slice_truth" in t and ((t["scan_label"] == 1) & (t["slice_truth"] >= 0)).any():
        sets.append(("slice", "slice", slice_units(scores, from_truth=True, part=part)))
    name = f"top{top_k}" if scan_aggregation == "topk" else scan_aggregation
    sets.append((f"scan ({name})", "scan label", scan_units(scores, scan_aggregation, top_k, part=part)))
    return sets


def analyse(scores: pd.DataFrame, method_order: Sequence[str], protocol: str, *, n_boot: int = 1000,
            seed: int = 0, scan_aggregation: str = "max", top_k: int = 3, level: float = 0.95,
            reference: str = "AE", sets=None, compare: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (CI table: one row per method, level, protocol, metric; comparisons: AUC differences against
    the best row and against `reference`, with bootstrap and (slice level) DeLong p-values, Holm-adjusted
    within each family, level and protocol, and the `ranking` family: how often each row ranks first, its
    median rank and interval, `ichbench.evaluation.ranking`). `sets`: the unit_sets, when already built.
    `compare`: a row whose AUC / AP differences against every other row come first (`evaluation.compare`)."""
    check_row(compare, method_order)
    ci_rows, cmp_rows, first = [], [], []
    for lvl, prot, units in sets if sets is not None else unit_sets(scores, protocol, scan_aggregation, top_k):
        patients = patient_table(units)
        counts = patient_counts(patients, n_boot, seed) if n_boot > 0 else None
        by_method = dict(tuple(units.groupby("method", sort=False)))          # one pass, not one per row
        methods = [m for m in method_order if m in by_method]
        stats = {m: row_stats(by_method[m], patients, counts) for m in methods}
        for m, st in stats.items():
            for metric in METRICS:
                lo, hi = percentile_ci(st.mean_draws[metric], level) if counts is not None else (np.nan, np.nan)
                plo, phi = percentile_ci(st.pooled_draws[metric], level) if counts is not None else (np.nan, np.nan)
                used = [f for f, v in zip(st.folds, st.per_fold[metric]) if np.isfinite(v)]
                ci_rows.append({
                    "method": m, "level": lvl, "protocol": prot, "metric": metric,
                    "mean": st.mean[metric], "ci_low": lo, "ci_high": hi,
                    "pooled": st.pooled[metric], "pooled_ci_low": plo, "pooled_ci_high": phi,
                    "folds_used": " ".join(map(str, used)),
                    "folds_one_class": " ".join(str(f) for f in st.folds if f not in used),
                    "n_units": len(by_method[m]), "n_anomalous": int(by_method[m]["y"].sum()),
                    "n_boot": n_boot, "seed": seed,
                    "draws_dropped": int((~np.isfinite(st.mean_draws[metric])).sum()) if counts is not None else 0,
                })
        if counts is None or len(methods) < 2:
            continue
        pairs = DeLongPairs(by_method) if lvl == "slice" else units
        first += compare_rows(compare, stats, pairs, lvl, prot, level) if compare else []
        cmp_rows += ranking_rows({m: stats[m].mean_draws["AUC"] for m in methods},
                                 {m: stats[m].mean["AUC"] for m in methods}, lvl, prot, level)
        best = max(methods, key=lambda m: -np.inf if not np.isfinite(stats[m].mean["AUC"]) else stats[m].mean["AUC"])
        families = [("vs best", best)] + ([("vs " + reference, reference)] if reference in stats else [])
        for family, ref in families:
            cmp_rows += paired_family(stats, [(m, ref) for m in methods if m != ref], family, "AUC", pairs,
                                      lvl, prot, level)
    cmp_cols = ["family", "level", "protocol", "metric", "method", "reference", "diff", "ci_low", "ci_high",
                "p_bootstrap", "p_bootstrap_holm", "p_delong", "p_delong_holm",
                "rank", "p_first", "rank_median", "rank_low", "rank_high", "n_draws"]
    return pd.DataFrame(ci_rows), pd.DataFrame(first + cmp_rows, columns=cmp_cols)
