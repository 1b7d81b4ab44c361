"""The HemSeg adapter (Song et al. 2024): IPH / IVH voxel masks on RSNA stage-2 train scans, read on the RSNA files.

HemSeg ships labels only; its images are RSNA's. Layout (../shared/docs/DATASETS.md section 5): under
`dataset.root`, a clone of songchangwei/3DCT-SD-IVH-ICH with its zips unzipped in place,

    HemSeg-500/{train,val,test}/label/<scan>.nii.gz         525 masks (334 / 85 / 106), from HemSeg-500.zip
    data/IPH_IVH_label/{train,val,test}/label/<scan>.nii.gz 222 masks (133 / 44 / 45), from data/IPH_IVH_label.zip
    annotion_file_info_500.jsonl / annotion_file_info.jsonl the RSNA slices of each scan
    train_set.csv, val_set.csv, test_set.csv                filename,label (HemSeg-500's parts; label undocumented)

and under `dataset.rsna_root` (default: root) RSNA's `stage_2_train/` and, optionally, `stage_2_train.csv`.
`dataset.version` (500 | 200 | null = 500 where present) picks the set; HemSeg-200 is a subset of 500.

Only the slices the jsonl lists are indexed (rule dataset_files, `index --file-list`), not RSNA's 750 k.
A scan is a study (scan key study, one series per RSNA study), its patient the DICOM PatientID. The scan
name is the 10 hex digits of an RSNA UID (Study or Series, unconfirmed); scans are found by their slice
lists, and the log says how many names are the study's and how many the series' UID. Pixel truth: the
mask (values {0, 1}: IPH and IVH not told apart; uint8 or int16, LPS axes), mapped onto the DICOM slices
by stack order (nifti_to_dicom.slices_by_index: the rebuilt volume's affine ignores gantry tilt), by
patient coordinates where the mask does not fit the files. A slice is hemorrhage where its mask is,
or (with stage_2_train.csv) where RSNA says so (such a scan keeps no pixel truth: in the split pixel
truth wins, and its other bleed would count as normal); subtypes only from RSNA's rows. Scans whose files
are missing are left out with the reason; the HemSeg parts are recorded in hemseg_scans.csv, not used for folds.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..inputs.nifti import scan_id_of
from . import nifti_to_dicom, rsna
from .adapter import DERIVED_DIR, Adapter, Resolved, find, register, write_derived
from .labels import LabelError

#: version -> (label folders as unzipped, jsonl of the slices per scan, scans it holds)
VERSIONS = {"500": (("HemSeg-500", "HemSeg500"), "annotion_file_info_500.jsonl", 525),
            "200": (("IPH_IVH_label", "data/IPH_IVH_label", "HemSeg-200"), "annotion_file_info.jsonl", 222)}
PARTS = ("train", "val", "test")
SPLIT_FILES = {"train": "train_set.csv", "val": "val_set.csv", "test": "test_set.csv"}
FILE_LIST = f"{DERIVED_DIR}/index_files.txt"
SCANS_TABLE = "hemseg_scans.csv"
_HEX = re.compile(r"[0-9a-fA-F]+")


def read_jsonl(path: str | os.PathLike) -> pd.DataFrame:
    """annotion_file_info[_500].jsonl -> one row per scan: name, patient, sops (RSNA `ID_<hex>`, each once,
    in list order; HemSeg-500's dict keys "0".."N" sorted as numbers), repeats (names listed twice).

    Both shipped forms: {patient, scan_, slice_list: [...]} (200) and {patient_name, scan_name,
    slice_list: {"0": ...}} (500)."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise LabelError(f"{path}: cannot read ({exc.strerror})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise LabelError(f"{path}, line {i}: not a JSON object") from None
        name = rec.get("scan_name", rec.get("scan_", rec.get("scan"))) if isinstance(rec, dict) else None
        sl = rec.get("slice_list") if isinstance(rec, dict) else None
        if not isinstance(name, str) or not _HEX.fullmatch(name.removeprefix("ID_")) or sl is None:
            raise LabelError(f"{path}, line {i}: needs a hex scan name (scan_name or scan_) and a slice_list")
        if isinstance(sl, dict):
            try:
                sl = [sl[k] for k in sorted(sl, key=int)]
            except ValueError:
                raise LabelError(f"{path}, line {i}: slice_list keys are not numbers") from None
        sops = [f"ID_{str(s).removeprefix('ID_').removesuffix('.dcm').strip('.')}" for s in sl]
        bad = [s for s in sops if not _HEX.fullmatch(s[3:])]
        if bad:
            raise LabelError(f"{path}, line {i}: slice {bad[0]!r} is not an RSNA slice name")
        rows.append((name.removeprefix("ID_"), str(rec.get("patient_name", rec.get("patient", ""))),
                     tuple(dict.fromkeys(sops)), len(sops) - len(set(sops))))
    if not rows:
        raise LabelError(f"{path}: no scans")
    return pd.DataFrame(rows, columns=["name", "patient", "sops", "repeats"]).drop_duplicates("name")


def mask_table(labels: Path) -> pd.DataFrame:
    """<labels>/{train,val,test}/label/<scan>.nii.gz (any depth under each part) -> name, path, part."""
    rows = []
    for part in PARTS:
        for name, path in nifti_to_dicom.mask_files([labels / part] if (labels / part).is_dir() else []).items():
            rows.append((name, str(path), part))
    return pd.DataFrame(rows, columns=["name", "path", "part"]).drop_duplicates("name")


def read_splits(folder: Path) -> pd.DataFrame:
    """train_set.csv, val_set.csv, test_set.csv (filename,label) where present -> name, split, split_label."""
    rows = []
    for part, fname in SPLIT_FILES.items():
        p = folder / fname
        if p.is_file():
            t = pd.read_csv(p, dtype=str, keep_default_na=False)
            if "filename" not in t.columns:
                raise LabelError(f"{p}: the HemSeg split list needs columns filename,label; has {', '.join(t.columns)}")
            for n, lab in zip(t["filename"], t.get("label", [""] * len(t))):
                rows.append((scan_id_of(Path(n)) or str(n), part, lab))
    return pd.DataFrame(rows, columns=["name", "split", "split_label"]).drop_duplicates("name")


def exclusions(ds: dict) -> dict[str, str]:
    """dataset.exclude ({scan: reason} or a list; a scan is its RSNA study UID or its HemSeg name; null = none)."""
    v = ds.get("exclude") or {}
    if isinstance(v, (list, tuple)):
        return {str(x): "listed in dataset.exclude" for x in v}
    if not isinstance(v, dict):
        raise ConfigError(f"dataset.exclude: {v!r} is neither a mapping scan: reason nor a list of scans")
    return {str(k): str(r or "listed in dataset.exclude") for k, r in v.items()}


@register
class HemSeg(Adapter):
    name = "hemseg"
    title = "HemSeg-500 / HemSeg-200: IPH+IVH voxel masks for 525 / 222 RSNA stage-2 train scans (images from RSNA)"
    scan_key = "study"
    download = ("HemSeg-500/{train,val,test}/label/ (HemSeg-500.zip) or data/IPH_IVH_label/ (data/IPH_IVH_label.zip) "
                "with annotion_file_info_500.jsonl / annotion_file_info.jsonl, from github.com/songchangwei/"
                "3DCT-SD-IVH-ICH; and dataset.rsna_root holding RSNA's stage_2_train/ (HemSeg ships no images)")
    gives = {"scans": "one per RSNA study named in the jsonl (patients from PatientID); only its files indexed",
             "scan labels": "any mask voxel (or an RSNA-positive slice)", "slice labels": "the masks (+ RSNA rows)",
             "pixel labels": "the masks, binary (IPH and IVH not told apart)",
             "subtypes": "from stage_2_train.csv where present, else none",
             "excluded": "dataset.exclude (none by default)",
             "counts": "HemSeg-500: 525 scans (334 / 85 / 106); HemSeg-200: 222 (133 / 44 / 45), 209 patients"}

    def rsna_study(self, scan_id: str) -> str | None:
        s = str(scan_id)
        if re.fullmatch(r"ID_[0-9a-fA-F]+", s):
            return s
        return f"ID_{s}" if re.fullmatch(r"[0-9a-fA-F]{10}", s) else None

    def _files(self, root: Path, ds: dict) -> dict:
        want = str(ds.get("version") or "auto")
        if want not in ("auto", "500", "200"):
            raise ConfigError(f"dataset.version: {want!r}; HemSeg versions are 500 and 200 (null = 500 where present)")
        tried, found = [], None
        for v in (("500", "200") if want == "auto" else (want,)):
            labels, t = find(root, VERSIONS[v][0])
            tried += t
            if labels is not None:
                found = v
                break
        if found is None:
            raise self.missing("the label folder" + ("" if want == "auto" else f" of HemSeg-{want}"), tried)
        jname = VERSIONS[found][1]
        jsonl, t = find(root, [jname], kind="file")
        if jsonl is None:
            jsonl, t2 = find(labels.parent, [jname], kind="file", depth=0)
            if jsonl is None:
                raise self.missing(f"{jname} (the RSNA slices of each scan; in the repository's top folder)", t + t2)
        rroot = Path(ds.get("rsna_root") or root)
        if not rroot.is_dir():
            raise ConfigError(f"dataset.rsna_root: {rroot} is not a folder (the RSNA 2019 download with "
                              "stage_2_train/; HemSeg ships no images)")
        images, t = find(rroot, rsna.IMAGE_DIRS)
        if images is None:
            raise ConfigError(f"dataset hemseg: RSNA's slice folder not found; looked for "
                              f"{' or '.join(str(p) for p in t[:4])}. Set dataset.rsna_root to the RSNA 2019 Kaggle "
                              "download (rsna-intracranial-hemorrhage-detection, with stage_2_train/): HemSeg's images "
                              "are RSNA's")
        csv, _ = find(rroot, rsna.LABEL_FILES, kind="file")
        csv = csv or next((p for p in (images.parent / f for f in rsna.LABEL_FILES) if p.is_file()), None)
        return {"version": found, "labels": labels, "jsonl": jsonl, "images": images, "rsna_csv": csv,
                "base": jsonl.parent}

    def locate(self, root: Path, ds: dict) -> Resolved:
        f = self._files(root, ds)
        try:
            scans = read_jsonl(f["jsonl"])
        except LabelError as exc:
            raise ConfigError(f"dataset hemseg: {exc}") from None
        exclusions(ds)
        present = sum((f["images"] / f"{s[0]}.dcm").is_file() for s in scans["sops"] if s)
        if not present:
            raise ConfigError(f"dataset hemseg: none of the {len(scans)} HemSeg-{f['version']} scans has its first "
                              f"RSNA slice in {f['images']} (e.g. {scans['sops'].iloc[0][0]}.dcm): download RSNA 2019 "
                              "stage_2_train (Kaggle rsna-intracranial-hemorrhage-detection) and set dataset.rsna_root")
        out = self.derived_dataset(ds, "dicom", dicom_dir=str(f["images"]), gt_masks_dir=f"{DERIVED_DIR}/masks")
        files = [str(f["jsonl"]), str(f["labels"])] + ([str(f["rsna_csv"])] if f["rsna_csv"] else [])
        return Resolved(self.name, out, scan_key=self.scan_key, label_files=files, derived=True,
                        index_files=FILE_LIST, index_inputs=[str(f["jsonl"])])

    def index_files(self, ds: dict, out: Path) -> list[str]:
        f = self._files(Path(ds["root"]), ds)
        scans = read_jsonl(f["jsonl"])
        names = [f"{s}.dcm" for sops in scans["sops"] for s in sops]
        have = [n for n in names if (f["images"] / n).is_file()]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(f"{n}\n" for n in have))
        return [f"{f['jsonl']}: {len(scans)} scans, {len(names)} RSNA slices ({int(scans['repeats'].sum())} names "
                f"listed twice, used once); {len(have)} found in {f['images']}, {len(names) - len(have)} missing"]

    def derive(self, ds: dict, index_csv, out: Path) -> list[str]:
        f = self._files(Path(ds["root"]), ds)
        scans, masks, excl = read_jsonl(f["jsonl"]), mask_table(f["labels"]).set_index("name"), exclusions(ds)
        splits = read_splits(f["base"]).set_index("name")
        index = pd.read_csv(index_csv, dtype=str, keep_default_na=False,
                            usecols=["sop_uid", "study_uid", "series_uid", "patient_id", "position", "orientation",
                                     "pixel_spacing", "rows", "columns"]).drop_duplicates("sop_uid")
        by_sop = index.set_index("sop_uid")
        rsna_labels = rsna.read_labels(f["rsna_csv"])[0].set_index("sop_uid") if f["rsna_csv"] else None
        mdir = Path(out) / "masks"
        mdir.mkdir(parents=True, exist_ok=True)
        c = dict(uid_study=0, uid_series=0, uid_neither=0, by_order=0, by_coordinates=0, empty_masks=0,
                 other_values=0, patient_differs=0, rsna_only_slices=0, mask_not_rsna=0, withheld=0)
        slices, scan_rows, info, excluded, record, seen = [], [], [], [], [], {}
        for s in scans.itertuples(index=False):
            have = [x for x in s.sops if x in by_sop.index]
            if not have:
                on_disk = sum((f["images"] / f"{x}.dcm").is_file() for x in s.sops)
                excluded.append((f"ID_{s.name}", f"HemSeg scan {s.name}: none of its {len(s.sops)} RSNA slices were "
                                 + (f"found in {f['images']} (not downloaded?)" if not on_disk else
                                    f"read ({on_disk} files present but rejected, see rejected_index.csv)")))
                continue
            rows = by_sop.loc[have].reset_index()
            study, series = rows["study_uid"].iloc[0], rows["series_uid"].iloc[0]
            if len(have) < len(s.sops):
                gone = [x for x in s.sops if x not in by_sop.index]
                excluded.append((study, f"HemSeg scan {s.name}: {len(gone)} of its {len(s.sops)} RSNA slices are "
                                        f"missing or unreadable (e.g. {gone[0]}.dcm in {f['images']})"))
                continue
            if rows["study_uid"].nunique() > 1 or study in seen:
                excluded.append((study, f"HemSeg scan {s.name}: its slices lie in "
                                 + (f"{rows['study_uid'].nunique()} studies" if study not in seen
                                    else f"the study of HemSeg scan {seen[study]}")))
                continue
            if s.name not in masks.index:
                excluded.append((study, f"HemSeg scan {s.name}: no label volume {s.name}.nii.gz in "
                                        f"{f['labels']}/{{train,val,test}}/label"))
                continue
            why = excl.get(study) or excl.get(s.name) or excl.get(f"ID_{s.name}")
            if why:
                excluded.append((study, f"HemSeg scan {s.name}: {why}"))
                continue
            seen[study] = s.name
            kind = "study" if study == f"ID_{s.name}" else "series" if series == f"ID_{s.name}" else "neither"
            c[f"uid_{kind}"] += 1
            c["patient_differs"] += int(bool(s.patient) and s.patient != rows["patient_id"].iloc[0])
            m, how = self._mask(masks.loc[s.name, "path"], rows, c)
            t = pd.DataFrame({"sop_uid": rows["sop_uid"], "mask": [int(m[x].any()) for x in rows["sop_uid"]]})
            only = 0
            if rsna_labels is not None:
                r = rsna_labels.reindex(t["sop_uid"])
                rh = r["hemorrhage"].fillna(0).astype(int).to_numpy()
                only = int(((rh == 1) & (t["mask"] == 0)).sum())
                c["rsna_only_slices"] += only
                c["mask_not_rsna"] += int(((rh == 0) & (t["mask"] == 1)).sum())
                t["hemorrhage"] = np.maximum(t["mask"], rh)
                t["subtypes"] = np.where(t["hemorrhage"] == 1, r["subtypes"].fillna("").to_numpy(), "")
            else:
                t["hemorrhage"], t["subtypes"] = t["mask"], ""
            if only:
                # pixel truth wins over slice labels in the split: a mask that leaves a bleeding slice empty
                # (another subtype) would make it a normal slice, so this scan keeps only its slice labels
                c["withheld"] += 1
                how = f"withheld: RSNA marks {only} slices with hemorrhage the mask leaves empty"
            else:
                for suid, g in rows.groupby("series_uid"):
                    sops = g["sop_uid"].tolist()
                    np.savez_compressed(mdir / f"{suid}.npz", sop_uids=np.array(sops),
                                        masks=np.stack([m[x] for x in sops]))
            c["empty_masks"] += int(not t["mask"].any())
            slices.append(t[["sop_uid", "hemorrhage", "subtypes"]])
            scan_rows.append((study, int(t["hemorrhage"].max())))
            info.append((study, rsna._join_subtypes(t["subtypes"]), "rsna" if rsna_labels is not None else ""))
            sp = splits.loc[s.name] if s.name in splits.index else None
            record.append((study, s.name, kind, masks.loc[s.name, "part"], "" if sp is None else sp["split"],
                           "" if sp is None else sp["split_label"], int(t["mask"].sum()), how))
        scan_t = pd.DataFrame(scan_rows, columns=["scan_id", "label"])
        info_t = pd.DataFrame(info, columns=["scan_id", "subtypes", "subtype_source"]).assign(diagnosis="",
                                                                                            reader_ich_votes=-1)
        write_derived(out, scan_labels=scan_t, slice_labels=pd.concat(slices, ignore_index=True) if slices else None,
                      scan_info=info_t, excluded=pd.DataFrame(excluded, columns=["scan_id", "reason"]))
        pd.DataFrame(record, columns=["scan_id", "hemseg_name", "uid_match", "label_folder", "split_list",
                                      "split_label", "mask_slices", "mask_mapping"]).to_csv(Path(out) / SCANS_TABLE,
                                                                                            index=False)
        n_patients = index.loc[index["study_uid"].isin(set(scan_t["scan_id"])), "patient_id"].nunique()
        lines = [f"HemSeg-{f['version']}: {len(scans)} scans in {f['jsonl']}, {len(masks)} label volumes in "
                 f"{f['labels']}; {len(scan_t)} scans of {n_patients} patients kept ({int(scan_t['label'].sum())} "
                 f"with hemorrhage), {len(excluded)} left out (excluded.csv)",
                 f"scan names matched to RSNA: {c['uid_study']} are the StudyInstanceUID, {c['uid_series']} the "
                 f"SeriesInstanceUID, {c['uid_neither']} neither (found by their slice lists); {c['patient_differs']} "
                 "jsonl patients differ from the DICOM PatientID",
                 f"masks onto slices: {c['by_order']} by stack order, {c['by_coordinates']} by patient coordinates "
                 f"(shape differs from the files); {c['empty_masks']} masks all zero (labelled by their slices); "
                 f"{c['other_values']} with values other than 0 and 1 (> 0 taken as hemorrhage)"]
        if rsna_labels is not None:
            lines.append(f"{f['rsna_csv']}: {c['rsna_only_slices']} slices with hemorrhage by RSNA but not in the mask "
                         f"(counted as hemorrhage: the {c['withheld']} scans holding them keep slice labels only, "
                         "no pixel truth), "
                         f"{c['mask_not_rsna']} in the mask but not by RSNA")
        else:
            lines.append("no stage_2_train.csv beside the RSNA slices: no subtypes (the masks do not tell IPH "
                         "from IVH)")
        lines.append(f"HemSeg parts recorded in {SCANS_TABLE} (label folder and split lists), not used for the folds")
        return lines

    @staticmethod
    def _mask(path: str, rows: pd.DataFrame, c: dict) -> tuple[dict[str, np.ndarray], str]:
        import nibabel as nib

        try:
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise LabelError(f"{path}: cannot read the HemSeg label volume ({type(exc).__name__})") from None
        data = data[..., 0] if data.ndim == 4 else data
        lo, hi = data.min(), data.max()             # np.unique over the volume costs 10x these
        odd = lo < 0 or hi > 1 or (data.dtype.kind == "f" and bool(((data != 0) & (data != 1)).any()))
        c["other_values"] += int(odd)
        m = nifti_to_dicom.slices_by_index(data, img.affine, rows)
        if m is not None:
            c["by_order"] += 1
            return m, "stack order"
        c["by_coordinates"] += 1
        return nifti_to_dicom.resample_slices(data, img.affine, rows), "patient coordinates"
