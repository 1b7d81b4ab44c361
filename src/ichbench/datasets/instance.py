"""The INSTANCE 2022 adapter (MICCAI 2022 challenge; Li et al.): 100 labelled NIfTI head CT volumes, binary masks.

Layout under `dataset.root` (the challenge download as unzipped; see ../shared/docs/DATASETS.md section 4):

    train/data/001.nii.gz ... 100.nii.gz     CT volumes (HU assumed; checked per volume by the HU judgement
                                             of the readers, inputcheck.hu_problem: a pre-clipped or
                                             rescaled volume is rejected with the reason, or accepted with
                                             preprocess.non_hu: accept)
    train/label/<same>.nii.gz                binary masks (0, 1 = any ICH; no subtypes)
    evaluation/101 ... 130.nii.gz            validation volumes without released labels: not read

A scan is a volume and a patient. Scan label: any mask voxel; slice truth and pixel truth from the masks
(mask values other than 0 and 1 are counted in the log). No subtypes.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .adapter import Adapter, Resolved, find, register, write_derived
from .niftilabels import mask_slice_values, nifti_index


@register
class Instance(Adapter):
    name = "instance"
    title = "INSTANCE 2022: 100 labelled NIfTI head CT volumes with binary hemorrhage masks (China)"
    images = "nifti"
    download = "train/data/NNN.nii.gz and train/label/NNN.nii.gz (the INSTANCE 2022 training set)"
    gives = {"scans": "one per volume = patient (001-100)", "scan labels": "any mask voxel",
             "slice labels": "the masks", "pixel labels": "masks (binary, all subtypes merged)", "subtypes": "none",
             "counts": "100 training scans with labels"}

    def _files(self, root: Path) -> tuple[Path, Path]:
        data, tried = find(root, ["train/data", "data"])
        if data is None:
            raise self.missing("the CT volumes", tried)
        label = data.parent / "label"
        if not label.is_dir():
            raise self.missing("the masks", [label])
        return data, label

    def locate(self, root: Path, ds: dict) -> Resolved:
        data, label = self._files(root)
        out = self.derived_dataset(ds, "nifti", nifti_dir=str(data), nifti_masks_dir=str(label))
        return Resolved(self.name, out, scan_key="patient", label_files=[], derived=True)

    def derive(self, ds: dict, index_csv, out: Path) -> list[str]:
        index = nifti_index(index_csv)
        scans, slices, odd, unmasked = [], [], {}, []
        for _, v in index.iterrows():
            if not v.get("mask_path"):
                unmasked.append(v["patient_id"])
                continue
            m = mask_slice_values(v["mask_path"], v["patient_id"])
            for val in {x for s in m["values"] for x in s.split(";") if x and x != "1"}:
                odd[val] = odd.get(val, 0) + 1
            slices.append(m[["sop_uid", "hemorrhage"]])
            scans.append((v["patient_id"], int(m["hemorrhage"].max())))
        scan_t = pd.DataFrame(scans, columns=["scan_id", "label"])
        excl = pd.DataFrame([(s, "no mask in train/label") for s in unmasked], columns=["scan_id", "reason"])
        write_derived(out, scan_labels=scan_t, slice_labels=pd.concat(slices, ignore_index=True) if slices else None,
                      excluded=excl)
        lines = [f"{len(scan_t)} volumes with masks ({int(scan_t['label'].sum())} with hemorrhage); "
                 f"{len(unmasked)} without a mask (left out)"]
        if odd:
            lines.append("mask values other than 0/1 (counted as hemorrhage, > 0): "
                         + ", ".join(f"{k} in {n} volumes" for k, n in sorted(odd.items())))
        return lines
