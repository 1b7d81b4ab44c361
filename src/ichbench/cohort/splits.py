"""Cohort and patient-level folds.

Fold k: test = the k-th of `n_folds` stratified patient groups; validation = about `val_fraction`
of all patients, drawn stratified from the rest; training = the remaining *normal* patients only.
A patient is in exactly one test fold and never in two parts of one fold.

Label protocols:
- `paper`: every slice takes its scan's label (pathological scan -> every slice anomalous);
- `slice`: a slice is anomalous where slice ground truth (masks, slice label file, BHX boxes) marks
  hemorrhage; slices of normal scans are normal; anomalous scans without slice truth are left out
  of validation and test. With BHX (CQ500): a slice of an anomalous scan is anomalous where a BHX
  box lies on its SOPInstanceUID; anomalous scans whose cached series carries no box at all have no
  slice truth.

Every manifest row names its protocol (column `protocol`); cohort.csv names protocol and label source.
The paper's CQ500 cohort: 88,808 slices, 27,562 of normal and 61,246 of pathological scans.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..inputs.npz import read_members as npz_members


MANIFEST_COLUMNS = ["fold", "part", "patient_id", "study_uid", "series_uid", "sop_uid", "slice_index",
                    "npz", "scan_label", "slice_truth", "label", "protocol", "scan_id"]

#: The paper's CQ500 cohort (CTFSH labels, paper protocol), for comparison in cohort.csv.
PAPER_COUNTS = {"normal": 27562, "pathological": 61246, "all": 88808}

log = logging.getLogger(__name__)


def slice_truth(gt_pixels: np.ndarray, gt_area_mm2: np.ndarray, min_area_mm2: float = 0.0) -> np.ndarray:
    """Slice truth from the full-resolution ground truth: 1 where the slice's hemorrhage covers more
    than `min_area_mm2` (0: any voxel), else 0."""
    if min_area_mm2 <= 0:
        return (np.asarray(gt_pixels) > 0).astype(int)
    return (np.nan_to_num(np.asarray(gt_area_mm2, float), nan=0.0) > min_area_mm2).astype(int)


def collect_slices(shard_dirs: Sequence[str | os.PathLike], min_area_mm2: float = 0.0,
                   scan_key: str = "patient") -> pd.DataFrame:
    """One row per cached slice: IDs, the NPZ path and the slice ground truth where known (-1 = unknown),
    taken from the full-resolution masks and boxes (see slice_truth), not the cached gt_mask. `scan_id`
    names the slice's scan: its patient (scan_key `patient`) or its study (`study`)."""
    rows = []
    for d in shard_dirs:
        d = Path(d)
        table = pd.read_csv(d / "series.csv", dtype={"patient_id": str, "series_uid": str, "study_uid": str})
        for _, s in table.iterrows():
            path = d / s["npz"]
            z = npz_members(path, ("sop_uids", "has_gt", "gt_pixels", "gt_area_mm2"))
            if "sop_uids" not in z or "has_gt" not in z:
                raise ValueError(f"{path}: no sop_uids or has_gt; not a cached series (rerun preprocessing)")
            sops = z["sop_uids"].astype(str)
            if not bool(z["has_gt"]):
                truth = np.full(len(sops), -1)
            elif "gt_pixels" in z:
                truth = slice_truth(z["gt_pixels"], z["gt_area_mm2"], min_area_mm2)
            else:
                raise ValueError(f"{path} was cached before slice truth came from full-resolution masks; "
                                 "rerun preprocessing (delete results/data/cache)")
            rows.append(pd.DataFrame({
                "patient_id": s["patient_id"], "study_uid": s["study_uid"], "series_uid": s["series_uid"],
                "sop_uid": sops, "slice_index": np.arange(len(sops)), "npz": str(path), "slice_truth": truth,
            }))
    if not rows:
        return pd.DataFrame(columns=["scan_id", "patient_id", "study_uid", "series_uid", "sop_uid", "slice_index",
                                     "npz", "slice_truth"])
    from ..inputs.series_select import scan_key_column   # lazy: pydicom is not needed to read a manifest

    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "scan_id", out[scan_key_column(scan_key)])
    return out


def apply_patients(slices: pd.DataFrame, patients: pd.DataFrame | None) -> pd.DataFrame:
    """Set each slice's patient_id from a scan -> patient table (scan_id, patient_id), for datasets whose
    files do not name the patient (e.g. BHSD volumes named `<PatientID>_<StudyInstanceUID>`); scans the
    table lacks keep theirs."""
    if patients is None or patients.empty:
        return slices
    known = dict(zip(patients["scan_id"].astype(str), patients["patient_id"].astype(str)))
    out = slices.copy()
    out["patient_id"] = out["scan_id"].map(known).fillna(out["patient_id"]).astype(str)
    return out


