"""One row against every other row: paired AUC and AP differences (row - other) for `comparisons.csv` and table1.md."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

#: Metrics of the comparison family.
COMPARE_METRICS = ("AUC", "AP")


def family_name(row: str) -> str:
    """The `family` of the comparisons of `row` against every other row in comparisons.csv."""
    return f"{row} vs all"


def check_row(row: str | None, methods: Sequence[str], key: str = "compare") -> None:
    """ValueError naming `key` when `row` is set and not one of `methods`."""
    if row is not None and row not in methods:
        raise ValueError(f"{key}: {row!r} is not one of the rows ({', '.join(methods)})")


def compare_rows(row: str, stats: dict, units: pd.DataFrame, lvl: str, prot: str,
                 level: float = 0.95) -> list[dict]:
    """Comparison records of `row` against every other row of `stats` (method -> RowStats with draws) on one
    evaluation: for AUC and AP, diff = row - other on the same bootstrap draws (paired), its percentile
    interval, the bootstrap p Holm-adjusted over the other rows (per metric), and at slice level DeLong's p
    for AUC. method = `row`, reference = the other row (diff = method - reference, as the other families)."""
    from .stats import paired_family

    if row not in stats:
        return []
    others = [(row, other) for other in stats if other != row]
    return [r for metric in COMPARE_METRICS
            for r in paired_family(stats, others, family_name(row), metric, units, lvl, prot, level)]


def _p(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.2g}" if v >= 0.001 else "<0.001"


def compare_markdown(comparisons: pd.DataFrame, row: str | None, display: dict[str, str] | None = None) -> str:
    """The section `## <row> against every row` of table1.md (empty without `row` or its family)."""
    if not row or comparisons.empty:
        return ""
    g = comparisons[comparisons["family"] == family_name(row)]
    if g.empty:
        return ""
    display = display or {}
    from .stats import evaluation_name

    name = display.get(row, row)
    lines = [f"## {name} against every row", "",
             f"Difference {name} - other row (positive: {name} is higher) of the mean over folds, on the same "
             "test patients and bootstrap draws (paired): 95 % percentile interval, two-sided bootstrap p, "
             "Holm-adjusted over the other rows within each evaluation and metric. DeLong (slice AUC only) "
             "takes slices as independent: a secondary check.", "",
             "| evaluation | metric | against | diff [95 % CI] | p | p Holm | p DeLong | p DeLong Holm |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in g.iterrows():
        lines.append(f"| {evaluation_name(r['level'], r['protocol'])} | {r['metric']} | "
                     f"{display.get(r['reference'], r['reference'])} | "
                     f"{r['diff']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] | {_p(r['p_bootstrap'])} | "
                     f"{_p(r['p_bootstrap_holm'])} | {_p(r['p_delong'])} | {_p(r['p_delong_holm'])} |")
    return "\n".join(lines) + "\n"
