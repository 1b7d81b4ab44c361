"""End to end: the real `snakemake` on a tiny synthetic config in a temporary folder (CPU).

The checks run on the session's shared tiny run (tests/test_incremental.py: AE and AE-L1, 2 folds), so that
the suite runs the whole toy pipeline once for these tests, the incremental dry runs and the resume tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def tiny_config(methods=None) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["synthetic"].update({"n_normal": 6, "n_pathological": 6, "n_slices": [8, 10], "seed": 1})
    cfg["splits"]["n_folds"] = 3
    cfg["recipe"] = "tiny"
    cfg["recipes"]["tiny"] = {"all": {"epochs": 1, "batch_size": 16}}
    cfg["methods"] = methods or {"AE": {"latent_dim": 16, "width": 8, "hidden": 64}}
    cfg["preprocess"]["image_size"] = 64
    cfg["train"]["device"] = "cpu"
    return cfg


def run_snakemake(workdir: Path, *args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = SNAKEMAKE + ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((workdir / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-5000:]}\n{logs}")
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The working directory of the shared completed tiny run (AE and AE-L1 on 2 folds)."""
    from test_incremental import tiny_project

    return tiny_project(tmp_path_factory).work


@pytest.mark.slow
def test_pipeline_produces_table_and_figure(tiny_run):
    table = pd.read_csv(tiny_run / "results" / "table1.csv")
    assert table["method"].tolist() == ["AE", "AE-L1"]
    assert table["group"].tolist() == ["reconstruction"] * 2
    assert table["folds"].tolist() == [2, 2]
    assert table["AUC"].str.fullmatch(r"\d+\.\d \+- \d+\.\d").all()
    assert table["protocol"].tolist() == ["paper"] * 2
    long = pd.read_csv(tiny_run / "results" / "table1_per_fold.csv")
    assert set(long["metric"]) == {"AUC", "AP"} and set(long["fold"]) == {0, 1}
    md = (tiny_run / "results" / "table1.md").read_text()
    assert md.count("| reconstruction | AE |") == 1 and md.count("| reconstruction | AE-L1 |") == 1
    assert "Cohort: 6 normal patients" in md and "chance AP" in md and "1000 bootstrap draws" in md
    ci = pd.read_csv(tiny_run / "results" / "table1_ci.csv")
    auc = ci[(ci["method"] == "AE") & (ci["level"] == "slice") & (ci["protocol"] == "paper")
             & (ci["metric"] == "AUC")].iloc[0]
    assert auc["ci_low"] <= auc["mean"] <= auc["ci_high"]
    assert auc["mean"] == pytest.approx(long[(long["method"] == "AE") & (long["part"] == "test")
                                             & (long["protocol"] == "paper") & (long["metric"] == "AUC")
                                             ]["value"].mean(), abs=1e-3)
    assert (tiny_run / "results" / "comparisons.csv").exists()
    ops = pd.read_csv(tiny_run / "results" / "operating_points.csv")
    assert {"spec95 (validation)", "youden (validation)", "oracle spec95 (test labels)"} <= set(ops["rule"])
    assert "## Operating points fixed on the validation part" in md and "## Strata" in md
    assert (tiny_run / "results" / "strata.csv").exists()
    assert set(pd.read_csv(tiny_run / "results" / "operating_points_per_fold.csv")["fold"]) == {0, 1}
    for png in ("forest_auc.png", "roc_curves.png"):
        assert (tiny_run / "results" / "figures" / png).stat().st_size > 5_000
    png = tiny_run / "results" / "figure1.png"
    assert png.stat().st_size > 10_000
    cases = pd.read_csv(tiny_run / "results" / "splits" / "figure_cases.csv")
    assert len(cases) == 3 and (cases["gt_pixels"] > 0).all()
    confounds = pd.read_csv(tiny_run / "results" / "confounds.csv")
    assert len(confounds) == 2 * 4 * 2 and confounds["auc"].between(0, 100).all()     # paper and slice protocol
    assert set(confounds["protocol"]) == {"paper", "slice"}
    assert "Table 1 rows under this protocol: AUC" in (tiny_run / "results" / "confounds.md").read_text()


@pytest.mark.slow
def test_scores_cover_val_and_test_of_every_fold(tiny_run):
    for method in ("AE", "AE-L1"):
        for fold in range(2):
            s = pd.read_csv(tiny_run / "results" / "scores" / method / f"fold-{fold}.csv")
            m = pd.read_csv(tiny_run / "results" / "splits" / f"fold-{fold}.csv")
            assert len(s) == (m["part"] != "train").sum()
            assert set(s.columns) >= {"patient_id", "series_uid", "sop_uid", "slice_index", "label", "score"}
            assert s["score"].notna().all()


@pytest.mark.slow
def test_outputs_carry_no_identifying_fields(tiny_run):
    needles = [b"SYNTHETIC^PATIENT", b"Synthetic General Hospital", b"19600101", b"ACC0000"]
    for p in list((tiny_run / "results").rglob("*")) + list((tiny_run / "logs").rglob("*")):
        if p.is_file():
            blob = p.read_bytes()
            for n in needles:
                assert n not in blob, f"{n!r} found in {p}"


