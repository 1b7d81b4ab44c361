"""The PhysioNet CT-ICH adapter (Hssayeni 2020, v1.3.1): 75 NIfTI head CT volumes, masks, per-slice subtypes.

Layout under `dataset.root` (the PhysioNet zip as unzipped, its root folder
`computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.3.1/` nested up to
twice; see ../shared/docs/DATASETS.md section 2):

    ct_scans/049.nii ... 130.nii             int16 HU volumes (IDs 049-058, 066-130)
    masks/049.nii ...                        same-shape binary masks (any hemorrhage)
    hemorrhage_diagnosis_raw_ct.csv          PatientNumber,SliceNumber (1-based along the file's third
                                             axis),Intraventricular,Intraparenchymal,Subarachnoid,
                                             Epidural,Subdural,No_Hemorrhage,Fracture_Yes_No

A scan is a volume and a patient (`049`). Slice labels and subtypes come from the CSV, checked against the
masks (disagreements counted in the log; the split stage then uses the masks where both exist); the scan
label is any positive slice. `Patient_demographics.csv` is never read. Scans the dataset's authors leave
out are in EXCLUDE (070: chronic ICH), replaced by `dataset.exclude` ({scan: reason}; {} = none).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .adapter import Adapter, Resolved, find, register, write_derived
from .labels import LabelError
from .niftilabels import NiftiLabelError, mask_slice_values, nifti_index, slice_id, slice_order

ZIP_ROOT = "computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.3.1"
LABEL_FILE = "hemorrhage_diagnosis_raw_ct.csv"
SUBTYPES = {"Intraventricular": "IVH", "Intraparenchymal": "IPH", "Subarachnoid": "SAH", "Epidural": "EDH",
            "Subdural": "SDH"}
COLUMNS = ["PatientNumber", "SliceNumber", *SUBTYPES, "No_Hemorrhage"]
#: Scans the authors leave out of evaluation, with the reason (Murtadha44/... `main.py`: patient index 21).
EXCLUDE = {"070": "chronic ICH: left out of evaluation by the dataset's authors"}


def exclusions(ds: dict) -> dict[str, str]:
    """dataset.exclude ({scan: reason}, a list of scans, or null = EXCLUDE)."""
    v = ds.get("exclude")
    if v is None:
        return dict(EXCLUDE)
    if isinstance(v, list):
        return {str(s): "listed in dataset.exclude" for s in v}
    return {str(k): str(r or "listed in dataset.exclude") for k, r in dict(v).items()}


def read_diagnosis(path) -> pd.DataFrame:
    """hemorrhage_diagnosis_raw_ct.csv -> one row per slice: scan (3 digits), slice (1-based), the five
    subtype flags, no_hemorrhage. Checks the header and 0/1 values."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LabelError(f"{path}: cannot read the CT-ICH diagnosis CSV ({type(exc).__name__})") from None
    df.columns = [c.strip().lstrip("\ufeff") for c in df.columns]
    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise LabelError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)},Fracture_Yes_No")
    for c in COLUMNS:
        bad = ~df[c].str.strip().str.fullmatch(r"\d+")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise LabelError(f"{path}: row {i + 2}: {c} {df[c].iloc[i]!r} is not a whole number")
    out = pd.DataFrame({"scan": df["PatientNumber"].astype(int).map(lambda n: f"{n:03d}"),
                        "slice": df["SliceNumber"].astype(int)})
    for c in (*SUBTYPES, "No_Hemorrhage"):
        v = df[c].astype(int)
        if not v.isin((0, 1)).all():
            i = int(np.flatnonzero(~v.isin((0, 1)).to_numpy())[0])
            raise LabelError(f"{path}: row {i + 2}: {c} is {v.iloc[i]}, not 0 or 1")
        out[c] = v.to_numpy()
    dup = out.duplicated(["scan", "slice"])
    if dup.any():
        r = out[dup].iloc[0]
        raise LabelError(f"{path}: scan {r['scan']} slice {r['slice']} is listed twice")
    return out


