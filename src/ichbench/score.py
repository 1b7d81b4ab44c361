"""Scoring a trained method on a fold's validation and test slices, in batches.

Writes a per-slice score table (patient, series, SOP UID, slice index, part, label, score) and the
pixel maps of the Figure 1 cases that lie in this fold's test part.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import DeviceBatches, load_slices, read_manifest
from .train import load_trained

SCORE_COLUMNS = ["method", "fold", "part", "patient_id", "series_uid", "sop_uid", "slice_index", "scan_label",
                 "slice_truth", "label", "score"]


def score_fold(model_path, manifest, out_csv, out_maps, *, figure_cases=None, device: str = "auto",
               batch_size: int = 128, threads: int | None = None) -> pd.DataFrame:
    if threads:
        torch.set_num_threads(threads)
    method, rec = load_trained(model_path, device)
    rows = read_manifest(manifest)
    rows = rows[rows["part"].isin(["val", "test"])].reset_index(drop=True)
    data = load_slices(rows)
    batches = DeviceBatches(data, method.device, mask_keys=type(method).needs)
    cases = pd.DataFrame()
    if figure_cases is not None and Path(figure_cases).exists():
        fc = pd.read_csv(figure_cases, dtype={"sop_uid": str})
        wanted = set(fc["sop_uid"])
        cases = rows[(rows["part"] == "test") & rows["sop_uid"].isin(wanted)]
    want_map = np.zeros(len(rows), bool)
    want_map[cases.index.to_numpy()] = True
    scores = np.empty(len(rows), np.float64)
    maps: dict[int, np.ndarray] = {}
    for start in range(0, len(rows), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(rows)))
        s, m = method.score(batches.batch(idx))
        scores[idx.numpy()] = s.detach().double().cpu().numpy()
        sel = np.nonzero(want_map[idx.numpy()])[0]
        for j in sel:
            maps[int(idx[j])] = m[j].detach().float().cpu().numpy()
    if not np.all(np.isfinite(scores)):
        bad = int((~np.isfinite(scores)).sum())
        raise FloatingPointError(f"{rec['method']}: {bad} non-finite slice scores in {manifest}")
    fold = int(rows["fold"].iloc[0])
    table = rows.assign(method=rec["method"], score=scores)[SCORE_COLUMNS]
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False, float_format="%.8g")
    order = sorted(maps)
    np.savez_compressed(
        out_maps,
        sop_uids=np.array([rows.loc[i, "sop_uid"] for i in order], dtype=str),
        maps=np.stack([maps[i] for i in order]).astype(np.float32) if order else np.zeros((0, 1, 1), np.float32),
        method=np.array(rec["method"]), fold=np.int32(fold),
        record=np.array(json.dumps(rec, default=str)),
    )
    return table
