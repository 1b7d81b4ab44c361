"""How stable the ranking of the rows is: from Table 1's patient bootstrap, how often each row ranks first.

Per evaluation, each bootstrap draw ranks the rows by their mean-over-folds AUC in that draw (1 = highest;
ties share the best rank); a row's `p_first` is the share of draws where it ranks first, with its median rank
and the percentile interval of its rank. Draws where some row has no AUC (one class left) are dropped.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def ranking_rows(draws: dict[str, np.ndarray], points: dict[str, float], level_name: str, protocol: str,
                 level: float = 0.95) -> list[dict]:
    """`draws`: method -> its AUC per bootstrap draw (same draws for all rows); `points`: method -> mean AUC.
    -> one comparisons.csv row per method (family `ranking`)."""
    from scipy.stats import rankdata      # lazy: scipy.stats costs ~1.5 CPU-s to import in every score job

    methods: Sequence[str] = list(draws)
    d = np.stack([np.asarray(draws[m], float) for m in methods])          # (rows, draws)
    d = d[:, np.isfinite(d).all(0)]
    point_rank = rankdata([-points[m] if np.isfinite(points[m]) else np.inf for m in methods], method="min")
    rows = []
    ranks = rankdata(-d, axis=0, method="min") if d.shape[1] else np.full((len(methods), 0), np.nan)
    a = (1 - level) / 2
    for i, m in enumerate(methods):
        r = ranks[i]
        have = len(r) > 0
        rows.append({"family": "ranking", "level": level_name, "protocol": protocol, "metric": "AUC", "method": m,
                     "reference": "", "rank": int(point_rank[i]),
                     "p_first": float(np.mean(r == 1)) if have else np.nan,
                     "rank_median": float(np.median(r)) if have else np.nan,
                     "rank_low": float(np.quantile(r, a, method="lower")) if have else np.nan,
                     "rank_high": float(np.quantile(r, 1 - a, method="higher")) if have else np.nan,
                     "n_draws": int(len(r))})
    return rows
