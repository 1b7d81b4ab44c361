"""Format writers for the tests: tiny copies of public ICH datasets in their exact shipped layouts, with their quirks.

Grown from the synthetic generator (src/ichbench/synthetic): the same head-like HU slices (skull, brain,
ventricles, a bleed where asked), written as each dataset ships them (see ../shared/docs/DATASETS.md):

- `write_rsna`: `stage_2_train/ID_<9 hex>.dcm` slices with RSNA's 22-element stripped headers (no
  InstanceNumber, no SliceThickness, `ID_...` UIDs), gantry tilt, files needing the BitsStored-12 intercept
  correction, a corrupted `ID_6431af929.dcm`, a repeated slice position, a non-square series, and
  `stage_2_train.csv` with six rows per slice and a duplicated slice.
- `write_nifti_volume`: one NIfTI volume (int16 HU or uint16 / uint8 masks) with a given affine.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

RSNA_SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")


def head_hu(rows: int, cols: int, k: int, n: int, bleed: bool = False, seed: int = 0) -> np.ndarray:
    """A head-like axial slice in HU (air, scalp, skull, brain, ventricles, noise), smaller towards the ends of
    the stack; `bleed` adds a 70 HU blob in the brain."""
    rng = np.random.default_rng(seed * 1000 + k)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    yy, xx = yy / rows - 0.5, xx / cols - 0.5
    t = 1.0 - 0.5 * abs((k + 0.5) / n - 0.5)
    r = np.sqrt((yy / (0.42 * t)) ** 2 + (xx / (0.36 * t)) ** 2)
    hu = np.full((rows, cols), -1000.0, np.float32)
    hu[r < 1.0] = 40.0
    hu[r < 0.94] = 1000.0
    hu[r < 0.85] = 32.0
    v = ((yy + 0.03) / 0.08) ** 2 + (np.abs(xx) - 0.06) ** 2 / 0.035 ** 2 < 1
    hu[v & (r < 0.85)] = 5.0
    if bleed:
        hu[((yy - 0.1) ** 2 + (xx - 0.12) ** 2 < 0.08 ** 2) & (r < 0.85)] = 70.0
    return hu + rng.normal(0, 4, hu.shape).astype(np.float32) * (hu > -900)


def rsna_id(kind: str, *parts) -> str:
    """RSNA-style IDs: patient ID_<8 hex>, study / series ID_<10 hex>, slice ID_<9 hex>."""
    n = {"patient": 8, "study": 10, "series": 10, "sop": 9}[kind]
    return "ID_" + hashlib.sha1("/".join(map(str, (kind,) + parts)).encode()).hexdigest()[:n]


def _rsna_file(path: Path, sop, pid, study, series, ipp, iop, stored: np.ndarray, bits_stored: int,
               rep: int, intercept: float, spacing: float = 0.48828125, short: int | None = None) -> None:
    """One slice with exactly RSNA's 22 elements (and a dcm4che-style file meta with a 9999. UID); `short`:
    keep only that many bytes of PixelData (a consistent but too short element)."""
    with pydicom.config.disable_value_validation():
        _rsna_dataset(path, sop, pid, study, series, ipp, iop, stored, bits_stored, rep, intercept, spacing, short)


def _rsna_dataset(path, sop, pid, study, series, ipp, iop, stored, bits_stored, rep, intercept, spacing, short):
    ds = Dataset()
    ds.SOPInstanceUID = sop
    ds.Modality = "CT"
    ds.PatientID = pid
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = ""
    ds.ImagePositionPatient = [f"{v:.8g}" for v in ipp]
    ds.ImageOrientationPatient = [f"{v:.9g}" for v in iop]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [f"{spacing:.8g}", f"{spacing:.8g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = rep
    ds.WindowCenter = ["00040", "00040"]
    ds.WindowWidth = ["00080", "00080"]
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = "1"
    data = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
    ds.add_new(0x7FE00010, "OW", data[:short] if short else data)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "9999." + str(int(hashlib.sha1(sop.encode()).hexdigest()[:24], 16))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationVersionName = "dcm4che-1.4.38"
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def rsna_stored(hu: np.ndarray, mode: str) -> tuple[np.ndarray, int, int, float]:
    """HU -> (stored, BitsStored, PixelRepresentation, RescaleIntercept) of an RSNA storage mode:
    `uint12` (12 bits unsigned, intercept -1024), `int16` (16 bits signed, -1024) or `needs_fix` (12 bits
    unsigned, intercept +1: HU wrapped into 12 bits, what the published correction undoes)."""
    h = np.rint(hu).astype(np.int32)
    if mode == "uint12":
        return np.clip(h + 1024, 0, 4095).astype(np.uint16), 12, 0, -1024.0
    if mode == "int16":
        return (h + 1024).astype(np.int16), 16, 1, -1024.0
    if mode == "needs_fix":
        # the correction maps x = stored + 1000 (minus 4096 from 4096 up) to HU = x - 1000
        x = np.clip(h, -1000, 3095) + 1000
        stored = np.where(x < 1000, x + 4096, x) - 1000
        return stored.astype(np.uint16), 12, 0, 1.0
    raise ValueError(mode)


def write_rsna(root: Path, studies: list[dict], folder: str = "stage_2_train", csv_name: str = "stage_2_train.csv",
               corrupted: bool = True, duplicate_label_rows: bool = True) -> dict:
    """Write an RSNA-layout folder. Each study: dict(patient, study, n, bleed (set of slice indices), tilt_deg,
    mode (rsna_stored), shape (rows, cols), dup_position (slice index repeated), unlabelled (bool)).

    Returns {"sops": {study: [sop per slice]}, "series": {study: series id}, "csv": path,
    "corrupted": sop of the corrupted file or None, "fixed": sops needing the correction}."""
    root = Path(root)
    img = root / folder
    rows_csv, out = [], {"sops": {}, "series": {}, "fixed": [], "corrupted": None}
    for s in studies:
        pid, study = rsna_id("patient", s["patient"]), rsna_id("study", s["study"])
        series = rsna_id("series", s["study"])
        n, (R, C) = s.get("n", 8), s.get("shape", (64, 64))
        tilt = np.radians(s.get("tilt_deg", 11.0))
        iop = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt))
        normal = np.cross(iop[:3], iop[3:])
        step = 5.0 / normal[2]                                   # IPP moves along z only (x, y constant)
        sops = []
        for k in range(n):
            sop = rsna_id("sop", s["study"], k)
            hu = head_hu(R, C, k, n, bleed=k in s.get("bleed", ()), seed=len(sops))
            stored, bits, rep, icpt = rsna_stored(hu, s.get("mode", "uint12"))
            _rsna_file(img / f"{sop}.dcm", sop, pid, study, series, (-16.0, -9.8, 100.0 + k * step), iop,
                       stored, bits, rep, icpt)
            sops.append(sop)
            if s.get("mode") == "needs_fix":
                out["fixed"].append(sop)
            if not s.get("unlabelled"):
                for t in RSNA_SUBTYPES:
                    pos = k in s.get("bleed", ()) and (t == "any" or t == s.get("subtype", "intraparenchymal"))
                    rows_csv.append((f"{sop}_{t}", int(pos)))
        if s.get("dup_position") is not None:                       # a second file at an existing position
            k = s["dup_position"]
            sop = rsna_id("sop", s["study"], "dup", k)
            stored, bits, rep, icpt = rsna_stored(head_hu(R, C, k, n), s.get("mode", "uint12"))
            _rsna_file(img / f"{sop}.dcm", sop, pid, study, series, (-16.0, -9.8, 100.0 + k * step), iop,
                       stored, bits, rep, icpt)
            for t in RSNA_SUBTYPES:
                rows_csv.append((f"{sop}_{t}", 0))
        out["sops"][s["study"]], out["series"][s["study"]] = sops, series
    if corrupted:                      # PixelData shorter than Rows x Columns need, as in the real download
        sop = "ID_6431af929"
        stored, bits, rep, icpt = rsna_stored(head_hu(64, 64, 0, 1), "uint12")
        s0 = studies[0]
        _rsna_file(img / f"{sop}.dcm", sop, rsna_id("patient", s0["patient"]), rsna_id("study", s0["study"]),
                   rsna_id("series", s0["study"]), (-16.0, -9.8, 60.0), (1, 0, 0, 0, 1, 0), stored, bits, rep, icpt,
                   short=2400)
        out["corrupted"] = sop
        rows_csv += [(f"{sop}_{t}", 0) for t in RSNA_SUBTYPES]
    if duplicate_label_rows and rows_csv:
        rows_csv += rows_csv[:6]                                    # one slice listed twice, identical labels
    csv = root / csv_name
    csv.write_text("ID,Label\n" + "".join(f"{i},{v}\n" for i, v in rows_csv))
    out["csv"] = csv
    return out


def write_nifti_volume(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.int16, qform_only: bool = False):
    """A NIfTI-1 file (`.nii` or `.nii.gz`) of `data` (i, j, k) with `affine`; `qform_only`: sform_code 0."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=0 if qform_only else 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
