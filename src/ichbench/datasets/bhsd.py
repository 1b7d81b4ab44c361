"""The BHSD adapter (Wu et al., MLMI 2023): 192 NIfTI volumes with 5-class masks, 1,980 with a bleed / no-bleed flag.

Layout under `dataset.root` (label_192.zip and unlabel_2000.zip unzipped side by side; see
../shared/docs/DATASETS.md section 3):

    label_192/images/<name>.nii.gz           CT volumes (tilt kept in the qform; nibabel uses the qform
    label_192/ground truths/<name>.nii.gz    where sform_code is 0); masks (folder name with a space),
                                             values 1-5 = EDH, IPH, IVH, SAH, SDH
    unlabel_2000/anybleed/*.nii.gz           (562) scan label 1, no slice or pixel truth
    unlabel_2000/nobleed/*.nii.gz            (1,418) scan label 0: usable as normal training scans

Names are `<PatientID>_<StudyInstanceUID>` of RSNA stage_2_train (e.g. `ID_0237f3c9_ID_40015688b9`): a scan
is a volume, its patient the RSNA PatientID (patients.csv), so one patient's volumes stay in one fold part.
Scan labels: any mask voxel (label_192) or the folder (unlabel_2000); subtypes from the mask values.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..inputs.nifti import NIFTI_SUFFIXES
from .adapter import Adapter, Resolved, find, register, write_derived
from .niftilabels import mask_slice_values, nifti_index

#: mask value -> subtype code (BHSD dataset.json, torch-em LABEL_IDS)
VALUES = {"1": "EDH", "2": "IPH", "3": "IVH", "4": "SAH", "5": "SDH"}
_NAME = re.compile(r"(ID_[0-9a-fA-F]+)_(ID_[0-9a-fA-F]+)")


def patient_of(name: str) -> str:
    """`ID_0237f3c9_ID_40015688b9` -> `ID_0237f3c9` (names of another form are their own patient)."""
    m = _NAME.fullmatch(name)
    return m.group(1) if m else name


def _check_suffixes(folder: Path) -> None:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    nifti = [p for p in files if p.name.lower().endswith(NIFTI_SUFFIXES)]
    if files and not nifti:
        raise ConfigError(f"dataset bhsd: the {len(files)} files in {folder} have no .nii.gz suffix (the BHSD card "
                          "says label_192.zip's files need to be suffixed nii.gz); rename them, e.g. "
                          f"`for f in '{folder}'/*; do mv \"$f\" \"$f.nii.gz\"; done`")


@register
class BHSD(Adapter):
    name = "bhsd"
    title = "BHSD: 192 NIfTI volumes with 5-class masks + 1,980 with a bleed flag (from RSNA stage-2 train)"
    images = "nifti"
    download = ("label_192/images/, label_192/ground truths/ (with a space) and optionally unlabel_2000/anybleed/, "
                "unlabel_2000/nobleed/ (Hugging Face WuBiao/BHSD label_192.zip, unlabel_2000.zip)")
    gives = {"scans": "one per volume; patients from the RSNA PatientID in the name",
             "scan labels": "any mask voxel (label_192), the folder (unlabel_2000)",
             "slice labels": "the masks (label_192 only)", "pixel labels": "masks, values 1-5",
             "subtypes": "EDH, IPH, IVH, SAH, SDH from the mask values",
             "counts": "192 + 562 anybleed + 1,418 nobleed volumes; 191 patients in label_192"}

    def rsna_study(self, scan_id: str) -> str | None:
        m = _NAME.fullmatch(scan_id)
        return m.group(2) if m else None

    def _files(self, root: Path) -> tuple[Path, Path, Path]:
        images, tried = find(root, ["label_192/images"])
        if images is None:
            raise self.missing("label_192/images", tried)
        masks = images.parent / "ground truths"
        if not masks.is_dir():
            near = [p for p in images.parent.iterdir() if p.is_dir() and p.name.lower().replace("_", " ") == "ground truths"]
            if not near:
                raise self.missing("the masks", [masks])
            masks = near[0]
        for d in (images, masks):
            _check_suffixes(d)
        return images.parent.parent, images, masks

    def locate(self, root: Path, ds: dict) -> Resolved:
        base, images, masks = self._files(root)
        # every volume under base (label_192/images and unlabel_2000/*), the masks folder excluded by nifti.py
        out = self.derived_dataset(ds, "nifti", nifti_dir=str(base), nifti_masks_dir=str(masks))
        return Resolved(self.name, out, scan_key="patient", label_files=[], derived=True)

    def derive(self, ds: dict, index_csv, out: Path) -> list[str]:
        base, images, masks = self._files(Path(ds["root"]))
        index = nifti_index(index_csv)
        scans, slices, info, other = [], [], [], []
        counts = {"label_192": 0, "anybleed": 0, "nobleed": 0}
        for _, v in index.iterrows():
            scan, path = v["patient_id"], Path(v["path"])
            if path.parent == images:
                if not v.get("mask_path"):
                    other.append((scan, "label_192 volume without a mask in 'ground truths'"))
                    continue
                m = mask_slice_values(v["mask_path"], scan)
                found = {x for s in m["values"] for x in s.split(";") if x}
                bad = sorted(found - set(VALUES))
                if bad:
                    other.append((scan, f"mask values {', '.join(bad)} are not BHSD's 1-5"))
                    continue
                slices.append(m[["sop_uid", "hemorrhage"]].assign(
                    subtypes=[";".join(VALUES[x] for x in s.split(";") if x) for s in m["values"]]))
                subs = {VALUES[x] for x in found}
                scans.append((scan, int(bool(found))))
                info.append((scan, ";".join(t for t in ("IPH", "IVH", "SDH", "EDH", "SAH") if t in subs)))
                counts["label_192"] += 1
            elif path.parent.name in ("anybleed", "nobleed"):
                scans.append((scan, int(path.parent.name == "anybleed")))
                info.append((scan, ""))
                counts[path.parent.name] += 1
            else:
                other.append((scan, f"not in label_192/images or unlabel_2000/{{anybleed,nobleed}} ({path.parent})"))
        scan_t = pd.DataFrame(scans, columns=["scan_id", "label"])
        patients = pd.DataFrame({"scan_id": scan_t["scan_id"], "patient_id": scan_t["scan_id"].map(patient_of)})
        info_t = pd.DataFrame(info, columns=["scan_id", "subtypes"]).assign(diagnosis="", reader_ich_votes=-1,
                                                                           subtype_source="bhsd")
        write_derived(out, scan_labels=scan_t, slice_labels=pd.concat(slices, ignore_index=True) if slices else None,
                      scan_info=info_t, patients=patients, excluded=pd.DataFrame(other, columns=["scan_id", "reason"]))
        odd = int((patients["patient_id"] == patients["scan_id"]).sum())
        return [f"{counts['label_192']} label_192 volumes with masks, {counts['anybleed']} anybleed, "
                f"{counts['nobleed']} nobleed; {len(scan_t)} scans of {patients['patient_id'].nunique()} patients "
                f"({odd} names not of the form <PatientID>_<StudyInstanceUID>); {len(other)} left out"]
