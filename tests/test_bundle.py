"""The results bundle: written from a constructed run without paths, hosts, users or patients; merge-results."""
from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ichbench.evaluation import bundle as rb

ROOT = Path(__file__).resolve().parents[1]
PATIENTS = [f"CQ500-CT-{n}" for n in (3, 14, 27, 31, 45, 58)]
SETTINGS = {"protocol": "paper", "label_source": "ctfsh", "rows": ["AE", "VAE"],
            "table": {"bootstrap": 200, "seed": 0, "scan_aggregation": "max", "scan_top_k": 3},
            "dataset": {"source": "dicom", "dicom_dir": "/data/CQ500", "labels": "labels/reads.csv",
                        "label_source": "ctfsh", "scan_id_format": "CQ500-CT-{n}", "bhx": None,
                        "expected": {"normal": 3, "pathological": 3}}}


def make_run(root: Path, tmp: Path, shuffle_folds: bool = False) -> dict[str, Path]:
    """A finished run's aggregation inputs in `root`: Table 1, CIs, per-fold metrics, run records, folds, cohort."""
    root.mkdir(parents=True)
    host, user = socket.gethostname(), getpass.getuser()
    folds = [1, 0, 1, 0, 1, 0] if shuffle_folds else [0, 1, 0, 1, 0, 1]
    pd.DataFrame({"patient_id": PATIENTS, "scan_label": [0, 0, 0, 1, 1, 1], "test_fold": folds,
                  "val_folds": ["1", "0", "1", "0", "1", "0"]}).to_csv(root / "assignment.csv", index=False)
    pd.DataFrame({"scan_class": ["normal", "pathological", "all"], "patients": [3, 3, 6], "slices": [30, 31, 61],
                  "protocol": "paper", "label_source": "ctfsh"}).to_csv(root / "cohort.csv", index=False)
    pd.DataFrame({"method": ["AE", "VAE"], "row": ["AE", "VAE"], "group": "reconstruction",
                  "AUC": ["60.0 +- 5.0", "55.0 +- 4.0"], "auc_mean": [60.0, 55.0], "AP": ["50.0 +- 3.0", "45.0 +- 2.0"],
                  "folds_used": "0 1", "notes": [f"trained on {host} by {user} for {PATIENTS[0]}", ""]}
                 ).to_csv(root / "table1.csv", index=False)
    pd.DataFrame({"method": ["AE", "AE", "VAE", "VAE"], "level": "slice", "protocol": "paper",
                  "metric": ["AUC", "AP"] * 2, "mean": [60.0, 50.0, 55.0, 45.0], "ci_low": [50.0, 40, 45, 35],
                  "ci_high": [70.0, 60, 65, 55], "folds_used": "0 1"}).to_csv(root / "table1_ci.csv", index=False)
    pd.DataFrame({"method": ["AE", "AE"], "fold": [0, 1], "part": "test", "metric": "AUC", "value": [58.0, 62.0]}
                 ).to_csv(root / "table1_per_fold.csv", index=False)
    runs = []
    for method in ("AE", "VAE"):
        for fold in (0, 1):
            out = root / "models" / method / f"fold-{fold}"
            out.mkdir(parents=True)
            record = {"method": method, "group": "reconstruction", "code_digest": f"{method.lower()}digest",
                      "params": {"lr": 0.001, "epochs": 2, "vgg_weights": str(tmp / "weights" / "vgg19.pth"),
                                 "stats_file": "stats.npz", "cache_dir": "x"},
                      "epochs": 2, "torch": "2.4.0", "python": "3.11.7", "cuda": "12.1", "cudnn": 90100,
                      "gpu": "NVIDIA H200", "device": "cuda", "git_commit": "abc123", "seed": 0,
                      "train_seconds": 1.5, "log": str(out / "train.log"), "host": host}
            (out / "run.json").write_text(json.dumps(record))
            runs.append(out / "run.json")
    return {"root": root, "runs": runs}


def write(run: dict, out: Path, settings=SETTINGS) -> dict:
    root = run["root"]
    return rb.write_bundle(out, table=pd.read_csv(root / "table1.csv", dtype=rb.STR_COLUMNS),
                           ci=pd.read_csv(root / "table1_ci.csv", dtype=rb.STR_COLUMNS),
                           per_fold=pd.read_csv(root / "table1_per_fold.csv"), runs=rb.read_runs(run["runs"]),
                           assignment=pd.read_csv(root / "assignment.csv"), cohort=pd.read_csv(root / "cohort.csv"),
                           settings=settings, software={"ichbench": "0.1.0", "git_commit": "abc123"})


@pytest.fixture
def two_runs(tmp_path):
    a = make_run(tmp_path / "lab-a", tmp_path)
    b = make_run(tmp_path / "lab-b", tmp_path)
    return write(a, tmp_path / "A.json"), write(b, tmp_path / "B.json"), tmp_path


