#!/usr/bin/env python
"""How much four of our scoring / training choices move the test AUC, against the reference's choice,
fold by fold on a finished run (default: the demo run in results/).

    1. GANomaly: eval-mode BatchNorm (ours, the pipeline's) vs the reference's train-mode BatchNorm on one
       test image at a time (batch of 1: each image normalised with its own statistics), on a deep copy of
       the generator, so the saved running statistics are never touched.
    2. VAE: posterior mean at test time (ours) vs one sampled z per scoring (`sample_at_test`, the
       reference), for several sampling seeds.
    3. AE-U: loss weight w = 10 (ours, the existing models) vs w = 1 (the reference; trained here).
    4. DAE: zero-mean noise masked by the head mask (ours, the existing models) vs the reference as it runs
       on CT, `reference_noise_shift: true, noise_mask: none` (trained here), and the middle variant
       `reference_noise_shift: true` with the head mask.

Trained variants use the existing model's run record (`params`, `seed`) with only the changed key, on the
same fold manifests, and go to --work (reused when a finished model with the same params and seed is
there). Scoring follows `ichbench.training.score.score_fold` (batches of the CPU's auto size, `method.score`)
on the test part; metrics follow Table 1: slice AUC under the manifests' protocol and under slice truth
(`evaluation.aggregate.fold_metrics`), scan AUC with the config's scan aggregation
(`evaluation.stats.scan_units` + `curve_metrics`), mean +- std over folds (config `table.std_ddof`), and the
paired (same fold, same test slices) difference variant - ours.

    .venv/bin/python scripts/scoring_choices.py                 # everything, ~10 min on 2 CPU cores
    .venv/bin/python scripts/scoring_choices.py --only GANomaly,VAE --folds 0,1
    .venv/bin/python scripts/scoring_choices.py --seed-control DAE,AE-U   # also retrain ours with seed+1

`--seed-control` retrains our variant with the run's seed + 1: the paired difference between two seeds of
the same settings is the training-noise floor a choice's difference is to be read against.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ichbench.bench.machine import machine
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ichbench import config as cfgmod  # noqa: E402
from ichbench.cohort.splits import read_manifest  # noqa: E402
from ichbench.evaluation.aggregate import fold_metrics  # noqa: E402
from ichbench.evaluation.stats import curve_metrics, scan_units  # noqa: E402
from ichbench.training.data import DeviceBatches, load_slices  # noqa: E402
from ichbench.training.score import SCORE_COLUMNS, resolve_batch_size  # noqa: E402
from ichbench.training.train import load_model_file, load_trained, train  # noqa: E402

ALL = ("GANomaly", "VAE", "AE-U", "DAE")


# --- scoring ---------------------------------------------------------------------------------------------


def score_batches(method, data, batch_size: int) -> np.ndarray:
    """Slice scores of every row of `data`, batched as the pipeline's score rule does."""
    batches = DeviceBatches(data, method.device, mask_keys=type(method).needs)
    out = []
    for start in range(0, len(data), batch_size):
        ii = torch.arange(start, min(start + batch_size, len(data)))
        s, _ = method.score(batches.batch(ii))
        out.append(s.detach().double().cpu().numpy())
    return np.concatenate(out)


def ganomaly_train_mode_scores(method, data) -> np.ndarray:
    """The reference's GANomaly test: the generator in train mode, one image per forward pass (BatchNorm
    normalises each image with its own per-channel statistics). On a deep copy: the method's saved running
    statistics stay as they are (checked)."""
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    gen = copy.deepcopy(method.model.generator)
    gen.train()
    batches = DeviceBatches(data, method.device)
    out = np.empty(len(data))
    with torch.no_grad():
        for i in range(len(data)):
            x = batches.batch(torch.tensor([i]))["x"]
            _, z, z_hat = gen(x)
            out[i] = float(torch.mean((z.float() - z_hat.float()) ** 2))
    after = method.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "saved GANomaly state changed"
    return out


def score_table(rows: pd.DataFrame, variant: str, scores: np.ndarray) -> pd.DataFrame:
    return rows.assign(method=variant, score=scores, slice_score_brain=np.nan)[SCORE_COLUMNS]


# --- training --------------------------------------------------------------------------------------------


