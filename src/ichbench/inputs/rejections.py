"""Rejection reasons a user can act on: empty files, missing downloads, series without usable files, one log line per reason."""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Sequence

from .dicomio import Rejection

if TYPE_CHECKING:
    import pandas as pd

EMPTY_FILE = "empty file (0 bytes): an incomplete download, unzip or copy"
MISSING_DOWNLOAD = ("missing download: the label file lists this scan, but no file of it was found below the "
                    "data folder (check the download and unzip)")
NO_USABLE_SERIES = "its files were found, but they hold no usable series"


def refine_file_reasons(rejected: Sequence[Rejection]) -> list[Rejection]:
    """Say "empty file" where a zero-byte file was rejected as "not a DICOM file"."""
    out = []
    for r in rejected:
        if r.stage == "index" and r.reason.startswith("not a DICOM file") and _size(r.item) == 0:
            r = Rejection(r.item, EMPTY_FILE, r.stage)
        out.append(r)
    return out


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _scan_tags(path: str) -> tuple[str, str, str, str]:
    """(PatientID, StudyInstanceUID, SeriesInstanceUID, SeriesDescription) of a rejected file whose header can
    be read, else empty strings. Only UIDs and the description: nothing that identifies a person."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=False,
                                 specific_tags=["PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                                "SeriesDescription"])
            return tuple(str(ds.get(k, "") or "").strip() for k in (  # type: ignore[return-value]
                "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription"))
    except Exception:  # unreadable files are already rejected with their reason
        return "", "", "", ""


REJECTION_COLUMNS = ["stage", "item", "reason"]


def rejections_rows(rejected: Iterable[Rejection], with_scan: bool = False) -> list[dict]:
    """stage, item, reason (and, for files, the scan and series their header names where readable): the rows
    of rejected.csv."""
    rows = []
    for r in rejected:
        row = {"stage": r.stage, "item": r.item, "reason": r.reason}
        if with_scan:
            pid, _, suid, _ = _scan_tags(r.item) if r.stage == "index" and os.path.isfile(r.item) else ("",) * 4
            row.update(patient_id=pid, series_uid=suid)
        rows.append(row)
    return rows


def rejections_frame(rejected: Iterable[Rejection], with_scan: bool = False) -> pd.DataFrame:
    """`rejections_rows` as a DataFrame (its columns also where there is no row)."""
    import pandas as pd

    columns = REJECTION_COLUMNS + (["patient_id", "series_uid"] if with_scan else [])
    return pd.DataFrame(rejections_rows(rejected, with_scan), columns=columns)


def unindexed_series(rejected: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """Rows for series_candidates.csv: series none of whose files was indexed (every file rejected), with why.

    `rejected` is `rejections_frame(..., with_scan=True)`; `candidates` the series of the indexed files.
    """
    import pandas as pd

    files = rejected[(rejected["stage"] == "index") & (rejected["series_uid"] != "") & (rejected["patient_id"] != "")]
    files = files[~files["series_uid"].isin(set(candidates.get("series_uid", ())))]
    rows = []
    for (pid, suid), g in files.groupby(["patient_id", "series_uid"], sort=True):
        reasons = Counter(g["reason"])
        why = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3))
        study, _, _, description = _scan_tags(g["item"].iloc[0])
        rows.append({"patient_id": pid, "study_uid": study, "series_uid": suid, "series_description": description,
                     "n_files": 0, "eligible": False, "selected": False,
                     "why_not": f"all {len(g)} files rejected ({why})"})
    return pd.DataFrame(rows)


def add_unindexed_series(candidates: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """`candidates` (select_series output) plus the series of `extra`; a scan that has only such series gets
    the choice "no eligible series (...)" like a scan whose indexed series are all ineligible."""
    import pandas as pd

    if extra.empty:
        return candidates
    out = pd.concat([candidates, extra], ignore_index=True)
    choice = dict(zip(candidates["patient_id"], candidates["choice"]))
    for pid, g in out[out["patient_id"].isin(set(extra["patient_id"]))].groupby("patient_id"):
        out.loc[g.index, "choice"] = choice.get(pid) or "no eligible series (" + "; ".join(
            f"{u}: {w}" for u, w in zip(g["series_uid"], g["why_not"])) + ")"
    return out


def explain_unlabelled_scans(problems: list[tuple[str, str]], rejected: pd.DataFrame) -> list[tuple[str, str]]:
    """Tell a missing download from a scan whose files exist but hold no usable series.

    `problems` are splits.build_cohort's (scan, reason); `rejected` the earlier stages' rejections (files with
    their patient_id where readable, scans by ID)."""
    import pandas as pd

    if rejected.empty:
        rejected = pd.DataFrame(columns=["stage", "item", "reason", "patient_id"])
    by_scan = rejected[rejected["stage"] != "index"].groupby("item")["reason"].first().to_dict()
    pids = rejected["patient_id"] if "patient_id" in rejected else pd.Series([], dtype=str)
    files = rejected[pids.fillna("") != ""].groupby("patient_id")["reason"].agg(list).to_dict() if len(pids) else {}
    out = []
    for scan, reason in problems:
        if not reason.startswith("listed in the label file but no usable series"):
            out.append((scan, reason))
        elif scan in by_scan:
            why = by_scan[scan].removeprefix("no usable series: ")
            out.append((scan, f"{NO_USABLE_SERIES}: {why}"))
        elif scan in files:
            counts = Counter(files[scan]).most_common(2)
            out.append((scan, f"{NO_USABLE_SERIES}: all {len(files[scan])} of its files were rejected ("
                              + "; ".join(f"{n} x {r}" for r, n in counts) + ")"))
        else:
            out.append((scan, MISSING_DOWNLOAD))
    return out


def _reason_key(reason: str) -> str:
    """A reason with its numbers and UIDs generalised, so that alike rejections count together."""
    return re.sub(r"\d+(\.\d+)*", "N", reason)[:120]


def log_summary(rejected: Iterable[tuple[str, str]], logger: logging.Logger, what: str = "files") -> None:
    """One warning line per reason with its count and an example (item, reason) pair; each item at debug level."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for item, reason in rejected:
        groups.setdefault(_reason_key(reason), []).append((item, reason))
        logger.debug("skipped %s: %s", item, reason)
    for items in sorted(groups.values(), key=len, reverse=True):
        item, reason = items[0]
        more = f" (e.g. {item})" if len(items) > 1 else f": {item}"
        logger.warning("skipped %d %s: %s%s", len(items), what if len(items) > 1 else what.rstrip("s"), reason,
                       more)
