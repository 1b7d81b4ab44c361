"""AUC, AP and sensitivity at fixed specificities of one ranking under many patient-bootstrap draws at once.

A draw weights every unit by its patient's count. The units are sorted once (`Ranking`), by descending score;
a draw is then one compiled pass over them (`evaluation.kernels.ranking_draws`) that sums each group of tied
units' positive and negative weights (P_g, N_g) and, at the end of the group, with T and F the positives' and
negatives' weights above it:

- AUC: (P N - sum_g P_g (F + N_g / 2)) / (P N), the pairs a positive wins (ties count half);
- AP: sum_g P_g (T + P_g) / (T + P_g + F + N_g) / P, the precision at each positive's score;
- sensitivity at specificity q: T at the first group whose negatives take the false-positive weight above
  (1 - q) N.

This is `stats.curve_metrics` on the repeated units. Every pair count and sensitivity is an exact integer sum
(in float64; the ratios in float32 where the counts are exact in it, as the NumPy passes this replaced did), so
AUC and sensitivities are bit for bit those of the earlier implementations; AP is equal within float rounding
(a group's precision times its weight, instead of summed per unit).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .kernels import ranking_draws, transposed


class Ranking:
    """Units (labels `y`, scores `s`, patient rows `pidx`) sorted by descending score, with the ends of the
    groups of tied scores marked (see the module docstring)."""

    def __init__(self, y, s, pidx):
        y = np.asarray(y).astype(bool)
        s = np.asarray(s, float)
        order = np.argsort(-s, kind="mergesort")
        self.s = s = s[order]                                  # descending, stable: curve_metrics' order
        self.n = len(y)
        self.pat = np.asarray(pidx)[order].astype(np.int64)
        self.pos = y[order]
        end = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
        if self.n and self.pat.max() >= 2 ** 29:
            raise ValueError(f"{self.pat.max() + 1} patients: the bootstrap kernel takes at most 2^29")
        self.code = (self.pat * 4 + 2 * self.pos + end).astype(np.int32)

    def metrics(self, counts: np.ndarray, specificities: Sequence[float]) -> dict[str, np.ndarray]:
        """Metrics in % of every draw of `counts` (draws x patients): NaN where a draw leaves one class."""
        counts = np.ascontiguousarray(counts)
        if counts.dtype.kind not in "iu":
            counts = counts.astype(np.int64)
        # per patient of the ranking: its positive and negative units (a draw's class totals from them)
        units = np.bincount(self.pat)
        patients = np.flatnonzero(units)
        n_pos = np.bincount(self.pat, weights=self.pos.astype(float), minlength=len(units))[patients]
        n_neg = units[patients] - n_pos
        # the earlier passes computed ratios in float32 where every count is exact in it (below 2^24)
        f32 = self.n * max(transposed(counts)[1], 1) < 2 ** 24
        q = np.asarray(specificities, np.float64)
        order = np.argsort(1 - q, kind="stable")               # the thresholds, smallest first
        out = np.empty((len(counts), 2 + len(q)))
        ranking_draws(self.code, counts, patients, n_pos, n_neg, q[order], f32, out)
        res = {"AUC": out[:, 0], "AP": out[:, 1]}
        column = np.empty(len(q), np.intp)
        column[order] = np.arange(len(q))
        for k in range(len(q)):
            res[f"sens@{round(100 * q[k])}spec"] = out[:, 2 + column[k]]
        return res