def apply_slice_labels(slices: pd.DataFrame, slice_labels: pd.DataFrame | None) -> pd.DataFrame:
    """Merge an external slice label table (sop_uid, hemorrhage) into slice_truth, for slices without
    pixel truth; where both exist the pixel truth wins and disagreements are logged."""
    if slice_labels is None or slice_labels.empty:
        return slices
    known = dict(zip(slice_labels["sop_uid"].astype(str), slice_labels["hemorrhage"].astype(int)))
    ext = slices["sop_uid"].map(known)
    out = slices.copy()
    pixel = out["slice_truth"] >= 0
    differ = pixel & ext.notna() & (ext != out["slice_truth"])
    if differ.any():
        log.warning("%d slices: the slice label file disagrees with the pixel ground truth; the pixel truth "
                    "(full-resolution masks) is used", int(differ.sum()))
    out["slice_truth"] = np.where(ext.notna() & ~pixel, ext.fillna(-1).astype(int), out["slice_truth"])
    return out


def build_cohort(slices: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Keep scans that have both cached slices and a definite label. Returns (slices with scan_label,
    problems). Scans the label file lists with an undecided label (NaN, e.g. one ICH vote of three
    under the reads majority protocol) are reported as left out by the protocol."""
    key = "scan_id" if "scan_id" in slices else "patient_id"
    have = set(slices[key])
    listed = set(labels["scan_id"])
    decided = labels.dropna(subset=["label"])
    labelled = dict(zip(decided["scan_id"], decided["label"].astype(int)))
    problems = [(s, "listed in the label file but no usable series was found") for s in sorted(listed - have)]
    problems += [(s, "has a usable series but no label in the label file (left out)") for s in sorted(have - listed)]
    problems += [(s, "left out by the label protocol (no definite label, e.g. a finding without majority ICH)")
                 for s in sorted((have & listed) - set(labelled))]
    out = slices[slices[key].isin(labelled)].copy()
    out["scan_label"] = out[key].map(labelled).astype(int)
    if "scan_id" not in out:
        out["scan_id"] = out["patient_id"]
    return out, problems


def slice_label(cohort: pd.DataFrame, protocol: str) -> pd.Series:
    if protocol == "paper":
        return cohort["scan_label"].astype(float)
    if protocol == "slice":
        lab = np.where(cohort["scan_label"] == 0, 0.0,
                       np.where(cohort["slice_truth"] >= 0, cohort["slice_truth"].astype(float), np.nan))
        return pd.Series(lab, index=cohort.index)
    raise ValueError(f"unknown label protocol {protocol!r} (paper or slice)")


def assign_folds(patients: pd.DataFrame, n_folds: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """patients(patient_id, scan_label) -> one row per (fold, patient) with part train/val/test."""
    counts = patients["scan_label"].value_counts()
    for cls in (0, 1):
        if counts.get(cls, 0) < n_folds:
            raise ValueError(f"{n_folds} stratified folds need at least {n_folds} patients of each class; "
                             f"the cohort has {counts.get(0, 0)} normal and {counts.get(1, 0)} pathological")
    # lazy: scikit-learn costs ~2 CPU-s to import, in every train and score job that reads a manifest
    from sklearn.model_selection import StratifiedKFold

    p = patients.sort_values("patient_id").reset_index(drop=True)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for fold, (rest_idx, test_idx) in enumerate(skf.split(p["patient_id"], p["scan_label"])):
        rest = p.iloc[rest_idx]
        val_ids = []
        for cls in (0, 1):
            pool = rest[rest["scan_label"] == cls]["patient_id"].to_numpy()
            k = int(round(val_fraction * (p["scan_label"] == cls).sum()))
            k = min(max(k, 1 if val_fraction > 0 else 0), max(len(pool) - (1 if cls == 0 else 0), 0))
            val_ids.extend(rng.permutation(pool)[:k])
        val_ids = set(val_ids)
        for pid in p.iloc[test_idx]["patient_id"]:
            rows.append((fold, pid, "test"))
        for pid, lab in zip(rest["patient_id"], rest["scan_label"]):
            if pid in val_ids:
                rows.append((fold, pid, "val"))
            elif lab == 0:
                rows.append((fold, pid, "train"))
            # pathological patients outside test and validation are not used for training
    return pd.DataFrame(rows, columns=["fold", "patient_id", "part"])


def patient_table(cohort: pd.DataFrame) -> pd.DataFrame:
    """One row per cohort patient: patient_id, scan_label (1 where any of the patient's scans is
    pathological: a normal patient is one whose scans are all normal), scans."""
    key = "scan_id" if "scan_id" in cohort else "patient_id"
    return cohort.groupby("patient_id", as_index=False).agg(scan_label=("scan_label", "max"),
                                                            scans=(key, "nunique"))


def read_manifest(path) -> pd.DataFrame:
    """A fold manifest written by `make_manifests`, with its ID columns read as text."""
    return pd.read_csv(path, dtype={"patient_id": str, "scan_id": str, "study_uid": str, "series_uid": str,
                                    "sop_uid": str, "npz": str, "part": str})


def make_manifests(cohort: pd.DataFrame, protocol: str, n_folds: int, val_fraction: float,
                   seed: int, parts: pd.DataFrame | None = None) -> list[pd.DataFrame]:
    """Per-fold manifests (MANIFEST_COLUMNS, plus the scan's diagnosis columns where the cohort has
    them). Training slices are all normal. `parts` (fold, patient_id, part): given folds (e.g. read
    back by assignment.py) instead of drawing them."""
    cohort = cohort.copy()
    cohort["label"] = slice_label(cohort, protocol)
    if "scan_id" not in cohort:
        cohort["scan_id"] = cohort["patient_id"]
    if parts is None:
        parts = assign_folds(patient_table(cohort), n_folds, val_fraction, seed)
    extra = [c for c in ("diagnosis", "subtypes", "reader_ich_votes") if c in cohort]
    manifests = []
    for fold in range(n_folds):
        m = cohort.merge(parts[parts["fold"] == fold], on="patient_id", how="inner")
        m = m[(m["part"] == "train") | m["label"].notna()]
        m = m.sort_values(["part", "patient_id", "series_uid", "slice_index"]).reset_index(drop=True)
        m["protocol"] = protocol
        manifests.append(m[MANIFEST_COLUMNS + extra].astype({"label": int}))
    return manifests


def choose_figure_cases(manifests: Sequence[pd.DataFrame], n_cases: int, seed: int) -> pd.DataFrame:
    """Reproducible ICH slices for Figure 1: one slice per pathological test patient, the slice with the
    largest ground-truth hemorrhage where masks exist (else the middle slice); patients drawn by seed."""
    tests = pd.concat([m[m["part"] == "test"] for m in manifests], ignore_index=True)
    tests = tests[tests["scan_label"] == 1]
    if tests.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS + ["gt_pixels"])
    picks = []
    for (pid, suid), g in tests.groupby(["patient_id", "series_uid"], sort=True):
        with np.load(g["npz"].iloc[0], allow_pickle=False) as z:
            area = z["gt_mask"].sum(axis=(1, 2)) if bool(z["has_gt"]) else None
        if area is not None and area[g["slice_index"].to_numpy()].max() > 0:
            best = g.iloc[int(np.argmax(area[g["slice_index"].to_numpy()]))]
            picks.append({**best.to_dict(), "gt_pixels": int(area[best["slice_index"]])})
        else:
            best = g.iloc[len(g) // 2]
            picks.append({**best.to_dict(), "gt_pixels": -1})
    picks = pd.DataFrame(picks)
    # prefer patients with visible ground truth, then draw by seed
    rng = np.random.default_rng(seed)
    picks["_r"] = rng.permutation(len(picks))
    picks["_has"] = picks["gt_pixels"] > 0
    picks = picks.sort_values(["_has", "_r"], ascending=[False, True]).head(n_cases)
    return picks.drop(columns=["_r", "_has"]).reset_index(drop=True)


def is_cq500(cohort: pd.DataFrame) -> bool:
    """Whether the cohort is CQ500's: every scan ID is a CQ500 one (CQ500-CT-<n>)."""
    ids = cohort["patient_id"].astype(str)
    return len(ids) > 0 and bool(ids.str.fullmatch(r"CQ500-CT-\d+").all())


def cohort_summary(cohort: pd.DataFrame, protocol: str, label_source: str = "") -> pd.DataFrame:
    """Patients, scans and slices per scan class (and in all; a patient with a normal and a pathological
    scan counts in both classes), slices per slice label under the protocol,
    series with slice ground truth, and the paper's CQ500 slice counts for comparison (empty unless
    the cohort is CQ500's)."""
    paper = PAPER_COUNTS if is_cq500(cohort) else {}
    key = "scan_id" if "scan_id" in cohort else "patient_id"
    lab = slice_label(cohort, protocol)
    truth = cohort["slice_truth"] >= 0 if "slice_truth" in cohort else pd.Series(False, index=cohort.index)
    rows = []
    for name, sel in (("normal", cohort["scan_label"] == 0), ("pathological", cohort["scan_label"] == 1),
                      ("all", cohort["scan_label"] >= 0)):
        rows.append({"scan_class": name, "patients": cohort.loc[sel, "patient_id"].nunique(),
                     "scans": cohort.loc[sel, key].nunique(),
                     "slices": int(sel.sum()), "slices_normal": int((lab[sel] == 0).sum()),
                     "slices_anomalous": int((lab[sel] == 1).sum()),
                     "slices_unlabelled": int(lab[sel].isna().sum()),
                     "series_with_slice_truth": cohort.loc[sel & truth, "series_uid"].nunique(),
                     "protocol": protocol, "label_source": label_source,
                     "paper_cq500_slices": paper.get(name)})
    return pd.DataFrame(rows)
