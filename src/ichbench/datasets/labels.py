"""Scan- and slice-level labels in the formats the datasets ship.

- CTFSH refined labels (Guerra et al., MIDL 2022), `cq500_labels.csv`: `;`-separated
  `name;is_pathl;diagnosis;TEST;notes`, names `CT_12` meaning scan `CQ500-CT-12`.
  The paper's cohort and scan labels (normal = is_pathl 0).
- CQ500 reads (Chilamkurthy et al. 2018), `reads.csv`: 3 readers x 14 findings. Majority protocol:
  normal = no reader marks any finding; ICH = at least 2 of 3 readers mark ICH; others are left out.
- A plain scan label table (`csv`): columns `scan_id,label` (0 normal, 1 hemorrhage), e.g. for NIfTI.
- Labels from masks (`masks`): a scan whose cached series has ground truth is labelled by whether
  any of its slices shows hemorrhage (NIfTI volumes with masks and no label file).
- Slice ground truth: a CSV with `sop_uid` and `hemorrhage` (0/1), as the synthetic generator writes.
- BHX boxes (slice level, CQ500): see bhx.py.

Every scan label table has columns scan_id (the DICOM PatientID / NIfTI scan ID) and label (int).
"""
from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd


class LabelError(ValueError):
    pass


def read_ctfsh(path: str | os.PathLike, scan_id_format: str = "CQ500-CT-{n}") -> pd.DataFrame:
    """-> DataFrame(scan_id, label, diagnosis); label 1 = pathological (is_pathl)."""
    try:
        df = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LabelError(f"{path}: cannot read as a ';'-separated CTFSH label file ({exc})") from None
    missing = {"name", "is_pathl"} - set(df.columns)
    if missing:
        raise LabelError(f"{path}: missing column(s) {sorted(missing)}; expected name;is_pathl;diagnosis;TEST;notes")
    ids, labels = [], []
    for i, (name, v) in enumerate(zip(df["name"], df["is_pathl"])):
        m = re.fullmatch(r"\s*(?:CQ500[-_]?)?CT[_-]?(\d+)\s*", name, flags=re.IGNORECASE)
        if not m:
            raise LabelError(f"{path}: row {i + 2}: scan name {name!r} is not of the form CT_<number>")
        if v.strip() not in ("0", "1"):
            raise LabelError(f"{path}: row {i + 2}: is_pathl {v!r} is not 0 or 1")
        ids.append(scan_id_format.format(n=int(m.group(1))))
        labels.append(int(v))
    out = pd.DataFrame({"scan_id": ids, "label": labels,
                        "diagnosis": df["diagnosis"] if "diagnosis" in df else ""})
    dup = out["scan_id"][out["scan_id"].duplicated()]
    if len(dup):
        raise LabelError(f"{path}: scan(s) listed twice: {', '.join(dup.iloc[:5])}")
    return out


def read_reads_majority(path: str | os.PathLike) -> pd.DataFrame:
    """-> DataFrame(scan_id, label, ich_votes, finding_votes) with the majority-vote protocol.

    Scans that are neither clearly normal nor ICH by majority (e.g. a finding without ICH, or one ICH
    vote) get label NaN and are left out of the cohort by `cohort_labels`.
    """
    df = pd.read_csv(path, dtype={"name": str})
    readers = sorted({c.split(":")[0] for c in df.columns if re.fullmatch(r"R\d+:.+", c)})
    if not readers or f"{readers[0]}:ICH" not in df:
        raise LabelError(f"{path}: not a CQ500 reads file (no R1:ICH column)")
    ich = sum(df[f"{r}:ICH"].astype(int) for r in readers)
    finding_cols = [c for c in df.columns if re.fullmatch(r"R\d+:.+", c)]
    any_by_reader = sum((df[[c for c in finding_cols if c.startswith(r + ":")]].astype(int).sum(axis=1) > 0).astype(int)
                        for r in readers)
    label = np.where(any_by_reader == 0, 0.0, np.where(ich >= 2, 1.0, np.nan))
    return pd.DataFrame({"scan_id": df["name"].str.strip(), "label": label, "ich_votes": ich,
                         "finding_votes": any_by_reader})


def read_slice_labels(path: str | os.PathLike) -> pd.DataFrame:
    """-> DataFrame(sop_uid, hemorrhage) from a slice ground-truth CSV."""
    df = pd.read_csv(path, dtype={"sop_uid": str})
    if not {"sop_uid", "hemorrhage"} <= set(df.columns):
        raise LabelError(f"{path}: a slice label file needs columns sop_uid and hemorrhage")
    return df[["sop_uid", "hemorrhage"]].astype({"hemorrhage": int})


def read_scan_table(path: str | os.PathLike) -> pd.DataFrame:
    """-> DataFrame(scan_id, label) from a CSV with columns scan_id,label (',' or ';' separated)."""
    try:
        df = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LabelError(f"{path}: cannot read as a scan label CSV ({type(exc).__name__})") from None
    df.columns = [c.strip().lstrip("\ufeff") for c in df.columns]
    if not {"scan_id", "label"} <= set(df.columns):
        raise LabelError(f"{path}: a scan label file needs columns scan_id and label; has {', '.join(df.columns)}")
    ids = df["scan_id"].str.strip()
    bad = [(i + 2, v) for i, v in enumerate(df["label"].str.strip()) if v not in ("0", "1")]
    if bad:
        raise LabelError(f"{path}: row {bad[0][0]}: label {bad[0][1]!r} is not 0 or 1")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise LabelError(f"{path}: scan(s) listed twice: {', '.join(dup.iloc[:5])}")
    return pd.DataFrame({"scan_id": ids, "label": df["label"].str.strip().astype(int)})


def labels_from_slices(slices: pd.DataFrame) -> pd.DataFrame:
    """Scan labels from slice ground truth (`slice_truth` of collect_slices): 1 where any slice of the
    scan shows hemorrhage, 0 where its slices have ground truth and none does; scans without ground
    truth get no label."""
    known = slices[slices["slice_truth"] >= 0]
    lab = known.groupby("patient_id")["slice_truth"].max()
    return pd.DataFrame({"scan_id": lab.index.astype(str), "label": lab.to_numpy(int)})


def scan_labels(source: str, *, ctfsh: str | None = None, reads: str | None = None,
                scan_id_format: str = "CQ500-CT-{n}", table: str | None = None,
                slices: pd.DataFrame | None = None, keep_undecided: bool = False) -> pd.DataFrame:
    """Scan labels of the chosen source (`ctfsh`: the paper's; `reads`: majority of 3 readers;
    `csv`: a scan_id,label table; `masks`: from the slice ground truth of `slices`), dropping scans
    without a definite label unless `keep_undecided` (then their label is NaN)."""
    if source == "csv":
        if not table:
            raise LabelError("label_source csv needs a scan_id,label file (dataset.labels or dataset.nifti_labels)")
        return read_scan_table(table)
    if source == "masks":
        if slices is None:
            raise LabelError("label_source masks needs the cached slices")
        return labels_from_slices(slices)
    if source == "ctfsh":
        if not ctfsh:
            raise LabelError("dataset.labels (the CTFSH cq500_labels.csv) is not set")
        df = read_ctfsh(ctfsh, scan_id_format)
    elif source == "reads":
        if not reads:
            raise LabelError("dataset.reads (the CQ500 reads.csv) is not set")
        df = read_reads_majority(reads)
    else:
        raise LabelError(f"unknown label source {source!r} (ctfsh, reads, csv or masks)")
    if keep_undecided:
        return df
    return df.dropna(subset=["label"]).astype({"label": int})
