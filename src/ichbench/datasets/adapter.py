"""Dataset adapters: `dataset: {name: <adapter>, root: <the folder as unzipped>}` resolved into the inputs the rules read.

An adapter is one module of this room with a class registered by `@register`. It knows where its
dataset's images and labels lie under `root` (accepting the folder names real copies use), how scans
and patients are named, which labels it gives, and its quirks. Two steps:

- `locate(root, ds)`, at Snakefile parse time (before any job): finds the files, raising ConfigError
  naming the path it expected and what the download should contain; returns a `Resolved`: the
  normalised `dataset` keys the rules already read (`source`, `dicom_dir` or `nifti_dir`,
  `nifti_masks_dir`, `label_source`, `labels`, `slice_labels`, ...), the scan key (`patient`: a
  scan is a PatientID or a volume; `study`: a scan is a StudyInstanceUID) and the label files.
- `derive(ds, index_csv, out)`, in the rule `dataset_labels` (after the header index, before the split):
  writes the derived label tables of DERIVED_FILES into `out` (never copies images) and returns log lines.

The generic adapters `synthetic`, `dicom` and `nifti` (generic.py) are today's keys (`source`,
`dicom_dir`, label paths...), unchanged; `cq500` maps onto them as well. The others derive tables.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ..errors import ConfigError

#: Where the rule `dataset_labels` writes the derived tables (relative to the workflow's directory).
DERIVED_DIR = "results/data/dataset"
#: The derived tables (all written, empty with their header where an adapter has none) and their columns.
DERIVED_FILES = {
    "scan_labels.csv": ["scan_id", "label"],                       # 0 normal, 1 hemorrhage
    "slice_labels.csv": ["sop_uid", "hemorrhage"],                 # slice truth (SOPInstanceUID or <scan>#<k>)
    "scan_info.csv": ["scan_id", "diagnosis", "subtypes", "reader_ich_votes", "subtype_source"],
    "patients.csv": ["scan_id", "patient_id"],                     # where the image files do not name the patient
    "excluded.csv": ["scan_id", "reason"],                         # scans the adapter leaves out, with why
}
#: Names that select the generic adapters (today's `dataset.source` values).
GENERIC = ("synthetic", "dicom", "nifti")

REGISTRY: dict[str, type["Adapter"]] = {}


@dataclass
class Resolved:
    """What the workflow needs of a dataset: the normalised `dataset` keys, the scan key, the label files."""
    name: str
    dataset: dict                                # the keys the rules read (source, dicom_dir, labels, ...)
    scan_key: str = "patient"                    # patient | study (series_select.SCAN_KEYS)
    label_files: list[str] = field(default_factory=list)   # inputs of the rule dataset_labels
    derived: bool = False                        # labels come from the rule dataset_labels
    #: the file list the rule dataset_files writes (Adapter.index_files) and `index --file-list` reads, where
    #: the scans are a few files of a large folder (hemseg: its scans among RSNA's 750 k slices); None = all
    index_files: str | None = None
    index_inputs: list[str] = field(default_factory=list)  # inputs of the rule dataset_files


class Adapter:
    """One dataset as it is downloaded. Subclasses set the class attributes and implement `locate` (and
    `derive` where `derived`)."""
    name: str = ""
    title: str = ""
    images: str = "dicom"                        # dicom | nifti
    scan_key: str = "patient"
    derived: bool = True
    #: what it gives: keys scans, patients, scan labels, slice labels, pixel labels, subtypes, quirks
    gives: dict[str, str] = {}
    #: what the download should contain (quoted in error messages)
    download: str = ""

    def locate(self, root: Path, ds: dict) -> Resolved:
        raise NotImplementedError

    def derive(self, ds: dict, index_csv: str | os.PathLike, out: Path) -> list[str]:
        return []

    def index_files(self, ds: dict, out: Path) -> list[str]:
        """Write the list of image files to index into `out` (where `Resolved.index_files` is set); log lines."""
        raise NotImplementedError(f"dataset {self.name} indexes its whole folder")

    def rsna_study(self, scan_id: str) -> str | None:
        """The RSNA stage-2 train StudyInstanceUID a scan was made from (BHSD and HemSeg are built from RSNA
        scans), else None: `duplicates` compares two datasets' scans by it."""
        return None

    # helpers for subclasses ---------------------------------------------------------------------------------

    def missing(self, what: str, tried: Iterable[Path | str]) -> ConfigError:
        tried = [str(t) for t in tried]
        return ConfigError(f"dataset {self.name}: {what} not found; looked for {' or '.join(tried[:6])}"
                           f"{' ...' if len(tried) > 6 else ''}. The download should contain: {self.download}")

    def derived_dataset(self, ds: dict, source: str, **keys) -> dict:
        """Normalised keys of a deriving adapter: labels from DERIVED_DIR, no CQ500 label files."""
        out = {k: v for k, v in ds.items() if k in ("expected", "expected_action", "min_hemorrhage_area_mm2")}
        out.update(name=self.name, source=source, label_source="csv", labels=f"{DERIVED_DIR}/scan_labels.csv",
                   slice_labels=f"{DERIVED_DIR}/slice_labels.csv", reads=None, gt_masks_dir=None, bhx=None,
                   bhx_transfer=False, nifti_labels=None, scan_id_format="{n}", dicom_dir=None, nifti_dir=None,
                   nifti_masks_dir=None)
        out.update(keys)
        return out


