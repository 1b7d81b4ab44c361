"""Table 1 (AUC and AP, mean +- std over folds) and Figure 1 (anomaly maps of ICH cases)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from . import deviations
from .compare import compare_markdown, family_name
from .stats import evaluation_name

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
    """`mean +- std`; a std that is undefined (one fold, or ddof folds) is written n/a, never 0.0."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.1f} +- {std:.1f}" if np.isfinite(std) else f"{mean:.1f} +- n/a"


def _folds_note(t: pd.DataFrame, protocol: str) -> tuple[str, str]:
    """(folds in the mean, why the others are not): a fold whose test part has one class has no AUC."""
    auc = t[(t["protocol"] == protocol) & (t["metric"] == "AUC")].sort_values("fold")
    used = auc.loc[auc["value"].notna(), "fold"].astype(int).tolist()
    notes = []
    for _, r in auc[auc["value"].isna()].iterrows():
        cls = "anomalous" if r["n_anomalous"] == r["n_slices"] else "normal"
        notes.append(f"fold {int(r['fold'])}: test part has only {cls} slices")
    return " ".join(map(str, used)), "; ".join(notes)


def _summary(values: np.ndarray, ddof: int) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return np.nan, np.nan
    return float(values.mean()), float(values.std(ddof=ddof)) if len(values) > ddof else np.nan


#: the score tables' text columns, read as categories: a code per slice instead of a string
ID_COLUMNS = ("method", "part", "patient_id", "series_uid", "sop_uid")


def read_scores(score_csvs: Sequence[str]) -> pd.DataFrame:
    """The score rule's per-slice tables of every method and fold, in one frame. The ID columns are
    categories (`ID_COLUMNS`, their categories sorted, so they group and sort as the text would): at RSNA
    size (16 M score rows) the text took about 5 GB and every comparison with it a pass over strings."""
    frames = [pd.read_csv(p, dtype={c: str for c in ID_COLUMNS}) for p in score_csvs]
    if not frames:
        return pd.concat(frames)                 # no score table: pandas says so, as before
    ids = [c for c in ID_COLUMNS if all(c in f for f in frames)]
    out = pd.concat([f.drop(columns=ids) for f in frames], ignore_index=True)
    for c in ID_COLUMNS:
        if c in ids:
            out.insert(list(frames[0].columns).index(c), c, _categories([f[c].array for f in frames]))
    return out


def _categories(columns: list) -> pd.Categorical:
    """The text `columns` end to end as one categorical with sorted categories, as `union_categoricals` of each
    one's categories would give; a column equal to one seen before (every row's table of a fold lists the same
    slices) reuses its codes instead of hashing its strings again."""
    seen: list = []                             # (text, codes, categories) of the distinct columns
    use = []
    for col in columns:
        hit = next((k for k, (text, _, _) in enumerate(seen) if len(text) == len(col) and text.equals(col)), None)
        if hit is None:
            cat = pd.Categorical(col)
            seen.append((col, cat.codes, cat.categories))
            hit = len(seen) - 1
        use.append(hit)
    cats = seen[0][2].append([c for _, _, c in seen[1:]]).unique().sort_values() if len(seen) > 1 else seen[0][2]
    recoded = []
    for _, codes, own in seen:
        at = cats.get_indexer(own)
        recoded.append(np.where(codes < 0, -1, at[np.maximum(codes, 0)]) if len(own) else codes)
    dtype = np.int32 if len(cats) < 2 ** 31 - 1 else np.int64
    return pd.Categorical.from_codes(np.concatenate([recoded[k].astype(dtype, copy=False) for k in use]),
                                     categories=cats)


