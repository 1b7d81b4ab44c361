"""`ichbench bench-scale`: how each pipeline stage's cost grows with the cohort, on synthetic cohorts of chosen sizes.

For each size (slices) it writes a synthetic cohort in a layout (`cq500`: DICOM with a soft-tissue and a
bone series and a localizer per scan, as CQ500; `rsna`: one file a slice with RSNA's stripped headers and
`ID_` names), then runs the pipeline's own stages as the workflow's rules run them, each as one
`python -m ichbench` child process: index, (RSNA: dataset-labels), preprocess, split, one AE epoch on fold
0's training part, scoring fold 0 (validation and test), aggregation (`table`: Table 1, 1000 bootstrap
draws, paired tests, operating points). Each child's wall seconds, CPU seconds (user + system, its waited
workers included) and peak resident memory come from `os.wait4`, so they are that stage's alone. The
report (rates per core, growth between sizes, projection) is `bench.scale_report`.

Everything it writes stays under `--out` (`<layout>-<slices>/`: `cohort/`, `results/`, `logs/`); the cohort
and results are removed after a size unless `--keep`; the tables stay.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)

LAYOUTS = ("cq500", "rsna")
STAGES = ("index", "labels", "preprocess", "split", "train", "score", "aggregate")   # labels: RSNA only
#: The AE row as config.yaml gives it, for one epoch (batch and rate of the demo recipe).
AE_PARAMS = {"latent_dim": 16, "width": 16, "hidden": 1024, "epochs": 1, "batch_size": 32, "lr": 0.001}
WINDOWS = [{"name": "brain", "level": 40, "width": 80}, {"name": "subdural", "level": 75, "width": 215},
           {"name": "bone", "level": 600, "width": 2800}]
SLICES_PER_SCAN = (24, 36)   # drawn per scan; 30 on average (RSNA's studies: about 35, CQ500's thin series more)


def _ints(text: str, option: str, example: str) -> list[int]:
    try:
        values = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{option} {text!r}: give positive whole numbers separated by commas, e.g. {example}")
    return values


def parse_sizes(text: str, slices_per_scan: tuple[int, int] = SLICES_PER_SCAN) -> list[int]:
    """`5000,50000` -> [5000, 50000]: slices per cohort, each at least ten scans' worth (five folds)."""
    sizes = _ints(text, "--sizes", "5000,50000")
    least = 10 * slices_per_scan[0]
    if min(sizes) < least:
        raise ConfigError(f"--sizes {text!r}: each size must be at least {least} slices (ten scans of "
                          f"{slices_per_scan[0]} slices or more: five folds need them)")
    return sorted(set(sizes))


def parse_slices_per_scan(text: str) -> tuple[int, int]:
    """`24,36` -> (24, 36): the range each scan's slice count is drawn from; 13 at least (5 mm slices: the
    60 mm extent a series needs)."""
    v = _ints(text, "--slices-per-scan", "24,36")
    lo, hi = (v[0], v[0]) if len(v) == 1 else (v[0], v[1])
    if len(v) > 2 or lo > hi or lo < 13:
        raise ConfigError(f"--slices-per-scan {text!r}: one number or MIN,MAX with 13 <= MIN <= MAX (5 mm slices; "
                          "the series choice needs a 60 mm extent)")
    return lo, hi


def write_cohort(layout: str, n_slices: int, out: Path, *, workers: int = 1, image_size: int = 256,
                 slices_per_scan: tuple[int, int] = SLICES_PER_SCAN, seed: int = 0) -> dict:
    """A synthetic cohort of about n_slices slices (scans of slices_per_scan slices, 40 % pathological)."""
    from ..synthetic import SyntheticConfig, generate
    from ..synthetic.rsna import generate_rsna

    n_scans = max(10, round(n_slices / (sum(slices_per_scan) / 2)))
    n_path = max(5, round(0.4 * n_scans))
    cfg = SyntheticConfig(seed=seed, n_normal=n_scans - n_path, n_pathological=n_path, image_size=image_size,
                          n_slices=tuple(slices_per_scan), extra_series=layout == "cq500", lesion_scale=1.5,
                          lesion_slices=(3, 12))
    if layout == "cq500":
        return generate(out, cfg, workers=workers)
    if layout == "rsna":
        return generate_rsna(out, cfg, workers=workers)
    raise ConfigError(f"--layout {layout!r}: one of {', '.join(LAYOUTS)}")


