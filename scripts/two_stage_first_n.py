"""Measures the two-stage rows' `train_first_n` (the reference's `Repeat(train_data, 3000)`: update steps on
the first N training slices in manifest order, the Gaussian on all) against ours (steps on every training slice),
on the same folds, seeds and step counts: test AUC (the configured protocol and slice level) per fold and the
paired difference. Prints a markdown table with the command, machine and date.

    .venv/bin/python scripts/two_stage_first_n.py --splits results/splits --row CutPaste-2stage --first-n 60
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from ichbench.bench.machine import machine
from ichbench.evaluation.aggregate import fold_metrics
from ichbench.training.score import score_fold
from ichbench.training.train import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="results/splits", help="folder with fold-<k>.csv manifests")
    ap.add_argument("--row", default="CutPaste-2stage", choices=["CutPaste-2stage", "AnatPaste"])
    ap.add_argument("--first-n", type=int, default=60, help="N of train_first_n (3000 in the reference)")
    ap.add_argument("--steps", type=int, default=24, help="update steps per run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--folds", type=int, nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    manifests = sorted(Path(a.splits).glob("fold-*.csv"))
    if a.folds is not None:
        manifests = [m for m in manifests if int(m.stem.split("-")[1]) in a.folds]
    if not manifests:
        sys.exit(f"{a.splits}: no fold-<k>.csv manifests (run the pipeline's split step first)")
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for man in manifests:
            n_train = int((pd.read_csv(man, usecols=["part"])["part"] == "train").sum())
            for variant, first_n in (("ours (all training slices)", None), (f"first {a.first_n} (reference)", a.first_n)):
                params = {"epochs": 1, "steps_per_epoch": a.steps, "batch_size": a.batch_size, "train_first_n": first_n}
                out = Path(tmp) / f"{man.stem}-{first_n}"
                train(a.row, params, man, out, device="cpu", seed=a.seed, progress=False, threads=a.threads)
                table = score_fold(out / "model.pt", man, out / "scores.csv", out / "maps.npz", device="cpu",
                                   threads=a.threads)
                m = fold_metrics(table, "paper")
                m = m[(m["part"] == "test") & (m["metric"] == "AUC")]
                rows.append({"fold": man.stem, "variant": variant, "n_train": n_train,
                             **{f"AUC_{p}": v for p, v in zip(m["protocol"], m["value"])}})
                print(rows[-1], flush=True)
    d = pd.DataFrame(rows)
    print(f"\n`{' '.join(['python', 'scripts/two_stage_first_n.py'] + (argv or sys.argv[1:]))}`; {a.row}, "
          f"{a.steps} steps at batch {a.batch_size}, seed {a.seed}; {machine()}, "
          f"{a.threads} thread(s); {datetime.date.today()}; {time.perf_counter() - t0:.0f} s\n")
    cols = [c for c in d if c.startswith("AUC_")]
    print("| variant | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for v, g in d.groupby("variant", sort=False):
        print(f"| {v} | " + " | ".join(f"{g[c].mean():.1f} +- {g[c].std(ddof=0):.1f}" for c in cols) + " |")
    ours, ref = (d[d["variant"] == v].reset_index(drop=True) for v in d["variant"].unique())
    print("| difference (reference - ours), paired | " + " | ".join(
        f"{(ref[c] - ours[c]).mean():+.1f} +- {(ref[c] - ours[c]).std(ddof=0):.1f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
