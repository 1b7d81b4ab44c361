"""Configuration guards: real-data runs must not read the synthetic labels, and the cohort can be checked
against expected patient counts (e.g. the paper's 117 normal and 247 pathological CQ500 scans)."""
from __future__ import annotations

import logging
import os

import pandas as pd

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: dataset keys naming label or ground-truth files that the workflow reads for each source, and that
#: must not come from the synthetic generator when the images are the user's own.
LABEL_KEYS = {"dicom": ("labels", "reads", "slice_labels", "gt_masks_dir", "bhx"),
              "nifti": ("nifti_labels", "nifti_masks_dir")}


def _inside(path: str, folder: str) -> bool:
    p, f = os.path.abspath(path), os.path.abspath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def check_label_paths(config: dict) -> None:
    """dataset.source dicom / nifti with a label path inside the synthetic output folder -> ConfigError
    naming the keys (NIfTI runs read only nifti_labels and nifti_masks_dir). Allowed where the images themselves come from that folder (dicom_dir or nifti_dir
    inside it): then the synthetic labels belong to them."""
    ds = config.get("dataset", {})
    source = ds.get("source", "synthetic")
    if source == "synthetic":
        return
    synth = (config.get("synthetic") or {}).get("out_dir") or "data/synthetic"
    images = ds.get("nifti_dir" if source == "nifti" else "dicom_dir") or ""
    if images and _inside(images, synth):
        return
    bad = []
    for key in LABEL_KEYS.get(source, ()):
        values = ds.get(key)
        for v in (values if isinstance(values, list) else [values]):
            if v and _inside(str(v), synth):
                bad.append(f"dataset.{key} = {v}")
    if bad:
        raise ConfigError(
            f"dataset.source is {source!r}, but these label paths still point into the synthetic data folder "
            f"{synth}: {'; '.join(bad)}. Set them to your dataset's files or to null (see README, "
            "'Run on CQ500'), so that your scans are not labelled with the synthetic labels.")


def check_expected(summary: pd.DataFrame, expected: dict | None, action: str = "fail") -> list[str]:
    """Compare cohort.csv's patients per class with `expected` ({normal: n, pathological: n, all: n},
    any subset). -> the mismatch lines (logged as warnings). action `fail`: raise ValueError on a
    mismatch; `warn`: only log."""
    if not expected:
        return []
    have = dict(zip(summary["scan_class"], summary["patients"].astype(int)))
    problems = []
    for cls, n in expected.items():
        if n is None:
            continue
        if cls not in have:
            raise ConfigError(f"dataset.expected: unknown scan class {cls!r} (normal, pathological or all)")
        if int(have[cls]) != int(n):
            problems.append(f"{cls}: {have[cls]} patients in the cohort, {int(n)} expected")
    if problems:
        msg = ("cohort does not match dataset.expected (" + "; ".join(problems)
               + "); see results/data/rejected.csv for scans left out")
        if action == "fail":
            raise ValueError(msg + ". Set dataset.expected_action: warn to continue anyway")
        log.warning("%s", msg)
    return problems