def stage_commands(layout: str, cohort: Path, *, workers: int, threads: int) -> list[tuple[str, list[str]]]:
    """The stages' `ichbench` command lines, as workflow/rules/*.smk give them (config.yaml defaults), run
    in the size's folder (paths relative to it; `cohort` absolute)."""
    d, sp, sc = "results/data", "results/splits", "results/scores/AE/fold-0"
    shard = f"{d}/cache/shard-0"
    if layout == "cq500":
        index = ["index", "--dicom-dir", str(cohort / "dicom"), "--axial-tolerance-deg", "30.0"]
        gt = str(cohort / "masks")
        labels = ["--label-source", "ctfsh", "--labels", str(cohort / "cq500_labels.csv"), "--reads",
                  str(cohort / "reads.csv"), "--scan-id-format", "SYN-CT-{n}", "--slice-labels",
                  str(cohort / "slice_labels.csv")]
    else:
        index = ["index", "--dicom-dir", str(cohort / "stage_2_train"), "--axial-tolerance-deg", "30.0",
                 "--scan-key", "study"]
        gt = ""
        t = f"{d}/dataset"
        labels = ["--label-source", "csv", "--labels", f"{t}/scan_labels.csv", "--reads", "", "--scan-id-format",
                  "{n}", "--slice-labels", f"{t}/slice_labels.csv", "--scan-key", "study", "--patients",
                  f"{t}/patients.csv", "--scan-info", f"{t}/scan_info.csv", "--excluded", f"{t}/excluded.csv"]
    stages = [("index", index + ["--out", d, "--min-slices", "8", "--min-extent-mm", "60.0",
                                 "--workers", str(workers)])]
    if layout == "rsna":
        stages.append(("labels", ["dataset-labels", "--dataset", json.dumps({"name": "rsna", "root": str(cohort)}),
                                  "--index", f"{d}/index.csv", "--out", f"{d}/dataset"]))
    stages += [
        ("preprocess", ["preprocess", "--data", d, "--out", shard, "--shard", "0", "--n-shards", "1", "--windows",
                        json.dumps(WINDOWS), "--size", "128", "--gt-dir", gt, "--boxes", "--non-hu", "reject",
                        "--workers", str(workers)]),
        ("split", ["split", "--shards", shard, *labels, "--min-hemorrhage-area-mm2", "0", "--protocol", "paper",
                   "--n-folds", "5", "--val-fraction", "0.11", "--seed", "0", "--figure-cases", "3",
                   "--figure-seed", "0", "--out", sp, "--cohort", f"{d}/cohort.csv", "--rejected-in",
                   f"{d}/rejected_index.csv", f"{shard}/rejected.csv", "--rejected-out", f"{d}/rejected.csv",
                   "--boxes", "--boxes-out", f"{d}/boxes.csv", "--assignment-out", f"{sp}/assignment.csv"]),
        ("train", ["train", "--method", "AE", "--params", json.dumps(AE_PARAMS), "--manifest", f"{sp}/fold-0.csv",
                   "--out", "results/models/AE/fold-0", "--device", "cpu", "--seed", "0", "--checkpoint-every",
                   "0", "--threads", str(threads), "--no-progress", "--in-memory", "auto",
                   "--memory-budget-gb", "4"]),
        ("score", ["score", "--model", "results/models/AE/fold-0/model.pt", "--manifest", f"{sp}/fold-0.csv",
                   "--figure-cases", f"{sp}/figure_cases.csv", "--out-csv", f"{sc}.csv", "--out-maps",
                   f"{sc}.maps.npz", "--device", "cpu", "--batch-size", "auto", "--threads", str(threads),
                   "--out-loc", f"{sc}.loc.json", "--pixel-negative-rate", "0.0625", "--loc-seed", "0",
                   "--out-errors", f"{sc}.errors.npz", "--error-cases", "5", "--pixel-specificity", "0.999",
                   "--in-memory", "auto", "--memory-budget-gb", "4"]),
        ("aggregate", ["table", "--scores", f"{sc}.csv", "--maps", f"{sc}.maps.npz", "--methods", '["AE"]',
                       "--protocol", "paper", "--n-folds", "1", "--dataset", layout, "--ddof", "0",
                       "--out", "results/table1.csv", "--out-long", "results/table1_per_fold.csv", "--out-md",
                       "results/table1.md", "--out-ci", "results/table1_ci.csv", "--out-comparisons",
                       "results/comparisons.csv", "--cohort", f"{d}/cohort.csv", "--label-source",
                       labels[1], "--bootstrap", "1000", "--seed", "0", "--scan-aggregation", "max",
                       "--scan-top-k", "3", "--out-operating", "results/operating_points.csv",
                       "--out-operating-folds", "results/operating_points_per_fold.csv",
                       "--target-specificity", "0.9", "0.95", "0.99"]),
    ]
    return stages


