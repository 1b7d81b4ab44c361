"""Pictures of Table 1's uncertainty: a forest plot of every row's AUC with its CI, and ROC curves per row."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from .stats import evaluation_name, slice_units


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def forest_plot(ci: pd.DataFrame, method_order: Sequence[str], out_png: str | os.PathLike,
                display: dict[str, str] | None = None) -> None:
    """One line per row (table order, top to bottom): mean-over-folds AUC with its 95 % CI, one panel per
    evaluation (slice level under each protocol, scan level); a dashed line at chance (50)."""
    plt = _plt()
    display = display or {}
    auc = ci[ci["metric"] == "AUC"]
    evals = list(dict.fromkeys(zip(auc["level"], auc["protocol"])))
    methods = [m for m in method_order if (auc["method"] == m).any()]
    fig, axes = plt.subplots(1, max(len(evals), 1), figsize=(3.2 * max(len(evals), 1), 0.9 + 0.28 * len(methods)),
                             sharey=True, squeeze=False)
    y = np.arange(len(methods))[::-1]
    for ax, (level, prot) in zip(axes[0], evals):
        e = auc[(auc["level"] == level) & (auc["protocol"] == prot)].set_index("method").reindex(methods)
        mean, lo, hi = (e[c].to_numpy(float) for c in ("mean", "ci_low", "ci_high"))
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(mean[has_ci], y[has_ci], xerr=[mean[has_ci] - lo[has_ci], hi[has_ci] - mean[has_ci]], fmt="o",
                    color="black", ms=3.5, capsize=2, lw=1)
        ax.plot(mean[~has_ci], y[~has_ci], "o", color="gray", ms=3.5)
        pooled = e["pooled"].to_numpy(float)
        ax.plot(pooled, y, "x", color="tab:red", ms=4, label="pooled folds")
        ax.axvline(50, color="gray", ls="--", lw=0.8)
        ax.set_title(evaluation_name(level, prot), fontsize=8)
        ax.set_xlabel("AUC (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", lw=0.3)
    axes[0, 0].set_yticks(y)
    axes[0, 0].set_yticklabels([display.get(m, m) for m in methods])
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def roc_curves(scores: pd.DataFrame, method_order: Sequence[str], out_png: str | os.PathLike,
               display: dict[str, str] | None = None) -> None:
    """One panel per row: each fold's test ROC (thin; the configured protocol's labels) and all folds
    pooled (thick); folds whose test part has one class have no curve."""
    plt = _plt()
    display = display or {}
    units = slice_units(scores)
    methods = [m for m in method_order if (units["method"] == m).any()]
    n_cols = min(5, max(len(methods), 1))
    n_rows = int(np.ceil(len(methods) / n_cols)) if methods else 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.3 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, m in zip(axes.ravel(), methods):
        ax.set_axis_on()
        u = units[units["method"] == m]
        for _, g in u.groupby("fold"):
            if g["y"].nunique() == 2:
                fpr, tpr, _ = roc_curve(g["y"], g["score"])
                ax.plot(fpr, tpr, lw=0.6, alpha=0.6)
        if u["y"].nunique() == 2:
            fpr, tpr, _ = roc_curve(u["y"], u["score"])
            ax.plot(fpr, tpr, color="black", lw=1.4)
        ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.6)
        ax.set_title(display.get(m, m), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.supxlabel("false positive rate", fontsize=8)
    fig.supylabel("true positive rate", fontsize=8)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
