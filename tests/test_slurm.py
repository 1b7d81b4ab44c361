"""The tiny workflow through profiles/slurm on a real single-node SLURM (scripts/start-slurm.sh).

Checks that every step ran as an sbatch job (squeue lists the run's jobs, each COMPLETED; the GPU jobs
got --gpus=1 and the rules' runtime) and that the results equal those of the local run of the same
workflow (tests/test_incremental.py: same data, seeds and thread counts, so training on the CPU is
bit-for-bit deterministic and the scores are identical, not merely close).

Where SLURM is missing (a laptop) the test skips; in CI (CI=true) it must run: .ci/run starts the
cluster, and a cluster that cannot be started is a failure. Started here, it is stopped here.

CI-only settings on the command line (the profile itself is used as users use it):
  --slurm-status-command squeue    no slurmdbd: sacct knows no jobs (MinJobAge=300 keeps them in squeue)
  status checks from 1 s on        the plugin's 40 s default would triple the test's time
  --groups ...=data                the four data steps in one SLURM job: 3 jobs in sequence, not 6
  mem_mb=1000                      any CI machine can hold the jobs (the rules ask 2-8 GB)
  --max-threads 2                  the local reference ran with --cores 2: same threads, same numbers
  --set-threads train=1 score=1    the profile's 4 threads per GPU job would change the numbers
  --set-threads table1=1 strata=1  the report job asks strata's threads + figure1's: 3 CPUs, more than the
                                   2-CPU CI node has (SLURM would keep it pending); values do not depend on it
  train.device: auto               (the reference's cpu) so that the train and score jobs ask for a GPU
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from test_incremental import tiny_project

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "ichbench-ci"  # ClusterName written by scripts/start-slurm.sh
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SUBMITTED_RULES = {"synthesize", "index_dicom", "preprocess", "split", "train", "score", "table1", "figure1"}
DATA_GROUP = {"synthesize": "data", "index_dicom": "data", "preprocess": "data", "split": "data"}
TIMEOUT_S = 1200

pytestmark = pytest.mark.slow


def unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true but SLURM is not usable: {reason}")
    pytest.skip(reason)


def cluster_name() -> str | None:
    """ClusterName of the SLURM this machine talks to, None when there is none."""
    if shutil.which("scontrol") is None:
        return None
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"^ClusterName\s*=\s*(\S+)", proc.stdout, re.M)
    return m.group(1) if proc.returncode == 0 and m else None


@pytest.fixture(scope="module")
def slurm():
    """The single-node cluster of scripts/start-slurm.sh: reused when up, else started and then stopped."""
    name = cluster_name()
    if name == CLUSTER:
        yield "reused"
        return
    if name is not None:
        unavailable(f"this machine is configured for SLURM cluster {name!r}; the test only submits to the "
                    f"single-node cluster of scripts/start-slurm.sh")
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if missing:
        unavailable(f"SLURM is not installed ({', '.join(missing)} missing); "
                    "`sudo scripts/start-slurm.sh` installs (apt) and starts a single-node cluster")
    if os.geteuid() != 0:
        unavailable("starting the single-node SLURM needs root (sudo scripts/start-slurm.sh)")
    proc = subprocess.run([str(ROOT / "scripts" / "start-slurm.sh"), "--no-install"], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        subprocess.run([str(ROOT / "scripts" / "stop-slurm.sh")], capture_output=True, timeout=120)
        unavailable(f"scripts/start-slurm.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    try:
        yield "started"
    finally:
        subprocess.run([str(ROOT / "scripts" / "stop-slurm.sh")], capture_output=True, timeout=120)


def as_cli(mapping: dict, fmt) -> list[str]:
    return [fmt(k, v) for k, v in mapping.items()]


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    project = tiny_project(tmp_path_factory)  # the local reference (AE and AE-L1)
    work = tmp_path_factory.mktemp("slurm_run")
    cfg = copy.deepcopy(project.config)
    cfg["methods"] = {"AE": cfg["methods"]["AE"]}
    # `train.device: cpu` would ask for no GPU; auto asks for one and, on this CPU-only node, trains on the CPU
    cfg["train"]["device"] = "auto"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))

    profile_dir = project.tree / "profiles" / "slurm"
    profile = yaml.safe_load((profile_dir / "config.yaml").read_text())
    # options given on the command line replace the profile's: pass the profile's entries along
    groups = {**profile.get("groups", {}), **DATA_GROUP}
    set_resources = [f"{rule}:{k}={v}" for rule, res in profile.get("set-resources", {}).items()
                     for k, v in res.items() if k != "mem_mb"]
    set_resources += [f"{rule}:mem_mb=1000" for rule in sorted(SUBMITTED_RULES)]
    args = [
        "--workflow-profile", str(profile_dir),
        "--max-threads", "2",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1",
        "--slurm-keep-successful-logs",
        "--groups", *as_cli(groups, lambda r, g: f"{r}={g}"),
        "--group-components", *as_cli(profile.get("group-components", {}), lambda g, n: f"{g}={n}"),
        "--set-resources", *set_resources,
        # the profile gives GPU jobs 4 threads; the local reference trained with 1 (same numbers need the same).
        # The report job runs strata beside figure1 and asks the sum of their threads: table.threads (2) + 1
        # would be more than a 2-CPU node has, and SLURM would hold it pending (PartitionConfig) for ever
        "--set-threads", "train=1", "score=1", "table1=1", "strata=1",
    ]
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(project.tree / "Snakefile"),
           "--directory", str(work), *args]
    log = work / "snakemake-slurm.log"
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(project.tree / "src")})
        try:
            rc = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    seconds = time.monotonic() - t0
    text = log.read_text()
    m = re.search(r"SLURM run ID: (\S+)", text)
    run_id = m.group(1) if m else None
    if rc != 0:
        if run_id:
            subprocess.run(["scancel", "--name", run_id], capture_output=True, timeout=60)
        slurm_logs = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}"
                               for p in sorted((work / ".snakemake" / "slurm_logs").rglob("*.log")))
        pytest.fail(f"snakemake on SLURM {'timed out' if rc is None else f'failed ({rc})'} after "
                    f"{seconds:.0f} s:\n{text[-6000:]}\n{slurm_logs}")
    print(f"\nSLURM run: {seconds:.0f} s (local reference run: {project.seconds:.0f} s)")
    return project, work, run_id, text, seconds


def squeue_jobs(run_id: str) -> list[dict]:
    out = subprocess.run(["squeue", "--states=all", "-h", "--name", run_id, "-o", "%i|%T|%k"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(("id", "state", "comment"), line.split("|"))) for line in out.splitlines() if line.strip()]


def scontrol_job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def job_interval(job_id: str) -> tuple[str, str]:
    info = scontrol_job(job_id)
    return re.search(r"StartTime=(\S+)", info).group(1), re.search(r"EndTime=(\S+)", info).group(1)


def test_every_step_ran_as_a_slurm_job(slurm_run):
    project, work, run_id, text, seconds = slurm_run
    assert run_id, "the SLURM executor did not report a run ID"
    jobs = squeue_jobs(run_id)
    # data (4 steps), model x 2 folds (train + score), report (table1 + figure1)
    assert len(jobs) == 4, jobs
    assert {j["state"] for j in jobs} == {"COMPLETED"}, jobs
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", text))
    assert submitted == {j["id"] for j in jobs}
    # each rule (except the local `runtimes` table) ran inside one of those jobs
    ran = set()
    for p in (work / ".snakemake" / "slurm_logs").rglob("*.log"):
        ran |= set(re.findall(r"^(?:local)?rule (\w+):", p.read_text(), re.M))
    assert SUBMITTED_RULES <= ran, ran
    assert "runtimes" not in ran
    # the GPU jobs: --gpus=1 from the rules' gpu=1, their runtime (not the 60 min default), 1000 MB
    gpu_jobs = [j for j in jobs if "gres:gpu:1" in scontrol_job(j["id"])]
    assert len(gpu_jobs) == 2, [scontrol_job(j["id"]) for j in jobs]
    for j in gpu_jobs:
        info = scontrol_job(j["id"])
        assert "TimeLimit=01:00:00" not in info and re.search(r"TimeLimit=(\d+-)?\d\d:\d\d:\d\d", info)
        assert re.search(r"\bmem=1000M\b", info), info
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=60).stdout.split()
    if gres == ["gpu:1"]:  # one GPU: SLURM ran the two GPU jobs one after the other, never both at once
        (s1, e1), (s2, e2) = sorted(job_interval(j["id"]) for j in gpu_jobs)
        assert e1 <= s2, (s1, e1, s2, e2)
    slurmctld_log = Path("/var/log/slurm/slurmctld.log")
    if slurmctld_log.is_file():  # the controller's own record: started and ended with exit status 0
        log = slurmctld_log.read_text(errors="replace")
        assert submitted <= set(re.findall(r"(?:Allocate|Started) JobId=(\d+)", log))
        assert submitted <= set(re.findall(r"_job_complete: JobId=(\d+) WEXITSTATUS 0", log))


def test_results_equal_the_local_run(slurm_run):
    project, work, *_ = slurm_run
    local = project.work
    folds = range(project.config["splits"]["n_folds"])
    for rel in ["results/data/index.csv", "results/data/cohort.csv", "results/splits/figure_cases.csv",
                *[f"results/splits/fold-{k}.csv" for k in folds]]:
        assert (work / rel).read_bytes() == (local / rel).read_bytes(), rel
    for npz in sorted((local / "results" / "data" / "cache").rglob("*.npz")):
        with np.load(npz) as a, np.load(work / npz.relative_to(local)) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), npz
    for k in folds:
        s_local = pd.read_csv(local / f"results/scores/AE/fold-{k}.csv")
        s_slurm = pd.read_csv(work / f"results/scores/AE/fold-{k}.csv")
        diff = (s_local["score"] - s_slurm["score"]).abs().max()
        pd.testing.assert_frame_equal(s_local, s_slurm, check_exact=True, obj=f"scores fold {k} (max |d| {diff})")
        m_local = torch.load(local / f"results/models/AE/fold-{k}/model.pt", weights_only=True)["state"]["model"]
        m_slurm = torch.load(work / f"results/models/AE/fold-{k}/model.pt", weights_only=True)["state"]["model"]
        assert all(torch.equal(m_local[n], m_slurm[n]) for n in m_local), f"weights of fold {k}"
        with np.load(local / f"results/scores/AE/fold-{k}.maps.npz") as a, \
                np.load(work / f"results/scores/AE/fold-{k}.maps.npz") as b:
            assert np.array_equal(a["maps"], b["maps"]) and np.array_equal(a["sop_uids"], b["sop_uids"])
    t_local = pd.read_csv(local / "results/table1.csv")
    t_slurm = pd.read_csv(work / "results/table1.csv")
    pd.testing.assert_frame_equal(t_local[t_local["method"] == "AE"].reset_index(drop=True), t_slurm)
    assert (work / "results" / "figure1.png").stat().st_size > 10_000
    assert set(pd.read_csv(work / "results" / "runtimes.csv")["job"]) >= {"train/AE/fold-0", "score/AE/fold-1"}