def trained_variant(row: str, params: dict, seed: int, manifest: Path, out_dir: Path) -> tuple[Path, float]:
    """model.pt of `row` trained with `params`, `seed` on `manifest` (reused when it is there with the same
    params and seed) -> (path, training seconds spent now)."""
    path = out_dir / "model.pt"
    if path.exists():
        rec = load_model_file(path, map_location="cpu")["record"]
        if rec["params"] == {**rec["params"], **params} and rec["seed"] == seed:
            return path, 0.0
    t0 = time.perf_counter()
    train(row, params, manifest, out_dir, device="cpu", seed=seed, progress=False, threads=1)
    return path, time.perf_counter() - t0


# --- metrics ---------------------------------------------------------------------------------------------


def fold_aucs(table: pd.DataFrame, protocol: str, how: str, top_k: int) -> pd.DataFrame:
    """-> one row per (variant, fold): AUC_P (manifest protocol), AUC_S (slice truth), AUC_scan; in %."""
    m = fold_metrics(table, protocol)
    m = m[(m["part"] == "test") & (m["metric"] == "AUC")]
    wide = m.pivot_table(index=["method", "fold"], columns="protocol", values="value", dropna=False)
    out = pd.DataFrame({"AUC_P": wide[protocol],
                        "AUC_S": wide["slice"] if "slice" in wide and protocol != "slice" else np.nan})
    units = scan_units(table, how, top_k)
    scan = {(meth, f): float(curve_metrics(g["y"].to_numpy(), g["score"].to_numpy())["AUC"][0])
            for (meth, f), g in units.groupby(["method", "fold"])}
    out["AUC_scan"] = [scan.get(k, np.nan) for k in out.index]
    return out.reset_index()


def mean_std(v: np.ndarray, ddof: int, signed: bool = False) -> str:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "n/a"
    sd = v.std(ddof=ddof) if len(v) > ddof else np.nan
    mean = f"{v.mean():+.1f}" if signed else f"{v.mean():.1f}"
    return f"{mean} +- {sd:.1f}" if np.isfinite(sd) or signed else f"{mean} +- n/a"


def signed_mean_std(v: np.ndarray, ddof: int) -> str:
    return mean_std(v, ddof, signed=True)


