"""The maps of a fold's worst misses at the validation threshold, for `results/errors/`: a second small scoring pass.

Once the fold is scored, `write_error_maps` takes its validation threshold and its top `n` false negatives
and false positives (`evaluation.errors.rank_cases`, on the scores as the score CSV holds them, so that the
pooled cases of `ichbench errors` lie among them), scores just those slices again to get their maps
(at most 2 n slices: cheaper than keeping every map of the loop), and writes `fold-K.errors.npz`:
sop_uids, maps, kind, score, threshold, method, fold and `map_is_score` (False: the row's figure map, e.g.
Grad-CAM, is not the source of its score).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..evaluation import errors


def write_error_maps(out_npz, method, batches, rows: pd.DataFrame, scores_csv, *, method_name: str, fold: int,
                     map_is_score: bool, n: int = 5) -> pd.DataFrame:
    """`rows`: the fold's manifest rows in the order of `batches`; `scores_csv`: the score table just written.
    -> the cases whose maps were kept (COLUMNS of `errors`, less the subtypes)."""
    table = pd.read_csv(scores_csv, dtype={"sop_uid": str, "patient_id": str, "series_uid": str})
    pos = pd.Series(np.arange(len(rows)), index=rows["sop_uid"].to_numpy())
    test = table[table["part"] == "test"].copy()
    idx_test = pos.loc[test["sop_uid"].to_numpy()].to_numpy()
    need = ((test["scan_label"] == 1) & (test["slice_truth"] == 1)).to_numpy()
    area = np.full(len(test), np.nan)
    area[need] = errors.bleed_areas(rows.iloc[idx_test[need]])
    cases = errors.rank_cases(test.assign(bleed_area_mm2=area), errors.fold_thresholds(table), n)
    ii = pos.loc[cases["sop_uid"].to_numpy()].to_numpy().astype(np.int64)
    parts = [method.score(batches.batch(torch.from_numpy(ii[k:k + 16])))[1].detach().float().cpu().numpy()
             for k in range(0, len(ii), 16)]
    maps = np.concatenate(parts) if parts else np.zeros((0, 1, 1), np.float32)
    Path(out_npz).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_npz, sop_uids=cases["sop_uid"].to_numpy(str), maps=maps.astype(np.float32),
                        kind=cases["kind"].to_numpy(str), score=cases["score"].to_numpy(np.float64),
                        threshold=cases["threshold"].to_numpy(np.float64), method=np.array(method_name),
                        fold=np.int32(fold), map_is_score=np.bool_(map_is_score))
    return cases
