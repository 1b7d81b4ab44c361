"""AUC, AP and sensitivity at fixed specificities of one ranking under many patient-bootstrap draws at once.

A draw weights every unit by its patient's count. The units are sorted once (`Ranking`); a draw then needs only
the cumulative weights of the positives (T) and of the negatives (F) in that order, and gathers from them at
positions fixed by the sort:

- AUC: sum over positives i of w_i (N - (F[a_i] + F[b_i]) / 2), with N the negatives' weight and a_i / b_i the
  negatives ranked above / at or above i's score (ties count half): the same pair count as summing over the
  negatives, from the F[b_i] that AP needs anyway (F[a_i] only for the positives tied with a negative);
- AP: sum over positives i of w_i T[t_i] / (T[t_i] + F[b_i]), the precision at i's score;
- sensitivity at specificity q: T at the last score whose false-positive weight is within (1 - q) of the
  negatives', found by a binary search in F.

This is `stats.curve_metrics` on the repeated units (the same AUC and sensitivities bit for bit: every pair
count is an exact integer sum; AP equal within float rounding, the terms being summed per unit instead of per
distinct score) for a few passes over the units per draw. The counts are turned into weights once per block
of draws (float32 where its integers are exact), so no pass casts; the blocks' buffers are reused.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: Largest (draws x units) block built at once: small enough to stay in the CPU caches.
CHUNK_CELLS = 1_000_000


class Ranking:
    """Units (labels `y`, scores `s`, patient rows `pidx`) sorted by descending score, with each positive's
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
        self.p_pos, self.p_neg = pidx[pos].astype(np.intp), pidx[neg].astype(np.intp)
        pos_in = np.bincount(group[pos], minlength=n_groups)
        neg_in = np.bincount(group[neg], minlength=n_groups)
        pos_upto, neg_upto = np.cumsum(pos_in), np.cumsum(neg_in)
        self.tb = pos_upto[group[pos]]                  # per positive: positives at higher or equal scores
        self.tb_plain = bool(np.array_equal(self.tb, np.arange(1, len(pos) + 1)))
        self.fb = neg_upto[group[pos]]                  # ... negatives at higher or equal scores
        fa = (neg_upto - neg_in)[group[pos]]            # ... negatives at higher scores
        self.tied = np.nonzero(fa != self.fb)[0]        # the positives tied with a negative
        self.fa_tied = fa[self.tied]
        # the positives above the (m+1)-th negative, for m = 0 .. n_neg (all of them for m = n_neg)
        self.a_ext = np.r_[(pos_upto - pos_in)[group[neg]], len(pos)]

    def metrics(self, counts: np.ndarray, specificities: Sequence[float]) -> dict[str, np.ndarray]:
        """Metrics in % of every draw of `counts` (draws x patients): NaN where a draw leaves one class."""
        counts = np.asarray(counts)
        # float32 halves the memory traffic; its integers are exact below 2^24 (sums in float64)
        dtype = np.float32 if self.n * max(int(counts.max(initial=0)), 1) < 2 ** 24 else np.float64
        step = max(1, min(len(counts), CHUNK_CELLS // max(self.n, 1)))
        buf = _Buffers(step, len(self.p_pos), len(self.p_neg), dtype)
        out = [self._chunk(counts[i:i + step], buf, specificities) for i in range(0, len(counts), step)]
        return {k: np.concatenate([o[k] for o in out]) for k in out[0]}

    def _chunk(self, c: np.ndarray, buf: "_Buffers", specificities) -> dict[str, np.ndarray]:
        d = len(c)
        cw = c.astype(buf.dtype)                        # (draws x patients): the only cast
        wp, wn = buf.wp[:d], buf.wn[:d]
        np.take(cw, self.p_pos, axis=1, out=wp, mode="clip")      # in range; "clip" skips a buffer
        np.take(cw, self.p_neg, axis=1, out=wn, mode="clip")
        T, F = buf.T[:d], buf.F[:d]
        np.cumsum(wp, axis=1, out=T[:, 1:])
        np.cumsum(wn, axis=1, out=F[:, 1:])
        n_pos, n_neg = T[:, -1], F[:, -1]
        ok = (n_pos > 0) & (n_neg > 0)
        tb = T[:, 1:] if self.tb_plain else np.take(T, self.tb, axis=1, out=buf.tb[:d], mode="clip")
        fb = np.take(F, self.fb, axis=1, out=buf.fb[:d], mode="clip")
        # every term is an integer (or half of one) below 2^53: these sums are exact
        w_pos = n_pos.astype(float)
        pairs = n_neg.astype(float) * w_pos - np.einsum("ij,ij->i", wp, fb, dtype=float)
        if len(self.tied):
            fa = np.take(F, self.fa_tied, axis=1)
            pairs += 0.5 * np.einsum("ij,ij->i", wp[:, self.tied], fb[:, self.tied] - fa, dtype=float)
        total = np.add(tb, fb, out=buf.total[:d])
        np.maximum(total, 1, out=total)                 # 0 only where tb is 0 too: precision 0
        precision = np.divide(tb, total, out=total)
        res = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            res["AUC"] = pairs / (n_pos * n_neg)            # the product in the weights' dtype, as ever
            res["AP"] = np.einsum("ij,ij->i", wp, precision, dtype=float) / n_pos
            rows = np.arange(d)
            for q in specificities:
                # the last score whose false-positive weight is within 1 - q: the (m+1)-th negative's is above
                thr = ((1 - q) * n_neg.astype(float) + 1e-6).astype(buf.dtype)
                m = np.fromiter((np.searchsorted(F[r], thr[r], side="right") - 1 for r in rows), np.int64, d)
                res[f"sens@{round(100 * q)}spec"] = T[rows, self.a_ext[m]] / n_pos
        return {k: np.where(ok, 100 * np.asarray(v, float), np.nan) for k, v in res.items()}


class _Buffers:
    """The (draws x units) arrays of one block, allocated once per `Ranking.metrics` call."""

    def __init__(self, step: int, n_pos: int, n_neg: int, dtype):
        self.dtype = dtype
        self.wp, self.wn = np.empty((step, n_pos), dtype), np.empty((step, n_neg), dtype)
        self.T, self.F = np.zeros((step, n_pos + 1), dtype), np.zeros((step, n_neg + 1), dtype)
        self.tb, self.fb, self.total = (np.empty((step, n_pos), dtype) for _ in range(3))