def test_bundle_holds_the_results_and_no_path_host_user_or_patient(two_runs):
    bundle, _, tmp = two_runs
    text = (tmp / "A.json").read_text()
    assert json.loads(text) == bundle
    for secret in [str(tmp), "/data/CQ500", "labels/reads.csv", "vgg19.pth", "train.log", "stats.npz",
                   socket.gethostname(), getpass.getuser(), *PATIENTS]:
        assert f'"{secret}"' not in text and secret not in text.replace("CQ500-CT-{n}", ""), secret
    assert "cache_dir" not in text and "stats_file" not in text
    assert [r["method"] for r in bundle["table1"]] == ["AE", "VAE"] and len(bundle["per_fold"]) == 2
    assert bundle["rows"]["AE"]["code_digest"] == "aedigest" and bundle["rows"]["AE"]["params"]["lr"] == 0.001
    assert bundle["rows"]["VAE"]["folds"] == [0, 1] and bundle["rows"]["AE"]["params_agree_over_folds"]
    env = bundle["environment"]
    assert len(env) == 1 and env[0]["gpu"] == "NVIDIA H200" and env[0]["torch"] == "2.4.0" and env[0]["runs"] == 4
    c = bundle["comparability"]
    assert c["cohort"].startswith("sha256:") and c["folds"].startswith("sha256:") and c["protocol"] == "paper"
    assert bundle["dataset"]["adapter"] == "dicom" and bundle["dataset"]["inputs_given"]["dicom"] is True
    assert bundle["dataset"]["counts"][2]["patients"] == 6 and bundle["software"]["git_commit"] == "abc123"


def test_digests_follow_the_pairs_not_the_file_order(tmp_path):
    run = make_run(tmp_path / "r", tmp_path)
    a = pd.read_csv(run["root"] / "assignment.csv")
    d = rb.assignment_digests(a)
    assert rb.assignment_digests(a.iloc[::-1]) == d
    relabelled = a.assign(scan_label=a["scan_label"][::-1].to_numpy())
    assert rb.assignment_digests(relabelled)["cohort"] != d["cohort"]
    moved = a.assign(test_fold=1 - a["test_fold"])
    assert rb.assignment_digests(moved) == {"cohort": d["cohort"], "folds": rb.assignment_digests(moved)["folds"]}
    assert rb.assignment_digests(moved)["folds"] != d["folds"]


def test_merge_of_bundles_that_agree_is_one_table(two_runs):
    a, b, _ = two_runs
    merged, diffs = rb.merge_bundles({"lab-a": a, "lab-b": b})
    assert diffs == []
    assert list(merged["source"]) == ["lab-a", "lab-a", "lab-b", "lab-b"]
    assert list(merged["method"]) == ["AE", "VAE"] * 2
    assert merged.loc[0, "AUC_ci_low"] == 50.0 and merged.loc[3, "code_digest"] == "vaedigest"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ichbench", "merge-results", *args], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})


def test_merge_refuses_different_cohorts_naming_them_unless_allowed(tmp_path):
    a = write(make_run(tmp_path / "lab-a", tmp_path), tmp_path / "A.json")
    other = make_run(tmp_path / "lab-b", tmp_path, shuffle_folds=True)
    labels = pd.read_csv(other["root"] / "assignment.csv")
    labels.assign(scan_label=[1, 0, 0, 1, 1, 0]).to_csv(other["root"] / "assignment.csv", index=False)
    b = write(other, tmp_path / "B.json", settings={**SETTINGS, "table": {**SETTINGS["table"], "bootstrap": 1000}})
    with pytest.raises(rb.BundleMismatch, match="cohort, folds, bootstrap"):
        rb.merge_bundles({"A": a, "B": b})
    merged, diffs = rb.merge_bundles({"A": a, "B": b}, allow_different=True)
    assert [d.split(":")[0] for d in diffs] == ["cohort", "folds", "bootstrap"] and len(merged) == 4

    proc = _cli("A.json", "B.json", "--out", "merged.csv", cwd=tmp_path)
    assert proc.returncode != 0 and not (tmp_path / "merged.csv").exists()
    assert "refused" in proc.stderr and "cohort" in proc.stderr and "folds" in proc.stderr, proc.stderr
    proc = _cli("A.json", "B.json", "--out", "merged.csv", "--out-md", "merged.md", "--allow-different-cohorts",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "differ in cohort" in proc.stderr                        # the warning
    assert set(pd.read_csv(tmp_path / "merged.csv")["source"]) == {"A", "B"}
    assert "Not comparable side by side" in (tmp_path / "merged.md").read_text()


def test_merge_of_agreeing_bundles_on_the_command_line(two_runs):
    _, _, tmp = two_runs
    proc = _cli("A.json", "B.json", "--out", "merged.csv", "--out-md", "merged.md", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp / "merged.csv")) == 4 and "Same cohort" in (tmp / "merged.md").read_text()
    (tmp / "not.json").write_text("{}")
    proc = _cli("A.json", "not.json", "--out", "m.csv", cwd=tmp)
    assert proc.returncode == 1 and "not a results bundle" in proc.stderr
