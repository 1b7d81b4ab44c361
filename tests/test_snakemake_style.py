"""Snakemake conventions: the Snakefiles are snakefmt-formatted and lint-clean, and the conda environments
pin the versions of requirements.txt."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
# what the rules need at run time; the rest of requirements.txt runs Snakemake or the tests
NOT_IN_ENVS = {"snakemake", "snakemake-executor-plugin-slurm", "pytest", "snakefmt", "scikit-image"}


def _snakefmt() -> list[str]:
    exe = shutil.which("snakefmt") or str(Path(sys.executable).with_name("snakefmt"))
    if not Path(exe).exists():
        pytest.skip("snakefmt is not installed (pip install -r requirements.txt)")
    return [exe]


def test_snakefiles_are_snakefmt_formatted():
    proc = subprocess.run(_snakefmt() + ["--check", "--diff", *map(str, SNAKEFILES)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, f"run `snakefmt Snakefile workflow/rules`:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"


def test_snakemake_lint():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(ROOT)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def test_requirements_pin_every_package():
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    packages = [ln for ln in lines if ln and not ln.startswith("#")]
    assert packages and all("==" in ln for ln in packages), [ln for ln in packages if "==" not in ln]
    assert "pytorch-msssim" not in (ROOT / "requirements.txt").read_text()


@pytest.mark.parametrize("env", ["ichbench-cpu.yaml", "ichbench-cuda.yaml"])
def test_conda_env_pins_the_versions_of_requirements(env):
    spec = yaml.safe_load((ROOT / "envs" / env).read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert set(conda) <= {"python=3.11", "pip"}, conda          # everything else through pip, pinned
    required = {k: v for k, v in _pins((ROOT / "requirements.txt").read_text().splitlines()).items()
                if k not in NOT_IN_ENVS}
    pinned = _pins(p for p in pip if not p.startswith("-"))
    assert pinned == required
    assert all("==" in p for p in pip if not p.startswith("-"))


def test_conda_env_is_chosen_by_config():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert (ROOT / "envs" / f"ichbench-{cfg['conda_env']}.yaml").is_file()
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "ichbench-{config['conda_env']}.yaml" in common
    assert "msssim" not in (ROOT / "pyproject.toml").read_text()
