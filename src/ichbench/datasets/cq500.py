"""The CQ500 adapter (qure.ai, Chilamkurthy et al. 2018): DICOM folders + `reads.csv`, with CTFSH labels and BHX boxes.

`dataset.root` is the folder the 491 zip files and `reads.csv` were unzipped into (any nesting: scans
are found by their headers; a scan is a PatientID `CQ500-CT-<n>`, one per patient). Scan labels: the
CTFSH `cq500_labels.csv` (the paper's, `label_source: ctfsh`) found at `dataset.labels` or under root,
or the 3-reader majority of `reads.csv` (`label_source: reads`). Optional BHX boxes (`dataset.bhx`, or
`1_Initial_Manual_Labeling.csv` under root) give slice and box truth. It maps onto the generic DICOM keys.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .adapter import Adapter, Resolved, find, register

#: Default label paths of config.yaml point into the synthetic data; they are not CQ500's.
_SYNTHETIC_DEFAULT = "data/synthetic"


def _user_path(ds: dict, key: str):
    v = ds.get(key)
    if isinstance(v, list):
        v = [p for p in v if p and not str(p).startswith(_SYNTHETIC_DEFAULT)]
        return v or None
    return None if not v or str(v).startswith(_SYNTHETIC_DEFAULT) else v


@register
class CQ500(Adapter):
    name = "cq500"
    title = "CQ500 (qure.ai): 491 head CT scans as DICOM, reads.csv; CTFSH labels; BHX boxes"
    derived = False
    download = ("the unzipped CQ500 zips (DICOM folders, any nesting) and reads.csv; CTFSH cq500_labels.csv "
                "at dataset.labels or under root for label_source ctfsh")
    gives = {"scans": "one per patient (PatientID CQ500-CT-<n>), one series chosen",
             "scan labels": "CTFSH is_pathl (ctfsh) or 3-reader majority (reads)",
             "slice labels": "BHX boxes (dataset.bhx)", "pixel labels": "BHX boxes (rasterised)",
             "subtypes": "CTFSH diagnosis or reads majority", "counts": "CTFSH: 117 normal + 247 pathological scans"}

    def locate(self, root: Path, ds: dict) -> Resolved:
        reads, tried = find(root, ["reads.csv"], kind="file")
        if reads is None:
            raise self.missing("reads.csv", tried)
        source = ds.get("label_source") or "ctfsh"
        labels = _user_path(ds, "labels")
        if source == "ctfsh":
            if labels is None:
                found, tried = find(root, ["cq500_labels.csv", "ctfsh/cq500_labels.csv"], kind="file")
                if found is None:
                    raise ConfigError(
                        "dataset cq500 with label_source ctfsh: the CTFSH cq500_labels.csv was not found; set "
                        f"dataset.labels to it or copy it to {root / 'cq500_labels.csv'} (from the CTFSH repository, "
                        "Guerra et al., MIDL 2022), or set label_source: reads")
                labels = str(found)
            elif not Path(labels).is_file():
                raise ConfigError(f"dataset.labels: {labels} does not exist (the CTFSH cq500_labels.csv)")
        bhx = _user_path(ds, "bhx")
        if bhx is None:
            found, _ = find(root, ["1_Initial_Manual_Labeling.csv", "bhx/1_Initial_Manual_Labeling.csv"], kind="file")
            bhx = str(found) if found else None
        for p in ([bhx] if isinstance(bhx, str) else bhx or []):
            if not Path(p).is_file():
                raise ConfigError(f"dataset.bhx: {p} does not exist (BHX v1.1 1_Initial_Manual_Labeling.csv)")
        out = {k: v for k, v in ds.items() if k not in ("labels", "reads", "slice_labels", "gt_masks_dir", "bhx")}
        out.update(name=self.name, source="dicom", dicom_dir=str(root), label_source=source,
                   labels=labels if source == "ctfsh" else None, reads=str(reads), scan_id_format="CQ500-CT-{n}",
                   slice_labels=None, gt_masks_dir=None, bhx=bhx, nifti_dir=None, nifti_masks_dir=None,
                   nifti_labels=None)
        return Resolved(self.name, out, scan_key="patient")
