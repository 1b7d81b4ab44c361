"""Format writers for the tests: tiny copies of public ICH datasets in their exact shipped layouts, with their quirks.

Grown from the synthetic generator (src/ichbench/synthetic): the same head-like HU slices (skull, brain,
ventricles, a bleed where asked), written as each dataset ships them (see ../shared/docs/DATASETS.md):

- `write_rsna`: `stage_2_train/ID_<9 hex>.dcm` slices with RSNA's 22-element stripped headers (no
  InstanceNumber, no SliceThickness, `ID_...` UIDs), gantry tilt, files needing the BitsStored-12 intercept
  correction, a corrupted `ID_6431af929.dcm`, a repeated slice position, a non-square series, and
  `stage_2_train.csv` with six rows per slice and a duplicated slice.
- `write_nifti_volume`: one NIfTI volume (int16 HU or uint16 / uint8 masks) with a given affine.
- `write_hemseg`: HemSeg-500 / IPH_IVH_label masks for `write_rsna` studies, rebuilt as SimpleITK stacks them
  (tilt not in the affine, LPS), with both jsonl forms and the split lists.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ichbench.synthetic.rsna import rsna_id, write_slice

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


def _rsna_file(path: Path, sop, pid, study, series, ipp, iop, stored: np.ndarray, bits_stored: int,
               rep: int, intercept: float, spacing: float = 0.48828125, short: int | None = None) -> None:
    """One slice with exactly RSNA's 22 elements (and a dcm4che-style file meta with a 9999. UID); `short`:
    keep only that many bytes of PixelData (a consistent but too short element). The synthetic room's writer."""
    write_slice(path, sop=sop, patient=pid, study=study, series=series, ipp=ipp, iop=iop, stored=stored,
                bits_stored=bits_stored, pixel_rep=rep, intercept=intercept, spacing=spacing, short=short)


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
    mode (rsna_stored), shape (rows, cols), dup_position (slice index repeated), skip (slice indices not written:
    a gap), unlabelled (bool)).

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
            if k in s.get("skip", ()):                           # a missing slice: a gap in the stack
                continue
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


def _volume(n: int, size: int, bleed: set, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume, bleed mask) as (i, j, k) arrays: slice k of the file is head_hu's slice k."""
    hu = np.stack([head_hu(size, size, k, n, bleed=k in bleed, seed=seed).T for k in range(n)], axis=2)
    ref = np.stack([head_hu(size, size, k, n, bleed=False, seed=seed).T for k in range(n)], axis=2)
    return hu, (np.abs(hu - 70.0) < 20) & (np.abs(ref - 70) >= 20) & (hu != ref)


def las_affine(ps: float = 0.45, dz: float = 5.0, tilt_deg: float = 0.0) -> np.ndarray:
    """LAS (i -> left, j -> anterior, k -> superior), optionally with a gantry tilt about the i axis."""
    t = np.radians(tilt_deg)
    a = np.eye(4)
    a[:3, 0] = (-ps, 0, 0)
    a[:3, 1] = (0, ps * np.cos(t), ps * np.sin(t))
    a[:3, 2] = (0, -dz * np.sin(t), dz * np.cos(t))
    a[:3, 3] = (60, -60, -40)
    return a


CTICH_HEADER = ("PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
                "No_Hemorrhage,Fracture_Yes_No")


def write_ctich(root: Path, scans: dict[int, dict], size: int = 48) -> Path:
    """PhysioNet CT-ICH 1.3.1: `<zip root>/ct_scans/NNN.nii` (int16 HU, LAS), `masks/NNN.nii` (binary uint8),
    hemorrhage_diagnosis_raw_ct.csv (1-based SliceNumber), and the demographics file (which must never be read).
    scans: {number: dict(n, bleed (slice indices, 0-based), subtype (CSV column), csv_wrong (slice index whose
    CSV row disagrees with the mask))}."""
    base = root / "computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.3.1"
    rows = []
    for num, s in scans.items():
        n, bleed = s.get("n", 8), set(s.get("bleed", ()))
        hu, mask = _volume(n, size, bleed, num)
        write_nifti_volume(base / "ct_scans" / f"{num:03d}.nii", hu, las_affine())
        write_nifti_volume(base / "masks" / f"{num:03d}.nii", mask, las_affine(), dtype=np.uint8)
        sub = s.get("subtype", "Intraparenchymal")
        for k in range(n):
            pos = (k in bleed) != (k == s.get("csv_wrong"))
            flags = {c: int(pos and c == sub) for c in ("Intraventricular", "Intraparenchymal", "Subarachnoid",
                                                       "Epidural", "Subdural")}
            rows.append(f"{num},{k + 1},{','.join(str(v) for v in flags.values())},{int(not pos)},0")
    (base / "hemorrhage_diagnosis_raw_ct.csv").write_text(CTICH_HEADER + "\n" + "\n".join(rows) + "\n")
    (base / "Patient_demographics.csv").write_text(
        '"Patient Number","Age\n(years)",Gender\n' + "".join(f"{n},41,PRIVATE-DEMOGRAPHIC-{n}\n" for n in scans))
    for f in ("ct_ich.yml", "LICENSE.txt", "Read_me.txt", "SHA256SUMS.txt", "split_raw_data.py"):
        (base / f).write_text("")
    return base


