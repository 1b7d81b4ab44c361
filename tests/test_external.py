"""External validation (evaluation.external): the columns and their bootstrap on constructed scores, the
overlap rules (RSNA duplicates dropped, shared patients refused), and one toy Snakemake run with a CT-ICH set."""
import numpy as np
import pandas as pd
import pytest
import yaml
from dataset_formats import write_bhsd, write_ctich

from ichbench.cohort import external as ext_cohort
from ichbench.datasets import external
from ichbench.errors import ConfigError
from ichbench.evaluation import external as ext_eval

CTICH = {49: dict(bleed={2, 3}), 50: dict(bleed={4, 5}), 66: dict(), 67: dict()}


def _scores(n_patients=8, folds=(0, 1), good=True, seed=0):
    """Score rows of 2 methods x folds on the same external patients (half pathological), 4 slices each."""
    rng = np.random.default_rng(seed)
    rows = []
    for method in ("AE", "DAE"):
        for fold in folds:
            for p in range(n_patients):
                lab = int(p % 2)
                for k in range(4):
                    s = lab + (0.1 * rng.random() if (good and method == "AE") else rng.random() * 2)
                    rows.append({"method": method, "fold": fold, "part": "test", "patient_id": f"P{p}",
                                 "series_uid": f"S{p}", "sop_uid": f"S{p}.{k}", "slice_index": k, "scan_label": lab,
                                 "slice_truth": -1, "label": lab, "score": s + 0.01 * fold})
    return pd.DataFrame(rows)


def test_shared_counts_draw_a_patient_the_same_in_every_fold():
    patients = pd.DataFrame({"fold": [0, 0, 0, 0, 1, 1, 1, 1], "patient_id": ["a", "b", "c", "d"] * 2,
                             "scan_label": [0, 0, 1, 1] * 2})
    counts = ext_eval.shared_counts(patients, 50, 3)
    assert counts.shape == (50, 8)
    assert (counts[:, :4] == counts[:, 4:]).all()                  # the same draw for fold 0 and fold 1
    assert (counts[:, :2].sum(axis=1) == 2).all() and (counts[:, 2:4].sum(axis=1) == 2).all()   # per class
    assert counts[:, 0].std() > 0                                  # they are draws


def test_set_metrics_mean_std_over_fold_models_and_ci_over_patients():
    long = ext_eval.set_metrics("ctich", _scores(), ["AE", "DAE"], "paper", n_boot=200, seed=0)
    ae = long[(long["method"] == "AE") & (long["level"] == "slice") & (long["metric"] == "AUC")].iloc[0]
    assert ae["mean"] == pytest.approx(100.0) and ae["std"] == pytest.approx(0.0) and ae["folds"] == 2
    assert ae["ci_low"] == pytest.approx(100.0) and ae["n_patients"] == 8 and ae["n_units"] == 32
    dae = long[(long["method"] == "DAE") & (long["level"] == "slice") & (long["metric"] == "AUC")].iloc[0]
    assert dae["ci_low"] < dae["mean"] < dae["ci_high"] and dae["mean"] < 100
    assert set(long["level"]) == {"slice", "scan (max)"}          # no slice truth: no slice-protocol level
    table = pd.DataFrame({"method": ["AE", "DAE", "VAE"], "AUC": ["1", "2", "3"]})
    t1 = ext_eval.table1_columns(table, long, "paper")
    assert list(t1.columns[-4:]) == ["AUC_ctich", "AUC_ctich_ci", "AP_ctich", "AP_ctich_ci"]
    assert t1["AUC_ctich"].tolist()[0] == "100.0 +- 0.0" and t1["AUC_ctich"].tolist()[2] == "n/a"
    assert t1["AUC_ctich_ci"].iloc[1].startswith("[")
    md = ext_eval.markdown(long, {"AE": "AE"}, {"ctich": {"dataset": "ctich", "patients": 8, "scans": 8,
                                                         "slices": 32, "dropped": 0}})
    assert "## External validation" in md and "| AE | 100.0 +- 0.0 [100.0, 100.0]" in md


def test_set_metrics_differ_when_the_scores_do():
    a = ext_eval.set_metrics("x", _scores(good=False, seed=1), ["DAE"], "paper", n_boot=50)
    b = ext_eval.set_metrics("x", _scores(good=False, seed=2), ["DAE"], "paper", n_boot=50)
    assert not np.allclose(a["mean"].to_numpy(float), b["mean"].to_numpy(float))


