"""GPU slot sharing as profiles/slurm documents it: how Snakemake sizes a group of N train+score pairs."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

GroupResources = pytest.importorskip("snakemake.resources").GroupResources


class NoConstraints(dict):
    def get(self, key, default=None):
        return SimpleNamespace(value=None)


def group_resources(train: dict, score: dict, n: int) -> dict:
    """N independent train -> score chains in one group (group-components model: N)."""
    job = lambda r: SimpleNamespace(resources=r, pipe_group=None)  # noqa: E731
    return GroupResources.basic_layered([[job(train)] * n, [job(score)] * n], NoConstraints(), run_local=False)


def test_grouped_trainings_share_one_gpu_only_with_a_string_gres():
    train = {"_cores": 4, "mem_mb": 8000, "runtime": 720}
    score = {"_cores": 4, "mem_mb": 4000, "runtime": 60}
    # the rules' gpu=1: summed over the 4 parallel trainings -> the job would ask --gpus=4
    summed = group_resources({**train, "gpu": 1}, {**score, "gpu": 1}, 4)
    assert summed["gpu"] == 4
    # the profile's recipe (gpu: 0, gres: "gpu:1"): one GPU for the 4 trainings side by side
    shared = group_resources({**train, "gpu": 0, "gres": "gpu:1"}, {**score, "gpu": 0, "gres": "gpu:1"}, 4)
    assert shared["gres"] == "gpu:1" and shared["gpu"] == 0
    assert shared["_cores"] == 16 and shared["mem_mb"] == 32000 and shared["runtime"] == 720 + 60


def test_profiles_say_how_many_jobs_share_a_gpu():
    default = yaml.safe_load(open(ROOT / "profiles/default/config.yaml"))
    assert default["resources"]["gpu"] == 1
    slurm_text = open(ROOT / "profiles/slurm/config.yaml").read()
    slurm = yaml.safe_load(slurm_text)
    assert slurm["group-components"]["model"] == 1 and slurm["groups"]["train"] == "model"
    assert 'gres: "gpu:1"' in slurm_text and "ichbench bench --concurrent" in slurm_text
    assert "resources" not in slurm            # a global gpu cap would run grouped trainings one by one
