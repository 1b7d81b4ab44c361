"""Incremental reruns: after a completed tiny run, `snakemake -n` schedules only what a change touches.

    one method's hyper-parameter  -> that method's train + score jobs, and the aggregation
    a new method                  -> the new method's train + score jobs, and the aggregation
    windowing / image size        -> everything downstream of preprocessing (not synthesis, not indexing)
    one method's code             -> that method's train + score jobs, and the aggregation
    how a fold is read (train.in_memory, train.memory_budget_gb) -> nothing

Changes go in through `--configfile` (as the README says): `--config key=value` turns numbers into
strings and so changes every job's params. Also here: the HTML report of the same run.

The completed run (`tiny_project`) is shared with tests/test_pipeline.py (the end-to-end checks),
tests/test_slurm.py (its local reference run), tests/test_resume.py, tests/test_model_files.py and
tests/test_plugin_rows.py (a copy, extended by a plugin row): it runs once per pytest session, on a snapshot of the workflow and the package
(so that edits made to the tree while the tests run do not count as code changes).
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from test_pipeline import tiny_config

ROOT = Path(__file__).resolve().parents[1]
NARROW_AE = {"latent_dim": 16, "width": 8, "hidden": 64}
AGGREGATION = {("table1", ()), ("confounds", ()), ("figure1", ()), ("stats_figures", ()), ("runtimes", ()),
               ("extra_tables", ()), ("strata", ()), ("errors", ()), ("bundle", ())}


@dataclass
class Project:
    tree: Path       # snapshot of Snakefile, workflow/, profiles/, envs/, src/
    work: Path       # the working directory of the completed run
    config: dict     # its config.yaml
    seconds: float   # wall time of the run


def snapshot(dest: Path) -> Path:
    """Copy what a run needs (the Snakefile, workflow/, profiles/, envs/, src/) to dest."""
    dest.mkdir(parents=True)
    shutil.copy2(ROOT / "Snakefile", dest / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for d in ("workflow", "profiles", "envs", "src"):
        shutil.copytree(ROOT / d, dest / d, ignore=ignore)
    return dest


def project_config(methods: dict | None = None) -> dict:
    cfg = tiny_config(methods or {"AE": dict(NARROW_AE), "AE-L1": dict(NARROW_AE)})
    cfg["splits"]["n_folds"] = 2
    return cfg


def snakemake(tree: Path, work: Path, *args: str, check: bool = True, timeout: float = 900
              ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(tree / "Snakefile"), "--directory", str(work),
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=work)
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").rglob("*.log")))
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n{logs}")
    return proc


_SHARED: dict[str, Project] = {}


def tiny_project(tmp_path_factory) -> Project:
    """A completed local tiny run (AE and AE-L1, 2 folds, --cores 2), made once per session."""
    if "project" not in _SHARED:
        base = tmp_path_factory.mktemp("tiny_project")
        tree = snapshot(base / "tree")
        work = base / "work"
        work.mkdir()
        cfg = project_config()
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        t0 = time.monotonic()
        # CPU only: 2 one-thread trainings at once (profiles/default caps GPU jobs at 1)
        snakemake(tree, work, "--cores", "2", "--resources", "gpu=2")
        _SHARED["project"] = Project(tree, work, cfg, time.monotonic() - t0)
    return _SHARED["project"]


_JOB = re.compile(r"^(?:local)?rule (\S+):$")


def planned_jobs(output: str) -> set[tuple[str, tuple]]:
    """(rule, ((wildcard, value), ...)) of every job a dry run lists, except the target rule `all`."""
    jobs, rule, wildcards = set(), None, ()

    def flush():
        if rule is not None and rule != "all":
            jobs.add((rule, wildcards))

    for line in output.splitlines():
        m = _JOB.match(line)
        if m:
            flush()
            rule, wildcards = m.group(1), ()
        elif rule is not None and line.strip().startswith("wildcards:"):
            pairs = line.split(":", 1)[1].split(",")
            wildcards = tuple(sorted(tuple(p.strip().split("=", 1)) for p in pairs))
    flush()
    return jobs


def dry_run(project: Project, cfg: dict | None = None, tree: Path | None = None) -> set[tuple[str, tuple]]:
    args = ["-n", "--cores", "2"]
    if cfg is not None:
        override = project.work / "changed.yaml"
        override.write_text(yaml.safe_dump(cfg))
        args += ["--configfile", str(override)]
    proc = snakemake(tree or project.tree, project.work, *args)
    return planned_jobs(proc.stdout + "\n" + proc.stderr)


def model_jobs(methods, folds) -> set[tuple[str, tuple]]:
    return {(rule, (("fold", str(f)), ("method", m))) for rule in ("train", "score") for m in methods
            for f in folds}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return tiny_project(tmp_path_factory)


pytestmark = pytest.mark.slow


def test_completed_run_has_nothing_to_do(project):
    """A second run of the completed pipeline plans no job (also the end-to-end check of tests/test_pipeline.py)."""
    proc = snakemake(project.tree, project.work, "-n", "--cores", "2")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert planned_jobs(proc.stdout + "\n" + proc.stderr) == set()
    assert dry_run(project, copy.deepcopy(project.config)) == set()


def test_how_a_fold_is_read_reruns_nothing(project):
    """train.in_memory and train.memory_budget_gb change how the slices are read, not the results."""
    cfg = copy.deepcopy(project.config)
    cfg["train"]["in_memory"] = "false"
    cfg["train"]["memory_budget_gb"] = 0.5
    assert dry_run(project, cfg) == set()
    # the tiny cohort fits train.memory_budget_gb: preprocess wrote no slice store (a job reading a fold from the
    # store packs it then: tests/test_store.py)
    assert not any((project.work / "results" / "data" / "cache" / f"shard-{k}" / "store").exists()
                   for k in range(cfg["preprocess"]["shards"]))


def test_one_hyper_parameter_reruns_that_method_only(project):
    cfg = copy.deepcopy(project.config)
    cfg["methods"]["AE"]["latent_dim"] = 8
    assert dry_run(project, cfg) == model_jobs(["AE"], [0, 1]) | AGGREGATION


def test_recipe_change_for_one_method_reruns_that_method_only(project):
    cfg = copy.deepcopy(project.config)
    cfg["recipes"]["tiny"]["AE-L1"] = {"lr": 0.0005}
    assert dry_run(project, cfg) == model_jobs(["AE-L1"], [0, 1]) | AGGREGATION


def test_new_method_runs_only_its_jobs(project):
    cfg = copy.deepcopy(project.config)
    cfg["methods"]["VAE"] = dict(NARROW_AE)
    assert dry_run(project, cfg) == model_jobs(["VAE"], [0, 1]) | AGGREGATION


@pytest.mark.parametrize("change", ["windows", "image_size"])
def test_preprocessing_change_reruns_everything_downstream(project, change):
    cfg = copy.deepcopy(project.config)
    if change == "windows":
        cfg["preprocess"]["windows"][0]["width"] += 20
    else:
        cfg["preprocess"]["image_size"] = 48
    expected = ({("preprocess", (("shard", "0"),)), ("split", ())} | model_jobs(["AE", "AE-L1"], [0, 1])
                | AGGREGATION)
    jobs = dry_run(project, cfg)
    # synthetic anomalies figure (only with a self-supervised row) is downstream of the folds too
    assert {j for j in jobs if j[0] != "synthetic_anomalies"} == expected
    assert not {j for j in jobs if j[0] in ("synthesize", "index_dicom")}


def test_method_code_change_reruns_that_method_only(project, tmp_path):
    tree = snapshot(tmp_path / "tree")
    module = tree / "src" / "ichbench" / "methods" / "ae_l1.py"
    module.write_text(module.read_text() + "\n\n# an edit to AE-L1's code (test_incremental)\n")
    assert dry_run(project, tree=tree) == model_jobs(["AE-L1"], [0, 1]) | AGGREGATION


def test_report_is_self_contained(project):
    out = project.work / "results" / "report.html"
    snakemake(project.tree, project.work, "--cores", "1", "--report", str(out))
    html = out.read_text(errors="replace")
    assert out.stat().st_size > 50_000
    for needle in ("Table 1", "Figure 1", "Runtimes", "table1.csv", "figure1.png", "runtimes.csv",
                   "table1_ci.csv", "comparisons.csv", "forest_auc.png", "roc_curves.png",
                   "ichbench-results.json", "Configuration of this run", "latent_dim"):
        assert needle in html, needle
    assert re.search(r"data:image/png;[^\"]*base64,iVBOR", html)  # Figure 1 is embedded, not linked
    # self-contained: no scripts or style sheets fetched from elsewhere
    assert not re.search(r"""<(script|link)[^>]+(src|href)=["']https?://""", html)


def test_runtimes_table_lists_every_job(project):
    import pandas as pd

    rt = pd.read_csv(project.work / "results" / "runtimes.csv")
    jobs = set(rt["job"])
    assert {"data/synthesize", "data/index", "data/preprocess/shard-0", "splits/split", "report/table1",
            "report/figure1"} <= jobs
    assert {f"{s}/{m}/fold-{f}" for s in ("train", "score") for m in ("AE", "AE-L1") for f in (0, 1)} <= jobs
    assert (rt["seconds"] > 0).all()