@pytest.mark.slow
def test_ae_signal_script_reports_both_protocols(tiny_run):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ae_signal.py"), "--workdir", str(tiny_run),
                           "--folds", "0", "--set", "epochs=1", "--tag", "smoke"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("fold=0"))
    fields = dict(item.split("=") for item in line.split())
    assert {"AUC_P", "AUC_S", "band_share", "brain_share", "outside_head_share"} <= set(fields)
    for share in ("band_share", "brain_share", "outside_head_share"):
        assert 0 <= float(fields[share]) <= 100
    # the same settings and seed train the pipeline's AE: the script's AUCs are Table 1's for that fold
    per_fold = pd.read_csv(tiny_run / "results" / "table1_per_fold.csv")
    auc = per_fold[(per_fold["method"] == "AE") & (per_fold["fold"] == 0) & (per_fold["part"] == "test")
                   & (per_fold["metric"] == "AUC")].set_index("protocol")["value"]
    assert float(fields["AUC_P"]) == pytest.approx(auc["paper"], abs=0.06)
    assert float(fields["AUC_S"]) == pytest.approx(auc["slice"], abs=0.06)
    assert (tiny_run / "results" / "ae_signal" / "AE-smoke" / "fold-0" / "model.pt").exists()


def _demo_params(name: str) -> dict:
    """One quick epoch at 64 px for every row (narrow networks where a row has a width knob)."""
    from ichbench.methods import get_method

    known = get_method(name).full_defaults()
    small = {"epochs": 1, "batch_size": 16, "width": 8, "hidden": 64, "unet_width": 8, "unet_levels": 3,
             "allow_random_vgg": True, "vgg_input_size": 32, "vgg_layer": "relu2_1", "noise_res": 8,
             "steps_per_epoch": None}     # two-stage rows: one pass, not 256 steps
    return {k: v for k, v in small.items() if k in known}


@pytest.mark.slow
def test_every_registered_method_trains_and_scores_on_the_synthetic_fold(tiny_run, tmp_path, monkeypatch):
    """Every Table 1 row, through the same train/score code the rules call, on the pipeline's fold 0."""
    from ichbench.training.data import DeviceBatches
    from ichbench.methods import REGISTRY
    from ichbench.training.score import score_fold
    from ichbench.training.train import train

    manifest = tiny_run / "results" / "splits" / "fold-0.csv"
    n_scored = int(pd.read_csv(manifest)["part"].isin(["val", "test"]).sum())
    cwd = os.getcwd()
    os.chdir(tiny_run)                    # manifests hold paths relative to the run folder
    sizes: list[int] = []                 # the batches the data yields (cleared before each score_fold)
    # every checkpoint.pt and model.pt a row writes opens with the safe loader (a checkpoint after every
    # epoch, the last included, so that each row writes one)
    from ichbench.training import train as train_module
    from ichbench.training.modelfile import load_model_file

    opened: list[str] = []
    real_save = train_module._atomic_save

    def save_and_open(obj, path):
        real_save(obj, path)
        load_model_file(path)
        opened.append(path.name)

    monkeypatch.setattr(train_module, "_atomic_save", save_and_open)
    monkeypatch.setattr(train_module.CheckpointClock, "due", lambda self, epoch, epochs: True)
    real_batch = DeviceBatches.batch
    monkeypatch.setattr(DeviceBatches, "batch", lambda self, idx: sizes.append(len(idx)) or real_batch(self, idx))
    try:
        for name in REGISTRY:
            out = tmp_path / name
            rec = train(name, _demo_params(name), manifest, out, device="cpu", seed=0, progress=False)
            assert rec["epochs"] == 1 and rec["train_slices"] > 0
            assert opened == ["checkpoint.pt", "model.pt"], (name, opened)
            opened.clear()
            cases = tiny_run / "results" / "splits" / "figure_cases.csv"
            sizes.clear()
            table = score_fold(out / "model.pt", manifest, out / "s.csv", out / "m.npz", figure_cases=cases,
                               device="cpu", out_loc=out / "l.json")
            assert table["score"].notna().all() and len(table) > 0, name
            assert sizes and max(sizes) == min(32, n_scored) and sum(sizes) == n_scored, (name, sizes)   # auto
            sizes.clear()
            # the batch size (auto: 32 on a CPU) changes nothing scored beyond float rounding (convolution
            # kernels may sum in another order for another batch size): batches of 3 give the same results
            score_fold(out / "model.pt", manifest, out / "s3.csv", out / "m3.npz", figure_cases=cases,
                       device="cpu", batch_size=3, out_loc=out / "l3.json")
            assert max(sizes) == 3 and sum(sizes) == n_scored, (name, sizes)
            pd.testing.assert_frame_equal(pd.read_csv(out / "s.csv"), pd.read_csv(out / "s3.csv"), rtol=1e-5)
            loc, loc3 = (json.loads((out / f).read_text()) for f in ("l.json", "l3.json"))
            assert loc.keys() == loc3.keys(), name
            for k, v in loc.items():
                assert v == pytest.approx(loc3[k], rel=1e-4, abs=1e-6, nan_ok=True) if isinstance(v, float) \
                    else v == loc3[k], (name, k)
            with np.load(out / "m.npz") as a, np.load(out / "m3.npz") as b:
                assert sorted(a.files) == sorted(b.files), name
                for k in a.files:
                    if a[k].dtype.kind == "f":
                        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=f"{name} {k}")
                    else:
                        assert np.array_equal(a[k], b[k]), (name, k)
    finally:
        os.chdir(cwd)


def test_score_batch_size_auto_and_bad_values():
    import torch

    from ichbench.training.score import AUTO_BATCH, resolve_batch_size

    assert resolve_batch_size("auto", torch.device("cpu")) == AUTO_BATCH["cpu"] == 32
    assert resolve_batch_size("auto", torch.device("cuda")) == AUTO_BATCH["cuda"] == 128
    assert resolve_batch_size(" AUTO ", torch.device("mps")) == 128
    assert resolve_batch_size("7", torch.device("cpu")) == 7 and resolve_batch_size(64, torch.device("cpu")) == 64
    for bad in (0, -3, "many", 2.5, None):
        with pytest.raises(ValueError, match="score batch size must be 'auto' or a whole number"):
            resolve_batch_size(bad, torch.device("cpu"))
