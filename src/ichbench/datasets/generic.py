"""The generic adapters: the built-in synthetic head CT, a DICOM folder, a NIfTI folder (today's `dataset.source` keys).

They pass the `dataset:` keys through as they are (`dicom_dir`, `labels`, `reads`, `slice_labels`,
`gt_masks_dir`, `bhx`, `nifti_dir`, `nifti_masks_dir`, `nifti_labels`, ...), so configurations written
before the adapters run unchanged; `root`, where set, stands for `dicom_dir` or `nifti_dir`.
"""
from __future__ import annotations

from pathlib import Path

from .adapter import Adapter, Resolved, register


class _Generic(Adapter):
    derived = False

    def locate(self, root: Path, ds: dict) -> Resolved:
        out = dict(ds)
        out["name"], out["source"] = self.name, self.name
        if ds.get("root"):
            out["nifti_dir" if self.name == "nifti" else "dicom_dir"] = str(root)
        return Resolved(self.name, out, scan_key="patient")


@register
class Synthetic(_Generic):
    name = "synthetic"
    title = "the built-in synthetic head CT (rule synthesize writes real DICOM and CQ500-format labels)"
    gives = {"scans": "one per patient (SYN-CT-<n>)", "scan labels": "CTFSH-format file, reads.csv",
             "slice labels": "slice_labels.csv", "pixel labels": "masks/<series>.npz",
             "subtypes": "CTFSH diagnosis / reads"}


@register
class Dicom(_Generic):
    name = "dicom"
    title = "a folder of CT DICOM files (any names and nesting; scans by PatientID) with CQ500-format labels"
    gives = {"scans": "one per PatientID (one series chosen)", "scan labels": "dataset.labels (CTFSH) / reads / csv",
             "slice labels": "dataset.slice_labels, BHX boxes", "pixel labels": "dataset.gt_masks_dir, BHX boxes",
             "subtypes": "CTFSH diagnosis / reads majority"}


@register
class Nifti(_Generic):
    name = "nifti"
    title = "a folder of NIfTI CT volumes in HU, one per scan (the file name), optional masks and labels"
    images = "nifti"
    gives = {"scans": "one per volume (file name)", "scan labels": "dataset.nifti_labels or the masks",
             "slice labels": "the masks", "pixel labels": "dataset.nifti_masks_dir", "subtypes": "none"}
