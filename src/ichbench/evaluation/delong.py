"""DeLong's test of paired AUCs on slices (secondary to the bootstrap: it takes a patient's slices as independent).

`DeLongPairs` keeps, per row and fold, the placements of its units (the share of the other class each unit
outranks, Sun & Xu 2014), so that each of the many pairs of the comparison families costs no new ranking.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their mean rank (as scipy.stats.rankdata)."""
    x = np.atleast_2d(x)
    order = np.argsort(x, axis=1, kind="mergesort")
    xs = np.take_along_axis(x, order, axis=1)
    out = np.empty_like(xs, dtype=float)
    for i in range(len(x)):
        # first and last position of each tie run -> mean rank
        new_run = np.r_[True, xs[i, 1:] != xs[i, :-1]]
        run = np.cumsum(new_run) - 1
        starts = np.nonzero(new_run)[0]
        ends = np.r_[starts[1:], len(xs[i])]
        out[i, order[i]] = ((starts + 1 + ends) / 2)[run]
    return out


def delong(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) for the AUCs of several scores on the same units, via midranks (Sun & Xu 2014).

    `scores`: (k x n). -> (AUCs (k,), their covariance (k x k)); AUC as a fraction. Units are taken as
    independent (a patient's slices are not), so the variance is too small for clustered slices."""
    y = np.asarray(y).astype(bool)
    x = np.atleast_2d(np.asarray(scores, float))
    pos, neg = x[:, y], x[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        k = len(x)
        return np.full(k, np.nan), np.full((k, k), np.nan)
    r_all = midranks(np.hstack([pos, neg]))
    r_pos, r_neg = midranks(pos), midranks(neg)
    auc = (r_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v_pos = (r_all[:, :m] - r_pos) / n          # per positive: share of negatives below it (ties half)
    v_neg = 1 - (r_all[:, m:] - r_neg) / m      # per negative: share of positives above it
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return auc, cov


def delong_paired_p(units_a: pd.DataFrame, units_b: pd.DataFrame) -> tuple[float, float]:
    """DeLong test of mean-over-folds slice AUC difference a - b (in %), folds independent: the fold
    differences' variances add, divided by folds^2. Units matched by (fold, sop_uid). -> (difference, p)."""
    m = units_a.merge(units_b[["fold", "sop_uid", "score"]], on=["fold", "sop_uid"], suffixes=("", "_b"))
    diffs, variances = [], []
    for _, g in m.groupby("fold"):
        auc, cov = delong(g["y"].to_numpy(), np.vstack([g["score"].to_numpy(), g["score_b"].to_numpy()]))
        if np.isfinite(auc).all():
            diffs.append(auc[0] - auc[1])
            variances.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return _p_from(diffs, variances)


def _p_from(diffs: list, variances: list) -> tuple[float, float]:
    """(mean difference in %, two-sided normal p) of the folds' AUC differences and their variances."""
    if not diffs:
        return np.nan, np.nan
    d, v = float(np.mean(diffs)), float(np.sum(variances)) / len(diffs) ** 2
    if v <= 0:
        return 100 * d, 1.0 if d == 0 else 0.0
    p = math.erfc(abs(d) / math.sqrt(v) / math.sqrt(2))      # two-sided normal p-value
    return 100 * d, p


class DeLongPairs:
    """The slice units of every row of one evaluation (method -> frame with fold, sop_uid, y, score) and, once
    asked for, each row's DeLong placements per fold: `paired_p(a, b)` equals `delong_paired_p` of the two
    rows' frames (the same numbers: the same ranks and the same covariance sums), computed from them."""

    def __init__(self, by_method: dict[str, pd.DataFrame]):
        self.by_method = by_method
        self._folds: dict[str, dict] = {}

    def _placements(self, method: str) -> dict:
        """fold -> (sop_uids, y, AUC, positives' placements, negatives' placements); AUC None below 2 units of a
        class; None for a fold naming a slice twice."""
        if method not in self._folds:
            u, out = self.by_method[method], {}
            for fold, g in u.groupby("fold", sort=True):
                sop, y = g["sop_uid"].to_numpy(), g["y"].to_numpy().astype(bool)
                x = g["score"].to_numpy(float)[None, :]
                m, n = int(y.sum()), int((~y).sum())
                if not pd.Index(sop).is_unique:
                    out[fold] = None                      # a slice twice: only the merge says what pairs up
                    continue
                if m < 2 or n < 2:
                    out[fold] = (sop, y, None, None, None)
                    continue
                pos, neg = x[:, y], x[:, ~y]
                r_all = midranks(np.hstack([pos, neg]))
                r_pos, r_neg = midranks(pos), midranks(neg)
                auc = (r_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
                out[fold] = (sop, y, float(auc[0]), ((r_all[:, :m] - r_pos) / n)[0], (1 - (r_all[:, m:] - r_neg) / m)[0])
            self._folds[method] = out
        return self._folds[method]

    def paired_p(self, a: str, b: str) -> tuple[float, float]:
        """(mean-over-folds slice AUC difference a - b in %, DeLong p), as `delong_paired_p`."""
        pa, pb = self._placements(a), self._placements(b)
        same = pa.keys() == pb.keys() and all(
            pa[f] is not None and pb[f] is not None and np.array_equal(pa[f][0], pb[f][0])
            and np.array_equal(pa[f][1], pb[f][1]) for f in pa)
        if not same:
            return delong_paired_p(self.by_method[a], self.by_method[b])   # other units: match them by sop_uid
        diffs, variances = [], []
        for f in pa:
            if pa[f][2] is None or pb[f][2] is None:
                continue
            m, n = len(pa[f][3]), len(pa[f][4])
            cov = (np.atleast_2d(np.cov(np.vstack([pa[f][3], pb[f][3]]))) / m
                   + np.atleast_2d(np.cov(np.vstack([pa[f][4], pb[f][4]]))) / n)
            diffs.append(pa[f][2] - pb[f][2])
            variances.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        return _p_from(diffs, variances)
