"""Everyday use: merged config files and row subsets, schema defaults, the command line's help, lean
model files, the run record and log files without progress-bar frames."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ichbench import cli, config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def test_schema_defaults_equal_config_yaml():
    """An empty config filled with the schema's defaults is config.yaml, key for key."""
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert config.validate({}) == config.validate(shipped) == shipped


def test_merge_is_snakemakes():
    from snakemake.utils import update_config

    base = {"a": {"b": 1, "c": [1, 2]}, "rows": None, "m": {"AE": {"x": 1}, "VAE": {}}}
    top = {"a": {"c": [3]}, "rows": ["AE"], "m": {"AE": {"y": 2}}, "new": {"k": 1}}
    expected = json.loads(json.dumps(base))
    update_config(expected, top)
    assert config.merge(json.loads(json.dumps(base)), top) == expected
    assert expected == {"a": {"b": 1, "c": [3]}, "rows": ["AE"], "m": {"AE": {"x": 1, "y": 2}, "VAE": {}},
                        "new": {"k": 1}}


def test_params_merges_config_files_and_keeps_config_yaml_values(tmp_path, capsys):
    extra = tmp_path / "extra.yaml"
    extra.write_text("rows: [AE, AE-L1]\nmethods: {AE: {width: 8}}\n")
    assert cli.main(["params", "--config", str(ROOT / "config.yaml"), "--configfile", str(extra)]) == 0
    out = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert list(out) == ["AE", "AE-L1"]
    ae = json.loads(out["AE"])
    assert ae["width"] == 8 and ae["hidden"] == 1024 and ae["latent_dim"] == 16   # merged, not replaced
    assert ae["epochs"] == 12                    # config.yaml's demo recipe, not a schema fallback


