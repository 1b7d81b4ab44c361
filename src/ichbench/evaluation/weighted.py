"""AUC, AP and sensitivity at fixed specificities of one ranking under many patient-bootstrap draws at once.

A draw weights every unit by its patient's count. The units are sorted once (`Ranking`); a draw then needs only
the cumulative weights of the positives (T) and of the negatives (F) in that order, and gathers from them at
positions fixed by the sort:

- AUC: sum over negatives j of w_j (T[a_j] + T[b_j]) / 2, with a_j / b_j the positives ranked above / at or
  above j's score (ties count half);
- AP: sum over positives i of w_i T[b_i] / (T[b_i] + F[c_i]), the precision at i's score;
- sensitivity at specificity q: T at the last score whose false-positive weight is within (1 - q) of the
  negatives', found by a binary search in F.

This is `stats.curve_metrics` on the repeated units (the same AUC and sensitivities bit for bit; AP equal within
float rounding, the terms being summed per unit instead of per distinct score) for a few passes over the units
per draw, with no pass over the distinct scores per metric.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: Largest (draws x units) block built at once: small enough to stay in the CPU caches.
CHUNK_CELLS = 1_000_000


class Ranking:
    """Units (labels `y`, scores `s`, patient rows `pidx`) sorted by descending score, with each unit's
    positions in the per-class cumulative weights (see the module docstring)."""

    def __init__(self, y, s, pidx):
        y = np.asarray(y).astype(bool)
        s = np.asarray(s, float)
        order = np.argsort(-s, kind="mergesort")
        y, s, pidx = y[order], s[order], np.asarray(pidx)[order]
        self.n = len(y)
        group = np.cumsum(np.r_[False, s[1:] != s[:-1]]) if len(s) else np.zeros(0, np.int64)
        n_groups = int(group[-1]) + 1 if len(group) else 0
        pos, neg = np.nonzero(y)[0], np.nonzero(~y)[0]
        self.p_pos, self.p_neg = pidx[pos], pidx[neg]
        pos_upto = np.cumsum(np.bincount(group[pos], minlength=n_groups))
        neg_upto = np.cumsum(np.bincount(group[neg], minlength=n_groups))
        pos_before = pos_upto - np.bincount(group[pos], minlength=n_groups)
        self.a = pos_before[group[neg]]                 # per negative: positives at higher scores
        self.b = pos_upto[group[neg]]                   # ... at higher or equal scores
        self.a_plain_ties = bool(np.array_equal(self.a, self.b))
        self.tb = pos_upto[group[pos]]                  # per positive: positives at higher or equal scores
        self.tb_plain = bool(np.array_equal(self.tb, np.arange(1, len(pos) + 1)))
        self.fb = neg_upto[group[pos]]                  # ... negatives at higher or equal scores
        self.a_ext = np.r_[self.a, len(pos)]            # the positives above the (m+1)-th negative; all for m = n

    def metrics(self, counts: np.ndarray, specificities: Sequence[float]) -> dict[str, np.ndarray]:
        """Metrics in % of every draw of `counts` (draws x patients): NaN where a draw leaves one class."""
        counts = np.asarray(counts)
        # float32 halves the memory traffic; its integers are exact below 2^24 (sums in float64)
        dtype = np.float32 if self.n * max(int(counts.max(initial=0)), 1) < 2 ** 24 else np.float64
        step = max(1, CHUNK_CELLS // max(self.n, 1))
        out = [self._chunk(counts[i:i + step], dtype, specificities) for i in range(0, len(counts), step)]
        return {k: np.concatenate([o[k] for o in out]) for k in out[0]}

    def _chunk(self, c: np.ndarray, dtype, specificities) -> dict[str, np.ndarray]:
        wp, wn = np.take(c, self.p_pos, axis=1), np.take(c, self.p_neg, axis=1)
        T = np.zeros((len(c), wp.shape[1] + 1), dtype)
        F = np.zeros((len(c), wn.shape[1] + 1), dtype)
        np.cumsum(wp, axis=1, dtype=dtype, out=T[:, 1:])
        np.cumsum(wn, axis=1, dtype=dtype, out=F[:, 1:])
        n_pos, n_neg = T[:, -1], F[:, -1]
        ok = (n_pos > 0) & (n_neg > 0)
        # every term is an integer (or half of one) below 2^53: these sums are exact
        pairs = np.einsum("ij,ij->i", wn, np.take(T, self.a, axis=1), dtype=float)
        if not self.a_plain_ties:
            pairs = 0.5 * (pairs + np.einsum("ij,ij->i", wn, np.take(T, self.b, axis=1), dtype=float))
        tb = T[:, 1:] if self.tb_plain else np.take(T, self.tb, axis=1)
        fb = np.take(F, self.fb, axis=1)
        total = tb + fb
        precision = np.divide(tb, total, out=np.zeros_like(tb), where=tb > 0)
        res = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            res["AUC"] = pairs / (n_pos * n_neg)
            res["AP"] = np.einsum("ij,ij->i", wp, precision, dtype=float) / n_pos
            rows = np.arange(len(c))
            for q in specificities:
                # the last score whose false-positive weight is within 1 - q: the (m+1)-th negative's is above
                thr = ((1 - q) * n_neg.astype(float) + 1e-6).astype(dtype)
                m = np.fromiter((np.searchsorted(F[r], thr[r], side="right") - 1 for r in rows), np.int64, len(c))
                res[f"sens@{round(100 * q)}spec"] = T[rows, self.a_ext[m]] / n_pos
        return {k: np.where(ok, 100 * np.asarray(v, float), np.nan) for k, v in res.items()}