def run_child(args: list[str], cwd: Path, logfile: Path) -> dict:
    """Run `python -m ichbench ARGS` in cwd, its output to logfile -> wall s, CPU s (user + system of it and
    its waited-for workers) and peak RSS in MiB (the largest of those processes), from os.wait4."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])          # this checkout's package, whatever is installed
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ichbench", *args], cwd=cwd, stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-15:]
        raise ConfigError(f"bench-scale: `ichbench {args[0]}` failed (exit {proc.returncode}) in {cwd}; its log "
                          f"{logfile} ends:\n  " + "\n  ".join(tail))
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mib": ru.ru_maxrss / 1024}


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def stage_items(stage: str, root: Path, summary: dict) -> tuple[int, str]:
    """What a stage's rate is counted in: (items, unit) from the cohort summary and the stage's outputs."""
    if stage in ("write", "index"):
        return int(summary["n_files"]), "files"
    if stage in ("labels", "preprocess", "split"):
        return int(summary["n_slices"]), "slices"
    parts = [r.get("part", "") for r in _csv_rows(root / "results" / "splits" / "fold-0.csv")]
    if stage == "train":
        return sum(p == "train" for p in parts), "slices"
    if stage == "score":
        return sum(p in ("val", "test") for p in parts), "slices"
    if stage == "aggregate":
        return sum(p == "test" for p in parts), "slices"
    raise ValueError(stage)   # pragma: no cover


def run_size(layout: str, n_slices: int, out: Path, *, workers: int = 1, threads: int = 1,
             image_size: int = 256, slices_per_scan: tuple[int, int] = SLICES_PER_SCAN,
             keep: bool = False, until: str = "aggregate") -> list[dict]:
    """Write one cohort and run the stages on it up to `until` -> one row per stage (the cohort's writing
    included)."""
    if until not in STAGES:
        raise ConfigError(f"--until {until!r}: one of {', '.join(STAGES)}")
    root = out / f"{layout}-{n_slices}"
    if root.exists():
        shutil.rmtree(root)
    cohort = root / "cohort"
    t0, c0 = time.perf_counter(), time.process_time()
    before = os.times()
    summary = write_cohort(layout, n_slices, cohort, workers=workers, image_size=image_size,
                           slices_per_scan=slices_per_scan)
    after = os.times()
    cpu = (time.process_time() - c0) + (after.children_user - before.children_user) + \
        (after.children_system - before.children_system)
    base = {"layout": layout, "size": n_slices, "slices": summary["n_slices"], "files": summary["n_files"],
            "scans": summary["n_patients"], "image_size": image_size, "workers": workers, "threads": threads}
    rows = [dict(base, stage="write", wall_s=time.perf_counter() - t0, cpu_s=cpu, peak_rss_mib=float("nan"))]
    log.info("%s %d: cohort of %d scans, %d slices, %d files written in %.1f s", layout, n_slices,
             summary["n_patients"], summary["n_slices"], summary["n_files"], rows[0]["wall_s"])
    last = STAGES.index(until)
    for stage, args in stage_commands(layout, cohort.resolve(), workers=workers, threads=threads):
        if STAGES.index(stage) > last:
            break
        got = run_child(args, root, root / "logs" / f"{stage}.log")
        rows.append(dict(base, stage=stage, **got))
        log.info("%s %d: %-10s %7.1f s wall, %7.1f CPU s, %6.0f MiB peak", layout, n_slices, stage,
                 got["wall_s"], got["cpu_s"], got["peak_rss_mib"])
    for r in rows:
        r["items"], r["unit"] = stage_items(r["stage"], root, summary)
        r["per_core_per_s"] = r["items"] / r["cpu_s"] if r["cpu_s"] > 0 else math.nan
        r["per_s"] = r["items"] / r["wall_s"] if r["wall_s"] > 0 else math.nan
    if not keep:
        shutil.rmtree(cohort, ignore_errors=True)
        shutil.rmtree(root / "results", ignore_errors=True)
    return rows


def run_scale(layout: str, sizes: list[int], out: str | Path, *, workers: int = 1, threads: int = 1,
              image_size: int = 256, slices_per_scan: tuple[int, int] = SLICES_PER_SCAN,
              keep: bool = False, until: str = "aggregate") -> dict:
    """Every size of one layout -> {"rows", "growth", "projection"}, written to <out>/bench-scale-<layout>.csv
    and .json, with the printed table (bench.scale_report)."""
    from . import scale_report
    from .machine import machine

    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: one of {', '.join(LAYOUTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()[0]
    rows = []
    for n in sizes:
        rows += run_size(layout, n, out, workers=workers, threads=threads, image_size=image_size,
                         slices_per_scan=slices_per_scan, keep=keep, until=until)
    result = {"layout": layout, "sizes": sizes, "machine": machine(), "started": started,
              "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)], "rows": rows,
              "growth": scale_report.growth(rows), "projection": scale_report.projection(rows, workers=workers)}
    scale_report.write(result, out / f"bench-scale-{layout}")
    return result