def write_instance(root: Path, scans: dict[int, dict], size: int = 48) -> Path:
    """INSTANCE 2022: train/data/NNN.nii.gz (int16 HU), train/label/NNN.nii.gz (binary), evaluation/ without labels."""
    for num, s in scans.items():
        n = s.get("n", 8)
        hu, mask = _volume(n, size, set(s.get("bleed", ())), num)
        write_nifti_volume(root / "train" / "data" / f"{num:03d}.nii.gz", hu, las_affine(0.42, 5.0))
        write_nifti_volume(root / "train" / "label" / f"{num:03d}.nii.gz", mask, las_affine(0.42, 5.0),
                           dtype=np.uint8)
    hu, _ = _volume(8, size, set(), 999)
    write_nifti_volume(root / "evaluation" / "101.nii.gz", hu, las_affine(0.42, 5.0))
    return root


def write_bhsd(root: Path, labelled: dict[str, dict], anybleed=(), nobleed=(), size: int = 48) -> Path:
    """BHSD: label_192/images/<PatientID>_<Study>.nii.gz, label_192/ground truths/ (with a space; uint16, values
    1-5 = EDH, IPH, IVH, SAH, SDH), tilted qform with sform_code 0, unlabel_2000/{anybleed,nobleed}/.
    labelled: {name: dict(n, bleed, value, tilt_deg)}."""
    for i, (name, s) in enumerate(labelled.items()):
        n = s.get("n", 8)
        hu, mask = _volume(n, size, set(s.get("bleed", ())), i)
        aff = las_affine(0.48, 5.0, s.get("tilt_deg", 22.0))
        write_nifti_volume(root / "label_192" / "images" / f"{name}.nii.gz", hu, aff, qform_only=True)
        write_nifti_volume(root / "label_192" / "ground truths" / f"{name}.nii.gz", mask * s.get("value", 2), aff,
                           dtype=np.uint16, qform_only=True)
    for folder, names in (("anybleed", anybleed), ("nobleed", nobleed)):
        for j, name in enumerate(names):
            hu, _ = _volume(8, size, {3, 4} if folder == "anybleed" else set(), 100 + j)
            write_nifti_volume(root / "unlabel_2000" / folder / f"{name}.nii.gz", hu, las_affine(0.48, 5.0, 15.0),
                               qform_only=True)
    return root


def write_hemseg_mask(folder: Path, study: dict, spacing: float = 0.48828125) -> Path:
    """A HemSeg-style label volume `<folder>/<10 hex of the RSNA study UID>.nii.gz` (values {0, 1}) drawn on the
    volume rebuilt from a `write_rsna` study: the affine follows the DICOM geometry (LPS -> RAS), so the mask
    voxels lie on the study's bleed pixels."""
    n, (R, C) = study.get("n", 8), study.get("shape", (64, 64))
    tilt = np.radians(study.get("tilt_deg", 11.0))
    u, v = np.array([1.0, 0, 0]), np.array([0, np.cos(tilt), -np.sin(tilt)])
    step = 5.0 / np.cross(u, v)[2]
    flip = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1] = flip @ (spacing * u), flip @ (spacing * v)
    aff[:3, 2], aff[:3, 3] = flip @ np.array([0, 0, step]), flip @ np.array([-16.0, -9.8, 100.0])
    data = np.zeros((C, R, n), np.uint8)
    for k in study.get("bleed", ()):
        diff = head_hu(R, C, k, n, bleed=True, seed=0) != head_hu(R, C, k, n, bleed=False, seed=0)
        data[:, :, k] = diff.T
    name = rsna_id("study", study["study"])[3:]
    return write_nifti_volume(Path(folder) / f"{name}.nii.gz", data, aff, dtype=np.int16)


