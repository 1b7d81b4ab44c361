"""One row against every row (ichbench.evaluation.compare, `ichbench compare`, table.compare) on constructed scores."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from ichbench import config
from ichbench.cli import main
from ichbench.evaluation import stats
from ichbench.evaluation.aggregate import stats_markdown
from ichbench.evaluation.compare import compare_markdown, family_name

METHODS = ["AE", "VAE", "NSA"]


def _scores(seed=3, n_folds=2, n_pat=(14, 10), slices=4):
    """Patients with a random effect per row; NSA separates the classes clearly better than AE and VAE."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_folds):
        for cls, n in enumerate(n_pat):
            for p in range(n):
                pid = f"f{f}c{cls}p{p}"
                u = rng.normal(size=len(METHODS))
                for k in range(slices):
                    for j, m in enumerate(METHODS):
                        shift = 3.0 if m == "NSA" else 0.5
                        rows.append({"method": m, "fold": f, "part": "test", "patient_id": pid, "series_uid": pid,
                                     "sop_uid": f"{pid}-{k}", "slice_index": k, "scan_label": cls,
                                     "slice_truth": -1, "label": cls, "score": shift * cls + u[j] + rng.normal()})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def analysed():
    scores = _scores()
    return scores, stats.analyse(scores, METHODS, "paper", n_boot=200, seed=0, compare="NSA")


def test_better_row_has_positive_differences_with_small_p(analysed):
    _, (_, cmp) = analysed
    fam = cmp[cmp["family"] == family_name("NSA")]
    assert set(fam["method"]) == {"NSA"} and set(fam["reference"]) == {"AE", "VAE"}
    assert set(fam["metric"]) == {"AUC", "AP"}
    assert set(fam["level"]) == {"slice", "scan (max)"}
    assert (fam["diff"] > 0).all() and (fam["ci_low"] > 0).all()
    assert (fam["p_bootstrap_holm"] < 0.05).all() and (fam["p_bootstrap"] <= fam["p_bootstrap_holm"]).all()
    slice_auc = fam[(fam["level"] == "slice") & (fam["metric"] == "AUC")]
    assert (slice_auc["p_delong_holm"] < 0.05).all()
    assert fam[fam["metric"] == "AP"]["p_delong"].isna().all()


def test_differences_are_row_minus_other_paired_with_the_vs_ae_family(analysed):
    _, (ci, cmp) = analysed
    fam = cmp[(cmp["family"] == family_name("NSA")) & (cmp["level"] == "slice")].set_index(["metric", "reference"])
    point = ci[ci["level"] == "slice"].set_index(["method", "metric"])["mean"]
    for metric in ("AUC", "AP"):
        assert fam.loc[(metric, "AE"), "diff"] == pytest.approx(point[("NSA", metric)] - point[("AE", metric)])
    # the same draws as the existing `vs AE` family (AE - ... there: NSA - AE, the same number and interval)
    vs_ae = cmp[(cmp["family"] == "vs AE") & (cmp["level"] == "slice") & (cmp["method"] == "NSA")].iloc[0]
    row = fam.loc[("AUC", "AE")]
    assert row["diff"] == pytest.approx(vs_ae["diff"])
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((vs_ae["ci_low"], vs_ae["ci_high"]))


def test_the_family_comes_first_in_the_csv_and_in_table1_md(analysed):
    _, (ci, cmp) = analysed
    n = int((cmp["family"] == family_name("NSA")).sum())
    assert n == 2 * 2 * 2                                   # 2 other rows x AUC, AP x 2 evaluations
    assert (cmp["family"].iloc[:n] == family_name("NSA")).all()
    assert (cmp["family"].iloc[n:] != family_name("NSA")).all()
    md = stats_markdown(ci, cmp, {"NSA": "NSA*"}, compare="NSA")
    head = md.index("## NSA* against every row")
    assert head < md.index("## Ranking stability") < md.index("## Paired comparisons")
    assert "Difference NSA* - other row" in md
    assert "NSA vs all" not in md[md.index("## Paired comparisons"):]      # not repeated below
    section = compare_markdown(cmp, "NSA")
    assert section.count("| AP |") == 4 and section.count("| AUC |") == 4
    assert stats_markdown(ci, cmp).count("against every row") == 0         # without compare: as before


def test_without_compare_nothing_changes():
    scores = _scores(n_folds=1, n_pat=(8, 6), slices=2)
    _, plain = stats.analyse(scores, METHODS, "paper", n_boot=50, seed=1)
    _, with_row = stats.analyse(scores, METHODS, "paper", n_boot=50, seed=1, compare="AE")
    rest = with_row[with_row["family"] != family_name("AE")].reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, plain)


def test_unknown_row_is_a_clear_error(tmp_path):
    scores = _scores(n_folds=1, n_pat=(6, 4), slices=2)
    with pytest.raises(ValueError, match=r"compare: 'NOPE' is not one of the rows \(AE, VAE, NSA\)"):
        stats.analyse(scores, METHODS, "paper", n_boot=10, compare="NOPE")
    cfg = yaml.safe_load((config.ROOT / "config.yaml").read_text())
    cfg["table"]["compare"] = "NOPE"
    with pytest.raises(config.ConfigError, match="table.compare 'NOPE' is not one of the configured rows"):
        config.validate(cfg)
    cfg["table"]["compare"] = next(iter(cfg["methods"]))
    config.validate(cfg)


def test_compare_subcommand_writes_the_family(tmp_path, capsys):
    scores = _scores(n_folds=1, n_pat=(10, 8), slices=3)
    paths = []
    for m, g in scores.groupby("method"):
        paths.append(str(tmp_path / f"{m}.csv"))
        g.to_csv(paths[-1], index=False)
    out, md = tmp_path / "cmp.csv", tmp_path / "cmp.md"
    argv = ["compare", "NSA", "--scores", *paths, "--methods", json.dumps(METHODS), "--bootstrap", "100",
            "--out", str(out), "--out-md", str(md)]
    assert main(argv) == 0
    got = pd.read_csv(out)
    assert got["family"].iloc[0] == "NSA vs all" and set(got[got["family"] == "NSA vs all"]["metric"]) == {"AUC", "AP"}
    assert md.read_text().startswith("## NSA against every row")
    assert main(["compare", "NOPE", "--scores", *paths, "--out", str(out)]) == 1
    assert "'NOPE' is not one of the rows" in capsys.readouterr().err