def test_rsna_scans_of_bhsd_are_dropped_and_shared_patients_refused():
    train = pd.DataFrame({"scan_id": ["ID_40015688b9", "ID_77"], "patient_id": ["ID_0237f3c9", "ID_p77"]})
    cohort = pd.DataFrame({"scan_id": ["ID_0237f3c9_ID_40015688b9", "ID_aaaa0001_ID_0000000001"],
                           "patient_id": ["ID_0237f3c9", "ID_aaaa0001"]})
    kept, overlap = ext_cohort.drop_overlap(cohort, train, "rsna", "bhsd", "bhsd")
    assert kept["scan_id"].tolist() == ["ID_aaaa0001_ID_0000000001"]
    assert overlap["scan_id"].tolist() == ["ID_0237f3c9_ID_40015688b9"]
    assert overlap["training_scan"].tolist() == ["ID_40015688b9"]
    # the same RSNA patient behind another study: refused, naming the patient
    cohort2 = pd.DataFrame({"scan_id": ["ID_p77_ID_0000000009"], "patient_id": ["ID_p77"]})
    with pytest.raises(ConfigError, match="ID_p77"):
        ext_cohort.drop_overlap(cohort2, train, "rsna", "bhsd", "bhsd")
    # datasets of different kinds share no patients even where the IDs look alike
    cohort3 = pd.DataFrame({"scan_id": ["049"], "patient_id": ["049"]})
    kept, overlap = ext_cohort.drop_overlap(cohort3, pd.DataFrame({"scan_id": ["049"], "patient_id": ["049"]}),
                                            "instance", "ctich", "ctich")
    assert len(kept) == 1 and overlap.empty
    with pytest.raises(ConfigError, match="1 patient.*049"):
        ext_cohort.drop_overlap(cohort3, pd.DataFrame({"scan_id": ["049"], "patient_id": ["049"]}),
                                "ctich", "ctich", "ctich")


def test_resolve_external_moves_derived_tables_and_refuses_bad_entries(tmp_path):
    root = write_ctich(tmp_path / "ct-ich", CTICH).parent
    [e] = external.resolve_external([{"name": "ctich", "root": str(root), "label": "CTICH"}], {"source": "synthetic"})
    assert e.label == "CTICH" and e.dataset["labels"] == "results/external/CTICH/data/dataset/scan_labels.csv"
    assert e.label_source == "csv" and e.dataset["source"] == "nifti"
    with pytest.raises(ConfigError, match="label 'ctich' is used by evaluation.external\\[0\\]"):
        external.resolve_external([{"name": "ctich", "root": str(root)}] * 2, {"source": "synthetic"})
    with pytest.raises(ConfigError, match="is the training dataset's download"):
        external.resolve_external([{"name": "ctich", "root": str(root)}], {"name": "ctich", "root": str(root)})
    with pytest.raises(ConfigError, match=r"evaluation.external\[0\]: dataset.root: .* is not a folder"):
        external.resolve_external([{"name": "instance", "root": str(tmp_path / "nothing")}], {})
    with pytest.raises(ConfigError, match="synthetic generator cannot be an external set"):
        external.resolve_external([{"name": "synthetic"}], {})


def _toy_config(tmp_path, external_sets):
    from test_pipeline import tiny_config

    cfg = tiny_config()
    cfg["splits"]["n_folds"] = 2
    cfg["preprocess"].update(min_slices=4, min_extent_mm=20)
    cfg["table"]["bootstrap"] = 50
    cfg["evaluation"]["external"] = external_sets
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def test_an_external_set_that_is_the_training_download_stops_snakemake_at_parse(tmp_path):
    from test_pipeline import run_snakemake

    root = write_ctich(tmp_path / "ct-ich", CTICH).parent
    cfg = _toy_config(tmp_path / "run", [{"name": "ctich", "root": str(root)}])
    cfg["dataset"].update(name="ctich", root=str(root))
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path / "run", "-n", check=False)
    assert proc.returncode != 0
    assert "is the training dataset's download" in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "results").exists()


@pytest.mark.slow
def test_toy_run_with_an_external_ctich_set_adds_its_columns(tmp_path):
    from test_pipeline import run_snakemake

    root = write_ctich(tmp_path / "ct-ich", CTICH).parent
    work = tmp_path / "run"
    _toy_config(work, [{"name": "ctich", "root": str(root)}])
    run_snakemake(work, "results/table1.csv")      # Table 1 and what it needs (not the figures and the bundle)
    res = work / "results"
    table = pd.read_csv(res / "table1.csv")
    assert table["AUC_ctich"].str.fullmatch(r"\d+\.\d \+- \d+\.\d").all()
    assert table["AUC_ctich_ci"].str.fullmatch(r"\[\d+\.\d, \d+\.\d\]").all()
    long = pd.read_csv(res / "external" / "table1_external.csv")
    assert set(long["level"]) >= {"slice", "scan (max)"} and set(long["folds"]) == {2}
    assert ((long["level"] == "slice") & (long["protocol"] == "slice")).any()   # CT-ICH has slice truth
    assert (long["level"] == "pixel").any()                                     # and pixel truth
    scores = pd.read_csv(res / "external" / "ctich" / "scores" / "AE" / "fold-1.csv", dtype={"patient_id": str})
    test = scores[scores["part"] == "test"]
    assert set(test["patient_id"]) == {"049", "050", "066", "067"} and set(test["fold"]) == {1}
    assert (pd.read_csv(res / "external" / "ctich" / "overlap.csv")).empty
    md = (res / "table1.md").read_text()
    assert "## External validation" in md and "### ctich (ctich)" in md
    assert table.columns.tolist()[:2] == ["method", "row"] and table.columns[-1] == "AP_ctich_ci"
