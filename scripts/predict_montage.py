"""Draw docs/img/predict_montage.png: `ichbench export` and `ichbench predict` on a synthetic scan.

A small synthetic cohort is indexed and cached as the pipeline does it, the AE is trained on its normal scans with
the demo recipe (12 epochs), exported from a results folder laid out as the pipeline's, and run on one pathological
scan that it never saw. Only synthetic data: nothing in the picture comes from a patient.

    .venv/bin/python scripts/predict_montage.py [--out docs/img/predict_montage.png] [--work /tmp/predict-montage]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import pydicom
import torch
from PIL import Image

from ichbench.cache.preprocess import build_index, preprocess_shard
from ichbench.inputs.windowing import PAPER_WINDOWS
from ichbench.predict.export import export_model
from ichbench.predict.run import predict
from ichbench.synthetic import SyntheticConfig, generate
from ichbench.training.train import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "predict_montage.png"), help="the picture")
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--epochs", type=int, default=12, help="AE epochs (the demo recipe's 12)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(a.work or tempfile.mkdtemp(prefix="predict-montage-"))
    syn = work / "synthetic"
    if not (syn / "cq500_labels.csv").exists():
        generate(syn, SyntheticConfig(seed=5, n_normal=8, n_pathological=3, n_slices=(20, 24)), workers=2)
    labels = pd.read_csv(syn / "cq500_labels.csv", sep=";")
    sick = {f"SYN-CT-{n.removeprefix('CT_')}" for n in labels.loc[labels["is_pathl"] == 1, "name"]}
    data = work / "results" / "data"
    data.mkdir(parents=True, exist_ok=True)
    build_index(syn / "dicom", data / "index.csv", data / "series_candidates.csv", data / "rejected_index.csv")
    shard = data / "cache" / "shard-0"
    table = preprocess_shard(data / "index.csv", data / "series_candidates.csv", shard, shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=128)
    normal = table[~table["patient_id"].isin(sick)]
    rows = [{"patient_id": s["patient_id"], "study_uid": s["study_uid"], "series_uid": s["series_uid"],
             "sop_uid": f"{s['series_uid']}#{k}", "npz": str(shard / s["npz"]), "slice_index": k, "part": "train",
             "label": 0, "fold": 0} for _, s in normal.iterrows() for k in range(int(s["n_slices"]))]
    (work / "results" / "splits").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(work / "results" / "splits" / "fold-0.csv", index=False)
    train("AE", {"epochs": a.epochs, "batch_size": 32}, work / "results" / "splits" / "fold-0.csv",
          work / "results" / "models" / "AE" / "fold-0", device="cpu", progress=False, checkpoint_every=0)
    model = work / "ae.pt"
    export_model(work / "results", "AE", 0, model, preprocess={}, software={"ichbench": "docs picture"})
    scan = sorted({f.parent for f in (syn / "dicom").rglob("*.dcm")
                   if str(pydicom.dcmread(f, stop_before_pixels=True).PatientID) in sick})[0]
    predict(model, work / "out", dicom_dir=scan, device="cpu")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    # a 128-colour palette keeps the picture small for the docs (the montage itself is full colour)
    Image.open(work / "out" / "montage.png").convert("RGB").quantize(colors=128).save(a.out, optimize=True)
    print(f"{a.out}: AE ({a.epochs} epochs on {len(rows)} normal synthetic slices) on a pathological synthetic scan")


if __name__ == "__main__":
    main()
