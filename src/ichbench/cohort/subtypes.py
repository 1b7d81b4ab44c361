"""What "ICH" means per scan: hemorrhage subtypes (IPH, IVH, SDH, EDH, SAH) and reader ICH votes.

The paper's scan label (CTFSH `is_pathl`) means *any* pathology. In the real CTFSH file 92 of the 247
pathological scans carry no bleed code in `diagnosis`, 79 have no ICH vote from any of the three CQ500
readers, and two CTFSH-normal scans (CQ500-CT-203, CQ500-CT-384) have ICH by all three readers.

Per scan this module gives:
- `diagnosis`: the CTFSH diagnosis text ('' where unknown);
- `subtypes`: the bleed subtypes, ';'-joined in SUBTYPES order. From the CTFSH `diagnosis` where a CTFSH
  file is given (ASDH and CSDH count as SDH), else from the reads majority (at least 2 of 3 readers mark
  the subtype);
- `reader_ich_votes`: readers (of 3) marking ICH in reads.csv, -1 where the scan is not in reads.csv.

Used by the split stage (columns of the fold manifests, counts in cohort.csv) and by the extra tables
(per-subtype results and the "ICH only" evaluation, see extra_tables.py).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

SUBTYPES = ("IPH", "IVH", "SDH", "EDH", "SAH")
#: CTFSH codes that are a subtype under another name (acute / chronic subdural hematoma).
ALIASES = {"ASDH": "SDH", "CSDH": "SDH"}
#: Reader ICH votes (of 3) from which a CTFSH-normal scan counts as ICH by the readers.
READER_ICH_MAJORITY = 2

SCAN_INFO_COLUMNS = ["diagnosis", "subtypes", "reader_ich_votes"]


def codes(diagnosis: str) -> set[str]:
    """CTFSH diagnosis text ('IPH;SAH;FRAC') -> its bleed subtypes ({'IPH', 'SAH'})."""
    toks = {t.strip().upper() for t in re.split(r"[;,/+\s]+", str(diagnosis or "")) if t.strip()}
    return {ALIASES.get(t, t) for t in toks} & set(SUBTYPES)


def _join(found: set[str]) -> str:
    return ";".join(t for t in SUBTYPES if t in found)


def scan_info(ctfsh: pd.DataFrame | None = None, reads: str | None = None) -> pd.DataFrame:
    """-> DataFrame(scan_id, diagnosis, subtypes, reader_ich_votes, subtype_source).

    `ctfsh`: the table of labels.read_ctfsh (scan_id, label, diagnosis); `reads`: path of a CQ500
    reads.csv. Either may be missing; scans in neither are absent from the result."""
    frames = []
    if ctfsh is not None and len(ctfsh) and "diagnosis" in ctfsh:
        frames.append(pd.DataFrame({"scan_id": ctfsh["scan_id"].astype(str),
                                    "diagnosis": ctfsh["diagnosis"].fillna("").astype(str)}))
    ctfsh_part = frames[0] if frames else pd.DataFrame(columns=["scan_id", "diagnosis"])
    votes = pd.DataFrame(columns=["scan_id", "reader_ich_votes", "reads_subtypes"])
    if reads:
        df = pd.read_csv(reads, dtype={"name": str})
        readers = sorted({c.split(":")[0] for c in df.columns if re.fullmatch(r"R\d+:ICH", c)})
        if readers:
            ich = sum(df[f"{r}:ICH"].astype(int) for r in readers)
            maj = []
            for i in range(len(df)):
                found = {t for t in SUBTYPES
                         if sum(int(df[f"{r}:{t}"].iloc[i]) for r in readers if f"{r}:{t}" in df) >= READER_ICH_MAJORITY}
                maj.append(_join(found))
            votes = pd.DataFrame({"scan_id": df["name"].str.strip(), "reader_ich_votes": ich.astype(int),
                                  "reads_subtypes": maj})
    out = ctfsh_part.merge(votes, on="scan_id", how="outer")
    out["diagnosis"] = out["diagnosis"].fillna("").astype(str)
    from_ctfsh = out["scan_id"].isin(set(ctfsh_part["scan_id"]))
    out["subtypes"] = np.where(from_ctfsh, out["diagnosis"].map(lambda d: _join(codes(d))),
                               out["reads_subtypes"].fillna("").astype(str))
    out["subtype_source"] = np.where(from_ctfsh, "ctfsh", np.where(out["reads_subtypes"].notna(), "reads", ""))
    out["reader_ich_votes"] = out["reader_ich_votes"].fillna(-1).astype(int)
    return out[["scan_id"] + SCAN_INFO_COLUMNS + ["subtype_source"]].reset_index(drop=True)


def attach(cohort: pd.DataFrame, info: pd.DataFrame | None) -> pd.DataFrame:
    """Add SCAN_INFO_COLUMNS to a slice/scan table by scan_id (patient_id where it has none; '' / -1 where
    unknown)."""
    out = cohort.drop(columns=[c for c in SCAN_INFO_COLUMNS if c in cohort], errors="ignore")
    if info is None or info.empty:
        return out.assign(diagnosis="", subtypes="", reader_ich_votes=-1)
    m = info.drop_duplicates("scan_id").set_index("scan_id")
    key = out["scan_id" if "scan_id" in out else "patient_id"]
    out["diagnosis"] = key.map(m["diagnosis"]).fillna("").astype(str)
    out["subtypes"] = key.map(m["subtypes"]).fillna("").astype(str)
    out["reader_ich_votes"] = key.map(m["reader_ich_votes"]).fillna(-1).astype(int)
    return out


def has(subtypes: pd.Series, subtype: str) -> pd.Series:
    """Rows whose ';'-joined `subtypes` contain `subtype`."""
    return subtypes.fillna("").astype(str).map(lambda s: subtype in s.split(";"))


def subsets(patients: pd.DataFrame) -> dict[str, pd.Series]:
    """Evaluation subsets of a table with scan_label, subtypes, reader_ich_votes -> {name: rows kept}.

    - `all`: the configured protocol (every scan);
    - one per subtype: normals + pathological scans with that subtype;
    - `ICH only`: pathological scans with a bleed subtype + normals without a reader-majority ICH vote;
    - `no bleed code`: normals + pathological scans without any bleed subtype (what the paper's label
      adds beyond hemorrhage)."""
    normal = patients["scan_label"] == 0
    path = patients["scan_label"] == 1
    bleed = patients["subtypes"].fillna("").astype(str) != ""
    reader_ich = patients["reader_ich_votes"] >= READER_ICH_MAJORITY
    out = {"all": normal | path}
    for t in SUBTYPES:
        out[t] = normal | (path & has(patients["subtypes"], t))
    out["ICH only"] = (normal & ~reader_ich) | (path & bleed)
    out["no bleed code"] = normal | (path & ~bleed)
    return out


def cohort_counts(cohort: pd.DataFrame) -> pd.DataFrame:
    """Scans per scan class with each subtype, without a bleed code, and with a reader-majority ICH
    vote: columns added to cohort.csv (rows normal, pathological, all). The columns say `patients_`: a
    scan is a patient in CQ500; in datasets with several studies per patient (RSNA) they count scans."""
    p = cohort.groupby("scan_id" if "scan_id" in cohort else "patient_id", as_index=False).first()
    if "subtypes" not in p:
        p = attach(p, None)
    rows = []
    for name, sel in (("normal", p["scan_label"] == 0), ("pathological", p["scan_label"] == 1),
                      ("all", p["scan_label"] >= 0)):
        g = p[sel]
        row = {"scan_class": name}
        for t in SUBTYPES:
            row[f"patients_{t}"] = int(has(g["subtypes"], t).sum())
        row["patients_no_bleed_code"] = int((g["subtypes"].fillna("") == "").sum())
        row["patients_reader_ich"] = int((g["reader_ich_votes"] >= READER_ICH_MAJORITY).sum())
        row["patients_reads_unknown"] = int((g["reader_ich_votes"] < 0).sum())
        rows.append(row)
    return pd.DataFrame(rows)
