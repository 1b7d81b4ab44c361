#!/usr/bin/env python
"""Where a reconstruction row's slice score comes from, fold by fold, on a prepared workflow folder.

Trains one method (default AE) on the `train` part of each fold manifest with the config's recipe
(or overrides), scores the fold's test slices, and prints the test AUC of the paper's slice score
(mean of the pixel map over the image) under both label protocols, computed as Table 1 does: `P`, the
manifests' protocol (`paper` by default: every slice of a pathological scan is anomalous), and `S`, slice
ground truth where it is known. It also prints how that mean splits
into the extracranial band (head minus brain mask), the brain and the ground-truth hemorrhage,
and the AUCs of the brain-only mean, a diagnostic that is not the paper's score.

    # prepare the data and folds once, then e.g.
    .venv/bin/snakemake --cores 2 results/splits/fold-0.csv
    .venv/bin/python scripts/ae_signal.py --folds 0,1 --set epochs=12

Models go to `<workdir>/results/ae_signal/<method>-<tag>/fold-<k>/` and are reused when present.
Used to size the synthetic default (see README, "The built-in synthetic head CT").
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ichbench import config as cfgmod
from ichbench.evaluation.aggregate import fold_metrics
from ichbench.cohort.splits import read_manifest
from ichbench.training.data import DeviceBatches, load_slices
from ichbench.training.train import load_trained, train


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def fold_report(model_path: Path, manifest: Path, batch_size: int = 128) -> dict:
    method, _ = load_trained(model_path, "cpu")
    rows = read_manifest(manifest)
    rows = rows[rows["part"] == "test"].reset_index(drop=True)
    data = load_slices(rows, extra=("gt_mask",))
    batches = DeviceBatches(data, torch.device("cpu"), mask_keys=("head_mask", "brain_mask", "gt_mask"))
    parts: dict[str, list] = {k: [] for k in ("score", "band", "brain", "lesion", "brain_mean")}
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = batches.batch(torch.arange(start, min(start + batch_size, len(rows))))
            score, maps = method.score(batch)
            maps = maps.float()
            if maps.dim() == 4:
                maps = maps.mean(1)
            pixels = maps.shape[-1] * maps.shape[-2]
            head, brain, gt = (batch[k].float() for k in ("head_mask", "brain_mask", "gt_mask"))
            parts["score"].append(score.double().numpy())
            parts["band"].append(((maps * (head - brain).clamp(min=0)).sum((1, 2)) / pixels).numpy())
            parts["brain"].append(((maps * brain).sum((1, 2)) / pixels).numpy())
            parts["lesion"].append(((maps * gt).sum((1, 2)) / pixels).numpy())
            parts["brain_mean"].append(((maps * brain).sum((1, 2)) / brain.sum((1, 2)).clamp(min=1)).numpy())
    v = {k: np.concatenate(p) for k, p in parts.items()}
    lesion_slices = rows["slice_truth"].to_numpy() == 1

    def aucs(score: np.ndarray) -> tuple[float, float]:
        """Test AUC under the `label` column and against slice truth, computed as Table 1 does."""
        protocol = str(rows["protocol"].iloc[0])
        m = fold_metrics(rows.assign(method="-", score=score), protocol)
        auc = m[m["metric"] == "AUC"].set_index("protocol")["value"]
        return float(auc[protocol]), float(auc.get("slice", np.nan))

    (auc_p, auc_s), (brain_p, brain_s) = aucs(v["score"]), aucs(v["brain_mean"])
    return {
        "test_slices": len(rows), "AUC_P": auc_p, "AUC_S": auc_s, "brain_AUC_P": brain_p, "brain_AUC_S": brain_s,
        "band_share": 100 * v["band"].sum() / v["score"].sum(),
        "brain_share": 100 * v["brain"].sum() / v["score"].sum(),
        "outside_head_share": 100 * (1 - (v["band"].sum() + v["brain"].sum()) / v["score"].sum()),
        "lesion_share_on_lesion_slices": (100 * v["lesion"][lesion_slices].sum() / v["score"][lesion_slices].sum()
                                          if lesion_slices.any() else float("nan")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=".", help="workflow folder with config.yaml and results/splits/")
    ap.add_argument("--method", default="AE")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="hyper-parameter override, e.g. epochs=24 (JSON values)")
    ap.add_argument("--tag", default=None, help="name of this setting (default: from --set)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    os.chdir(a.workdir)
    cfg = cfgmod.load("config.yaml")
    params = cfgmod.method_params(cfg, a.method)
    for item in a.set:
        key, _, val = item.partition("=")
        params[key] = _value(val)
    tag = a.tag or ("-".join(s.replace("=", "") for s in a.set) or cfg["recipe"])
    torch.set_num_threads(a.threads)
    rows = []
    for fold in (int(f) for f in a.folds.split(",")):
        manifest = Path(f"results/splits/fold-{fold}.csv")
        if not manifest.exists():
            raise SystemExit(f"{manifest}: missing; run `snakemake --cores 2 {manifest}` in {a.workdir} first")
        out = Path(f"results/ae_signal/{a.method}-{tag}/fold-{fold}")
        t0 = time.perf_counter()
        if not (out / "model.pt").exists():
            train(a.method, params, manifest, out, device="cpu", seed=cfg["train"]["seed"], checkpoint_every=0,
                  threads=a.threads, progress=False)
        rep = {"fold": fold, **fold_report(out / "model.pt", manifest), "seconds": time.perf_counter() - t0}
        rows.append(rep)
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.items()), flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{a.method} ({tag}), mean +- std over {len(table)} folds:")
    for col in ("AUC_P", "AUC_S", "brain_AUC_P", "brain_AUC_S", "band_share", "brain_share", "outside_head_share",
                "lesion_share_on_lesion_slices"):
        print(f"  {col:32s} {table[col].mean():5.1f} +- {table[col].std(ddof=0):4.1f}")


if __name__ == "__main__":
    main()
