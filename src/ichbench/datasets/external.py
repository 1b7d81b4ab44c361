"""External validation sets (`evaluation.external`): each entry a `dataset:` mapping, resolved at Snakefile parse.

Every fold's model also scores each external set; all its scans are test scans. An entry is resolved through
`adapter.resolve` like `dataset:`, then its derived tables (adapter.DERIVED_DIR) are moved under the set's own
folder `results/external/<label>/data/`, so that its index, labels and cache never mix with the training data.

Overlap with the training dataset (`overlap`):
- a scan of the external set that is an RSNA scan of the training dataset (BHSD / HemSeg are built from RSNA
  stage-2 scans; `adapter.duplicates`) is dropped from the external set, counted in the log and in
  `results/external/<label>/overlap.csv`;
- any other patient present in both (the same patient ID in the same kind of dataset, `patient_kind`) is
  refused: at parse where both name the same download (`check_roots`), else by the external manifest job.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from . import adapter

#: Where every external set's files go: results/external/<label>/...
EXTERNAL_DIR = "results/external"
#: Datasets whose patient IDs share one name space (the same ID is the same person): DICOM PatientIDs of
#: CQ500 copies (cq500, a generic dicom folder, the synthetic generator's CQ500-shaped IDs), and RSNA
#: PatientIDs (rsna and hemseg: RSNA scans; BHSD volumes `<PatientID>_<Study>` name RSNA patients). Others:
#: their adapter name.
KINDS = {"synthetic": "dicom", "dicom": "dicom", "cq500": "dicom", "rsna": "rsna", "bhsd": "rsna", "hemseg": "rsna"}
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class External:
    """One external set: its label (column and folder name), the adapter, the resolved keys and its folder."""
    label: str
    name: str                        # the adapter
    entry: dict                      # the config entry as written (the rule dataset_labels reads it)
    resolved: adapter.Resolved       # dataset keys with the derived tables moved under `data_dir`

    @property
    def folder(self) -> str:
        return f"{EXTERNAL_DIR}/{self.label}"

    @property
    def data_dir(self) -> str:
        return f"{self.folder}/data"

    @property
    def derived_dir(self) -> str:
        return f"{self.data_dir}/dataset"

    @property
    def dataset(self) -> dict:
        return self.resolved.dataset

    @property
    def label_source(self) -> str:
        """csv (a deriving adapter's tables, or dataset.nifti_labels) | masks (NIfTI without labels) | the
        generic DICOM dataset's label_source (ctfsh where unset)."""
        ds = self.dataset
        if self.resolved.derived:
            return "csv"
        if ds.get("source") == "nifti":
            return "csv" if ds.get("nifti_labels") else "masks"
        return ds.get("label_source") or "ctfsh"


def patient_kind(name: str) -> str:
    """The name space of a dataset's patient IDs (KINDS): two datasets of one kind may hold the same patient."""
    return KINDS.get(name, name)


def _moved(value, derived_dir: str):
    if isinstance(value, str) and (value == adapter.DERIVED_DIR or value.startswith(adapter.DERIVED_DIR + "/")):
        return derived_dir + value[len(adapter.DERIVED_DIR):]
    return value


def resolve_external(entries, training: dict | None = None) -> list[External]:
    """`evaluation.external` -> External sets. ConfigError (before any job) for an entry that is not a dataset
    mapping, a missing download, a repeated or malformed label, or a set that is the training download itself."""
    if entries in (None, []):
        return []
    if not isinstance(entries, list):
        raise ConfigError("evaluation.external must be a list of dataset mappings ({name: ..., root: ...})")
    out, seen = [], {}
    for i, entry in enumerate(entries):
        where = f"evaluation.external[{i}]"
        if not isinstance(entry, dict) or not (entry.get("name") or entry.get("source")):
            raise ConfigError(f"{where}: each external set is a dataset mapping with a name, e.g. "
                              "{name: ctich, root: /data/ct-ich}")
        ds = {k: v for k, v in entry.items() if k != "label"}
        name = adapter.name_of(ds)
        if name == "synthetic":
            raise ConfigError(f"{where}: the synthetic generator cannot be an external set (it writes the "
                              "training data); point {name: dicom, dicom_dir: ...} at a written copy instead")
        label = str(entry.get("label") or name)
        if not _LABEL.fullmatch(label):
            raise ConfigError(f"{where}: label {label!r} must be letters, digits, '_' or '-' (it names a "
                              "Table 1 column and the folder results/external/<label>)")
        if label in seen:
            raise ConfigError(f"{where}: label {label!r} is used by evaluation.external[{seen[label]}] too; "
                              "give each set its own `label`")
        seen[label] = i
        try:
            res = adapter.resolve(ds)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        ext = External(label, res.name, ds, res)
        res.dataset = {k: _moved(v, ext.derived_dir) for k, v in res.dataset.items()}
        if training is not None:
            check_roots(training, ext, where)
        out.append(ext)
    return out


def _download(ds: dict) -> str | None:
    """The folder a dataset mapping reads (root, else its image folder), as a real path."""
    path = ds.get("root") or ds.get("dicom_dir") or ds.get("nifti_dir")
    return os.path.realpath(path) if path else None


def check_roots(training: dict, ext: External, where: str = "evaluation.external") -> None:
    """Refuse an external set that is the training download itself (every patient would be in both)."""
    train_name = adapter.name_of(training)
    if patient_kind(train_name) != patient_kind(ext.name):
        return
    a, b = _download(training), _download(ext.entry)
    if a and b and (a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)):
        raise ConfigError(f"{where} ({ext.label}): {b} is the training dataset's download ({a}); every patient "
                          "would be in training and external test. Point the external set at another dataset")


def overlap(train_scans: Iterable[str], train_patients: Iterable[str], train_name: str,
            ext_scans: Iterable[str], ext_patients: dict[str, str], ext_name: str) -> tuple[dict[str, str], list[str]]:
    """-> ({external scan: training scan} of the same RSNA scan, to drop; external patients also in the training
    dataset after that drop, to refuse). `ext_patients`: external scan -> its patient."""
    dropped = adapter.duplicates(train_scans, train_name, ext_scans, ext_name)
    if patient_kind(train_name) != patient_kind(ext_name):
        return dropped, []
    kept = {p for s, p in ext_patients.items() if s not in dropped}
    return dropped, sorted(kept & {str(p) for p in train_patients})


def refusal(shared: list[str], label: str, where: str | Path) -> ConfigError:
    """The message for external patients that are also training patients."""
    shown = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
    return ConfigError(f"{where}: external set {label}: {len(shared)} patient(s) are in the training dataset too "
                       f"({shown}); a model cannot be judged on patients it may have been trained on. Remove "
                       "them from one of the two datasets (e.g. dataset.exclude) or drop the external set")
