"""What `ichbench predict` writes beside the NIfTI map: the per-slice scores table, the montage of maps over the brain window, and the summary.

No patient, study or series ID, no path of the input and no DICOM header field other than geometry is written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

SCORE_COLUMNS = ["slice_index", "volume_k", "position_mm", "z_mm", "score", "brain_score", "normal_percentile"]
MONTAGE_TILES = 16


def scan_score(scores: np.ndarray, how: str = "max", top_k: int = 3) -> float:
    """Slice scores -> the scan score as Table 1's scan level aggregates them (mean, max, or topk)."""
    if how == "mean":
        return float(np.mean(scores))
    if how == "topk":
        return float(np.mean(np.sort(scores)[::-1][:max(int(top_k), 1)]))
    return float(np.max(scores))


def percentiles(scores: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """Each score's percentile among the reference scores (share strictly below, ties half), NaN without one."""
    if reference is None or not len(reference):
        return np.full(len(scores), np.nan)
    ref = np.sort(np.asarray(reference, float))
    below = np.searchsorted(ref, scores, side="left")
    upto = np.searchsorted(ref, scores, side="right")
    return 100.0 * (below + upto) / (2.0 * len(ref))


def write_scores(path: str | os.PathLike, table: pd.DataFrame) -> None:
    table[SCORE_COLUMNS].to_csv(path, index=False, float_format="%.8g")


def montage_slices(brain_area: np.ndarray, n: int = MONTAGE_TILES) -> np.ndarray:
    """Up to `n` slice indices evenly spread over the slices with brain (over all where none has any)."""
    have = np.nonzero(brain_area > 0.2 * brain_area.max())[0] if brain_area.max() > 0 else np.arange(len(brain_area))
    if len(have) <= n:
        return have
    return have[np.unique(np.rint(np.linspace(0, len(have) - 1, n)).astype(int))]


def write_montage(path: str | os.PathLike, brain: np.ndarray, maps: np.ndarray, brain_masks: np.ndarray,
                  head_masks: np.ndarray, picks: Sequence[int], labels: Sequence[str], title: str) -> None:
    """Tiles of the brain window (grey, [-1, 1] values) with the map over it inside the head: the map's colour
    runs from the median to the 99.5th percentile of its values inside the brain over all shown slices,
    transparent below (and outside the head, where air reconstructs badly and means nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = list(picks)
    inside = maps[picks][brain_masks[picks]] if brain_masks[picks].any() else maps[picks].ravel()
    lo, hi = (np.percentile(inside, [50, 99.5]) if inside.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1e-6
    cols = min(4, max(len(picks), 1))
    rows = max(1, int(np.ceil(len(picks) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.35 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i, label in zip(axes.ravel(), picks, labels):
        ax.imshow((brain[i] + 1) / 2, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        level = np.clip((maps[i] - lo) / (hi - lo), 0, 1)
        rgba = plt.get_cmap("inferno")(level)
        rgba[..., 3] = 0.75 * level * head_masks[i]
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")