def table1(score_csvs: Sequence[str] | pd.DataFrame, records: dict[str, dict], method_order: Sequence[str],
           protocol: str, ddof: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (table in the paper's shape, per-fold long table). Std over folds with `ddof` (0: population).

    AUC / AP follow the configured protocol; AUC_slice / AP_slice the slice-level protocol where
    slice ground truth exists (else n/a)."""
    scores = score_csvs if isinstance(score_csvs, pd.DataFrame) else read_scores(score_csvs)
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
                row[metric + suffix] = _fmt(mean, std)
                row[f"{metric.lower()}{suffix}_mean"] = mean
                row[f"{metric.lower()}{suffix}_std"] = std
        folds_used, folds_note = _folds_note(t, protocol)
        row.update({"folds": int(t[(t["protocol"] == protocol) & (t["metric"] == "AUC")]["value"].notna().sum()),
                    "folds_used": folds_used, "folds_note": folds_note, "std_ddof": ddof,
                    "protocol": protocol, "epochs": rec.get("epochs"), "notes": deviations.notes(method, rec)})
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table["_g"] = table["group"].map(GROUP_ORDER).fillna(9)
        table["_o"] = table["method"].map({m: i for i, m in enumerate(method_order)})
        table = table.sort_values(["_g", "_o"]).drop(columns=["_g", "_o"]).reset_index(drop=True)
    return table, long


def table1_markdown(table: pd.DataFrame, protocol: str, n_folds: int, dataset: str, *,
                    context: str = "", extra: str = "") -> str:
    """Table 1 in Markdown; `context` (what was measured, `context_markdown`) goes above the table,
    `extra` (CIs, comparisons: `stats_markdown`) below it."""
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
        cells = f" {r['AUC_slice']} | {r['AP_slice']} |" if slice_cols else ""
        lines.append(f"| {r['group']} | {r['method']} | {r['AUC']} | {r['AP']} |{cells} {r['notes'] or ''} |")
    if context:
        at = lines.index(head) - 1
        lines[at:at] = ["", context.rstrip("\n")]
    lines += _folds_lines(table)
    if extra:
        lines += ["", extra.rstrip("\n")]
    return "\n".join(lines) + "\n"


# --- what Table 1 measured, and its uncertainty (Markdown around the table) ----------------------------------------

PROTOCOL_TEXT = {
    "paper": "the paper's: every slice of a pathological scan counts as anomalous, "
             "every slice of a normal scan as normal",
    "slice": "slice level: a slice is anomalous where slice ground truth marks hemorrhage; "
             "pathological scans without slice truth are left out",
}
LABEL_SOURCE_TEXT = {
    "ctfsh": "CTFSH `is_pathl` (any pathology, as in the paper; not only ICH)",
    "reads": "majority ICH vote of the three CQ500 readers (reads.csv)",
    "csv": "a scan_id,label table",
    "masks": "the NIfTI masks (a scan with mask pixels is pathological)",
}


def _folds_lines(table: pd.DataFrame) -> list[str]:
    if table.empty or "folds_used" not in table:
        return []
    lines = []
    for used, g in table.groupby("folds_used", sort=False):
        names = ", ".join(g["method"]) if table["folds_used"].nunique() > 1 else "every row"
        lines.append(f"Folds in the means ({names}): {used or 'none'}.")
    for _, r in table[table["folds_note"].astype(bool)].iterrows():
        lines.append(f"{r['method']}: {r['folds_note']} - no AUC/AP there, left out of the mean.")
    return [""] + lines


def chance_ap(units: pd.DataFrame) -> tuple[float, float]:
    """-> (mean over the folds with both classes, pooled) share of anomalous units in the test parts, in %:
    the AP of a random score, the line every AP is to be read against. Units of one method."""
    per_fold = units.groupby("fold")["y"].mean()
    per_fold = per_fold[(per_fold > 0) & (per_fold < 1)]
    return 100 * float(per_fold.mean()) if len(per_fold) else np.nan, 100 * float(units["y"].mean())


def context_markdown(protocol: str, label_source: str, ddof: int, unit_sets,
                     cohort: pd.DataFrame | None = None) -> str:
    """Cohort, protocol, label source, test units and chance-level AP per evaluation, std convention."""
    lines = []
    if cohort is not None and not cohort.empty:
        c = cohort.set_index("scan_class")
        parts = [f"{int(c.loc[k, 'patients'])} {k} patients ({int(c.loc[k, 'slices'])} slices"
                 + (f", {int(c.loc[k, 'slices_anomalous'])} anomalous under the protocol"
                    if k == "pathological" and "slices_anomalous" in c else "") + ")"
                 for k in ("normal", "pathological") if k in c.index]
        lines.append("Cohort: " + ", ".join(parts) + ".")
    lines.append(f"Label protocol `{protocol}`: {PROTOCOL_TEXT.get(protocol, protocol)}.")
    if label_source:
        lines.append(f"Scan labels: {LABEL_SOURCE_TEXT.get(label_source, label_source)}.")
    lines += ["", "| evaluation | unit | test units (normal / anomalous) | patients "
                  "| chance AP (mean over folds / pooled) |",
              "|---|---|---|---|---|"]
    for level, prot, units in unit_sets:
        u = units[units["method"] == units["method"].iloc[0]] if len(units) else units
        if u.empty:
            continue
        mean, pooled = chance_ap(u)
        unit = "scan" if level.startswith("scan") else "slice"
        lines.append(f"| {evaluation_name(level, prot)} | {unit} | {int((u['y'] == 0).sum())} / {int(u['y'].sum())} | "
                     f"{u['patient_id'].nunique()} | {mean:.1f} / {pooled:.1f} |")
    undefined = "no fold" if ddof == 0 else f"{ddof} or fewer folds" if ddof > 1 else "one fold"
    lines += ["", f"Mean +- std over the folds' test parts; std with ddof={ddof} "
                  f"({'population' if ddof == 0 else 'sample'} std); `+- n/a` where it is undefined "
                  f"({undefined} with both classes)."]
    return "\n".join(lines) + "\n"


def _ci(v: float, lo: float, hi: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) else f"{v:.1f}"


def stats_markdown(ci: pd.DataFrame, comparisons: pd.DataFrame, display: dict[str, str] | None = None,
                   compare: str | None = None) -> str:
    """The CI table (per evaluation: AUC, AP, sensitivity at 90 / 95 % specificity, pooled AUC) and the
    paired comparisons, with how they were computed; with `compare`, that row against every row first."""
    if ci.empty:
        return ""
    display = display or {}
    n_boot, seed = int(ci["n_boot"].iloc[0]), int(ci["seed"].iloc[0])
    lines = ["## Uncertainty: 95 % confidence intervals", ""]
    if n_boot > 0:
        lines.append(f"Percentile intervals from {n_boot} bootstrap draws (seed {seed}). Each draw resamples, with "
                     "replacement, the patients of each fold's test part, separately for normal and pathological "
                     "patients (so each fold keeps its class sizes and both classes); a drawn patient brings all "
                     "their slices (twice if drawn twice). Per draw: each fold's metric, then the mean over the "
                     "folds used above, and the pooled AUC. Sens@90/95: sensitivity at 90 / 95 % specificity. "
                     "Pooled: all folds' test units ranked together (scores of different fold models mixed).")
    else:
        lines.append("table.bootstrap is 0: point values only.")
    for (level, prot), g in ci.groupby(["level", "protocol"], sort=False):
        lines += ["", f"**{evaluation_name(level, prot)}**", "",
                  "| method | AUC | AP | sens@90spec | sens@95spec | AUC pooled | folds |",
                  "|---|---|---|---|---|---|---|"]
        for m, gm in g.groupby("method", sort=False):
            r = gm.set_index("metric")
            cell = {k: _ci(r.loc[k, "mean"], r.loc[k, "ci_low"], r.loc[k, "ci_high"])
                    for k in ("AUC", "AP", "sens@90spec", "sens@95spec")}
            pooled = _ci(r.loc["AUC", "pooled"], r.loc["AUC", "pooled_ci_low"], r.loc["AUC", "pooled_ci_high"])
            folds = r.loc["AUC", "folds_used"] or "none"
            if r.loc["AUC", "folds_one_class"]:
                folds += f" (one class: {r.loc['AUC', 'folds_one_class']})"
            lines.append(f"| {display.get(m, m)} | {cell['AUC']} | {cell['AP']} | {cell['sens@90spec']} | "
                         f"{cell['sens@95spec']} | {pooled} | {folds} |")
    if compare and "family" in comparisons:
        section = compare_markdown(comparisons, compare, display)
        lines += ["", section.rstrip()] if section else []
        comparisons = comparisons[comparisons["family"] != family_name(compare)]
    ranks = comparisons[comparisons["family"] == "ranking"] if "family" in comparisons else comparisons.iloc[:0]
    comparisons = comparisons[comparisons["family"] != "ranking"] if "family" in comparisons else comparisons
    if not ranks.empty:
        lines += ["", "## Ranking stability", "",
                  "Per bootstrap draw (the same draws), the rows ranked by mean AUC (1 = best): share of draws in "
                  "which a row ranks first, its median rank and 95 % interval.", "",
                  "| evaluation | method | rank | ranks first | median rank [95 % interval] |", "|---|---|---|---|---|"]
        for _, r in ranks.iterrows():
            lines.append(f"| {evaluation_name(r['level'], r['protocol'])} | {display.get(r['method'], r['method'])} | "
                         f"{int(r['rank'])} | {100 * r['p_first']:.0f} % | "
                         f"{r['rank_median']:g} [{r['rank_low']:g}, {r['rank_high']:g}] |")
    if not comparisons.empty:
        lines += ["", "## Paired comparisons of AUC (mean over folds)", "",
                  "Difference row - reference on the same test patients: the same bootstrap draws for both rows "
                  "(paired), 95 % interval and two-sided p-value (twice the smaller share of draws on either side "
                  "of 0). Holm-adjusted within each family (vs best, vs AE) and evaluation. DeLong (slice AUC only): "
                  "per fold, fold variances added; it treats slices as independent, so its p-values are too small "
                  "where a patient's slices are correlated - read it as a secondary check.", "",
                  "| evaluation | family | method | reference | diff [95 % CI] | p | p Holm | p DeLong "
                  "| p DeLong Holm |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, r in comparisons.iterrows():
            f = lambda v: "" if not np.isfinite(v) else f"{v:.2g}" if v >= 0.001 else "<0.001"  # noqa: E731
            lines.append(f"| {evaluation_name(r['level'], r['protocol'])} | {r['family']} | "
                         f"{display.get(r['method'], r['method'])} | "
                         f"{display.get(r['reference'], r['reference'])} | "
                         f"{r['diff']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] | {f(r['p_bootstrap'])} | "
                         f"{f(r['p_bootstrap_holm'])} | {f(r['p_delong'])} | {f(r['p_delong_holm'])} |")
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
