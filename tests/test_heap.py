"""The heap settings of `ichbench.training.heap`: applied on glibc, opt-out by environment, and what they are for
(training steps that stop faulting their freed activations back in)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.libc_ver()[0] == "glibc"

CHILD = r"""
import json, resource, torch
from ichbench.training.heap import keep_freed_memory
from ichbench.synthetic.toy import toy_head_slices
from ichbench.methods import REGISTRY
applied = keep_freed_memory()
torch.set_num_threads(1)
x, _, _ = toy_head_slices(8, 64, seed=0)
batch = {"x": torch.from_numpy(x)}
m = REGISTRY["AE"]({"batch_size": 8}, in_channels=3, image_size=64, device=torch.device("cpu"))
m.configure_schedulers(100, 1)
for s in range(2):
    m.training_step(batch, s)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for s in range(6):
    m.training_step(batch, s + 2)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _child(heap_env: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ICHBENCH_HEAP", None)
    if heap_env is not None:
        env["ICHBENCH_HEAP"] = heap_env
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt settings are glibc's")
def test_settings_applied_and_opt_out():
    from ichbench.training.heap import MMAP_THRESHOLD, TRIM_THRESHOLD

    ours, default = _child(None), _child("default")
    assert ours["applied"] == {"mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    assert default["applied"] == {}
    # the point of it: with glibc's defaults every step faults its activations in again (~34,000 faults
    # for these 6 steps when measured); with the settings the freed blocks are reused
    assert default["faults"] > 5000
    assert ours["faults"] < default["faults"] / 10


def test_cli_applies_settings(monkeypatch):
    """Every `ichbench` command goes through main(), which applies the settings before the command runs."""
    from ichbench import cli
    from ichbench.training import heap

    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1) or {})
    assert cli.main(["methods"]) == 0
    assert calls == [1]
