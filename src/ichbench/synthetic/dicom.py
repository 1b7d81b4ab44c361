"""DICOM side of the synthetic generator: pixel storage modes, hashed UIDs, CT datasets, and writing files."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from .config import SyntheticConfig

#: How the pixel values are stored; the cohort cycles through all four (as real archives mix them).
_STORAGE = {
    #            dtype      bits  intercept slope  pixel_repr
    "int16": (np.int16, 16, 0.0, 1.0, 1),
    "uint12": (np.uint16, 12, -1024.0, 1.0, 0),
    "uint16_slope": (np.uint16, 16, -1024.0, 0.5, 0),
    "int16_offset": (np.int16, 16, -1024.0, 1.0, 1),
}


def _to_stored(hu: np.ndarray, storage: str) -> np.ndarray:
    """HU -> stored pixel values of a storage mode (rounded, clipped to its range)."""
    dtype, bits, icpt, slope, rep = _STORAGE[storage]
    v = np.rint((hu - icpt) / slope)
    if rep:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2 ** bits - 1
    return np.clip(v, lo, hi).astype(dtype)


def _uid(*parts) -> str:
    """A UID hashed from parts (never from the clock: reruns give the same UIDs)."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _opaque(text: str, n: int = 16) -> str:
    """A hash of text for file and folder names that reveal nothing."""
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def _ds(v: float) -> str:
    """Decimal String of at most 16 characters."""
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s[:16]


def _base_dataset(cfg: SyntheticConfig, sex: str, study_uid, series_uid, frame_uid, pid, number) -> Dataset:
    """The header fields shared by every image of a patient (all names, dates and places fake)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = cfg.study_date
    ds.SeriesDate = cfg.study_date
    ds.AcquisitionDate = cfg.study_date
    ds.ContentDate = cfg.study_date
    ds.StudyTime = "120000"
    ds.SeriesTime = "120500"
    ds.AcquisitionTime = "120500"
    ds.ContentTime = "120500"
    ds.AccessionNumber = f"ACC{number:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "ichbench-synthetic"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = f"SYNTHETIC^REFERRER{number}"
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST (SYNTHETIC)"
    ds.ManufacturerModelName = "Synthetic CT"
    ds.PatientName = f"SYNTHETIC^PATIENT{number}"
    ds.PatientID = pid
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = sex
    ds.PatientAge = "040Y"
    ds.BodyPartExamined = "HEAD"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(number)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleType = "HU"
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, storage: str) -> None:
    """Pixel data and the pixel-module fields of a storage mode."""
    dtype, bits, icpt, slope, rep = _STORAGE[storage]
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = rep
    ds.RescaleIntercept = _ds(icpt)
    ds.RescaleSlope = _ds(slope)
    ds.add_new(0x7FE00010, "OW", stored.astype(stored.dtype.newbyteorder("<")).tobytes())


def _save(ds: Dataset, path: Path) -> None:
    """Write ds as a DICOM file (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed without timestamps (byte-identical output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())

