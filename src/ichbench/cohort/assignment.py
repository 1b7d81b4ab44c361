"""Reproducible folds: the patient -> fold assignment written by every run and read back by `splits.assignment`.

`results/splits/assignment.csv` has one row per cohort patient: `patient_id, scan_label, test_fold,
val_folds` (`val_folds`: the folds whose validation part holds the patient, ';'-joined, '' for none).
Training parts are not stored: they are the fold's remaining normal patients.

Read back (config `splits.assignment: path/to/assignment.csv`, a copy kept outside results/):
- every cohort patient keeps its test fold and validation parts from the file, so one scan that
  fails to decode on another machine moves nobody else;
- a cohort patient missing from the file stops the split with a message naming it (add a row, or unset
  `splits.assignment` to draw new folds);
- patients in the file but not in the cohort are ignored, with a warning and a note in the log;
- a scan label that differs from the file's is kept (the cohort's), with a warning.
"""
from __future__ import annotations

import logging
import os

import pandas as pd

log = logging.getLogger(__name__)

ASSIGNMENT_COLUMNS = ["patient_id", "scan_label", "test_fold", "val_folds"]


class AssignmentError(ValueError):
    pass


def to_table(parts: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """parts (fold, patient_id, part) + patients (patient_id, scan_label) -> ASSIGNMENT_COLUMNS."""
    test = parts[parts["part"] == "test"].set_index("patient_id")["fold"]
    val = parts[parts["part"] == "val"].groupby("patient_id")["fold"].agg(lambda f: ";".join(str(int(k)) for k in sorted(f)))
    p = patients.sort_values("patient_id").reset_index(drop=True)
    return pd.DataFrame({"patient_id": p["patient_id"], "scan_label": p["scan_label"].astype(int),
                         "test_fold": p["patient_id"].map(test).astype(int),
                         "val_folds": p["patient_id"].map(val).fillna("")})


def read(path: str | os.PathLike) -> pd.DataFrame:
    """-> ASSIGNMENT_COLUMNS, checked."""
    try:
        df = pd.read_csv(path, dtype={"patient_id": str, "val_folds": str}, keep_default_na=False)
    except FileNotFoundError:
        raise AssignmentError(f"{path}: splits.assignment names a file that does not exist") from None
    except Exception as exc:
        raise AssignmentError(f"{path}: cannot read as a fold assignment CSV ({type(exc).__name__})") from None
    missing = {"patient_id", "test_fold"} - set(df.columns)
    if missing:
        raise AssignmentError(f"{path}: a fold assignment needs columns patient_id and test_fold "
                              f"(missing {', '.join(sorted(missing))})")
    if "val_folds" not in df:
        df["val_folds"] = ""
    if "scan_label" not in df:
        df["scan_label"] = -1
    dup = df["patient_id"][df["patient_id"].duplicated()]
    if len(dup):
        raise AssignmentError(f"{path}: patient(s) listed twice: {', '.join(dup.iloc[:5])}")
    try:
        df["test_fold"] = df["test_fold"].astype(int)
    except ValueError:
        raise AssignmentError(f"{path}: test_fold must be a whole number in every row") from None
    return df[ASSIGNMENT_COLUMNS]


def parts_from(assignment: pd.DataFrame, patients: pd.DataFrame, n_folds: int,
               source: str = "splits.assignment") -> tuple[pd.DataFrame, list[str]]:
    """Fold parts (fold, patient_id, part) of `patients` (patient_id, scan_label) from a read-back
    assignment. -> (parts, notes). Raises AssignmentError for cohort patients the file lacks."""
    a = assignment.set_index("patient_id")
    have = set(patients["patient_id"])
    lacking = sorted(have - set(a.index))
    if lacking:
        raise AssignmentError(f"{source}: {len(lacking)} cohort patient(s) have no fold in the file: "
                              f"{', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}; add rows for "
                              "them or unset splits.assignment to draw new folds")
    bad = a.loc[sorted(have)]
    out_of_range = bad[(bad["test_fold"] < 0) | (bad["test_fold"] >= n_folds)]
    if len(out_of_range):
        raise AssignmentError(f"{source}: test_fold of {out_of_range.index[0]} is {out_of_range['test_fold'].iloc[0]}, "
                              f"not in 0..{n_folds - 1} (splits.n_folds = {n_folds})")
    notes = []
    extra = sorted(set(a.index) - have)
    if extra:
        notes.append(f"{len(extra)} patient(s) of {source} are not in this cohort and are ignored: "
                     f"{', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}")
    labels = dict(zip(patients["patient_id"], patients["scan_label"].astype(int)))
    changed = [p for p in sorted(have) if int(a.loc[p, "scan_label"]) >= 0 and int(a.loc[p, "scan_label"]) != labels[p]]
    if changed:
        notes.append(f"{len(changed)} patient(s) have another scan label than in {source} (the cohort's is used): "
                     f"{', '.join(changed[:10])}")
    rows = []
    for pid in sorted(have):
        test = int(a.loc[pid, "test_fold"])
        vals = {int(v) for v in str(a.loc[pid, "val_folds"]).split(";") if v.strip()}
        for fold in range(n_folds):
            if fold == test:
                rows.append((fold, pid, "test"))
            elif fold in vals:
                rows.append((fold, pid, "val"))
            elif labels[pid] == 0:
                rows.append((fold, pid, "train"))
    for n in notes:
        log.warning("%s", n)
    return pd.DataFrame(rows, columns=["fold", "patient_id", "part"]), notes
