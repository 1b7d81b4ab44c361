"""The strata for reading: a Markdown section (rows x strata per stratum kind) and the figure of sensitivity against bleed size.

Both read the long table of `strata.strata_table` (one row per method, stratum and metric); a stratum with too
few units is written `n<min` and left out of the figure's line (a gap), never drawn as a number.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .strata import MIN_UNITS, SENSITIVITY_RULE

SIZE_KIND = "bleed size (mm^2)"


def _cell(r, min_units: int) -> str:
    if r.too_few:
        return f"n<{min_units}"
    if not np.isfinite(r.value):
        return "n/a"
    return f"{r.value:.1f} [{r.ci_low:.1f}, {r.ci_high:.1f}]" if np.isfinite(r.ci_low) else f"{r.value:.1f}"


def strata_markdown(table: pd.DataFrame, min_units: int = MIN_UNITS,
                    sensitivity_rule: str = SENSITIVITY_RULE) -> str:
    """Per level and stratum kind a table rows x strata of the AUC [95 % CI], `n<min` where too few; for bleed
    size and volume also the sensitivity at `sensitivity_rule`. Column heads give the anomalous units (n)."""
    lines = ["## Strata: where each row fails", "",
             "Test parts; each stratum's anomalous units against the same normals (every normal test unit), "
             "acquisition and dataset strata against the normal units of the same stratum. AUC in %, mean over "
             "folds [95 % patient-bootstrap CI]; sensitivity pooled over folds at each fold's threshold set on "
             f"its validation part. `n<{min_units}`: fewer anomalous (or normal) units than "
             "`evaluation.min_units`, no number. `all`: every anomalous unit against the normal units only "
             "(bleed-free slices of ICH scans are in no stratum), so it is not Table 1's slice AUC. "
             "All strata, metrics and counts: `strata.csv`.", ""]
    if table.empty:
        return "\n".join(lines + ["No strata: no test units."]) + "\n"
    for (level, labels, kind), g in table.groupby(["level", "labels", "stratum_kind"], sort=False):
        metrics = ["AUC"] + ([f"sensitivity@{sensitivity_rule}"] if kind.startswith("bleed") else [])
        for metric in metrics:
            gm = g[g["metric"] == metric]
            if gm.empty:
                continue
            names = list(dict.fromkeys(gm["stratum"]))
            n = gm.groupby("stratum")["n_units"].max()
            what = "AUC" if metric == "AUC" else f"sensitivity at {sensitivity_rule}"
            lines += [f"**{kind}**, {level} level ({labels}): {what}", "",
                      "| row | " + " | ".join(f"{s} (n {n[s]})" for s in names) + " |",
                      "|---|" + "---|" * len(names)]
            for m, r in gm.groupby("method", sort=False):
                by = {x.stratum: x for x in r.itertuples()}
                lines.append(f"| {m} | " + " | ".join(_cell(by[s], min_units) if s in by else "" for s in names)
                             + " |")
            lines.append("")
    return "\n".join(lines)


def size_figure(table: pd.DataFrame, out_png: str | os.PathLike, rule: str = SENSITIVITY_RULE,
                kind: str = SIZE_KIND) -> None:
    """Slice sensitivity at `rule` against the bleed size bin, one line per row (table order), with the
    bootstrap CI as error bars; strata with too few units are gaps. Matplotlib Agg."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[(table["stratum_kind"] == kind) & (table["metric"] == f"sensitivity@{rule}")]
    names = list(dict.fromkeys(t["stratum"]))
    methods = list(dict.fromkeys(t["method"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = np.arange(len(names))
    colours = plt.get_cmap("tab20")
    for i, m in enumerate(methods):
        r = t[t["method"] == m].set_index("stratum").reindex(names)
        v, lo, hi = (r[c].to_numpy(float) for c in ("value", "ci_low", "ci_high"))
        off = x + 0.4 * (i / max(len(methods) - 1, 1) - 0.5)         # side by side, so the bars stay apart
        err = np.vstack([np.where(np.isfinite(lo), v - lo, 0), np.where(np.isfinite(hi), hi - v, 0)])
        ax.errorbar(off, v, yerr=err, marker="o", ms=3, lw=1, capsize=2, color=colours(i % 20), label=m)
    n = t.groupby("stratum")["n_units"].max() if not t.empty else pd.Series(dtype=int)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{s}\n(n {n.get(s, 0)})" for s in names], fontsize=8)
    ax.set_xlabel("hemorrhage area of the slice (mm$^2$, full resolution)", fontsize=9)
    ax.set_ylabel(f"sensitivity (%) at {rule}", fontsize=9)
    ax.set_ylim(-3, 103)
    ax.grid(axis="y", lw=0.3)
    ax.set_title("Test slices by bleed size: thresholds fixed on validation (gaps: too few units)", fontsize=9)
    if methods:
        ax.legend(fontsize=6, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(out_png, dpi=150, bbox_inches="tight")
    plt.close(fig)
