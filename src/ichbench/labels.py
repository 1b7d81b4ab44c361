"""Scan- and slice-level labels in the formats the datasets ship.

- CTFSH refined labels (Guerra et al., MIDL 2022), `cq500_labels.csv`: `;`-separated
  `name;is_pathl;diagnosis;TEST;notes`, names `CT_12` meaning scan `CQ500-CT-12`.
  The paper's cohort and scan labels (normal = is_pathl 0).
- CQ500 reads (Chilamkurthy et al. 2018), `reads.csv`: 3 readers x 14 findings. Majority protocol:
  normal = no reader marks any finding; ICH = at least 2 of 3 readers mark ICH; others are left out.
- Slice ground truth: a CSV with `sop_uid` and `hemorrhage` (0/1), as the synthetic generator writes.
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
        m = re.fullmatch(r"\s*CT_(\d+)\s*", name)
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


def scan_labels(source: str, *, ctfsh: str | None = None, reads: str | None = None,
                scan_id_format: str = "CQ500-CT-{n}") -> pd.DataFrame:
    """Scan labels of the chosen source (`ctfsh`: the paper's; `reads`: majority of 3 readers),
    dropping scans without a definite label."""
    if source == "ctfsh":
        if not ctfsh:
            raise LabelError("dataset.labels (the CTFSH cq500_labels.csv) is not set")
        df = read_ctfsh(ctfsh, scan_id_format)
    elif source == "reads":
        if not reads:
            raise LabelError("dataset.reads (the CQ500 reads.csv) is not set")
        df = read_reads_majority(reads)
    else:
        raise LabelError(f"unknown label source {source!r} (ctfsh or reads)")
    return df.dropna(subset=["label"]).astype({"label": int})
