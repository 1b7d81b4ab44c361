"""The RSNA 2019 Intracranial Hemorrhage Detection adapter (Kaggle; Flanders et al., Radiology: AI 2020).

Layout under `dataset.root` (the Kaggle download as unzipped; see ../shared/docs/DATASETS.md section 1):

    stage_2_train/ID_<9 hex>.dcm     one slice per file (also accepted: stage_2_train_images/,
                                     stage_1_train_images/, and these inside one or two nested
                                     rsna-intracranial-hemorrhage-detection/ folders)
    stage_2_train.csv                ID,Label: six rows per slice, ID_<hex>_<subtype>, subtypes epidural,
                                     intraparenchymal, intraventricular, subarachnoid, subdural, any

A scan is a study (StudyInstanceUID; one series per study in RSNA); patients come from the headers'
PatientID, so a patient's studies stay in one fold part. Labels: a slice is hemorrhage where `any` or
one of the five subtypes is 1 (duplicated rows dropped, conflicting ones resolved to 1 and counted,
slices where `any` disagrees with the subtypes counted); a scan is pathological where any of its
slices is; subtypes per slice (slice_labels.csv) and per scan (scan_info.csv). Studies with indexed
slices that have no label row are left out with the reason. The pixel quirks (stripped headers, the
BitsStored-12 intercept correction, the corrupted ID_6431af929.dcm, repeated positions, tilt) are
handled by the readers in inputs/ and recorded in rejected_index.csv, series.csv and the logs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from . import nifti_to_dicom
from .adapter import DERIVED_DIR, Adapter, Resolved, find, register, write_derived
from .labels import LabelError

log = logging.getLogger(__name__)

IMAGE_DIRS = ("stage_2_train", "stage_2_train_images", "stage_1_train_images", "stage_1_train")
LABEL_FILES = ("stage_2_train.csv", "stage_1_train.csv")
#: The six label rows of each slice, in the file's order, and the subtype codes they stand for.
SUBTYPE_COLUMNS = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
                   "subarachnoid": "SAH", "subdural": "SDH"}
ALL_COLUMNS = tuple(SUBTYPE_COLUMNS) + ("any",)


def read_labels(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, int]]:
    """stage_2_train.csv -> (one row per slice: sop_uid, the six columns 0/1, hemorrhage, subtypes; counts).

    Checks: columns ID,Label; IDs `ID_<hex>_<subtype>` with a known subtype; labels 0/1; every slice has
    all six rows. Exact duplicate rows are dropped (counted); two rows of one slice and subtype with
    different labels count as 1 (counted); `any` is checked against the five subtypes (disagreements
    counted; the slice is hemorrhage where either says so)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LabelError(f"{path}: cannot read as the RSNA label CSV ID,Label ({type(exc).__name__})") from None
    df.columns = [c.strip().lstrip("\ufeff") for c in df.columns]
    if not {"ID", "Label"} <= set(df.columns):
        raise LabelError(f"{path}: the RSNA label file needs columns ID,Label; has {', '.join(df.columns)}")
    counts = {"rows": len(df)}
    n0 = len(df)
    df = df.drop_duplicates(["ID", "Label"])
    counts["duplicate_rows"] = n0 - len(df)
    parts = df["ID"].str.strip().str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        i = int(np.flatnonzero(parts[1].isna().to_numpy())[0]) if parts.shape[1] == 2 else 0
        raise LabelError(f"{path}: ID {df['ID'].iloc[i]!r} is not of the form ID_<hex>_<subtype>")
    sop, sub = parts[0], parts[1]
    bad = ~sub.isin(ALL_COLUMNS) | ~sop.str.fullmatch(r"ID_[0-9a-fA-F]+")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelError(f"{path}: ID {df['ID'].iloc[i]!r} is not of the form ID_<hex>_<subtype> with subtype one "
                         f"of {', '.join(ALL_COLUMNS)}")
    lab = df["Label"].str.strip()
    bad = ~lab.isin(("0", "1"))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise LabelError(f"{path}: ID {df['ID'].iloc[i]}: Label {lab.iloc[i]!r} is not 0 or 1")
    long = pd.DataFrame({"sop_uid": sop.to_numpy(), "subtype": sub.to_numpy(), "label": lab.astype(int).to_numpy()})
    conflict = long.duplicated(["sop_uid", "subtype"], keep=False)
    counts["conflicting_rows"] = int(conflict.sum())
    wide = long.groupby(["sop_uid", "subtype"])["label"].max().unstack("subtype")
    incomplete = wide[list(ALL_COLUMNS)].isna().any(axis=1) if set(ALL_COLUMNS) <= set(wide) else None
    if incomplete is None or incomplete.any():
        have = set(wide.columns)
        who = wide.index[0] if incomplete is None else wide.index[incomplete.to_numpy()][0]
        raise LabelError(f"{path}: slice {who} lacks some of the six rows {', '.join(ALL_COLUMNS)}"
                         + ("" if incomplete is not None else f" (file has subtypes {', '.join(sorted(have))})"))
    wide = wide[list(ALL_COLUMNS)].astype(int)
    sub_any = wide[list(SUBTYPE_COLUMNS)].max(axis=1)
    counts["any_disagrees"] = int((sub_any != wide["any"]).sum())
    wide["hemorrhage"] = np.maximum(sub_any, wide["any"])
    codes = np.array(list(SUBTYPE_COLUMNS.values()))
    flags = wide[list(SUBTYPE_COLUMNS)].to_numpy(bool)
    wide["subtypes"] = [";".join(codes[f]) for f in flags]
    counts["slices"], counts["positive_slices"] = len(wide), int(wide["hemorrhage"].sum())
    return wide.reset_index(), counts