def _itk_mask(study: dict, spacing: float = 0.48828125) -> tuple[np.ndarray, np.ndarray]:
    """The label volume HemSeg's dcm2nii.py (SimpleITK ImageSeriesReader) rebuilds from a `write_rsna` study:
    voxel slice k = the k-th written file along the normal, i / j = pixel columns / rows; the affine has the
    first slice's position as origin and the slice normal as its k axis (the gantry tilt is not in it), so its
    axis codes are LPS. -> (data (cols, rows, slices) of {0, 1}, affine)."""
    n, (R, C) = study.get("n", 8), study.get("shape", (64, 64))
    ks = [k for k in range(n) if k not in study.get("skip", ())]
    tilt = np.radians(study.get("tilt_deg", 11.0))
    u, v = np.array([1.0, 0, 0]), np.array([0, np.cos(tilt), -np.sin(tilt)])
    normal = np.cross(u, v)
    flip = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = flip @ (spacing * u), flip @ (spacing * v), flip @ (5.0 * normal)
    aff[:3, 3] = flip @ np.array([-16.0, -9.8, 100.0 + ks[0] * 5.0 / normal[2]])
    data = np.zeros((C, R, len(ks)), np.uint8)
    if not study.get("empty_mask"):
        for j, k in enumerate(ks):
            if k in study.get("bleed", ()):
                data[:, :, j] = (head_hu(R, C, k, n, bleed=True) != head_hu(R, C, k, n, bleed=False)).T
    return data, aff


def hemseg_name(study: dict, rsna: dict) -> str:
    """A HemSeg scan name: the 10 hex digits of the study's (or, with name_by series, the series') RSNA UID."""
    uid = rsna["series"][study["study"]] if study.get("name_by") == "series" else rsna_id("study", study["study"])
    return uid[3:]


def write_hemseg(root: Path, studies: list[dict], rsna: dict, splits: bool = True) -> Path:
    """HemSeg labels for `write_rsna` studies, as a clone of songchangwei/3DCT-SD-IVH-ICH with its zips unzipped:
    `HemSeg-500/{part}/label/<name>.nii.gz` for every study and `data/IPH_IVH_label/{part}/label/` for those with
    `in200` (HemSeg-200 is a subset); int16 masks (uint8 where `uint8`), values {0, 1}, LPS (_itk_mask);
    `annotion_file_info_500.jsonl` (patient_name, scan_name, slice_list a dict with string keys in string order,
    `repeat` listing a slice twice) and `annotion_file_info.jsonl` (patient, scan_, slice_list a list, no ID_);
    train_set.csv / val_set.csv / test_set.csv (filename,label). Each study: write_rsna's keys and part
    (train | val | test), name_by (study | series), in200, uint8, empty_mask, extra_slices (names listed that
    the RSNA copy lacks), not_in_rsna (a study write_rsna did not write: its slices are made up)."""
    root = Path(root)
    lines = {"500": [], "200": []}
    split_rows = {p: [] for p in ("train", "val", "test")}
    for s in studies:
        if s.get("not_in_rsna"):
            name, sops = rsna_id("study", s["study"])[3:], [rsna_id("sop", s["study"], k) for k in range(s.get("n", 8))]
        else:
            name, sops = hemseg_name(s, rsna), list(rsna["sops"][s["study"]])
        sops = sops + [rsna_id("sop", s["study"], "extra", i) for i in range(s.get("extra_slices", 0))]
        data, aff = _itk_mask(s)
        part = s.get("part", "train")
        listed = sops + sops[:1] if s.get("repeat") else sops
        bare = [x[3:] for x in listed]
        pid = rsna_id("patient", s["patient"])
        keyed = {str(i): x for i, x in enumerate(bare)}
        keyed = {k: keyed[k] for k in sorted(keyed)}             # "0", "1", "10", "11", ..., "2" as shipped
        lines["500"].append(json.dumps({"patient_name": pid, "scan_name": name, "slice_list": keyed}))
        folders = ["HemSeg-500"] + (["data/IPH_IVH_label"] if s.get("in200") else [])
        if s.get("in200"):
            lines["200"].append(json.dumps({"patient": pid, "scan_": name, "slice_list": bare}))
        for folder in folders:
            write_nifti_volume(root / folder / part / "label" / f"{name}.nii.gz", data, aff,
                               dtype=np.uint8 if s.get("uint8") else np.int16)
        split_rows[part].append(f"{name},{int(bool(s.get('bleed')))}")
    (root / "annotion_file_info_500.jsonl").write_text("\n".join(lines["500"]) + "\n")
    (root / "annotion_file_info.jsonl").write_text("\n".join(lines["200"]) + "\n")
    if splits:
        for part, rows in split_rows.items():
            (root / f"{part}_set.csv").write_text("filename,label\n" + "".join(f"{r}\n" for r in rows))
    (root / "dcm2nii.py").write_text("")
    return root
