"""One file that carries a trained row out of the pipeline: weights, hyper-parameters and the preprocessing it was trained with.

    ichbench export --method AE-U --fold 0 --out ae-u.pt          # reads results/models/AE-U/fold-0/model.pt

The file (a torch pickle of tensors and plain values only, opened with the safe loader of
`ichbench.training.modelfile`) holds:

    format          FORMAT
    row, fold       the Table 1 row and the fold it was trained on
    record          the training run record of model.pt (resolved hyper-parameters, code digest, commit, ...)
    state           the weights and the row's fitted extra state (no optimiser state)
    preprocessing   what turns a series into the slices the row saw: windows, image size and channels (read
                    from the cache the fold was trained on), the series choice (min_slices, min_extent_mm,
                    bone_patterns, axial_tolerance_deg), the non-HU policy, and the fixed rules of the code
                    (HU check, head and brain mask thresholds, padding value, resize and quantisation)
    scan_aggregation how slice scores become a scan score (table.scan_aggregation, table.scan_top_k)
    reference       the fold's validation normal slice scores (sorted), where results/scores has them: a new
                    slice's score is put among them as a percentile
    software        ichbench version and commit of the export; the run record has those of the training
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..cache.preprocess import AIR_PAD_HU
from ..cohort.splits import read_manifest
from ..errors import ModelFileError
from ..inputs import inputcheck, masks
from ..training.modelfile import load_model_file

log = logging.getLogger(__name__)

FORMAT = "ichbench-exported-model/1"
#: the `preprocess:` keys of the configuration that the series choice and the HU policy of a new scan follow
SERIES_KEYS = ("min_slices", "min_extent_mm", "bone_patterns", "axial_tolerance_deg", "non_hu")
SERIES_DEFAULTS = {"min_slices": 8, "min_extent_mm": 60.0, "bone_patterns": [], "axial_tolerance_deg": 30.0,
                   "non_hu": "reject"}


def code_rules() -> dict[str, Any]:
    """The preprocessing rules fixed in the code (not configurable): compared at predict time with the export's."""
    return {
        "hu_check": {"air_max_hu": inputcheck.HU_AIR_MAX, "bone_min_hu": inputcheck.HU_BONE_MIN,
                     "percentiles": [0.1, 99.9]},
        "masks": {"air_hu": masks.AIR_HU, "bone_hu": masks.BONE_HU, "brain_hu": list(masks.BRAIN_HU)},
        "square_padding_hu": AIR_PAD_HU,
        "resize": "area averaging down, bilinear up; masks set where >= half covered",
        "quantise": "uint8 q = round((x + 1) * 127.5), x = q / 127.5 - 1",
    }


def model_file(results: str | os.PathLike, method: str, fold: int) -> Path:
    return Path(results) / "models" / method / f"fold-{int(fold)}" / "model.pt"


def _trained(results: Path) -> list[str]:
    return sorted(f"{p.parent.parent.name} fold {p.parent.name.removeprefix('fold-')}"
                  for p in (results / "models").glob("*/fold-*/model.pt"))


def _npz_path(value: str, results: Path, manifest: Path) -> Path:
    """A manifest's `npz` entry (relative to the workflow's folder, the one above results/) as a path."""
    p = Path(value)
    for cand in (p, results.parent / p, manifest.parent.parent.parent / p):
        if cand.is_file():
            return cand
    raise ModelFileError(f"{manifest}: the cached slices {value} it names are gone, so the windows and image size "
                         "the model was trained with cannot be read; rerun the pipeline's preprocess step")


def cache_preprocessing(npz: Path) -> dict[str, Any]:
    """Windows, image size, channels and input kind of one cached series (what the row was trained on)."""
    with np.load(npz, allow_pickle=False) as z:
        if "windows" not in z or "image_size" not in z:
            raise ModelFileError(f"{npz}: a cache file without its windows and image size (written by an older "
                                 "ichbench); rerun the preprocess step")
        return {"windows": json.loads(str(z["windows"])), "image_size": int(z["image_size"]),
                "channels": int(z["images"].shape[1]), "trained_on": str(z["source"]) if "source" in z else "dicom"}


def _reference(results: Path, method: str, fold: int) -> dict[str, Any] | None:
    path = results / "scores" / method / f"fold-{int(fold)}.csv"
    if not path.is_file():
        return None
    t = pd.read_csv(path, usecols=lambda c: c in {"part", "scan_label", "score"})
    v = np.sort(t.loc[(t["part"] == "val") & (t["scan_label"] == 0), "score"].to_numpy(float))
    if not len(v):
        return None
    return {"what": f"slice scores of fold {fold}'s validation normal scans", "n": int(len(v)),
            "scores": torch.from_numpy(v)}


