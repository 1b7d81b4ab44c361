"""Resumable training: `ichbench train` killed part-way (a time limit, a pre-emption) resumes from its
last checkpoint.pt when rerun, ends with the same weights as an uninterrupted run, and records that it
resumed (`resumed_from_epoch` in run.json and in the model's record).

Runs on the fold manifests and slice cache of the shared tiny run (tests/test_incremental.py).
The rerun is what Snakemake does after a failed or killed job: it deletes the job's declared outputs
(model.pt, history.csv) and runs the same command again; checkpoint.pt is not an output, so it stays.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from test_incremental import NARROW_AE, tiny_project

pytestmark = pytest.mark.slow

# method -> (hyper-parameters, epochs that must be done before the kill)
CASES = {
    "AE": ({**NARROW_AE, "epochs": 20, "batch_size": 8}, 3),
    # self-supervised: also restores the numpy Generator of the synthetic anomalies
    "FPI": ({"epochs": 6, "batch_size": 8}, 2),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_project(tmp_path_factory)


def train_cmd(method: str, params: dict, out: Path, seed: int = 0) -> list[str]:
    return [sys.executable, "-m", "ichbench", "train", "--method", method, "--params", json.dumps(params),
            "--manifest", "results/splits/fold-0.csv", "--out", str(out), "--device", "cpu", "--seed", str(seed),
            "--checkpoint-every", "1", "--threads", "1", "--no-progress"]


def run_train(project, cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=project.work, env={**os.environ, "PYTHONPATH": str(project.tree / "src")},
                              stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]


def kill_part_way(project, cmd: list[str], out: Path, min_epochs: int, log: Path) -> int:
    """Start the training, SIGKILL it once a checkpoint exists after >= min_epochs; -> checkpoint epoch."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=project.work, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(project.tree / "src")})
    ckpt, history = out / "checkpoint.pt", out / "history.csv"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the training ended (rc {proc.returncode}) before it could be killed; "
                            f"give it more epochs:\n{log.read_text()[-2000:]}")
            if ckpt.exists() and history.exists() and len(history.read_text().splitlines()) - 1 >= min_epochs:
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.01)
    finally:
        proc.wait()
    assert not (out / "model.pt").exists()
    return torch.load(ckpt, weights_only=True)["epoch"]


def load(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)


def assert_same_tensors(a, b, where=""):
    """Nested dicts / lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("method", list(CASES))
def test_killed_training_resumes_to_the_same_model(project, tmp_path, method):
    params, min_epochs = CASES[method]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    epoch = kill_part_way(project, train_cmd(method, params, killed), killed, min_epochs, tmp_path / "killed.log")
    assert 0 < epoch < params["epochs"]
    # what Snakemake does before it reruns the job: delete the declared outputs
    (killed / "history.csv").unlink(missing_ok=True)
    run_train(project, train_cmd(method, params, killed), tmp_path / "killed.log")
    run_train(project, train_cmd(method, params, reference), tmp_path / "reference.log")

    rec = json.loads((killed / "run.json").read_text())
    assert rec["resumed_from_epoch"] == epoch
    assert json.loads((reference / "run.json").read_text())["resumed_from_epoch"] is None
    assert f"resuming {method}" in (tmp_path / "killed.log").read_text()
    assert not (killed / "checkpoint.pt").exists() and not (reference / "checkpoint.pt").exists()

    resumed, uninterrupted = load(killed), load(reference)
    assert resumed["record"]["resumed_from_epoch"] == epoch
    # weights and extra state (model.pt has no optimiser state): bit-identical (CPU, fixed seeds, 1 thread)
    assert_same_tensors(resumed["state"], uninterrupted["state"], "state")
    h1 = pd.read_csv(killed / "history.csv").drop(columns="seconds")
    h2 = pd.read_csv(reference / "history.csv").drop(columns="seconds")
    assert len(h1) == params["epochs"]
    pd.testing.assert_frame_equal(h1, h2)


def test_checkpoint_of_other_settings_is_not_resumed(project, tmp_path):
    params, min_epochs = CASES["AE"]
    out = tmp_path / "killed"
    kill_part_way(project, train_cmd("AE", params, out), out, min_epochs, tmp_path / "train.log")
    # another seed (a different run): the checkpoint must not be continued
    run_train(project, train_cmd("AE", params, out, seed=1), tmp_path / "train.log")
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] is None
    assert "ignoring" in (tmp_path / "train.log").read_text()
    fresh = tmp_path / "fresh"
    run_train(project, train_cmd("AE", params, fresh, seed=1), tmp_path / "fresh.log")
    assert_same_tensors(load(out)["state"]["model"], load(fresh)["state"]["model"], "model")
