"""Time the aggregation (`ichbench table`, `stats-figures`, `extra-tables`, `strata`, `confounds`, `figure`) on
synthetic score files of RSNA size, in the exact on-disk format the report rules read.

For each size N (test slices over all folds) the script writes, under a work folder, what the score and split
jobs write for 18 rows x 5 folds: `results/scores/<row>/fold-K.csv` (test and validation slices, the score job's
columns and `%.8g` floats), `fold-K.maps.npz` (the run record and the figure cases' maps), `fold-K.loc.json`;
`results/splits/fold-K.csv` (manifests), `figure_cases.csv`; `results/data/cohort.csv`, `series_selected.csv`
and one cache NPZ per series (the per-slice facts strata and confounds read; images only for the figure cases).
Patients have `--slices-per-patient` slices (one series each), about 40 % of them pathological with a third of
their slices bleeding (RSNA-like IDs: ID_<hex>). Then it runs each report subcommand as report.smk does, in a
child process, and prints per stage its wall seconds, CPU seconds and peak resident memory (the child's
ru_maxrss), and the growth ratio between the sizes.

    PYTHONPATH=src .venv/bin/python scripts/bench_aggregate.py --sizes 75000 750000
    PYTHONPATH=src .venv/bin/python scripts/bench_aggregate.py --sizes 75000 --profile table   # cProfile, top 30
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROWS = ["AE", "AE-L1", "AE-Grad", "AE-SSIM", "AE-PL", "AE-U", "VAE", "DAE", "CeAE", "ConstrainedAE", "GANomaly",
        "NSA", "NSA-Intensity", "FPI", "FPI-Poisson", "CutPaste", "CutPaste-2stage", "AnatPaste"]
SELF_SUPERVISED = {"NSA", "NSA-Intensity", "FPI", "FPI-Poisson", "CutPaste", "CutPaste-2stage", "AnatPaste"}
SCORE_COLUMNS = ["method", "fold", "part", "patient_id", "series_uid", "sop_uid", "slice_index", "scan_label",
                 "slice_truth", "label", "score", "slice_score_brain"]
SUBTYPES = ["IPH", "IVH", "SDH", "EDH", "SAH"]


def _hex_ids(rng, n: int, digits: int, prefix: str = "ID_") -> np.ndarray:
    """n distinct RSNA-like IDs `ID_<digits hex>`."""
    v = rng.choice(16 ** min(digits, 13), size=n, replace=False) if n < 16 ** min(digits, 13) else np.arange(n)
    return np.array([f"{prefix}{x:0{digits}x}" for x in v], object)


def cohort_frame(n_test: int, n_folds: int, per_patient: int, val_share: float, seed: int) -> pd.DataFrame:
    """One row per test or validation slice: fold, part, patient_id, study_uid, series_uid, sop_uid,
    slice_index, scan_label, slice_truth, label (paper protocol), subtypes, area (mm^2)."""
    rng = np.random.default_rng(seed)
    n_test_pat = max(n_folds * 2, n_test // per_patient)
    n_val_pat = max(n_folds * 2, int(round(n_test_pat * val_share)))
    n_pat = n_test_pat + n_val_pat
    fold = np.r_[np.arange(n_test_pat) % n_folds, np.arange(n_val_pat) % n_folds]
    part = np.r_[np.full(n_test_pat, "test", object), np.full(n_val_pat, "val", object)]
    scan_label = (rng.random(n_pat) < 0.4).astype(int)
    scan_label[:2 * n_folds] = np.arange(2 * n_folds) % 2      # both classes in every fold's test part
    scan_label[n_test_pat:n_test_pat + 2 * n_folds] = np.arange(2 * n_folds) % 2
    pid, study, series = _hex_ids(rng, n_pat, 8), _hex_ids(rng, n_pat, 10), _hex_ids(rng, n_pat, 10)
    sub = np.array([";".join(s for s, k in zip(SUBTYPES, rng.random(5) < 0.35) if k) or "IPH" for _ in range(n_pat)],
                   object)
    sub[scan_label == 0] = ""
    p = np.repeat(np.arange(n_pat), per_patient)
    k = np.tile(np.arange(per_patient), n_pat)
    # a pathological scan bleeds on a contiguous third of its slices
    start = rng.integers(0, per_patient - per_patient // 3 + 1, n_pat)
    truth = ((k >= start[p]) & (k < start[p] + max(1, per_patient // 3)) & (scan_label[p] == 1)).astype(int)
    area = np.where(truth == 1, rng.lognormal(6.0, 1.2, len(p)), 0.0).astype(np.float32)
    f = pd.DataFrame({"fold": fold[p], "part": part[p], "patient_id": pid[p], "study_uid": study[p],
                      "series_uid": series[p], "sop_uid": _hex_ids(rng, len(p), 9), "slice_index": k,
                      "scan_label": scan_label[p], "slice_truth": truth, "label": scan_label[p],
                      "subtypes": sub[p], "area": area})
    return f.sort_values(["fold", "part", "patient_id", "slice_index"], kind="stable").reset_index(drop=True)


def _record(row: str) -> str:
    return json.dumps({"method": row, "group": "self-supervised" if row in SELF_SUPERVISED else "reconstruction",
                       "params": {}, "code_digest": "0" * 16, "epochs": 250, "train_slices": 19000})


def write_inputs(root: Path, n_test: int, *, n_folds: int = 5, per_patient: int = 30, val_share: float = 0.2,
                 seed: int = 0, image_size: int = 32) -> dict:
    """Write every input of the report rules under `root` (see the module docstring); -> the file lists."""
    rng = np.random.default_rng(seed + 1)
    c = cohort_frame(n_test, n_folds, per_patient, val_share, seed)
    res = root / "results"
    cache = res / "data" / "cache" / "shard-0"
    cache.mkdir(parents=True, exist_ok=True)
    (res / "splits").mkdir(parents=True, exist_ok=True)
    c["npz"] = "results/data/cache/shard-0/" + c["series_uid"] + ".npz"
    c["protocol"] = "paper"
    c["diagnosis"] = c["subtypes"]
    c["reader_ich_votes"] = np.where(c["scan_label"] == 1, 3, 0)
    # figure cases: the first anomalous test slice of a pathological scan in the first three folds
    cases = (c[(c["part"] == "test") & (c["slice_truth"] == 1)].groupby("fold").head(1).head(3))
    case_series = set(cases["series_uid"])
    # one cache NPZ per series: the facts strata and confounds read
    for suid, g in c.groupby("series_uid", sort=False):
        n = len(g)
        extra = {}
        if suid in case_series:
            extra = {"images": rng.integers(0, 255, (n, 3, image_size, image_size), dtype=np.uint8),
                     "gt_mask": np.zeros((n, image_size, image_size), bool)}
            extra["gt_mask"][g["slice_truth"].to_numpy(bool), 8:16, 8:16] = True
        np.savez(cache / f"{suid}.npz", sop_uids=g["sop_uid"].to_numpy(str), gt_area_mm2=g["area"].to_numpy(),
                 slice_index=g["slice_index"].to_numpy(np.int32), slice_thickness=np.float32(5.0),
                 tilt_deg=np.float32(rng.choice([0.0, 12.0, 20.0])),
                 pixel_spacing=np.full(2, rng.choice([0.45, 0.49, 0.6]), np.float32),
                 spacing=np.full(n - 1, 5.0, np.float32), has_gt=np.bool_(bool(extra)),
                 head_area_mm2=rng.normal(15000, 2000, n).astype(np.float32),
                 brain_mean_hu=rng.normal(32, 3, n).astype(np.float32),
                 original_size=np.array([512, 512], np.int32), **extra)
    man_cols = ["fold", "part", "patient_id", "study_uid", "series_uid", "sop_uid", "slice_index", "npz",
                "scan_label", "slice_truth", "label"]
    manifests = []
    for k in range(n_folds):
        path = res / "splits" / f"fold-{k}.csv"
        c[c["fold"] == k][man_cols + ["protocol", "diagnosis", "subtypes", "reader_ich_votes"]].to_csv(path, index=False)
        manifests.append(str(path.relative_to(root)))
    cases.assign(gt_pixels=64)[man_cols + ["protocol", "diagnosis", "subtypes", "reader_ich_votes", "gt_pixels"]] \
        .to_csv(res / "splits" / "figure_cases.csv", index=False)
    one = c.drop_duplicates("series_uid")
    one.assign(series_description="Head", kernel=rng.choice(["H30s", "STANDARD"], len(one)), n_files=per_patient,
               extent_mm=150.0, choice="", n_series=1, n_eligible=1, candidates="")[
        ["patient_id", "study_uid", "series_uid", "series_description", "kernel", "n_files", "extent_mm", "choice",
         "n_series", "n_eligible", "candidates"]].to_csv(res / "data" / "series_selected.csv", index=False)
    pats = c.drop_duplicates("patient_id")
    rows = []
    for cls, lab in (("normal", 0), ("pathological", 1)):
        s = c[c["scan_label"] == lab]
        rows.append({"scan_class": cls, "patients": int((pats["scan_label"] == lab).sum()), "slices": len(s),
                     "slices_normal": int((s["label"] == 0).sum()), "slices_anomalous": int((s["label"] == 1).sum()),
                     "slices_unlabelled": 0, "series_with_slice_truth": int(s["series_uid"].nunique()),
                     "protocol": "paper", "label_source": "csv"})
    pd.DataFrame(rows).to_csv(res / "data" / "cohort.csv", index=False)
    # scores: per row a separation d; slice score = noise + d * (bleeding slice) + 0.3 d * (pathological scan)
    base = c[SCORE_COLUMNS[2:10]].copy()
    scores, maps, locs = [], [], []
    for i, row in enumerate(ROWS):
        d = 0.2 + 1.2 * i / len(ROWS)
        s = (rng.normal(0, 1, len(c)) + d * c["slice_truth"].to_numpy() + 0.3 * d * c["scan_label"].to_numpy())
        s = (np.round(s * 400) / 400).astype(np.float32)        # some tied scores, as real maps give
        brain = (s + rng.normal(0, 0.3, len(c))).astype(np.float32)
        out = res / "scores" / row
        out.mkdir(parents=True, exist_ok=True)
        for k in range(n_folds):
            sel = (c["fold"] == k).to_numpy()
            t = base[sel].assign(score=s[sel], slice_score_brain=brain[sel])
            t.insert(0, "method", row)
            t.insert(1, "fold", k)
            t.to_csv(out / f"fold-{k}.csv", index=False, float_format="%.8g")
            fc = cases[cases["fold"] == k]
            np.savez_compressed(out / f"fold-{k}.maps.npz", sop_uids=fc["sop_uid"].to_numpy(str),
                                maps=rng.random((len(fc), image_size, image_size)).astype(np.float32),
                                method=np.array(row), fold=np.array(k), record=np.array(_record(row)))
            (out / f"fold-{k}.loc.json").write_text(json.dumps(
                {"available": True, "method": row, "fold": k, "pixel_auroc": 0.5 + d / 4, "dice_best": 0.1,
                 "max_in_truth": 0.2, "dice_val": 0.05, "iou_val": 0.03, "test_pixel_specificity_val": 0.999,
                 "n_slices": int(sel.sum()), "n_anomalous_slices": int(c.loc[sel, "slice_truth"].sum()),
                 "negative_rate": 0.0625}))
            scores.append(f"results/scores/{row}/fold-{k}.csv")
            maps.append(f"results/scores/{row}/fold-{k}.maps.npz")
            locs.append(f"results/scores/{row}/fold-{k}.loc.json")
    return {"scores": scores, "maps": maps, "loc": locs, "manifests": manifests, "n_slices": len(c),
            "n_test": int((c["part"] == "test").sum()), "n_patients": int(c["patient_id"].nunique())}


def stage_commands(files: dict, bootstrap: int, rows=ROWS, threads: int = 2) -> dict[str, list[str]]:
    """The report rules' `ichbench` command lines (workflow/rules/report.smk), defaults of config.yaml
    (`threads`: table.threads, the table and strata jobs' cores; 0: no --threads, for versions without it)."""
    m = json.dumps(list(rows))
    boot = ["--bootstrap", str(bootstrap), "--seed", "0", "--scan-aggregation", "max", "--scan-top-k", "3"]
    boot += ["--threads", str(threads)] if threads else []
    out = "results/"
    return {
        "table": ["table", "--scores", *files["scores"], "--maps", *files["maps"], "--methods", m,
                  "--protocol", "paper", "--n-folds", "5", "--dataset", "synthetic", "--ddof", "0",
                  "--out", out + "table1.csv", "--out-long", out + "table1_per_fold.csv", "--out-md",
                  out + "table1.md", "--out-ci", out + "table1_ci.csv", "--out-comparisons",
                  out + "comparisons.csv", "--cohort", "results/data/cohort.csv", "--label-source", "csv", *boot,
                  "--out-operating", out + "operating_points.csv", "--out-operating-folds",
                  out + "operating_points_per_fold.csv", "--target-specificity", "0.9", "0.95", "0.99"],
        "stats-figures": ["stats-figures", "--scores", *files["scores"], "--ci", out + "table1_ci.csv", "--methods", m,
                          "--out-forest", out + "figures/forest_auc.png", "--out-roc", out + "figures/roc_curves.png"],
        "extra-tables": ["extra-tables", "--scores", *files["scores"], "--loc", *files["loc"], "--manifests",
                         *files["manifests"], "--methods", m, "--protocol", "paper", "--ddof", "0", "--out-loc",
                         out + "localisation.csv", "--out-brain", out + "table_brain.csv", "--out-subtypes",
                         out + "table_subtypes.csv", "--out-md", out + "tables_extra.md"],
        "strata": ["strata", "--scores", *files["scores"], "--manifests", *files["manifests"], "--series",
                   "results/data/series_selected.csv", "--methods", m, "--target-specificity", "0.9", "0.95", "0.99",
                   "--size-bins", "0", "100", "500", "2000", "--volume-bins", "0", "5", "30", "--min-units", "10",
                   *boot, "--out", out + "strata.csv", "--out-md", out + "strata.md", "--out-figure",
                   out + "figures/sensitivity_by_size.png"],
        "confounds": ["confounds", "--manifests", *files["manifests"], "--table1", out + "table1.csv", "--out",
                      out + "confounds.csv", "--out-md", out + "confounds.md"],
        "figure": ["figure", "--maps", *files["maps"], "--cases", "results/splits/figure_cases.csv", "--methods", m,
                   "--percentile", "99", "--out", out + "figure1.png"],
    }


def run_stage(root: Path, args: list[str], profile: Path | None = None) -> dict:
    """Run `python -m ichbench ARGS` in `root`; -> wall s, CPU s and peak RSS (MiB) of that child alone."""
    cmd = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else []) + ["-m", "ichbench", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err_text = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}):\n{err_text[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mib": ru.ru_maxrss / 1024}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[75_000, 750_000], help="test slices over all folds")
    ap.add_argument("--slices-per-patient", type=int, default=30)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--stages", nargs="+", default=["table", "stats-figures", "extra-tables", "strata", "confounds",
                                                    "figure"])
    ap.add_argument("--workdir", default="/tmp/bench_aggregate", help="inputs are written here (kept: reused)")
    ap.add_argument("--profile", default="", help="a stage to run under cProfile (prints the top 30)")
    ap.add_argument("--threads", type=int, default=2, help="--threads of the table and strata stages (table.threads)")
    a = ap.parse_args(argv)
    from ichbench.bench.machine import machine

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load {os.getloadavg()}")
    results = {}
    for n in a.sizes:
        root = Path(a.workdir) / f"n{n}"
        marker = root / "inputs.json"
        if marker.exists():
            files = json.loads(marker.read_text())
        else:
            shutil.rmtree(root, ignore_errors=True)
            t0 = time.perf_counter()
            files = write_inputs(root, n, per_patient=a.slices_per_patient)
            marker.write_text(json.dumps(files))
            print(f"# wrote inputs of {n} test slices in {time.perf_counter() - t0:.0f} s: {root}")
        cmds = stage_commands(files, a.bootstrap, threads=a.threads)
        print(f"## {files['n_test']} test slices ({files['n_slices']} test + val), {files['n_patients']} patients, "
              f"{len(ROWS)} rows x 5 folds; load {os.getloadavg()[0]:.2f}")
        for stage in a.stages:
            prof = Path(a.workdir) / f"{stage}-{n}.prof" if a.profile == stage else None
            r = results[(n, stage)] = run_stage(root, cmds[stage], prof)
            print(f"{stage:14s} {r['wall_s']:8.1f} s wall {r['cpu_s']:8.1f} s CPU {r['rss_mib']:8.0f} MiB peak",
                  flush=True)
            if prof:
                import pstats

                pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(30)
    if len(a.sizes) >= 2:
        lo, hi = a.sizes[0], a.sizes[-1]
        print(f"## growth {hi} / {lo} test slices (x{hi / lo:g})")
        for stage in a.stages:
            r0, r1 = results[(lo, stage)], results[(hi, stage)]
            print(f"{stage:14s} wall x{r1['wall_s'] / r0['wall_s']:.1f}  CPU x{r1['cpu_s'] / r0['cpu_s']:.1f}  "
                  f"RSS x{r1['rss_mib'] / r0['rss_mib']:.1f}")
    for n in a.sizes:
        chain = [s for s in ("strata", "table", "stats-figures") if (n, s) in results]
        if chain:       # report.smk's longest chain: strata -> table1 (includes strata.md) -> stats_figures
            print(f"chain {' -> '.join(chain)} at {n}: {sum(results[(n, s)]['wall_s'] for s in chain):.0f} s wall")
    if len(a.sizes) >= 2:
        total = sum(results[(hi, s)]["wall_s"] for s in a.stages)
        print(f"all stages at {hi}: {total:.0f} s wall, peak {max(results[(hi, s)]['rss_mib'] for s in a.stages):.0f} MiB")


if __name__ == "__main__":
    main()