def _plain(value):
    """Run-record values as plain JSON types (older records hold torch's version class)."""
    return json.loads(json.dumps(value, default=str))


def export_model(results: str | os.PathLike, method: str, fold: int, out: str | os.PathLike, *,
                 preprocess: dict[str, Any], table: dict[str, Any] | None = None,
                 software: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the exported model of `method` on `fold` from a results folder; returns what was written (less
    the weights). `preprocess`, `table`: the run's `preprocess:` and `table:` configuration blocks."""
    results = Path(results)
    path = model_file(results, method, fold)
    if not path.is_file():
        have = _trained(results)
        raise ModelFileError(
            f"{path}: no trained model of {method} on fold {fold}, nothing to export (train it first, e.g. "
            f"`snakemake {path.relative_to(results.parent) if results.parent != Path() else path}`); "
            + (f"trained models under {results}: {', '.join(have)}" if have else f"{results} holds no trained model"))
    blob = load_model_file(path)
    record, state = blob.get("record"), blob.get("state")
    if not isinstance(record, dict) or not isinstance(state, dict) or "image_shape" not in record:
        raise ModelFileError(f"{path}: not a model.pt written by `ichbench train` (no run record and weights)")
    if record.get("method") != method:
        raise ModelFileError(f"{path}: holds row {record.get('method')!r}, not {method!r}")
    manifest = results / "splits" / f"fold-{int(fold)}.csv"
    if not manifest.is_file():
        raise ModelFileError(f"{manifest}: the fold's manifest is missing, so the cache the model was trained on "
                             "(windows, image size) cannot be found; rerun the pipeline's split step")
    rows = read_manifest(manifest)
    train_rows = rows[rows["part"] == "train"]
    if train_rows.empty:
        raise ModelFileError(f"{manifest}: no training slices, so it is not the fold {path} was trained on")
    cached = cache_preprocessing(_npz_path(str(train_rows["npz"].iloc[0]), results, manifest))
    c, s, _ = record["image_shape"]
    if (cached["channels"], cached["image_size"]) != (int(c), int(s)):
        raise ModelFileError(f"{path}: trained on {c} x {s} x {s} slices, but the cache of {manifest} now holds "
                             f"{cached['channels']} x {cached['image_size']} x {cached['image_size']}: the results "
                             "are out of date; rerun the pipeline before exporting")
    said = []
    cfg_windows = preprocess.get("windows")
    if cfg_windows is not None and [dict(w) for w in cfg_windows] != cached["windows"]:
        said.append(f"the configuration's windows {cfg_windows} differ from the cache's {cached['windows']}")
    if preprocess.get("image_size") not in (None, cached["image_size"]):
        said.append(f"the configuration's image_size {preprocess['image_size']} differs from the cache's "
                    f"{cached['image_size']}")
    for line in said:
        log.warning("%s; the export keeps the cache's (what the model was trained on). Is the configuration "
                    "the one of this run?", line)
    series = {k: _plain(preprocess.get(k, SERIES_DEFAULTS[k])) for k in SERIES_KEYS}
    table = table or {}
    exported = {
        "format": FORMAT, "row": method, "fold": int(fold), "record": _plain(record),
        "preprocessing": {**cached, **series, "rules": _plain(code_rules())},
        "scan_aggregation": {"how": str(table.get("scan_aggregation", "max")),
                             "top_k": int(table.get("scan_top_k", 3))},
        "reference": _reference(results, method, fold),
        "software": _plain(software or {}),
        "notes": said,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({**exported, "state": state}, tmp)
    os.replace(tmp, out)
    return exported


def read_export(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """An exported model file, opened safely; ModelFileError names the file and what is wrong with it."""
    blob = load_model_file(path, map_location=map_location, what="exported model file")
    if blob.get("format") != FORMAT:
        if "record" in blob and "state" in blob:
            raise ModelFileError(f"{path}: a pipeline model.pt, not an exported model: it lacks the preprocessing "
                                 "the row was trained with; write one with `ichbench export --method ROW --fold K "
                                 "--out FILE.pt`")
        raise ModelFileError(f"{path}: not an ichbench exported model (format {blob.get('format')!r}, expected "
                             f"{FORMAT!r})")
    missing = [k for k in ("row", "record", "state", "preprocessing") if k not in blob]
    if missing:
        raise ModelFileError(f"{path}: exported model without {', '.join(missing)}")
    return blob


def rule_differences(exported: dict[str, Any]) -> list[str]:
    """Where this code's fixed preprocessing rules differ from those the exported model was trained with."""
    then, now = exported["preprocessing"].get("rules", {}), _plain(code_rules())
    return [f"preprocessing rule {k}: trained with {then.get(k)!r}, this ichbench applies {now[k]!r}"
            for k in now if then.get(k) != now[k]]
