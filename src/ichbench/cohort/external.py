"""The manifest of an external validation set: every usable, labelled slice of it as a test slice.

Built as the split stage builds the cohort (cached slices, the dataset's patients, slice and scan labels,
its exclusions, subtypes), without folds: the score job of each training fold scores the whole set. Scans
that are RSNA scans of the training dataset are dropped (`datasets.external.overlap`), recorded in
overlap.csv; patients present in both datasets stop the job with a ConfigError naming them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..datasets import external, labels
from . import splits, subtypes

log = logging.getLogger(__name__)

OVERLAP_COLUMNS = ["scan_id", "patient_id", "training_scan", "reason"]


def external_cohort(shards: Sequence[str], ds: dict, *, label_source: str, scan_key: str = "patient",
                    patients: str | None = None, scan_info: str | None = None, excluded: str | None = None,
                    min_area_mm2: float = 0.0) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The external set's cohort (one row per cached slice with a definite scan label, subtypes attached) and
    the scans left out with their reason."""
    slices = splits.collect_slices(shards, min_area_mm2, scan_key=scan_key)
    if patients and Path(patients).exists():
        slices = splits.apply_patients(slices, pd.read_csv(patients, dtype=str, keep_default_na=False))
    slice_file = ds.get("slice_labels")
    if slice_file and Path(slice_file).exists():
        slices = splits.apply_slice_labels(slices, labels.read_slice_labels(slice_file))
    table = (ds.get("nifti_labels") or ds.get("labels")) if ds.get("source") == "nifti" else ds.get("labels")
    scan_labels = labels.scan_labels(label_source, ctfsh=ds.get("labels"), reads=ds.get("reads"),
                                     scan_id_format=ds.get("scan_id_format") or "{n}", table=table,
                                     slices=slices, keep_undecided=True)
    cohort, problems = splits.build_cohort(slices, scan_labels)
    if excluded and Path(excluded).exists():
        why = dict(pd.read_csv(excluded, dtype=str, keep_default_na=False)[["scan_id", "reason"]]
                   .itertuples(index=False))
        cohort = cohort[~cohort["scan_id"].isin(why)]
        problems = [(s, r) for s, r in problems if s not in why]
        problems += [(s, f"left out by the dataset adapter: {r}") for s, r in sorted(why.items())]
    info = None
    if scan_info and Path(scan_info).exists():
        info = pd.read_csv(scan_info, dtype={"scan_id": str, "diagnosis": str, "subtypes": str},
                           keep_default_na=False)
        info = info.assign(reader_ich_votes=pd.to_numeric(info["reader_ich_votes"], errors="coerce").fillna(-1))
    return subtypes.attach(cohort, info), problems


def training_scans(manifests: Sequence[str]) -> pd.DataFrame:
    """scan_id, patient_id of every scan in the training dataset's fold manifests (each once)."""
    parts = [pd.read_csv(p, usecols=["scan_id", "patient_id"], dtype=str) for p in manifests]
    return pd.concat(parts, ignore_index=True).drop_duplicates() if parts else pd.DataFrame(
        columns=["scan_id", "patient_id"])


def drop_overlap(cohort: pd.DataFrame, train: pd.DataFrame, train_name: str, ext_name: str, label: str,
                 where: str = "evaluation.external") -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (cohort without the training dataset's RSNA scans, overlap table OVERLAP_COLUMNS). Raises ConfigError
    where a patient of the external set is a patient of the training dataset (same kind of dataset)."""
    scans = cohort.drop_duplicates("scan_id")
    ext_patients = dict(zip(scans["scan_id"].astype(str), scans["patient_id"].astype(str)))
    dropped, shared = external.overlap(train["scan_id"], train["patient_id"], train_name, list(ext_patients),
                                       ext_patients, ext_name)
    if shared:
        raise external.refusal(shared, label, where)
    table = pd.DataFrame([{"scan_id": s, "patient_id": ext_patients[s], "training_scan": t,
                           "reason": f"the same RSNA scan as training scan {t} ({train_name})"}
                          for s, t in sorted(dropped.items())], columns=OVERLAP_COLUMNS)
    if len(table):
        log.warning("external set %s: %d scans dropped, being RSNA scans of the training dataset (%s): see "
                    "overlap.csv", label, len(table), train_name)
    else:
        log.info("external set %s: no scan or patient shared with the training dataset (%s)", label, train_name)
    return cohort[~cohort["scan_id"].isin(dropped)].copy(), table


def external_manifest(cohort: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """MANIFEST_COLUMNS (+ the subtype columns) with part `test` and fold -1 (the score job sets its fold);
    slices without a label under the protocol (anomalous scans without slice truth, protocol slice) left out."""
    m = cohort.copy()
    m["label"] = splits.slice_label(m, protocol)
    m = m[m["label"].notna()]
    m = m.assign(fold=-1, part="test", protocol=protocol)
    extra = [c for c in ("diagnosis", "subtypes", "reader_ich_votes") if c in m]
    m = m.sort_values(["patient_id", "series_uid", "slice_index"]).reset_index(drop=True)
    return m[splits.MANIFEST_COLUMNS + extra].astype({"label": int})
