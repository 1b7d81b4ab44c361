"""The aggregation's RSNA-size paths: score tables read with categorical IDs, and the operating points' bootstrap
as one product per fold for every row and rule, each against the plain computation it replaced."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ichbench.evaluation import aggregate, operating, stats
from test_operating import constructed


def test_read_scores_reads_ids_as_sorted_categories_with_the_texts_values(tmp_path):
    a = constructed(n_folds=2, patients=6, slices=3, seed=1, method="B")
    b = constructed(n_folds=2, patients=6, slices=3, seed=2, method="A")
    b["patient_id"] = "0" + b["patient_id"]                  # IDs that a number parser would change
    paths = []
    for name, f in (("b.csv", a), ("a.csv", b)):
        f.to_csv(tmp_path / name, index=False)
        paths.append(str(tmp_path / name))
    got = aggregate.read_scores(paths)
    text = pd.concat([pd.read_csv(p, dtype={c: str for c in aggregate.ID_COLUMNS}) for p in paths], ignore_index=True)
    assert list(got.columns) == list(text.columns)
    for c in aggregate.ID_COLUMNS:
        assert isinstance(got[c].dtype, pd.CategoricalDtype), c
        cats = list(got[c].cat.categories)
        assert cats == sorted(cats), c
        assert got[c].astype(str).tolist() == text[c].tolist(), c
    pd.testing.assert_frame_equal(got.drop(columns=list(aggregate.ID_COLUMNS)),
                                  text.drop(columns=list(aggregate.ID_COLUMNS)))
    # grouping by the categories gives the text's groups in the text's order
    k_got = list(got.groupby(["method", "fold", "part"], sort=True).size().index)
    k_text = list(text.groupby(["method", "fold", "part"], sort=True).size().index)
    assert [tuple(map(str, k)) for k in k_got] == [tuple(map(str, k)) for k in k_text]
    assert got["patient_id"].astype(str).str.startswith("00").any()


def test_read_scores_reuses_a_folds_ids_and_equals_the_union_of_each_tables_categories(tmp_path):
    """Tables of one fold list the same slices: their codes are reused; a table that differs in one late ID, or
    has a missing one, is categorised on its own; the result equals union_categoricals of every table's own."""
    from pandas.api.types import union_categoricals

    base = constructed(n_folds=1, patients=8, slices=4, seed=3, method="A")
    late = base.assign(method="C")
    late.loc[len(late) - 1, "sop_uid"] = "zz-last"               # equal up to the last row
    gap = base.assign(method="D")
    gap.loc[2, "series_uid"] = np.nan                              # a missing ID stays missing
    paths = []
    for name, f in (("a", base), ("b", base.assign(method="B")), ("c", late), ("d", gap),
                    ("e", base.iloc[:5].assign(method="E"))):
        f.to_csv(tmp_path / f"{name}.csv", index=False)
        paths.append(str(tmp_path / f"{name}.csv"))
    got = aggregate.read_scores(paths)
    own = [pd.read_csv(p, dtype={c: str for c in aggregate.ID_COLUMNS}) for p in paths]
    for c in aggregate.ID_COLUMNS:
        want = union_categoricals([f[c].astype("category") for f in own], sort_categories=True)
        assert list(got[c].cat.categories) == list(want.categories), c
        np.testing.assert_array_equal(got[c].cat.codes.to_numpy(), want.codes, err_msg=c)
    assert got["series_uid"].isna().sum() == 1 and "zz-last" in set(got["sop_uid"])


def test_operating_point_draws_equal_the_draws_recounted_per_rule():
    scores = pd.concat([constructed(n_folds=3, patients=24, slices=4, seed=s, method=m, shift=1.0)
                        for s, m in ((3, "A"), (4, "B"))], ignore_index=True)
    val, test = stats.slice_units(scores, part="val"), stats.slice_units(scores, part="test")
    summary, _ = operating.operating_points(val, test, ["A", "B"], n_boot=40, seed=5)
    thr = operating.thresholds(val, test)
    patients = stats.patient_table(test)
    counts = stats.patient_counts(patients, 40, 5)
    checked = 0
    for (m, rule), g in thr.groupby(["method", "rule"], sort=False):
        u = test[test["method"] == m]
        pidx, y, s, fold = (stats.patient_index(u, patients), u["y"].to_numpy(bool), u["score"].to_numpy(float),
                            u["fold"].to_numpy())
        per_fold = []
        for r in g.itertuples():
            sel = fold == r.fold
            w = counts[:, pidx[sel]].astype(float)               # every draw's weight of every unit
            pred = s[sel] > r.threshold
            yy = y[sel]
            per_fold.append(operating.rates(w @ (yy & pred), w @ (~yy & pred), w @ (yy & ~pred), w @ (~yy & ~pred)))
        for k in operating.RATES:
            draws = np.stack([f[k] for f in per_fold], 1).mean(1)
            row = summary[(summary["method"] == m) & (summary["rule"] == rule) & (summary["metric"] == k)]
            lo, hi = stats.percentile_ci(draws)
            assert (row["ci_low"].item(), row["ci_high"].item()) == (lo, hi) or not np.isfinite(lo), (m, rule, k)
            checked += np.isfinite(lo)
    assert checked > 40


def _report_mem_mb():
    """`report_mem_mb` of workflow/rules/common.smk (plain Python), compiled on its own."""
    import ast
    from pathlib import Path

    src = (Path(__file__).resolve().parents[1] / "workflow/rules/common.smk").read_text()
    start = src.index("def report_mem_mb(")
    tree = ast.parse(src[start:].split("\n\n\ndef ")[0])
    scope: dict = {}
    exec(compile(tree, "common.smk", "exec"), scope)
    return scope["report_mem_mb"]


def test_report_rules_ask_for_memory_that_grows_with_the_score_tables():
    """At the demo's size the rules' base memory; at RSNA's (1.3 GB of score CSV for 750 k test slices) above the
    peaks measured there (table 7.6 GB, strata 5.2 GB: docs/performance.md), doubled on a retry."""
    import pytest

    class Input:
        def __init__(self, mb):
            self.size_mb = mb

    mem = _report_mem_mb()
    assert mem(4000, 6)(None, Input(4.5), 1) == 4000
    assert mem(4000, 6)(None, Input(1330), 1) > 7575
    assert mem(4000, 4)(None, Input(1330), 1) > 5239
    assert mem(2000, 3.5)(None, Input(1330), 1) > 4314
    assert mem(4000, 6)(None, Input(1330), 2) == 2 * mem(4000, 6)(None, Input(1330), 1)

    class Missing:
        @property
        def size_mb(self):
            raise FileNotFoundError("results/scores/AE/fold-0.csv")

    with pytest.raises(FileNotFoundError):          # Snakemake then evaluates it once the file exists
        mem(4000, 6)(None, Missing(), 1)

    # and the four report rules that read every score table ask for it
    import re
    from pathlib import Path

    report = (Path(__file__).resolve().parents[1] / "workflow/rules/report.smk").read_text()
    for rule in ("table1", "stats_figures", "extra_tables", "strata"):
        body = re.search(rf"^rule {rule}:\n(.*?)(?=^rule |\Z)", report, re.S | re.M).group(1)
        assert "mem_mb=report_mem_mb(" in body, rule
