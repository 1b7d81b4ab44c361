"""Opening a model or checkpoint file never runs code: model.pt and checkpoint.pt hold only tensors and plain
values, and a file that holds anything else (here: a pickle whose payload writes a marker file) is refused by
every command that opens one (score, resume), with a message naming the file, and never opened another way.

Runs on the shared tiny run (tests/test_incremental.py)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_incremental import tiny_project
from test_resume import train_cmd

from ichbench.errors import ModelFileError
from ichbench.training.modelfile import load_model_file
from ichbench.training.train import load_trained

pytestmark = pytest.mark.slow


class _Payload:
    """Unpickling this runs `exec` on a line that writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _evil(path: Path, marker: Path, like: dict) -> Path:
    """A file shaped like `like` (a model or checkpoint) with the payload inside its state."""
    blob = dict(like)
    blob["state"] = {**like.get("state", {}), "extra": {"fitted": _Payload(marker)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_project(tmp_path_factory)


def _run(project, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ichbench", *args], cwd=project.work, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(project.tree / "src")})


def _assert_refused(proc: subprocess.CompletedProcess, path: Path, marker: Path) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert str(path) in proc.stderr and "refused" in proc.stderr and "builtins.exec" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists(), "the payload ran"


def test_a_model_file_that_holds_code_is_refused_by_score(project, tmp_path):
    real = project.work / "results/models/AE/fold-0/model.pt"
    marker = tmp_path / "marker"
    evil = _evil(tmp_path / "evil" / "model.pt", marker, load_model_file(real))
    proc = _run(project, ["score", "--model", str(evil), "--manifest", "results/splits/fold-0.csv",
                          "--out-csv", str(tmp_path / "s.csv"), "--out-maps", str(tmp_path / "m.npz"),
                          "--device", "cpu"])
    _assert_refused(proc, evil, marker)
    assert not (tmp_path / "s.csv").exists()
    with pytest.raises(ModelFileError, match="holds Python objects"):      # and in process
        load_trained(evil, device="cpu")
    assert not marker.exists()


def test_a_checkpoint_that_holds_code_stops_the_resume(project, tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "marker"
    like = {"method": "AE", "epoch": 1, "state": {}, "history": [], "fingerprint": {}}
    evil = _evil(out / "checkpoint.pt", marker, like)
    proc = _run(project, train_cmd("AE", {"epochs": 2, "width": 8, "hidden": 64}, out)[3:])
    _assert_refused(proc, evil, marker)
    assert not (out / "model.pt").exists()


def test_what_the_pipeline_writes_opens_with_the_plain_safe_loader(project):
    """No allow-list needed for new files: the run record stores torch's version as a plain string."""
    for path in sorted((project.work / "results/models").rglob("model.pt")):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert type(blob["record"]["torch"]) is str, path


def test_a_model_file_written_before_the_safe_loader_still_opens(project, tmp_path):
    """Files of before 2026-12-03 hold torch.__version__ as torch's TorchVersion: allow-listed by name."""
    blob = load_model_file(project.work / "results/models/AE/fold-0/model.pt")
    blob["record"]["torch"] = torch.__version__                       # a TorchVersion, as the old files had
    old = tmp_path / "old.pt"
    torch.save(blob, old)
    with pytest.raises(pickle.UnpicklingError, match="TorchVersion"):
        torch.load(old, weights_only=True)                           # the plain safe loader refuses it ...
    method, rec = load_trained(old, device="cpu")                     # ... ours opens it
    assert rec["method"] == "AE"


@pytest.mark.parametrize("content, reason", [(b"", "not a readable"), (b"PK\x03\x04 cut short", "not a readable"),
                                             (None, "not a dict"), ("missing", "no such")])
def test_broken_model_files_get_a_message(tmp_path, content, reason):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save([torch.zeros(2)], path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=reason) as err:
        load_model_file(path)
    assert str(path) in str(err.value)