def _join_subtypes(values) -> str:
    found = {t for v in values for t in str(v).split(";") if t}
    return ";".join(t for t in ("IPH", "IVH", "SDH", "EDH", "SAH") if t in found)


def derive_tables(labels: pd.DataFrame, index: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Slice labels (read_labels) + the header index (sop_uid, study_uid, patient_id) -> the derived tables
    (scan = study) and counts. A study with an indexed slice that has no label row is left out."""
    idx = index[["sop_uid", "study_uid", "patient_id"]].drop_duplicates("sop_uid")
    m = idx.merge(labels, on="sop_uid", how="left")
    counts = {"indexed_slices": len(idx), "unlabelled_slices": int(m["hemorrhage"].isna().sum()),
              "labels_without_file": int((~labels["sop_uid"].isin(set(idx["sop_uid"]))).sum())}
    lacking = m[m["hemorrhage"].isna()].groupby("study_uid").size()
    sizes = m.groupby("study_uid").size()
    excluded = pd.DataFrame({"scan_id": lacking.index.astype(str),
                             "reason": [f"{n} of its {sizes[s]} indexed slices have no row in the RSNA label file"
                                        for s, n in lacking.items()]})
    ok = m[~m["study_uid"].isin(set(lacking.index))]
    g = ok.groupby("study_uid", sort=True)
    scans = pd.DataFrame({"scan_id": g.size().index.astype(str), "label": g["hemorrhage"].max().astype(int).to_numpy()})
    info = pd.DataFrame({"scan_id": scans["scan_id"], "diagnosis": "",
                         "subtypes": g["subtypes"].agg(_join_subtypes).to_numpy(), "reader_ich_votes": -1,
                         "subtype_source": "rsna"})
    slices = ok[["sop_uid", "hemorrhage", "subtypes"]].astype({"hemorrhage": int})
    counts.update(scans=len(scans), pathological_scans=int(scans["label"].sum()),
                  patients=int(ok["patient_id"].nunique()), excluded_scans=len(excluded))
    return {"scan_labels": scans, "slice_labels": slices, "scan_info": info, "excluded": excluded}, counts


def _mask_folders(ds: dict) -> list[str]:
    """dataset.masks: folders of BHSD / HemSeg NIfTI masks for RSNA scans (a path or a list), checked."""
    v = ds.get("masks") or []
    folders = [v] if isinstance(v, str) else list(v)
    for f in folders:
        if not Path(f).is_dir():
            raise ConfigError(f"dataset.masks: {f} is not a folder (BHSD label_192/ground truths or HemSeg "
                              "IPH_IVH_label / HemSeg-500 label folders)")
    return [str(f) for f in folders]


@register
class RSNA(Adapter):
    name = "rsna"
    title = "RSNA 2019 Intracranial Hemorrhage Detection (Kaggle): 752,803 stage-2 train slices, per-slice labels"
    scan_key = "study"
    download = ("stage_2_train/ (or stage_2_train_images/) with the ID_<hex>.dcm slices and stage_2_train.csv "
                "(ID,Label), as in the Kaggle zip rsna-intracranial-hemorrhage-detection")
    gives = {"scans": "one per study (StudyInstanceUID); patients from PatientID (several studies each)",
             "scan labels": "any positive slice", "slice labels": "stage_2_train.csv (any / five subtypes)",
             "pixel labels": "BHSD / HemSeg NIfTI masks where dataset.masks names them (by scan name)", "subtypes": "EDH, IPH, IVH, SAH, SDH per slice and scan",
             "quirks": "stripped headers, ID_ UIDs, BitsStored-12 intercept fix, ID_6431af929.dcm, repeated "
                       "positions, tilt, non-square slices",
             "counts": "stage 2 train: 752,803 slices, about 21,744 scans of 18,938 patients"}

    def rsna_study(self, scan_id: str) -> str | None:
        return scan_id                                   # a scan is a study

    def _files(self, root: Path) -> tuple[Path, Path]:
        images, tried = find(root, IMAGE_DIRS)
        if images is None:
            raise self.missing("the slice folder", tried)
        labels, tried = find(root, LABEL_FILES, kind="file")
        if labels is None:
            near, _ = find(images.parent, LABEL_FILES, kind="file", depth=0)
            if near is None:
                raise self.missing("the label file", tried + [images.parent / LABEL_FILES[0]])
            labels = near
        return images, labels

    def locate(self, root: Path, ds: dict) -> Resolved:
        images, labels = self._files(root)
        masks = _mask_folders(ds)
        out = self.derived_dataset(ds, "dicom", dicom_dir=str(images),
                                   gt_masks_dir=f"{DERIVED_DIR}/masks" if masks else None)
        return Resolved(self.name, out, scan_key=self.scan_key, label_files=[str(labels)] + masks, derived=True)

    def derive(self, ds: dict, index_csv, out: Path) -> list[str]:
        _, labels_csv = self._files(Path(ds["root"]))
        labels, c = read_labels(labels_csv)
        index = pd.read_csv(index_csv, dtype=str, keep_default_na=False,
                            usecols=["sop_uid", "study_uid", "series_uid", "patient_id"])
        tables, d = derive_tables(labels, index)
        write_derived(out, **tables)
        masks = _mask_folders(ds)
        mask_lines = []
        if masks:
            full = pd.read_csv(index_csv, dtype=str, keep_default_na=False,
                               usecols=["sop_uid", "study_uid", "series_uid", "position", "orientation",
                                        "pixel_spacing", "rows", "columns"])
            m = nifti_to_dicom.write_masks(masks, full, Path(out) / "masks")
            mask_lines.append(f"pixel truth from {m['masks']} NIfTI masks in {', '.join(masks)}: {m['matched']} "
                              f"matched to a study or series by name ({m['unmatched']} not), {m['series']} series, "
                              f"{m['slices_with_gt']} slices with hemorrhage pixels ({m['by_order']} series mapped by stack order, "
                              f"{m['by_coordinates']} by patient coordinates)")
        lines = [f"{labels_csv}: {c['rows']} rows, {c['slices']} slices ({c['positive_slices']} with hemorrhage); "
                 f"{c['duplicate_rows']} duplicated rows dropped, {c['conflicting_rows']} rows of slices listed twice "
                 f"with different labels (counted as 1), {c['any_disagrees']} slices whose 'any' disagrees with "
                 "the five subtypes (hemorrhage where either says so)",
                 f"{d['indexed_slices']} indexed slices, {d['unlabelled_slices']} without a label row; "
                 f"{d['labels_without_file']} label rows name no indexed file (not downloaded or rejected, see "
                 "rejected_index.csv)",
                 f"{d['scans']} scans (studies) of {d['patients']} patients, {d['pathological_scans']} with "
                 f"hemorrhage; {d['excluded_scans']} studies left out (slices without labels, see excluded.csv)"]
        lines += mask_lines
        return lines
