"""Built-in synthetic head CT generator that writes real DICOM.

The data are entirely synthetic: a parametric head (scalp, skull, cortex with sulci, white
matter, ventricles, cisterns, skull-base bits, physiological calcifications) rendered slice by
slice in Hounsfield units, with 1-3 acute hemorrhages (EDH, SDH, IPH, IVH, SAH) in the
pathological patients and a per-pixel ground-truth mask. Everything is deterministic from the
config (no wall clock, UIDs hashed from seed/patient/slice), so the same config gives
byte-identical files whatever the number of worker processes.

Layout written under ``out_dir`` (see :func:`generate`)::

    dicom/<study hash>/<series hash>/<sop hash>.dcm   CT Image Storage, Explicit VR LE
    cq500_labels.csv     CTFSH format  (name;is_pathl;diagnosis;TEST;notes, names CT_{n})
    reads.csv            CQ500 reads format (44 columns, 3 simulated readers, names = PatientID)
    slice_labels.csv     one row per slice of the primary (soft-tissue) axial series
    masks/<SeriesInstanceUID>.npz   sop_uids (str), masks (bool, n x Rows x Columns)
    README.txt

Modules: config (SyntheticConfig), cohort (generate, label files), patient (draw order, slice
rendering), head and anatomy (normal head), lesions (hemorrhages, trauma), series and dicom (files);
rsna (the same cohort in RSNA 2019's layout: one file a slice, stripped headers, ID_ names,
stage_2_train.csv); toy (head-like slices in memory, for tests and benchmarks).

May import: errors, inputs.
"""
from __future__ import annotations

from .anatomy import BLOOD, SCALP_HEM
from .cohort import CTFSH_COLUMNS, READS_COLUMNS, SLICE_LABEL_COLUMNS, _plans, generate
from .config import HEMORRHAGE_TYPES, SyntheticConfig
from .patient import _Patient

__all__ = ["SyntheticConfig", "generate", "HEMORRHAGE_TYPES", "READS_COLUMNS",
           "SLICE_LABEL_COLUMNS", "CTFSH_COLUMNS"]