# --- main ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="the finished run (models/, splits/, scores/)")
    ap.add_argument("--config", default="config.yaml", help="its config (protocol, table settings)")
    ap.add_argument("--work", default="/tmp/scoring_choices", help="where the trained variants go")
    ap.add_argument("--folds", default=None, help="comma list (default: every fold with a manifest)")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    ap.add_argument("--vae-seeds", default="0,1,2", help="sampling seeds of the sampled-z VAE")
    ap.add_argument("--no-middle", action="store_true", help="skip DAE reference_noise_shift with the head mask")
    ap.add_argument("--seed-control", default="", help="rows (AE-U, DAE) whose own variant is also trained "
                                                       "with the run's seed + 1 (training-noise floor)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    os.chdir(ROOT)
    torch.set_num_threads(1)
    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}")
    print(f"cwd: {ROOT}")
    print(f"machine: {machine()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        print(f"git: {commit}{' (modified: ' + ', '.join(l.split()[-1] for l in dirty.splitlines()) + ')' if dirty else ''}")
    except (OSError, subprocess.CalledProcessError):
        pass
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    cfg = cfgmod.load(args.config)
    ddof = int(cfg["table"]["std_ddof"])
    how, top_k = cfg["table"]["scan_aggregation"], int(cfg["table"]["scan_top_k"])
    results = Path(args.results)
    work = Path(args.work)
    manifests = sorted((results / "splits").glob("fold-*.csv"), key=lambda p: int(p.stem.split("-")[1]))
    folds = [int(p.stem.split("-")[1]) for p in manifests]
    if args.folds:
        folds = [int(f) for f in args.folds.split(",")]
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    for r in only:
        if r not in ALL:
            raise SystemExit(f"--only: {r!r} is not one of {', '.join(ALL)}")
    control = {r.strip() for r in args.seed_control.split(",") if r.strip()}
    vae_seeds = [int(s) for s in args.vae_seeds.split(",") if s.strip()]
    device = torch.device("cpu")
    batch_size = resolve_batch_size(cfg["train"]["score_batch_size"], device)
    protocol = None

    # trained comparisons: row -> (our variant's name, [(variant name, changed params, seed offset)])
    trained_specs = {
        "AE-U": ("AE-U w=10 (ours)", [("AE-U w=1 (reference)", {"weight": 1}, 0)]),
        "DAE": ("DAE zero-mean noise, head mask (ours)",
                [("DAE shifted noise, no mask (reference on CT)",
                  {"reference_noise_shift": True, "noise_mask": "none"}, 0)]
                + ([] if args.no_middle else
                   [("DAE shifted noise, head mask (middle)", {"reference_noise_shift": True}, 0)])),
    }
    for row in control & set(trained_specs):
        ours_name, variants = trained_specs[row]
        variants.append((ours_name.replace("(ours)", "seed + 1 (control)"), {}, 1))
    # pairs to report: (row, our variant, [other variants])
    pairs: list[tuple[str, str, list[str]]] = []
    if "GANomaly" in only:
        pairs.append(("GANomaly", "GANomaly eval-mode BN (ours)", ["GANomaly train-mode BN, batch 1 (reference)"]))
    if "VAE" in only:
        pairs.append(("VAE", "VAE posterior mean (ours)", [f"VAE sampled z, seed {s} (reference)" for s in vae_seeds]))
    for row, (ours_name, variants) in trained_specs.items():
        if row in only:
            pairs.append((row, ours_name, [n for n, _, _ in variants]))

    tables: list[pd.DataFrame] = []
    checks: list[str] = []
    timings: dict[str, float] = {}

    def timed(key: str, seconds: float) -> None:
        timings[key] = timings.get(key, 0.0) + seconds

    for fold in folds:
        manifest = results / "splits" / f"fold-{fold}.csv"
        rows = read_manifest(manifest)
        rows = rows[rows["part"] == "test"].reset_index(drop=True)
        protocol = protocol or str(rows["protocol"].iloc[0])
        data = load_slices(rows)

        def existing(row: str):
            return load_trained(results / "models" / row / f"fold-{fold}" / "model.pt", device="cpu")

        def check_against_pipeline(row: str, scores: np.ndarray) -> None:
            ref = pd.read_csv(results / "scores" / row / f"fold-{fold}.csv", dtype={"sop_uid": str})
            ref = ref[ref["part"] == "test"].set_index("sop_uid")["score"].reindex(rows["sop_uid"]).to_numpy()
            d = np.abs(ref - scores)
            checks.append(f"{row} fold {fold}: ours re-scored vs results/scores: max |diff| {np.nanmax(d):.2g} "
                          f"(relative {np.nanmax(d / np.maximum(np.abs(ref), 1e-12)):.2g})")

        def add(variant: str, scores: np.ndarray) -> None:
            tables.append(score_table(rows, variant, scores))

        if "GANomaly" in only:
            t0 = time.perf_counter()
            method, _ = existing("GANomaly")
            s = score_batches(method, data, batch_size)
            check_against_pipeline("GANomaly", s)
            add("GANomaly eval-mode BN (ours)", s)
            add("GANomaly train-mode BN, batch 1 (reference)", ganomaly_train_mode_scores(method, data))
            timed("GANomaly scoring", time.perf_counter() - t0)

        if "VAE" in only:
            t0 = time.perf_counter()
            method, _ = existing("VAE")
            if method.params["sample_at_test"]:
                raise SystemExit("the existing VAE models already sample at test time: nothing to compare")
            s = score_batches(method, data, batch_size)
            check_against_pipeline("VAE", s)
            add("VAE posterior mean (ours)", s)
            method.params["sample_at_test"] = True
            for seed in vae_seeds:
                torch.manual_seed(seed)
                add(f"VAE sampled z, seed {seed} (reference)", score_batches(method, data, batch_size))
            timed("VAE scoring", time.perf_counter() - t0)

        for row, (ours_name, variants) in trained_specs.items():
            if row not in only:
                continue
            t0 = time.perf_counter()
            method, rec = existing(row)
            s = score_batches(method, data, batch_size)
            check_against_pipeline(row, s)
            add(ours_name, s)
            timed(f"{row} scoring", time.perf_counter() - t0)
            for name, change, seed_offset in variants:
                params = {**rec["params"], **change}
                seed = int(rec["seed"]) + seed_offset
                tag = "-".join(f"{k}={v}" for k, v in change.items()) or f"seed{seed}"
                path, secs = trained_variant(row, params, seed, manifest,
                                             work / "models" / f"{row}-{tag}" / f"fold-{fold}")
                timed(f"{row} training", secs)
                t0 = time.perf_counter()
                m2, rec2 = load_trained(path, device="cpu")
                # the very same params apart from the changed keys (keys the old record lacks: defaults)
                differ = {k for k in set(rec["params"]) | set(rec2["params"])
                          if rec["params"].get(k, m2.full_defaults().get(k)) != rec2["params"].get(k)}
                if differ != {k for k in change if rec["params"].get(k, m2.full_defaults().get(k)) != change[k]}:
                    raise SystemExit(f"{path}: params differ from the existing model's in {sorted(differ)}")
                add(name, score_batches(m2, data, batch_size))
                timed(f"{row} scoring", time.perf_counter() - t0)
        print(f"fold {fold} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    table = pd.concat(tables, ignore_index=True)
    aucs = fold_aucs(table, protocol, how, top_k)
    per = aucs.set_index(["method", "fold"])
    scan_name = f"top{top_k}" if how == "topk" else how
    metrics = [("AUC_P", f"slice AUC ({protocol} labels)"), ("AUC_S", "slice AUC (slice truth)"),
               ("AUC_scan", f"scan AUC ({scan_name})")]

    print()
    print(f"Test parts of folds {' '.join(map(str, folds))}; AUC in %, mean +- std over folds (ddof={ddof}); "
          f"diff = variant - ours on the same fold, mean +- std over folds. `{protocol}` labels: the manifests' "
          "`label` (Table 1's AUC column); slice truth: Table 1's AUC (slice); scan: slice scores "
          f"aggregated by {scan_name} per scan.")
    print()
    head = ("| row | variant | " + " | ".join(t for _, t in metrics) + " | "
            + " | ".join(f"diff {t}" for _, t in metrics) + " |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    flagged = []
    for row, ours, others in pairs:
        base = per.loc[ours]
        cells = " | ".join(mean_std(base[k].to_numpy(), ddof) for k, _ in metrics)
        print(f"| {row} | {ours} | {cells} | " + " | ".join("" for _ in metrics) + " |")
        for name in others:
            v = per.loc[name]
            d = {k: v[k].reindex(base.index).to_numpy() - base[k].to_numpy() for k, _ in metrics}
            cells = " | ".join(mean_std(v[k].to_numpy(), ddof) for k, _ in metrics)
            dcells = " | ".join(signed_mean_std(d[k], ddof) for k, _ in metrics)
            print(f"| {row} | {name} | {cells} | {dcells} |")
            for k, title in metrics:
                dd = d[k][np.isfinite(d[k])]
                sd = np.nanstd(base[k].to_numpy(), ddof=ddof)
                if len(dd) and abs(dd.mean()) > sd:
                    flagged.append(f"{name}: {title} moves by {dd.mean():+.1f} points, more than ours' fold std "
                                   f"{sd:.1f}")
        if row == "VAE" and len(others) > 1:
            stacked = np.stack([per.loc[n][[k for k, _ in metrics]].to_numpy() for n in others])  # seeds x folds x m
            spread = stacked.std(axis=0, ddof=0)        # per fold, over seeds
            rng = stacked.max(axis=0) - stacked.min(axis=0)
            mean_of_seeds = stacked.mean(axis=0)
            d = mean_of_seeds - base[[k for k, _ in metrics]].to_numpy()
            cells = " | ".join(mean_std(mean_of_seeds[:, j], ddof) for j in range(len(metrics)))
            dcells = " | ".join(signed_mean_std(d[:, j], ddof) for j in range(len(metrics)))
            print(f"| VAE | sampled z, mean of {len(others)} seeds' AUCs | {cells} | {dcells} |")
            sp = " | ".join(f"{spread[:, j].mean():.2f} (max range {rng[:, j].max():.2f})"
                            for j in range(len(metrics)))
            print(f"| VAE | sampled z: std over seeds within a fold, mean over folds | {sp} | "
                  + " | ".join("" for _ in metrics) + " |")
    print()
    print("Per fold (AUC in %):")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 500):
        wide = aucs.pivot_table(index="method", columns="fold", values=["AUC_P", "AUC_S", "AUC_scan"])
        order = [n for _, o, others in pairs for n in [o] + others]
        print(wide.reindex(order).round(1).to_string())
    print()
    print("Checks:")
    for c in checks:
        print(f"  {c}")
    if flagged:
        print()
        print("Mean paired difference larger than ours' fold std:")
        for f in flagged:
            print(f"  {f}")
    print()
    print("Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"total seconds: {time.perf_counter() - t_start:.0f}")


if __name__ == "__main__":
    main()