def register(cls: type[Adapter]) -> type[Adapter]:
    if not cls.name:
        raise TypeError(f"{cls.__name__}: an adapter needs a name")
    REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    from . import bhsd, cq500, ctich, generic, hemseg, instance, rsna  # noqa: F401  (they register)


def adapters() -> dict[str, type[Adapter]]:
    _load()
    return dict(REGISTRY)


def get(name: str) -> Adapter:
    reg = adapters()
    if name not in reg:
        raise ConfigError(f"dataset.name: unknown dataset adapter {name!r}; known: {', '.join(reg)}")
    return reg[name]()


def name_of(ds: dict) -> str:
    """The adapter a `dataset:` mapping selects: `name`, else today's `source` (synthetic | dicom | nifti)."""
    return str(ds.get("name") or ds.get("source") or "synthetic")


def resolve(ds: dict) -> Resolved:
    """`dataset:` of the config -> Resolved. Raises ConfigError (before any job) where files are missing."""
    ds = dict(ds or {})
    adapter = get(name_of(ds))
    root = ds.get("root")
    if adapter.name not in GENERIC and not root:
        raise ConfigError(f"dataset.name is {adapter.name}: set dataset.root to the folder the download was "
                          f"unzipped into ({adapter.download})")
    if root and not Path(root).is_dir():
        raise ConfigError(f"dataset.root: {root} is not a folder (dataset {adapter.name}; the download should "
                          f"contain: {adapter.download or 'the scans'})")
    return adapter.locate(Path(root) if root else Path("."), ds)


def duplicates(scans_a: Iterable[str], name_a: str, scans_b: Iterable[str], name_b: str) -> dict[str, str]:
    """Scans of dataset `name_b` that are the same RSNA scan as one of dataset `name_a` -> {scan_b: scan_a}
    (matched by the RSNA StudyInstanceUID each adapter reads from its scan names; e.g. BHSD volume
    `ID_0237f3c9_ID_40015688b9` is RSNA study `ID_40015688b9`). A run combining the two drops these from b."""
    a, b = get(name_a), get(name_b)
    first = {}
    for s in scans_a:
        k = a.rsna_study(str(s))
        if k:
            first.setdefault(k, str(s))
    out = {}
    for s in scans_b:
        k = b.rsna_study(str(s))
        if k and k in first:
            out[str(s)] = first[k]
    return out


# --- finding files under root -----------------------------------------------------------------------------------


def search_roots(root: Path, depth: int = 2) -> list[Path]:
    """root and its sub-folders down to `depth` levels: zip roots are often nested once or twice."""
    out, level = [root], [root]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                nxt += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                pass
        out += nxt
        level = nxt
    return out


def find(root: Path, names: Sequence[str], kind: str = "dir", depth: int = 2) -> tuple[Path | None, list[Path]]:
    """The first of `names` (relative paths) under root or a nested zip root -> (path or None, paths tried)."""
    tried = []
    for base in search_roots(root, depth):
        for n in names:
            p = base / n
            if base == root:
                tried.append(p)
            if (p.is_dir() if kind == "dir" else p.is_file()):
                return p, tried
    return None, tried


# --- the derived tables -----------------------------------------------------------------------------------------


def write_derived(out: str | os.PathLike, **tables: pd.DataFrame | None) -> None:
    """Write every DERIVED_FILES table into `out` (keyword = file stem; missing ones empty with their header)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(tables) - {f.removesuffix(".csv") for f in DERIVED_FILES}
    if unknown:
        raise ValueError(f"unknown derived tables {sorted(unknown)}")
    for fname, cols in DERIVED_FILES.items():
        t = tables.get(fname.removesuffix(".csv"))
        t = pd.DataFrame(columns=cols) if t is None else t
        t.reindex(columns=cols).to_csv(out / fname, index=False)


def read_derived(out: str | os.PathLike, stem: str) -> pd.DataFrame:
    path = Path(out) / f"{stem}.csv"
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else pd.DataFrame(
        columns=DERIVED_FILES[f"{stem}.csv"])


def describe() -> str:
    """What `ichbench datasets` prints: every adapter, what it reads and what it gives."""
    lines = []
    for name, cls in adapters().items():
        lines.append(f"{name}: {cls.title}")
        lines.append(f"    images: {cls.images}; a scan is a {'study' if cls.scan_key == 'study' else 'patient / volume'}")
        if cls.download:
            lines.append(f"    dataset.root: {cls.download}")
        for k, v in cls.gives.items():
            lines.append(f"    {k}: {v}")
    return "\n".join(lines)