@register
class CTICH(Adapter):
    name = "ctich"
    title = "PhysioNet CT-ICH 1.3.1: 75 NIfTI head CT volumes with masks and per-slice subtypes (Iraq, trauma)"
    images = "nifti"
    download = (f"ct_scans/NNN.nii, masks/NNN.nii and {LABEL_FILE} (PhysioNet ct-ich 1.3.1, zip root "
                f"{ZIP_ROOT}/)")
    gives = {"scans": "one per volume = patient (049-058, 066-130)", "scan labels": "any positive slice",
             "slice labels": f"{LABEL_FILE} (checked against the masks)", "pixel labels": "masks (binary)",
             "subtypes": "IVH, IPH, SAH, EDH, SDH per slice and scan", "excluded": "070 (chronic ICH), dataset.exclude",
             "counts": "75 scans, 2,814 slices; 36 of the 82 collected scans with ICH"}

    def _files(self, root: Path) -> tuple[Path, Path, Path]:
        scans, tried = find(root, ["ct_scans"])
        if scans is None:
            old, _ = find(root, ["Patients_CT"])
            if old is not None:
                raise ConfigError(f"dataset ctich: {old} is the JPEG layout of CT-ICH <= 1.2.0; download version "
                                  f"1.3.1 (NIfTI): {self.download}")
            raise self.missing("the CT volumes", tried)
        masks = scans.parent / "masks"
        if not masks.is_dir():
            raise self.missing("the masks", [masks])
        labels = scans.parent / LABEL_FILE
        if not labels.is_file():
            raise self.missing("the slice labels", [labels])
        return scans, masks, labels

    def locate(self, root: Path, ds: dict) -> Resolved:
        scans, masks, labels = self._files(root)
        out = self.derived_dataset(ds, "nifti", nifti_dir=str(scans), nifti_masks_dir=str(masks))
        return Resolved(self.name, out, scan_key="patient", label_files=[str(labels)], derived=True)

    def derive(self, ds: dict, index_csv, out: Path) -> list[str]:
        _, _, labels_csv = self._files(Path(ds["root"]))
        diag = read_diagnosis(labels_csv)
        index = nifti_index(index_csv)
        excluded = exclusions(ds)
        codes = np.array(list(SUBTYPES.values()))
        slices, scans, info, lines = [], [], [], []
        n_mismatch, n_no_hem, n_disagree, unlisted, no_mask = 0, 0, 0, [], []
        for _, v in index.iterrows():
            scan = v["patient_id"]
            d = diag[diag["scan"] == scan].sort_values("slice")
            if d.empty:
                unlisted.append(scan)
                continue
            try:
                n, rev = slice_order(v["path"])
            except NiftiLabelError as exc:
                raise LabelError(str(exc)) from None
            if d["slice"].tolist() != list(range(1, n + 1)):
                n_mismatch += 1
                lines.append(f"scan {scan}: {LABEL_FILE} lists slices {d['slice'].min()}-{d['slice'].max()} "
                             f"({len(d)} rows), the volume has {n}; slices outside 1..{n} are ignored")
                d = d[d["slice"].between(1, n)]
            flags = d[list(SUBTYPES)].to_numpy(bool)
            hem = flags.any(axis=1)
            n_no_hem += int((hem == d["No_Hemorrhage"].to_numpy(bool)).sum())
            sops = [slice_id(scan, k - 1, n, rev) for k in d["slice"]]
            subs = [";".join(codes[f]) for f in flags]
            slices.append(pd.DataFrame({"sop_uid": sops, "hemorrhage": hem.astype(int), "subtypes": subs}))
            if v.get("mask_path"):
                m = mask_slice_values(v["mask_path"], scan).set_index("sop_uid")["hemorrhage"]
                n_disagree += int((m.reindex(sops).fillna(-1).to_numpy() != hem.astype(int)).sum())
            else:
                no_mask.append(scan)
            if scan in excluded:
                continue
            found = {t for s in subs for t in s.split(";") if t}
            scans.append((scan, int(hem.any())))
            info.append((scan, ";".join(t for t in ("IPH", "IVH", "SDH", "EDH", "SAH") if t in found)))
        scan_t = pd.DataFrame(scans, columns=["scan_id", "label"])
        info_t = pd.DataFrame(info, columns=["scan_id", "subtypes"]).assign(diagnosis="", reader_ich_votes=-1,
                                                                           subtype_source="ctich")
        have = set(index["patient_id"])
        excl = pd.DataFrame([(s, r) for s, r in sorted(excluded.items()) if s in have], columns=["scan_id", "reason"])
        write_derived(out, scan_labels=scan_t, slice_labels=pd.concat(slices, ignore_index=True) if slices else None,
                      scan_info=info_t, excluded=excl)
        lines = [f"{labels_csv}: {len(diag)} slices of {diag['scan'].nunique()} scans; {len(scan_t)} scans labelled "
                 f"({int(scan_t['label'].sum())} with hemorrhage), {len(excl)} excluded "
                 f"({', '.join(excl['scan_id']) or 'none'})",
                 f"{n_disagree} slices where the masks disagree with the CSV's subtypes (the masks are used for "
                 f"slice truth); {n_no_hem} slices where No_Hemorrhage contradicts the subtype columns; "
                 f"{n_mismatch} scans whose CSV slices do not match the volume"] + lines
        if unlisted:
            lines.append(f"{len(unlisted)} volumes have no row in {LABEL_FILE} and no label: {', '.join(unlisted[:10])}")
        if no_mask:
            lines.append(f"{len(no_mask)} volumes without a usable mask (missing from masks/ or refused by the index, "
                         f"see rejected.csv): slice labels from the CSV only, no pixel truth, not checked: "
                         f"{', '.join(no_mask[:10])}")
        return lines
