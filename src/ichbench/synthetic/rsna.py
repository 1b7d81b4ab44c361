"""The synthetic head CT written in the RSNA 2019 layout: one file a slice with RSNA's stripped headers.

The same patients and slices as the CQ500-like generator (`cohort.generate`: the parametric head, the
hemorrhages, scanner blur and noise), written as the Kaggle download ships them (../shared/docs/DATASETS.md
section 1)::

    stage_2_train/ID_<9 hex>.dcm   one axial slice per file, exactly RSNA's 22 data elements: no
                                   InstanceNumber, SliceThickness, names, dates or institution;
                                   `ID_` UIDs (patient ID_<8 hex>, study and series ID_<10 hex>)
    stage_2_train.csv              ID,Label: six rows a slice, ID_<9 hex>_<subtype>

Pixels are stored as RSNA stores them: 12 bits unsigned with intercept -1024, or 16 bits signed with
intercept -1024 (by the patient's storage draw). One series per study and study per patient. No masks
(RSNA ships none). `write_slice` writes one such file and is what the tests' RSNA writer uses too.
"""
from __future__ import annotations

import hashlib
import math
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from .cohort import _plans
from .config import SyntheticConfig, _cfg_digest
from .fields import _blur3, _noise
from .patient import _Plan
from .series import _blas_single_thread, _render_patient

#: RSNA's label columns in the file's order, and the generator's hemorrhage type of each subtype.
SUBTYPES = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH", "subarachnoid": "SAH",
            "subdural": "SDH", "any": None}
IMAGE_DIR = "stage_2_train"
LABEL_FILE = "stage_2_train.csv"


def rsna_id(kind: str, *parts) -> str:
    """An RSNA-style ID hashed from parts: patient ID_<8 hex>, study / series ID_<10 hex>, slice ID_<9 hex>."""
    n = {"patient": 8, "study": 10, "series": 10, "sop": 9}[kind]
    return "ID_" + hashlib.sha1("/".join(map(str, (kind,) + parts)).encode()).hexdigest()[:n]


def stored_values(hu: np.ndarray, signed: bool) -> tuple[np.ndarray, int, int, float]:
    """HU -> (stored, BitsStored, PixelRepresentation, RescaleIntercept): 12 bits unsigned or 16 bits signed,
    both with intercept -1024 (rounded and clipped to the range)."""
    v = np.rint(hu).astype(np.int32) + 1024
    if signed:
        return np.clip(v, -32768, 32767).astype(np.int16), 16, 1, -1024.0
    return np.clip(v, 0, 4095).astype(np.uint16), 12, 0, -1024.0


def write_slice(path: Path, *, sop: str, patient: str, study: str, series: str, ipp, iop, stored: np.ndarray,
                bits_stored: int, pixel_rep: int, intercept: float, spacing: float = 0.48828125,
                short: int | None = None) -> None:
    """One slice with exactly RSNA's 22 elements and a dcm4che-style file meta (a `9999.` media UID);
    `short`: keep only that many bytes of PixelData (the corrupted download file's defect)."""
    with pydicom.config.disable_value_validation():
        ds = Dataset()
        ds.SOPInstanceUID = sop
        ds.Modality = "CT"
        ds.PatientID = patient
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
        ds.PixelRepresentation = pixel_rep
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


def _rsna_patient(cfg: SyntheticConfig, plan: _Plan, out_dir: str) -> dict:
    with _blas_single_thread():
        return _rsna_patient_impl(cfg, plan, Path(out_dir))


def _rsna_patient_impl(cfg: SyntheticConfig, plan: _Plan, out: Path) -> dict:
    key = (_cfg_digest(cfg), cfg.seed, plan.number)
    patient, study, series = rsna_id("patient", *key), rsna_id("study", *key), rsna_id("series", *key)
    P, slices = _render_patient(cfg, plan, patient)
    N = cfg.image_size
    tilt = math.radians(P.tilt_deg)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    half = (N - 1) / 2 * P.ps
    signed = plan.storage.startswith("int16")
    labels, n_hem = [], 0
    for k, (hu0, _lab, masks) in enumerate(slices):
        nrng = np.random.default_rng([cfg.seed, plan.number, 29, k, 2])
        img = _blur3(hu0) if cfg.psf_blur else hu0
        img = img + _noise(nrng, N, cfg.noise_hu, cfg.correlated_noise)
        stored, bits, rep, icpt = stored_values(img, signed)
        sop = rsna_id("sop", *key, k)
        z = P.z_start + k * P.dz
        ipp = (-half, P.table_y - half * iop[4], z + half * math.sin(tilt))
        write_slice(out / IMAGE_DIR / f"{sop}.dcm", sop=sop, patient=patient, study=study, series=series, ipp=ipp,
                    iop=iop, stored=stored, bits_stored=bits, pixel_rep=rep, intercept=icpt, spacing=P.ps)
        present = {t for t, m in masks.items() if m.any()}
        n_hem += bool(present)
        labels += [f"{sop}_{name},{int(bool(present) if t is None else t in present)}\n"
                   for name, t in SUBTYPES.items()]
    return dict(pathological=plan.pathological, n_slices=P.n, n_hem_slices=n_hem, labels=labels)


def generate_rsna(out_dir: str | Path, cfg: SyntheticConfig, workers: int = 1) -> dict:
    """Write the synthetic cohort in the RSNA layout under out_dir; return counts (patients, slices, files)."""
    cfg.validate()
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    plans = _plans(cfg)
    if workers > 1 and len(plans) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(plans)), mp_context=get_context("spawn")) as ex:
            results = list(ex.map(_rsna_patient, [cfg] * len(plans), plans, [str(out)] * len(plans)))
    else:
        results = [_rsna_patient(cfg, p, str(out)) for p in plans]
    (out / LABEL_FILE).write_text("ID,Label\n" + "".join(line for r in results for line in r["labels"]))
    n = sum(r["n_slices"] for r in results)
    return dict(n_patients=len(results), n_pathological=sum(r["pathological"] for r in results), n_slices=n,
                n_files=n, n_hemorrhage_slices=sum(r["n_hem_slices"] for r in results), out_dir=str(out))