def test_rows_must_name_configured_methods(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("rows: [AE, NotARow]\n")
    with pytest.raises(config.ConfigError, match="NotARow"):
        config.load(ROOT / "config.yaml", extra)
    assert config.selected_rows(config.load(ROOT / "config.yaml")) == list(
        yaml.safe_load((ROOT / "config.yaml").read_text())["methods"])


@pytest.mark.slow
def test_second_configfile_with_rows_plans_only_those_rows(tmp_path):
    """snakemake -n with `rows: [AE, AE-L1]`: 2 rows x 5 folds of train and score, nothing else per row."""
    from test_incremental import planned_jobs

    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (tmp_path / "rows.yaml").write_text("rows: [AE, AE-L1]\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--cores", "1", "--configfile", "rows.yaml"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + "\n" + proc.stderr)
    model = {(rule, dict(w)["method"]) for rule, w in jobs if rule in ("train", "score")}
    assert model == {(r, m) for r in ("train", "score") for m in ("AE", "AE-L1")}
    assert sum(rule == "train" for rule, _ in jobs) == 10
    # synthesize, index, preprocess, split, 10 train, 10 score, table1, stats_figures, extra_tables, confounds,
    # figure1, runtimes
    assert len(jobs) == 33           # + strata, errors and the results bundle
    assert "running 2 of the 18 rows (rows: AE, AE-L1)" in proc.stderr


def _walk(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


def test_every_option_of_every_subcommand_has_help():
    parsers = list(_walk(cli.build_parser()))
    assert len(parsers) >= 12
    for path, parser in parsers:
        assert isinstance(parser.formatter_class, type) and issubclass(
            parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (path, action.option_strings)
    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "(default: auto)" in text and "(default: 1)" in text


def test_version(capsys):
    import ichbench

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ichbench {ichbench.__version__}"


def fake_fold(folder: Path, n: int = 6, size: int = 128) -> Path:
    """A cached series of n random normal slices and a manifest whose training part holds them all."""
    rng = np.random.default_rng(0)
    npz = folder / "series.npz"
    head = np.zeros((n, size, size), bool)
    head[:, size // 4: -size // 4, size // 4: -size // 4] = True
    np.savez(npz, images=rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), head_mask=head,
             brain_mask=head)
    manifest = folder / "fold-0.csv"
    pd.DataFrame({"patient_id": "P1", "study_uid": "1.2", "series_uid": "1.2.3", "sop_uid": [f"1.2.3.{i}" for i in
                  range(n)], "npz": str(npz), "slice_index": range(n), "part": "train", "label": 0}).to_csv(
        manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def trained_ae(tmp_path_factory):
    """The config.yaml AE (8.65 M parameters at 3 x 128 x 128), 2 epochs of 3 steps, via the command line."""
    folder = tmp_path_factory.mktemp("ae")
    manifest = fake_fold(folder)
    out = folder / "AE"
    log = folder / "train.log"
    with open(log, "w") as f:     # stderr a file, as under Snakemake: no progress bar
        proc = subprocess.run([sys.executable, "-m", "ichbench", "train", "--method", "AE", "--params",
                               json.dumps({"epochs": 2, "batch_size": 2}), "--manifest", str(manifest),
                               "--out", str(out), "--device", "cpu", "--threads", "1"],
                              stdout=f, stderr=subprocess.STDOUT, env=ENV, timeout=300)
    assert proc.returncode == 0, log.read_text()
    return out, log


def test_model_file_holds_weights_and_record_only(trained_ae):
    import torch

    from ichbench.training.train import load_trained

    out, _ = trained_ae
    blob = torch.load(out / "model.pt", weights_only=True)
    assert set(blob) == {"record", "state"}
    assert "optimizers" not in blob["state"] and "schedulers" not in blob["state"]
    n_params = sum(v.numel() for v in blob["state"]["model"].values())
    assert n_params == 8_651_417          # 8,646,736 parameters + batch-norm buffers (README: 8.65 M)
    # float32 weights plus under 1 MB of pickling and record (was ~104 MB with Adam's two moments)
    size = (out / "model.pt").stat().st_size
    assert n_params * 4 < size < n_params * 4 + 1_000_000, size
    assert not (out / "checkpoint.pt").exists()        # deleted once the model is written
    method, rec = load_trained(out / "model.pt", device="cpu")
    assert rec["method"] == "AE"


def test_model_file_names_no_ichbench_class(trained_ae):
    """model.pt pickles only tensors and plain values: no class of the package, so files written before a module
    moves between rooms (as in the house's reorganisation) still load after it."""
    import pickletools
    import zipfile

    out, _ = trained_ae
    with zipfile.ZipFile(out / "model.pt") as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    globals_ = set()
    ops = list(pickletools.genops(pkl))
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL":
            globals_.add(arg.split(" ")[0])
        elif op.name == "STACK_GLOBAL":
            globals_.add(str(ops[i - 2][1]))
    assert globals_ and not [g for g in globals_ if g.startswith("ichbench")], globals_


def test_run_record_names_code_and_platform_but_no_person_or_host(trained_ae):
    import getpass
    import socket

    import torch

    out, _ = trained_ae
    text = (out / "run.json").read_text()
    rec = json.loads(text)
    assert rec["git_commit"] == "not a git checkout" or len(rec["git_commit"]) == 40
    assert rec["torch"] == torch.__version__ and rec["cuda"] == torch.version.cuda
    assert "cudnn" in rec and rec["gpu"] is None                  # trained on the CPU
    for private in {socket.gethostname(), getpass.getuser(), str(Path.home())} - {"", "/", "root"}:
        assert private not in text, private


def test_log_file_has_one_line_per_epoch_and_no_carriage_returns(trained_ae):
    _, log = trained_ae
    text = log.read_text()
    assert "\r" not in text
    assert [line.split("epoch ", 1)[1].split()[0] for line in text.splitlines() if " epoch " in line
            and "loss=" in line] == ["1/2", "2/2"]


def _dry_run_resources(tmp_path, *configfiles: str) -> dict[str, list[str]]:
    """rule -> the `resources:` lines `snakemake -n` prints for its jobs."""
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--cores", "1", "--configfile", *configfiles],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, rule = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("rule ") or line.startswith("localrule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            out.setdefault(rule, []).append(line.strip())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("device,gpus", [("cpu", 0), ("auto", 1), ("cuda:1", 1)])
def test_gpu_requested_unless_device_is_cpu(tmp_path, device, gpus):
    (tmp_path / "dev.yaml").write_text(f"rows: [AE]\ntrain: {{device: '{device}'}}\n")
    res = _dry_run_resources(tmp_path, "dev.yaml")
    for rule in ("train", "score"):
        assert len(res[rule]) == 5
        assert [re.search(r"\bgpu=(\d+)", line).group(1) for line in res[rule]] == [str(gpus)] * 5, res[rule]
    assert not any(re.search(r"\bgpu=[1-9]", line) for line in res["split"])


@pytest.mark.slow
def test_smoke_config_plans_four_rows_on_two_folds(tmp_path):
    """config/smoke.yaml (make smoke) on top of config.yaml: 4 rows x 2 folds, 1 epoch, the CPU."""
    merged = config.load(ROOT / "config.yaml", ROOT / "config" / "smoke.yaml")
    rows = config.selected_rows(merged)
    assert rows == ["AE", "VAE", "NSA", "CutPaste-2stage"]
    assert {json.loads(config.params_json(merged, m))["epochs"] for m in rows} == {1}
    assert merged["splits"]["n_folds"] == 2 and merged["train"]["device"] == "cpu"
    from test_incremental import planned_jobs

    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--cores", "2", "--configfile",
                           str(ROOT / "config.yaml"), str(ROOT / "config" / "smoke.yaml")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + "\n" + proc.stderr)
    assert sum(rule == "train" for rule, _ in jobs) == 8 and sum(rule == "score" for rule, _ in jobs) == 8
    # synthesize, index, preprocess, split, 8 + 8, table1, stats_figures, extra_tables, confounds, figure1,
    # synthetic_anomalies, runtimes
    assert len(jobs) == 30           # + strata, errors and the results bundle


@pytest.mark.slow
@pytest.mark.parametrize("device,gpus", [("auto", "1"), ("cpu", "0")])
def test_slurm_profile_gives_gpu_jobs_four_threads_and_no_gpu_on_cpu(tmp_path, device, gpus):
    """A dry run through profiles/slurm (no SLURM needed): train/score get --threads 4 and gpu as configured."""
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (tmp_path / "dev.yaml").write_text(f"rows: [AE]\ntrain: {{device: {device}}}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--workflow-profile", str(ROOT / "profiles" / "slurm"),
                           "--cores", "16", "--configfile", "dev.yaml"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    for cmd in ("train", "score"):
        threads = re.findall(rf"ichbench {cmd} .*--threads (\d+)", text)
        assert threads == ["4"] * 5, threads
    assert re.findall(r"runtime=720, gpu=(\d+)", text) == [gpus] * 5      # the 5 training jobs
