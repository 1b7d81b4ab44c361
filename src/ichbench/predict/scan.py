"""One new scan through the pipeline's own first stages, in a scratch folder, with the exported model's settings.

Header index and series choice (`cache.preprocess.build_index`, `inputs.nifti.build_index`), then the slice cache
(`preprocess_shard`).

A scan the pipeline would leave out is refused here with the pipeline's own reasons (ScanRejected). The scratch
files (index, candidates, cache) name the scan's IDs and paths; they live in a temporary folder that is deleted
afterwards, and nothing of them reaches the outputs but pixels and geometry.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cache.preprocess import build_index, preprocess_shard, read_index
from ..inputs import nifti
from ..inputs.windowing import windows_from_config
from .volume import Grid, dicom_grid, nifti_grid

log = logging.getLogger(__name__)


class ScanRejected(ValueError):
    """A scan the pipeline would leave out, with its reasons (the pipeline's own words)."""

    def __init__(self, where: str | os.PathLike, reasons: list[str]):
        self.where, self.reasons = str(where), reasons
        super().__init__(f"{where}: rejected, as the pipeline would reject it: "
                         + "; ".join(reasons or ["no reason given"]))


@dataclass
class PreparedScan:
    """The scan's cached series (an NPZ in the scratch folder) and where its slices lie."""

    npz: Path
    grid: Grid
    source: str
    notes: list[str] = field(default_factory=list)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=["stage", "item", "reason"])
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _reasons(rejected: pd.DataFrame, replace: dict[str, str] | None = None) -> list[str]:
    """The distinct reasons of a rejection table, scan-level ones first ("scan left out" echoes only where
    nothing else says why), with scratch paths shown as the user's."""
    def show(text: str) -> str:
        for a, b in (replace or {}).items():
            text = text.replace(a, b)
        return text

    scan = [show(r) for r, s in zip(rejected["reason"], rejected["stage"]) if s in ("select", "load")]
    files = Counter(show(r) for r, s in zip(rejected["reason"], rejected["stage"]) if s not in ("select", "load"))
    out = list(dict.fromkeys(r for r in scan if not r.startswith("scan left out")))
    out += [f"{n} file(s): {r}" if n > 1 else r for r, n in files.most_common(3)]
    return out or list(dict.fromkeys(scan))


def _file_notes(rejected: pd.DataFrame) -> list[str]:
    files = Counter(r for r, s in zip(rejected["reason"], rejected["stage"]) if s == "index")
    return [f"{n} file(s) of the input left out: {r}" for r, n in files.most_common(5)]


def _cache(data: Path, work: Path, pre: dict[str, Any], where: str, replace: dict[str, str]) -> tuple[Path, pd.Series]:
    cache = work / "cache"
    table = preprocess_shard(data / "index.csv", data / "series_candidates.csv", cache, shard=0, n_shards=1,
                             windows=windows_from_config(pre["windows"]), size=int(pre["image_size"]),
                             non_hu=str(pre.get("non_hu", "reject")))
    if table.empty:
        raise ScanRejected(where, _reasons(_read(cache / "rejected.csv"), replace))
    row = table.iloc[0]
    return cache / str(row["npz"]), row


def _series_notes(row: pd.Series) -> list[str]:
    notes = [n for n in str(row.get("notes", "") or "").split("; ") if n and n != "nan"]
    if int(row.get("rejected_slices", 0) or 0):
        notes.append(f"{int(row['rejected_slices'])} slice(s) of the series left out while loading")
    return notes


def prepare_dicom(dicom_dir: str | os.PathLike, pre: dict[str, Any], work: Path, workers: int = 1) -> PreparedScan:
    """Index a DICOM folder of one scan, choose its series and cache it as the pipeline does."""
    where = str(dicom_dir)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    try:
        cand = build_index(dicom_dir, data / "index.csv", data / "series_candidates.csv", data / "rejected_index.csv",
                           min_slices=int(pre["min_slices"]), min_extent_mm=float(pre["min_extent_mm"]),
                           workers=workers, bone_patterns=tuple(pre.get("bone_patterns") or ()),
                           axial_tolerance_deg=float(pre["axial_tolerance_deg"]))
    except RuntimeError:
        raise ScanRejected(where, _reasons(_read(data / "rejected_index.csv"))) from None
    scans = cand["patient_id"].nunique()
    if scans > 1:
        raise ValueError(f"{where}: holds {scans} scans (different PatientIDs); predict reads one scan at a time: "
                         "point --dicom-dir at the folder of one")
    npz, row = _cache(data, work, pre, where, {})
    index = read_index(data / "index.csv").drop_duplicates("sop_uid").set_index("sop_uid")
    with np.load(npz, allow_pickle=False) as z:
        sops = [str(u) for u in z["sop_uids"]]
        rows, cols = (int(v) for v in z["original_size"])
    files = index.loc[sops]
    ipp = np.array([list(p) for p in files["position"]], float)
    grid = dicom_grid(ipp, files["orientation"].iloc[0], files["pixel_spacing"].iloc[0], rows, cols)
    notes = _file_notes(_read(data / "rejected_index.csv")) + _series_notes(row) + grid.notes
    return PreparedScan(npz, grid, "dicom", notes)


def prepare_nifti(path: str | os.PathLike, pre: dict[str, Any], work: Path) -> PreparedScan:
    """Index and cache one NIfTI volume as the pipeline does a NIfTI folder (the file is linked, not copied,
    under a neutral name: its own name may identify the patient)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file {path} does not exist")
    suffix = next((s for s in nifti.NIFTI_SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    inbox, data = work / "nifti", work / "data"
    inbox.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    link = inbox / f"scan{suffix}"
    os.symlink(path.resolve(), link)
    replace = {str(link): str(path), "scan: ": ""}
    try:
        nifti.build_index(inbox, data / "index.csv", data / "series_candidates.csv", data / "rejected_index.csv",
                          min_slices=int(pre["min_slices"]))
    except RuntimeError:
        raise ScanRejected(path, _reasons(_read(data / "rejected_index.csv"), replace)) from None
    rejected = _read(data / "rejected_index.csv")
    if len(rejected):           # e.g. too few slices: the volume is indexed but not a usable series
        raise ScanRejected(path, _reasons(rejected, replace))
    npz, row = _cache(data, work, pre, str(path), replace)
    try:
        grid = nifti_grid(link)
    except Exception as exc:                              # noqa: BLE001 - read once already: unlikely
        raise ValueError(f"{path}: cannot read its geometry ({type(exc).__name__}: {exc})") from None
    return PreparedScan(npz, grid, "nifti", _series_notes(row) + grid.notes)
