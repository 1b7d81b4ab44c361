"""`ichbench predict`: an exported row on one new scan (a DICOM folder or a NIfTI file), without Snakemake.

    ichbench predict --model ae-u.pt --dicom-dir SCAN/ --out OUT/

The scan goes through the pipeline's own index, series choice and cache (`scan`) with the settings the row was
trained with, is scored by the row's own `score` in batches, and OUT/ gets:

    slice_scores.csv      one row per cached slice: slice_index (0 = most inferior), volume_k (the slice's index
                          along the slice axis of anomaly_map.nii.gz), position_mm (along the slice normal),
                          z_mm (world z of its first pixel; for DICOM its ImagePositionPatient z), score (the
                          pipeline's slice score), brain_score (the map's mean over the brain mask),
                          normal_percentile (among the fold's validation normal slices, where the export has them)
    anomaly_map.nii.gz    the row's anomaly map, resized back from the cache's size to the original rows x columns,
                          in the scan's own geometry (volume.py): it overlays the scan in any viewer
    montage.png           the maps over the brain window, up to 16 slices with brain
    prediction.json       row, fold, model versions, scan score (Table 1's scan aggregation), geometry, notes
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import ModelFileError
from ..inputs.windowing import dequantise
from ..methods import REGISTRY, get_method
from ..methods.plugins import resolve
from ..training.data import DeviceBatches, load_slices
from ..training.digest import code_digest
from ..training.score import resolve_batch_size
from ..training.train import build_method, resolve_device
from . import outputs
from .export import read_export, rule_differences
from .scan import prepare_dicom, prepare_nifti
from .volume import to_original_size, to_volume, write_nifti

log = logging.getLogger(__name__)

FILES = {"scores": "slice_scores.csv", "map": "anomaly_map.nii.gz", "montage": "montage.png",
         "summary": "prediction.json"}


def load_exported(exported: dict[str, Any], device: torch.device,
                  where: str = "exported model") -> tuple[Any, list[str]]:
    """The exported row, ready for scoring on `device`, and notes (its code changed since training)."""
    rec = exported["record"]
    name = rec["method"]
    spec = rec.get("class")
    if spec and name not in REGISTRY:
        # a row from outside the package: the export names its class; import it from the Python path
        try:
            resolve(name, spec, where=f"named by {where}")
        except ValueError as exc:            # ConfigError, ContractError
            raise ModelFileError(f"{where}: row {name!r} comes from outside ichbench (class {spec}) and could not "
                                 f"be loaded: {exc}") from None
    try:
        get_method(name)
    except KeyError:
        raise ModelFileError(f"{where}: row {name!r} is not registered in this ichbench (registered: "
                             f"{', '.join(REGISTRY)}); install or configure the package that provides it") from None
    c, s, _ = rec["image_shape"]
    method = build_method(name, rec["params"], int(c), int(s), device)
    now = code_digest(name)
    notes = [] if now == rec.get("code_digest") else [
        f"the code of {name} changed since training (code digest {rec.get('code_digest')} then, {now} now)"]
    try:
        method.load_state_dict(exported["state"], with_optimizers=False)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{where}: its weights do not fit this ichbench's {name} network"
                             f"{' (' + notes[0] + ')' if notes else ''}: {first[:300]}") from None
    method.model.eval()
    return method, notes


def score_slices(method, npz: Path, batch_size: int | str = "auto") -> dict[str, np.ndarray]:
    """The row's slice scores, maps at the cache's size and brain-mask means of every slice of one cached series."""
    data = load_slices(pd.DataFrame({"npz": str(npz), "slice_index": np.arange(_n_slices(npz))}))
    expected = (method.in_channels, method.image_size, method.image_size)
    if data.images.shape[1:] != expected:
        raise ValueError(f"the scan was cached as {data.images.shape[1:]} slices, the row takes {expected}")
    batches = DeviceBatches(data, method.device, mask_keys=type(method).needs)
    bs = resolve_batch_size(batch_size, method.device)
    brain = torch.from_numpy(data.masks["brain_mask"])
    scores, maps, brain_scores = [], [], []
    for start in range(0, len(data), bs):
        idx = torch.arange(start, min(start + bs, len(data)))
        s, m = method.score(batches.batch(idx))
        m = m.detach().float().cpu()
        if m.ndim == 1:                                   # a row without pixel maps: one value per slice
            m = m[:, None, None]
        if m.shape[-2:] != brain.shape[-2:]:
            m = torch.nn.functional.interpolate(m[:, None], size=tuple(brain.shape[-2:]), mode="bilinear",
                                                align_corners=False)[:, 0]
        b = brain[idx]
        brain_scores.append(torch.where(b.sum((1, 2)) > 0, (m * b).sum((1, 2)) / b.sum((1, 2)).clamp(min=1),
                                        torch.full((len(idx),), float("nan"))))
        scores.append(s.detach().double().cpu())
        maps.append(m)
    out = {"score": torch.cat(scores).numpy(), "maps": torch.cat(maps).numpy(),
           "brain_score": torch.cat(brain_scores).numpy(), "brain_mask": data.masks["brain_mask"],
           "head_mask": data.masks["head_mask"],
           "images": data.images}
    if not np.all(np.isfinite(out["score"])):
        raise FloatingPointError(f"{method.name}: {int((~np.isfinite(out['score'])).sum())} non-finite slice scores")
    return out


def _n_slices(npz: Path) -> int:
    with np.load(npz, allow_pickle=False) as z:
        return int(z["images"].shape[0])


def predict(model: str | os.PathLike, out: str | os.PathLike, *, dicom_dir: str | os.PathLike | None = None,
            nifti: str | os.PathLike | None = None, device: str = "auto", batch_size: int | str = "auto",
            workers: int = 1) -> dict[str, Any]:
    """Score one scan with an exported row and write OUT/ (see the module docstring); returns the summary."""
    if (dicom_dir is None) == (nifti is None):
        raise ValueError("predict takes exactly one of a DICOM folder and a NIfTI file")
    t0 = time.perf_counter()
    exported = read_export(model)
    pre, rec = exported["preprocessing"], exported["record"]
    notes = rule_differences(exported)
    for line in notes:
        log.warning("%s: %s", model, line)
    dev = resolve_device(device)
    method, code_notes = load_exported(exported, dev, str(model))
    notes += code_notes
    for line in code_notes:
        log.warning("%s", line)
    with tempfile.TemporaryDirectory(prefix="ichbench-predict-") as tmp:
        scan = prepare_dicom(dicom_dir, pre, Path(tmp), workers) if dicom_dir is not None else \
            prepare_nifti(nifti, pre, Path(tmp))
        got = score_slices(method, scan.npz, batch_size)
        with np.load(scan.npz, allow_pickle=False) as z:
            positions = z["positions"].astype(float)
            original, padding = z["original_size"], z["padding"]
            spacing = [float(v) for v in z["pixel_spacing"]]
            not_hu = bool(z["not_hu"])
    notes += scan.notes + (["values do not look like HU: accepted (non_hu: accept); windows and masks assume HU"]
                           if not_hu else [])
    grid = scan.grid
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = exported.get("reference")
    ref_scores = np.asarray(ref["scores"], float) if ref else None
    table = pd.DataFrame({"slice_index": np.arange(len(positions)), "volume_k": grid.slice_k,
                          "position_mm": positions, "z_mm": grid.z_mm, "score": got["score"],
                          "brain_score": got["brain_score"],
                          "normal_percentile": outputs.percentiles(got["score"], ref_scores)})
    outputs.write_scores(out / FILES["scores"], table)
    volume = to_volume(grid, to_original_size(got["maps"], original, padding))
    write_nifti(out / FILES["map"], grid, volume, f"ichbench {exported['row']} fold {exported['fold']} anomaly map")
    del volume
    names = [w["name"] for w in pre["windows"]]
    brain_channel = names.index("brain") if "brain" in names else 0
    picks = outputs.montage_slices(got["brain_mask"].sum((1, 2)))
    agg = exported.get("scan_aggregation") or {"how": "max", "top_k": 3}
    score = outputs.scan_score(got["score"], agg["how"], agg["top_k"])
    outputs.write_montage(out / FILES["montage"], dequantise(got["images"][:, brain_channel]), got["maps"],
                          got["brain_mask"], got["head_mask"], picks,
                          [f"slice {i}  score {got['score'][i]:.4g}" for i in picks],
                          f"{exported['row']} (fold {exported['fold']}): anomaly map over the brain window; "
                          f"scan score ({agg['how']}) {score:.4g}")
    summary = {
        "row": exported["row"], "fold": exported["fold"], "group": rec.get("group"),
        "model": {"trained_with": {k: rec.get(k) for k in ("code_digest", "git_commit", "torch", "epochs")},
                  "exported_with": exported.get("software", {})},
        "input": scan.source, "slices": int(len(table)),
        "scan_score": {"how": agg["how"], "top_k": agg["top_k"], "value": score},
        "reference": ({"what": ref["what"], "n": ref["n"]} if ref else None),
        "geometry": {"volume_shape": list(grid.shape), "slice_axis": grid.slice_axis,
                     "max_slice_offset_mm": round(grid.max_offset_mm, 4),
                     "pixel_spacing_mm": spacing, "affine_ras": np.round(grid.affine, 6).tolist()},
        "preprocessing": {k: pre.get(k) for k in ("windows", "image_size", "min_slices", "min_extent_mm", "non_hu")},
        "device": str(dev), "seconds": round(time.perf_counter() - t0, 2), "notes": notes,
        "files": FILES,
    }
    outputs.write_summary(out / FILES["summary"], summary)
    log.info("%s on %d slices: scan score (%s) %.4g; wrote %s", exported["row"], len(table), agg["how"], score,
             ", ".join(str(out / f) for f in FILES.values()))
    return summary
