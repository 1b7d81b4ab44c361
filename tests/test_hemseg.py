"""The HemSeg adapter: labels in HemSeg's shipped layout (tests/dataset_formats.write_hemseg) on RSNA files
(write_rsna): the jsonl quirks, only the listed files indexed, masks onto tilted slices by stack order, missing
downloads, subtypes from the RSNA csv, and one toy Snakemake run."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dataset_formats import head_hu, hemseg_name, rsna_id, write_hemseg, write_rsna

from ichbench.cache.preprocess import build_index
from ichbench.cli import main
from ichbench.datasets import adapter, hemseg, nifti_to_dicom
from ichbench.datasets.labels import LabelError
from ichbench.errors import ConfigError
from ichbench.inputs import dicom_index

RSNA = [
    dict(patient=1, study=1, n=12, bleed={3, 4}),   # 12 slices: jsonl keys "0", "1", "10", "11", "2", ...
    dict(patient=1, study=2, n=8),                                                  # not a HemSeg scan
    dict(patient=2, study=3, n=8, bleed={2, 3}, tilt_deg=25.0, subtype="intraventricular"),
    dict(patient=3, study=4, n=8, bleed={5}, subtype="subdural"),
    dict(patient=4, study=5, n=8),
    dict(patient=5, study=6, n=8, bleed={1}),
    dict(patient=6, study=7, n=8),
]
HEMSEG = [
    dict(RSNA[0], part="train", in200=True, repeat=True),
    dict(RSNA[2], part="val", name_by="series", uint8=True),
    dict(RSNA[3], part="train", empty_mask=True),            # RSNA says SDH, the IPH / IVH mask is empty
    dict(RSNA[4], part="test", in200=True),
    dict(RSNA[5], part="test", extra_slices=1),               # one listed slice this RSNA copy lacks
    dict(patient=9, study=99, n=8, part="test", not_in_rsna=True, bleed={2}),
    dict(RSNA[6], part="val"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("hemseg")
    info = write_rsna(base / "rsna", RSNA)
    write_hemseg(base / "3DCT-SD-IVH-ICH", HEMSEG, info)
    return base, info


def _ds(base, **kw):
    return {"name": "hemseg", "root": str(base / "3DCT-SD-IVH-ICH"), "rsna_root": str(base / "rsna"), **kw}


@pytest.fixture(scope="module")
def derived(data, tmp_path_factory):
    base, info = data
    out = tmp_path_factory.mktemp("hemseg_derived")
    ds = _ds(base)
    r = adapter.resolve(ds)
    log = adapter.get("hemseg").index_files(ds, out / "files.txt")
    build_index(r.dataset["dicom_dir"], out / "index.csv", out / "series_candidates.csv", out / "rejected_index.csv",
                min_slices=4, min_extent_mm=20, scan_key="study", file_list=out / "files.txt")
    lines = adapter.get("hemseg").derive(ds, out / "index.csv", out / "d")
    return base, info, out, log, lines


def test_both_jsonl_forms_and_their_quirks(data, tmp_path):
    base, info = data
    t500 = hemseg.read_jsonl(base / "3DCT-SD-IVH-ICH" / "annotion_file_info_500.jsonl").set_index("name")
    t200 = hemseg.read_jsonl(base / "3DCT-SD-IVH-ICH" / "annotion_file_info.jsonl").set_index("name")
    first = hemseg_name(HEMSEG[0], info)
    assert len(t500) == 7 and len(t200) == 2 and first in t200.index
    # string keys "0", "1", "10", ... "2" read in numeric order; the slice named twice is used once and counted
    assert list(t500.loc[first, "sops"]) == info["sops"][1] and t500.loc[first, "repeats"] == 1
    assert t200.loc[first, "sops"] == t500.loc[first, "sops"] and t200.loc[first, "patient"] == rsna_id("patient", 1)
    lab = base / "3DCT-SD-IVH-ICH" / "HemSeg-500"
    img = nib.load(lab / "train" / "label" / f"{first}.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and img.get_data_dtype() == np.int16
    assert nib.load(lab / "val" / "label" / f"{hemseg_name(HEMSEG[1], info)}.nii.gz").get_data_dtype() == np.uint8
    assert (base / "3DCT-SD-IVH-ICH" / "data" / "IPH_IVH_label" / "train" / "label" / f"{first}.nii.gz").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"scan_name": "ab12", "slice_list": ["0a1"]}\nnot json\n')
    with pytest.raises(LabelError, match=r"bad.jsonl, line 2: not a JSON object"):
        hemseg.read_jsonl(bad)
    bad.write_text('{"patient": "ID_1", "slice_list": ["0a1"]}\n')
    with pytest.raises(LabelError, match="line 1: needs a hex scan name"):
        hemseg.read_jsonl(bad)


def test_locate_picks_the_version_and_names_missing_files(data, tmp_path):
    base, _ = data
    r = adapter.resolve(_ds(base))
    assert r.scan_key == "study" and r.derived and r.index_files == hemseg.FILE_LIST
    assert r.dataset["dicom_dir"] == str(base / "rsna" / "stage_2_train")
    assert r.dataset["gt_masks_dir"] == "results/data/dataset/masks"
    assert r.label_files[1].endswith("HemSeg-500") and r.label_files[2].endswith("stage_2_train.csv")
    r200 = adapter.resolve(_ds(base, version=200))
    assert r200.label_files[0].endswith("annotion_file_info.jsonl") and r200.label_files[1].endswith("IPH_IVH_label")
    with pytest.raises(ConfigError, match="dataset.version: '300'"):
        adapter.resolve(_ds(base, version="300"))
    with pytest.raises(ConfigError, match="dataset.rsna_root: .*nope is not a folder"):
        adapter.resolve(_ds(base, rsna_root=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="RSNA's slice folder not found.*stage_2_train.*rsna_root"):
        adapter.resolve(_ds(base, rsna_root=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="the label folder not found.*HemSeg-500.*songchangwei"):
        adapter.resolve({**_ds(base), "root": str(tmp_path / "empty")})
    (tmp_path / "other" / "stage_2_train").mkdir(parents=True)           # an RSNA folder without these scans
    with pytest.raises(ConfigError, match="none of the 7 HemSeg-500 scans has its first RSNA slice.*download RSNA"):
        adapter.resolve(_ds(base, rsna_root=str(tmp_path / "other")))
    clone = tmp_path / "clone"
    shutil.copytree(base / "3DCT-SD-IVH-ICH" / "HemSeg-500", clone / "HemSeg-500")
    with pytest.raises(ConfigError, match="annotion_file_info_500.jsonl .*not found"):
        adapter.resolve({**_ds(base), "root": str(clone)})


def test_only_the_listed_files_are_indexed(derived):
    base, info, out, log, _ = derived
    listed = (out / "files.txt").read_text().split()
    # 12 + 5 x 8 slices of RSNA's files (the repeat once), not the decoy study nor the corrupted file
    assert len(listed) == 52 and log[0].endswith("1 names listed twice, used once); 52 found in "
                                                 f"{base / 'rsna' / 'stage_2_train'}, 9 missing")
    index = pd.read_csv(out / "index.csv", dtype=str)
    assert len(index) == 52 and rsna_id("study", 2) not in set(index["study_uid"])
    files, missing = dicom_index.listed_files(base / "rsna" / "stage_2_train", out / "files.txt")
    assert len(files) == 52 and not missing
    (out / "more.txt").write_text("# a comment\n" + listed[0] + "\n\nID_000000000.dcm\n" + listed[0] + "\n")
    files, missing = dicom_index.listed_files(base / "rsna" / "stage_2_train", out / "more.txt")
    assert len(files) == 1 and len(missing) == 1 and "listed in" in missing[0].reason


def test_derived_tables_labels_subtypes_and_exclusions(derived):
    base, info, out, _, lines = derived
    d = out / "d"
    scans = pd.read_csv(d / "scan_labels.csv", dtype=str).set_index("scan_id")["label"].astype(int).to_dict()
    sid = {s: rsna_id("study", s) for s in (1, 3, 4, 5, 6, 7, 99)}
    assert scans == {sid[1]: 1, sid[3]: 1, sid[4]: 1, sid[5]: 0, sid[7]: 0}     # 4: by RSNA's rows only
    excl = pd.read_csv(d / "excluded.csv", dtype=str).set_index("scan_id")["reason"]
    assert "none of its 8 RSNA slices were found in" in excl[sid[99]] and "not downloaded" in excl[sid[99]]
    assert "1 of its 9 RSNA slices are missing or unreadable" in excl[sid[6]]
    info_t = pd.read_csv(d / "scan_info.csv", dtype=str, keep_default_na=False).set_index("scan_id")
    assert info_t.loc[sid[1], "subtypes"] == "IPH" and info_t.loc[sid[3], "subtypes"] == "IVH"
    assert info_t.loc[sid[4], "subtypes"] == "SDH" and (info_t["subtype_source"] == "rsna").all()
    sl = pd.read_csv(d / "slice_labels.csv", dtype=str, keep_default_na=False).set_index("sop_uid")
    assert sl["hemorrhage"].astype(int).sum() == 2 + 2 + 1 and len(sl) == 44
    assert any("4 are the StudyInstanceUID, 1 the SeriesInstanceUID, 0 neither" in line for line in lines)
    assert any("5 by stack order, 0 by patient coordinates" in line and "3 masks all zero" in line for line in lines)
    assert any("1 slices with hemorrhage by RSNA but not in the mask" in line and "the 1 scans holding them keep "
               "slice labels only" in line for line in lines)
    assert not (d / "masks" / f"{info['series'][4]}.npz").exists() and len(list((d / "masks").iterdir())) == 4
    rec = pd.read_csv(d / "hemseg_scans.csv", dtype=str).set_index("scan_id")
    assert rec.loc[sid[3], "uid_match"] == "series" and rec.loc[sid[3], "label_folder"] == "val"
    assert rec.loc[sid[1], "split_list"] == "train" and rec.loc[sid[1], "split_label"] == "1"


def test_masks_land_on_the_bleed_pixels_of_tilted_slices(derived):
    base, info, out, _, _ = derived
    index = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False)
    for s in (RSNA[0], RSNA[2]):                      # 11 and 25 degrees of gantry tilt
        series = info["series"][s["study"]]
        z = np.load(out / "d" / "masks" / f"{series}.npz")
        got = dict(zip(z["sop_uids"], z["masks"]))
        for k, sop in enumerate(info["sops"][s["study"]]):
            want = head_hu(64, 64, k, s["n"], bleed=True) != head_hu(64, 64, k, s["n"], bleed=False)
            assert np.array_equal(got[sop] > 0, want if k in s["bleed"] else np.zeros_like(want)), (series, k)
    # resampling the same mask by its affine would miss: the rebuilt affine does not carry the tilt
    name = hemseg_name(HEMSEG[1], info)
    img = nib.load(base / "3DCT-SD-IVH-ICH" / "HemSeg-500" / "val" / "label" / f"{name}.nii.gz")
    rows = index[index["series_uid"] == info["series"][3]]
    by_xyz = nifti_to_dicom.resample_slices(np.asanyarray(img.dataobj), img.affine, rows)
    by_order = nifti_to_dicom.slices_by_index(np.asanyarray(img.dataobj), img.affine, rows)
    sop = info["sops"][3][3]
    assert by_order[sop].sum() > 0 and (by_xyz[sop] & by_order[sop]).sum() < 0.5 * by_order[sop].sum()


def test_stack_order_follows_the_affine_axes(derived):
    base, info, out, _, _ = derived
    index = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False)
    rows = index[index["study_uid"] == rsna_id("study", 1)]
    img = nib.load(base / "3DCT-SD-IVH-ICH" / "HemSeg-500" / "train" / "label"
                   / f"{hemseg_name(HEMSEG[0], info)}.nii.gz")
    data, aff = np.asanyarray(img.dataobj), img.affine
    ref = nifti_to_dicom.slices_by_index(data, aff, rows)
    flip = np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, data.shape[2] - 1], [0, 0, 0, 1.0]])
    flipped = aff @ flip
    again = nifti_to_dicom.slices_by_index(data[::-1, :, ::-1], flipped, rows)
    assert all(np.array_equal(ref[s], again[s]) for s in ref) and sum(m.sum() for m in ref.values()) > 0
    assert nifti_to_dicom.slices_by_index(data[:, :, :-1], aff, rows) is None          # another slice count


def test_dataset_exclude_and_a_broken_jsonl_stop_or_leave_out(data, derived, tmp_path):
    base, info, out, _, _ = derived
    ds = _ds(base, exclude={hemseg_name(HEMSEG[1], info): "my reason"})
    adapter.get("hemseg").derive(ds, out / "index.csv", tmp_path / "d")
    excl = pd.read_csv(tmp_path / "d" / "excluded.csv", dtype=str).set_index("scan_id")["reason"]
    assert excl[rsna_id("study", 3)].endswith(": my reason") and len(excl) == 3
    with pytest.raises(ConfigError, match="dataset.exclude: 'x' is neither"):
        adapter.resolve(_ds(base, exclude="x"))
    clone = tmp_path / "clone"
    shutil.copytree(base / "3DCT-SD-IVH-ICH", clone)
    (clone / "annotion_file_info_500.jsonl").write_text("{broken\n")
    with pytest.raises(ConfigError, match=r"dataset hemseg: .*annotion_file_info_500.jsonl, line 1: not a JSON"):
        adapter.resolve({**_ds(base), "root": str(clone)})


def test_without_the_rsna_csv_there_are_no_subtypes(data, tmp_path):
    base, info = data
    rsna_copy = tmp_path / "rsna"
    shutil.copytree(base / "rsna" / "stage_2_train", rsna_copy / "stage_2_train")
    ds = _ds(base, rsna_root=str(rsna_copy), version="200")
    r = adapter.resolve(ds)
    assert len(r.label_files) == 2
    hs = adapter.get("hemseg")
    hs.index_files(ds, tmp_path / "files.txt")
    build_index(r.dataset["dicom_dir"], tmp_path / "index.csv", tmp_path / "c.csv", tmp_path / "r.csv", min_slices=4,
                min_extent_mm=20, scan_key="study", file_list=tmp_path / "files.txt")
    lines = hs.derive(ds, tmp_path / "index.csv", tmp_path / "d")
    assert lines[0].startswith("HemSeg-200: 2 scans") and any("no stage_2_train.csv" in line for line in lines)
    info_t = pd.read_csv(tmp_path / "d" / "scan_info.csv", dtype=str, keep_default_na=False)
    assert (info_t["subtypes"] == "").all() and len(info_t) == 2


def test_hemseg_scans_found_among_rsna_and_bhsd_scans():
    dup = adapter.duplicates(["ID_40015688b9", "ID_1111111111"], "rsna", ["ID_40015688b9", "2222222222"], "hemseg")
    assert dup == {"ID_40015688b9": "ID_40015688b9"}
    dup = adapter.duplicates(["ID_0237f3c9_ID_40015688b9"], "bhsd", ["40015688b9", "ID_ffffffffff"], "hemseg")
    assert dup == {"40015688b9": "ID_0237f3c9_ID_40015688b9"}


def test_ichbench_datasets_lists_hemseg(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "hemseg: HemSeg-500 / HemSeg-200" in out and "rsna_root" in out


@pytest.mark.slow
def test_hemseg_toy_snakemake_run(data, tmp_path):
    from test_datasets import toy_dataset_run

    base, info = data
    toy_dataset_run(tmp_path, _ds(base, version=500))
    res = tmp_path / "results" / "data"
    assert len(pd.read_csv(res / "index.csv")) == 52                 # only HemSeg's listed files were indexed
    cohort = pd.read_csv(res / "cohort.csv").set_index("scan_class")
    assert cohort.loc["all", "scans"] == 5 and cohort.loc["all", "patients"] == 5
    assert cohort.loc["pathological", "scans"] == 3
    series = pd.read_csv(res / "cache" / "shard-0" / "series.csv")
    assert series["has_gt"].sum() == 4 and series["gt_slices"].sum() == 4      # study 4: withheld
    rejected = pd.read_csv(res / "rejected.csv")
    assert rejected["reason"].str.contains("left out by the dataset adapter: HemSeg scan").sum() == 2
    log = (tmp_path / "logs" / "data" / "dataset_labels.log").read_text()
    assert "4 are the StudyInstanceUID, 1 the SeriesInstanceUID" in log
    assert "52 found in" in (tmp_path / "logs" / "data" / "dataset_files.log").read_text()
