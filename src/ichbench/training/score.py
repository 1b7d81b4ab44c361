"""Scoring a trained method on a fold's validation and test slices, in batches.

Writes a per-slice score table (patient, series, SOP UID, slice index, part, label, score, and
`slice_score_brain`: the mean of the map over the brain mask, NaN for rows without pixel scores), the
pixel maps of the Figure 1 cases that lie in this fold's test part and, with `out_loc`, the
localisation metrics of all test slices with pixel truth (localisation.py); with `out_errors`, the maps of
the fold's worst misses at its validation threshold (error_maps.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..cohort.splits import read_manifest
from ..evaluation import localisation
from ..methods.contract import ContractError, check_score_batch
from .data import DEFAULT_BUDGET_GB, DeviceBatches, open_slices
from .error_maps import write_error_maps
from .train import load_trained

SCORE_COLUMNS = ["method", "fold", "part", "patient_id", "series_uid", "sop_uid", "slice_index", "scan_label",
                 "slice_truth", "label", "score", "slice_score_brain"]


#: slices per scoring batch for `batch_size="auto"`, by device type. On a CPU, batches of 128 make activations
#: beyond the C heap's 32 MiB limit (`ichbench.training.heap`) that are mapped afresh and faulted in for every batch:
#: 32 scored the default run's folds 15-40 % faster (DAE 11.7 -> 7.0 s) with the same scores, maps and
#: localisation output byte for byte; a GPU takes the larger batch.
AUTO_BATCH = {"cuda": 128, "cpu": 32}


def resolve_batch_size(batch_size: int | str, device: torch.device) -> int:
    """`auto` -> AUTO_BATCH for the device type (128 for one not listed); an integer >= 1 as it is."""
    if isinstance(batch_size, str) and batch_size.strip().lower() == "auto":
        return AUTO_BATCH.get(device.type, 128)
    try:
        value = int(batch_size)
    except (TypeError, ValueError):
        raise ValueError(f"score batch size must be 'auto' or a whole number >= 1, not {batch_size!r}") from None
    if value < 1 or value != float(batch_size):
        raise ValueError(f"score batch size must be 'auto' or a whole number >= 1, not {batch_size!r}")
    return value


def score_fold(model_path, manifest, out_csv, out_maps, *, figure_cases=None, device: str = "auto",
               batch_size: int | str = "auto", threads: int | None = None, out_loc=None,
               out_errors=None, error_cases: int = 5,
               pixel_negative_rate: float = 0.0625, loc_seed: int = 0, pixel_specificity: float = 0.999,
               in_memory: str | bool = "auto", memory_budget_gb: float = DEFAULT_BUDGET_GB,
               test_manifest=None) -> pd.DataFrame:
    """Score the val and test parts of a fold manifest (see the module docstring); `in_memory`,
    `memory_budget_gb`: load the slices, or gather each batch from the slice store (`data.open_slices`).
    `test_manifest`: an external set's manifest (cohort/external.py) whose slices replace the fold's test part
    (the fold's validation part stays: it sets the pixel and operating thresholds)."""
    if threads:
        torch.set_num_threads(threads)
    method, rec = load_trained(model_path, device)
    batch_size = resolve_batch_size(batch_size, method.device)
    rows = read_manifest(manifest)
    rows = rows[rows["part"].isin(["val", "test"])].reset_index(drop=True)
    if test_manifest is not None:
        test = read_manifest(test_manifest).assign(fold=int(rows["fold"].iloc[0]), part="test")
        rows = pd.concat([rows[rows["part"] == "val"], test], ignore_index=True)
        manifest = f"{manifest} + {test_manifest}"
    data = open_slices(rows, extra=("gt_mask",), in_memory=in_memory, memory_budget_gb=memory_budget_gb,
                       where=f"{manifest} (validation and test slices)")
    fold = int(rows["fold"].iloc[0])
    pixel = localisation.has_pixel_scores(rec["method"], type(method))
    brain_scores = np.full(len(rows), np.nan)
    # pixel truth: test slices of normal scans (all normal) and of series with ground truth
    truth_known = (rows["part"] == "test").to_numpy() & (
        (rows["scan_label"] == 0).to_numpy() | localisation.has_gt_per_row(rows))
    acc = localisation.PixelAccumulator(pixel_negative_rate, loc_seed, fold, pixel_specificity) if pixel else None
    val_normal = ((rows["part"] == "val") & (rows["scan_label"] == 0)).to_numpy()   # they set the pixel threshold
    loc_error = None
    batches = DeviceBatches(data, method.device, mask_keys=type(method).needs)
    cases = pd.DataFrame()
    if figure_cases is not None and Path(figure_cases).exists():
        fc = pd.read_csv(figure_cases, dtype={"sop_uid": str})
        wanted = set(fc["sop_uid"])
        cases = rows[(rows["part"] == "test") & rows["sop_uid"].isin(wanted)]
    want_map = np.zeros(len(rows), bool)
    want_map[cases.index.to_numpy()] = True
    brain_all = data.masks["brain_mask"]
    gt_all = data.masks["gt_mask"]
    size = int(data.images.shape[-1])
    not_finite = None          # whether a map held NaN or inf, on the device (read once, after the fold)
    score_parts: list[torch.Tensor] = []
    brain_parts: list[torch.Tensor] = []
    maps: dict[int, np.ndarray] = {}
    for start in range(0, len(rows), batch_size):
        ii = np.arange(start, min(start + batch_size, len(rows)))
        s, m = method.score(batches.batch(torch.from_numpy(ii)))
        check_score_batch(rec["method"], s, m, len(ii), size)      # shapes and dtypes: no device sync
        if not_finite is None:
            not_finite = torch.zeros((), dtype=torch.bool, device=m.device)
        not_finite |= ~torch.isfinite(m).all()
        # maps stay on the device: only the slice scores, brain means, the figure cases' maps and the
        # localisation sample leave it, and only once the fold is scored (scores, brain means) or per batch
        score_parts.append(s.detach().double())
        sel = np.nonzero(want_map[ii])[0]
        case_maps = m.detach()[torch.from_numpy(sel).to(m.device)].float() if len(sel) else None
        if pixel:
            m = m.detach().float()
            if m.ndim == 3 and tuple(m.shape[1:]) == brain_all.shape[1:]:
                brain_parts.append(localisation.brain_mean(m, brain_all[ii]))
                k = truth_known[ii]
                if k.any() and loc_error is None:
                    acc.add(m[torch.from_numpy(np.nonzero(k)[0]).to(m.device)], gt_all[ii][k])
                vn = val_normal[ii]
                if vn.any() and loc_error is None:
                    acc.add_validation_normals(m[torch.from_numpy(np.nonzero(vn)[0]).to(m.device)])
            elif loc_error is None:
                loc_error = f"maps of shape {tuple(m.shape[1:])} do not match the slices {brain_all.shape[1:]}"
        if case_maps is not None:
            for j, mp in zip(sel, case_maps.cpu().numpy()):
                maps[int(ii[j])] = mp
    scores = torch.cat(score_parts).cpu().numpy() if score_parts else np.empty(0, np.float64)
    if brain_parts and len(brain_parts) == len(score_parts):
        brain_scores = torch.cat(brain_parts).cpu().numpy()
    if not np.all(np.isfinite(scores)):
        bad = int((~np.isfinite(scores)).sum())
        raise ContractError(f"row {rec['method']!r}: {bad} NaN or infinite slice scores in {manifest}")
    if not_finite is not None and bool(not_finite):
        raise ContractError(f"row {rec['method']!r}: its anomaly maps hold NaN or infinite values in {manifest}")
    table = rows.assign(method=rec["method"], score=scores, slice_score_brain=brain_scores)[SCORE_COLUMNS]
    if out_loc:
        if not pixel:
            result = localisation.unavailable("the slice score is not the mean of a pixel map")
        elif loc_error:
            result = localisation.unavailable(loc_error)
        else:
            result = acc.result()
        localisation.write(out_loc, result, method=rec["method"], fold=fold, seed=int(loc_seed))
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
    if out_errors:      # the maps of this fold's worst misses at its validation threshold (results/errors/)
        write_error_maps(out_errors, method, batches, rows, out_csv, method_name=rec["method"], fold=fold,
                         map_is_score=pixel, n=error_cases)
    return table
