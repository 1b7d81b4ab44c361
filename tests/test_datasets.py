"""Dataset adapters: resolving `dataset: {name, root}`, missing files, the RSNA adapter on files in its shipped layout
(tests/dataset_formats.py) and on the real RSNA series of ../shared/data, and scans under patients."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dataset_formats import head_hu, rsna_stored, write_rsna

from ichbench.cache.preprocess import build_index, preprocess_shard
from ichbench.cli import main
from ichbench.cohort import splits
from ichbench.datasets import adapter, rsna
from ichbench.datasets.labels import LabelError
from ichbench.errors import ConfigError
from ichbench.inputs import dicomio, pixelfix
from ichbench.inputs.windowing import PAPER_WINDOWS

#: two studies for patient 1 (one with a bleed), two normal ones for patient 2, and singles
RSNA_STUDIES = [
    dict(patient=1, study=1, n=8, bleed={3, 4}),
    dict(patient=1, study=2, n=8, mode="needs_fix"),
    dict(patient=2, study=3, n=8, mode="int16", shape=(72, 64), dup_position=2),
    dict(patient=2, study=4, n=8),
    dict(patient=3, study=5, n=8, bleed={5}, subtype="subdural"),
    dict(patient=4, study=6, n=8, bleed={2, 3, 4}, subtype="subarachnoid", tilt_deg=0.0),
    dict(patient=5, study=7, n=9, skip={4}),
    dict(patient=6, study=8, n=8, tilt_deg=25.0),
    dict(patient=7, study=9, n=8, unlabelled=True),
]


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    info = write_rsna(root / "rsna-intracranial-hemorrhage-detection" / "rsna-intracranial-hemorrhage-detection",
                      RSNA_STUDIES)
    return root, info


# --- the framework -----------------------------------------------------------------------------------------------


def test_legacy_keys_are_the_generic_adapters():
    ds = {"source": "dicom", "dicom_dir": "/data/CQ500", "labels": "/data/l.csv", "label_source": "ctfsh"}
    r = adapter.resolve(ds)
    assert r.name == "dicom" and not r.derived and r.scan_key == "patient"
    assert {k: r.dataset[k] for k in ds} == ds
    assert adapter.resolve({"source": "synthetic"}).name == "synthetic"


def test_every_named_adapter_is_registered_and_listed(capsys):
    assert {"synthetic", "dicom", "nifti", "cq500", "rsna"} <= set(adapter.adapters())
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "rsna:" in out and "a scan is a study" in out and "stage_2_train.csv" in out


def test_unknown_name_and_missing_root_stop_with_a_message(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset adapter 'rsnaa'"):
        adapter.resolve({"name": "rsnaa", "root": str(tmp_path)})
    with pytest.raises(ConfigError, match="set dataset.root"):
        adapter.resolve({"name": "rsna"})
    with pytest.raises(ConfigError, match="is not a folder"):
        adapter.resolve({"name": "rsna", "root": str(tmp_path / "nowhere")})


def test_misnamed_rsna_folder_names_the_expected_path_and_the_download(tmp_path):
    (tmp_path / "train_images").mkdir()
    (tmp_path / "stage_2_train.csv").write_text("ID,Label\n")
    with pytest.raises(ConfigError) as e:
        adapter.resolve({"name": "rsna", "root": str(tmp_path)})
    msg = str(e.value)
    assert str(tmp_path / "stage_2_train") in msg and "The download should contain" in msg
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train.csv").unlink()
    with pytest.raises(ConfigError, match="the label file not found.*stage_2_train.csv"):
        adapter.resolve({"name": "rsna", "root": str(tmp_path)})


def test_rsna_accepts_nested_zip_roots(rsna_root):
    root, info = rsna_root
    r = adapter.resolve({"name": "rsna", "root": str(root)})
    assert r.derived and r.scan_key == "study" and r.dataset["source"] == "dicom"
    assert r.dataset["dicom_dir"].endswith("rsna-intracranial-hemorrhage-detection/stage_2_train")
    assert r.label_files == [str(info["csv"])]


# --- RSNA labels ---------------------------------------------------------------------------------------------------


def _csv(tmp_path, rows):
    p = tmp_path / "stage_2_train.csv"
    p.write_text("ID,Label\n" + "".join(f"{i},{v}\n" for i, v in rows))
    return p


def _six(sop, pos=(), any_=None):
    out = [(f"{sop}_{t}", int(t in pos)) for t in rsna.SUBTYPE_COLUMNS]
    return out + [(f"{sop}_any", int(bool(pos)) if any_ is None else any_)]


def test_rsna_labels_pivot_drop_duplicates_and_check_any(tmp_path):
    rows = _six("ID_aaa", ["subdural", "epidural"]) + _six("ID_bbb") + _six("ID_ccc", any_=1) + _six("ID_aaa", ["subdural", "epidural"])
    labels, counts = rsna.read_labels(_csv(tmp_path, rows))
    t = labels.set_index("sop_uid")
    assert counts["duplicate_rows"] == 6 and counts["slices"] == 3 and counts["any_disagrees"] == 1
    assert t.loc["ID_aaa", "subtypes"] == "EDH;SDH" and t.loc["ID_aaa", "hemorrhage"] == 1
    assert t.loc["ID_bbb", "hemorrhage"] == 0 and t.loc["ID_ccc", "hemorrhage"] == 1   # `any` alone counts


def test_rsna_labels_refuse_malformed_rows(tmp_path):
    with pytest.raises(LabelError, match="lacks some of the six rows"):
        rsna.read_labels(_csv(tmp_path, _six("ID_aaa")[:5]))
    with pytest.raises(LabelError, match="not of the form ID_<hex>_<subtype>"):
        rsna.read_labels(_csv(tmp_path, [("ID_aaa_bleed", 1)]))
    with pytest.raises(LabelError, match="Label '2' is not 0 or 1"):
        rsna.read_labels(_csv(tmp_path, [("ID_aaa_any", 2)]))
    bad = tmp_path / "x.csv"
    bad.write_text("image,label\n")
    with pytest.raises(LabelError, match="x.csv: the RSNA label file needs columns ID,Label"):
        rsna.read_labels(bad)


# --- RSNA pixels and headers ---------------------------------------------------------------------------------------


def test_published_correction_recovers_hu_and_leaves_other_files_alone(tmp_path):
    from dataset_formats import _rsna_file

    hu = head_hu(32, 32, 3, 8, bleed=True)
    for mode in ("needs_fix", "uint12", "int16"):
        stored, bits, rep, icpt = rsna_stored(hu, mode)
        path = tmp_path / f"{mode}.dcm"
        _rsna_file(path, "ID_1", "ID_2", "ID_3", "ID_4", (0, 0, 0), (1, 0, 0, 0, 1, 0), stored, bits, rep, icpt)
        notes = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = dicomio._pixels_to_hu(pydicom.dcmread(path), str(path), notes)
        assert np.abs(got - np.clip(np.rint(hu), -1024, None)).max() <= 1.0, mode
        assert (pixelfix.NOTE in notes) == (mode == "needs_fix")
    # without the correction those values are far from HU (air at about +3000)
    stored, bits, rep, icpt = rsna_stored(hu, "needs_fix")
    assert stored[0, 0] * 1 + icpt > 3000 and pixelfix.needs_fix(bits, rep, icpt)
    assert not pixelfix.needs_fix(12, 1, 0.0) and not pixelfix.needs_fix(12, 0, -1024.0)


@pytest.fixture(scope="module")
def rsna_indexed(rsna_root, tmp_path_factory):
    root, info = rsna_root
    out = tmp_path_factory.mktemp("rsna_index")
    r = adapter.resolve({"name": "rsna", "root": str(root)})
    build_index(r.dataset["dicom_dir"], out / "index.csv", out / "series_candidates.csv", out / "rejected_index.csv",
                min_slices=4, min_extent_mm=20, scan_key="study")
    table = preprocess_shard(out / "index.csv", out / "series_candidates.csv", out / "shard-0", shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=32)
    return root, info, out, table


def test_rsna_scans_are_studies_and_quirks_are_recorded(rsna_indexed):
    root, info, out, table = rsna_indexed
    cand = pd.read_csv(out / "series_candidates.csv", dtype=str)
    assert cand["scan_id"].nunique() == len(RSNA_STUDIES) and cand["patient_id"].nunique() == 7
    rej = pd.read_csv(out / "rejected_index.csv")
    bad = rej[rej["item"].str.endswith("ID_6431af929.dcm")]
    assert len(bad) == 1 and "pixel data holds 2400 bytes" in bad["reason"].iloc[0]
    fixed = table[table["notes"].str.contains("published RSNA 2019 pixel correction", na=False)]
    assert len(fixed) == 1 and "8 of 8 slices" in fixed["notes"].iloc[0]
    assert np.allclose(table["slice_thickness"], 5.0, atol=0.01)            # from positions along the normal
    assert sorted(np.round(table["tilt_deg"]).astype(int).tolist()) == [0] + [11] * 7 + [25]
    square = table[table["rows"] != table["columns"]]
    assert len(square) == 1 and square["pad_left"].iloc[0] == 4
    dup = pd.read_csv(out / "shard-0" / "rejected.csv")
    assert dup["reason"].str.fullmatch(r"a second slice at the same position along the slice normal \(kept ID_\w+\)").sum() == 1
    assert (table["n_slices"] == 8).all() and table["n_gaps"].tolist().count(1) == 1    # the missing slice


def test_rsna_index_prints_no_per_file_uid_warning_and_counts_once(rsna_root, tmp_path, caplog):
    root, _ = rsna_root
    r = adapter.resolve({"name": "rsna", "root": str(root)})
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        build_index(r.dataset["dicom_dir"], tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "r.csv",
                    min_slices=4, min_extent_mm=20, scan_key="study")
    assert not [w for w in seen if "Invalid value for VR UI" in str(w.message)]
    lines = [m for m in caplog.messages if "not valid DICOM UIDs" in m]
    assert len(lines) == 1 and lines[0].startswith("73 of 73 files")   # 9 x 8 slices + 1 repeated position


def test_rsna_derived_tables_and_scans_under_patients(rsna_indexed, tmp_path):
    root, info, out, _ = rsna_indexed
    lines = adapter.get("rsna").derive({"name": "rsna", "root": str(root)}, out / "index.csv", tmp_path)
    assert any("6 duplicated rows dropped" in line for line in lines)
    scans = pd.read_csv(tmp_path / "scan_labels.csv", dtype=str)
    excluded = pd.read_csv(tmp_path / "excluded.csv", dtype=str)
    assert len(scans) == 8 and len(excluded) == 1 and "no row in the RSNA label file" in excluded["reason"].iloc[0]
    assert scans["label"].astype(int).sum() == 3
    info_t = pd.read_csv(tmp_path / "scan_info.csv", dtype=str, keep_default_na=False)
    assert sorted(info_t["subtypes"]) == ["", "", "", "", "", "IPH", "SAH", "SDH"]
    slices = splits.collect_slices([out / "shard-0"], scan_key="study")
    slices = splits.apply_slice_labels(slices, pd.read_csv(tmp_path / "slice_labels.csv", dtype={"sop_uid": str}))
    cohort, problems = splits.build_cohort(slices, pd.read_csv(tmp_path / "scan_labels.csv", dtype={"scan_id": str}))
    assert cohort["scan_id"].nunique() == 8 and cohort["patient_id"].nunique() == 6
    patients = splits.patient_table(cohort).set_index("patient_id")
    p1 = patients.loc[rsna_id_of(1)]
    assert p1["scans"] == 2 and p1["scan_label"] == 1           # a normal and a pathological study: pathological
    assert patients.loc[rsna_id_of(2), "scan_label"] == 0       # both studies normal: a normal training patient
    summary = splits.cohort_summary(cohort, "paper").set_index("scan_class")
    assert summary.loc["all", "patients"] == 6 and summary.loc["all", "scans"] == 8
    parts = splits.assign_folds(patients.reset_index(), 2, 0.2, 0)
    for fold, manifest in enumerate(splits.make_manifests(cohort, "slice", 2, 0.2, 0, parts=parts)):
        # a patient's studies stay in one part; training holds only patients whose studies are all normal
        assert (manifest.groupby("patient_id")["part"].nunique() == 1).all()
        train = manifest[manifest["part"] == "train"]
        assert (train["scan_label"] == 0).all() and rsna_id_of(1) not in set(train["patient_id"])
        assert manifest.groupby("series_uid")["scan_id"].nunique().max() == 1


def rsna_id_of(patient: int) -> str:
    from dataset_formats import rsna_id

    return rsna_id("patient", patient)


# --- the real RSNA series ------------------------------------------------------------------------------------------


def test_real_rsna_series_reads_as_one_study(shared_data, tmp_path, caplog):
    folder = shared_data / "rsna" / "stage_2_test_images"
    if not folder.is_dir():
        pytest.skip("no real RSNA series in ../shared/data")
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        cand = build_index(folder, tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "r.csv", scan_key="study",
                           min_extent_mm=60)
        table = preprocess_shard(tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "s", shard=0, n_shards=1,
                                 windows=PAPER_WINDOWS, size=32)
    assert not [w for w in seen if "Invalid value for VR UI" in str(w.message)]
    assert any(m.startswith("32 of 32 files carry") for m in caplog.messages)
    assert cand["scan_id"].tolist() == ["ID_1f6d1e8aeb"] and cand["patient_id"].tolist() == ["ID_52c1ab5a"]
    row = table.iloc[0]
    assert row["n_slices"] == 32 and abs(row["slice_thickness"] - 5.0) < 0.05 and abs(row["tilt_deg"] - 11) < 0.5
    assert "pixel correction" not in str(row["notes"])             # BitsStored 12, unsigned, intercept -1024


# --- toy Snakemake runs ----------------------------------------------------------------------------------------------


def toy_dataset_run(tmp_path, dataset: dict, extra_targets=()):
    """The real snakemake on the tiny end-to-end config with `dataset`, up to the cohort and the fold manifests."""
    import yaml
    from test_pipeline import run_snakemake, tiny_config

    cfg = tiny_config()
    cfg["dataset"].update(dataset)
    cfg["preprocess"].update(min_slices=4, min_extent_mm=20)
    cfg["splits"]["n_folds"] = 2
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    targets = ["results/data/cohort.csv", "results/splits/fold-0.csv", "results/splits/fold-1.csv", *extra_targets]
    return run_snakemake(tmp_path, *targets)


@pytest.mark.slow
def test_rsna_toy_snakemake_run(rsna_root, tmp_path):
    from dataset_formats import write_hemseg_mask

    root, _ = rsna_root
    write_hemseg_mask(tmp_path / "hemseg" / "test" / "label", RSNA_STUDIES[4])
    toy_dataset_run(tmp_path / "run", {"name": "rsna", "root": str(root), "masks": str(tmp_path / "hemseg")})
    tmp_path = tmp_path / "run"
    series = pd.read_csv(tmp_path / "results" / "data" / "cache" / "shard-0" / "series.csv")
    assert series["has_gt"].sum() == 1 and series["gt_slices"].max() == 1
    cohort = pd.read_csv(tmp_path / "results" / "data" / "cohort.csv").set_index("scan_class")
    assert cohort.loc["all", "patients"] == 6 and cohort.loc["all", "scans"] == 8
    assert cohort.loc["pathological", "scans"] == 3 and cohort.loc["all", "label_source"] == "csv"
    rejected = pd.read_csv(tmp_path / "results" / "data" / "rejected.csv")
    assert rejected["reason"].str.contains("left out by the dataset adapter: 8 of its 8 indexed slices").sum() == 1
    assert rejected["item"].str.endswith("ID_6431af929.dcm").sum() == 1
    for k in (0, 1):
        m = splits.read_manifest(tmp_path / "results" / "splits" / f"fold-{k}.csv")
        assert (m.groupby("patient_id")["part"].nunique() == 1).all() and m["scan_id"].nunique() <= 8
    assignment = pd.read_csv(tmp_path / "results" / "splits" / "assignment.csv")
    assert len(assignment) == 6                                    # folds are drawn over patients
    log = (tmp_path / "logs" / "data" / "dataset_labels.log").read_text()
    assert "6 duplicated rows dropped" in log


def test_a_misnamed_download_stops_snakemake_before_any_job(tmp_path):
    import yaml
    from test_pipeline import run_snakemake, tiny_config

    (tmp_path / "data" / "stage_2_train_imgs").mkdir(parents=True)
    cfg = tiny_config()
    cfg["dataset"].update(name="rsna", root=str(tmp_path / "data"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "dataset rsna: the slice folder not found" in out and "The download should contain" in out
    assert str(tmp_path / "data" / "stage_2_train") in out
    assert not (tmp_path / "results").exists()


# --- CT-ICH, BHSD, INSTANCE ------------------------------------------------------------------------------------------

from dataset_formats import write_bhsd, write_ctich, write_instance  # noqa: E402

from ichbench.inputs.nifti import build_index as build_nifti_index  # noqa: E402

CTICH_SCANS = {49: dict(bleed={2, 3}), 50: dict(bleed={4, 5}, subtype="Subdural", csv_wrong=7),
               51: dict(bleed={3}, subtype="Epidural"), 66: dict(), 67: dict(), 68: dict(), 70: dict(bleed={4})}
BHSD_LABELLED = {"ID_0237f3c9_ID_40015688b9": dict(bleed={3, 4}, value=5),
                 "ID_2db7ee14_ID_1111111111": dict(bleed={2}, value=1),
                 "ID_2db7ee14_ID_2222222222": dict(bleed={5}, value=2, tilt_deg=0.0)}
BHSD_ANY = ["ID_aaaa0001_ID_0000000001"]
BHSD_NO = ["ID_bbbb0001_ID_0000000002", "ID_bbbb0002_ID_0000000003", "ID_bbbb0003_ID_0000000004"]
INSTANCE_SCANS = {1: dict(bleed={2, 3}), 2: dict(bleed={4}), 3: dict(bleed={5, 6}), 4: dict(), 5: dict()}


def _derive(name, root, tmp_path, **ds):
    r = adapter.resolve({"name": name, "root": str(root), **ds})
    tmp_path.mkdir(parents=True, exist_ok=True)
    build_nifti_index(r.dataset["nifti_dir"], tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "r.csv",
                      masks_dir=r.dataset["nifti_masks_dir"], min_slices=4)
    lines = adapter.get(name).derive({"name": name, "root": str(root), **ds}, tmp_path / "i.csv", tmp_path / "d")
    tables = {n: adapter.read_derived(tmp_path / "d", n) for n in ("scan_labels", "slice_labels", "scan_info",
                                                                    "patients", "excluded")}
    return lines, tables


def test_ctich_labels_subtypes_exclusion_and_mask_check(tmp_path):
    root = tmp_path / "ct-ich"
    write_ctich(root, CTICH_SCANS)
    lines, t = _derive("ctich", root, tmp_path)
    scans = dict(t["scan_labels"][["scan_id", "label"]].itertuples(index=False))
    assert scans == {"049": "1", "050": "1", "051": "1", "066": "0", "067": "0", "068": "0"}
    assert t["excluded"]["scan_id"].tolist() == ["070"] and "chronic ICH" in t["excluded"]["reason"].iloc[0]
    info = dict(t["scan_info"][["scan_id", "subtypes"]].itertuples(index=False))
    assert info["049"] == "IPH" and info["050"] == "SDH" and info["051"] == "EDH" and info["066"] == ""
    s = t["slice_labels"].set_index("sop_uid")
    assert s.loc["049#2", "hemorrhage"] == "1" and s.loc["049#1", "hemorrhage"] == "0"   # SliceNumber 3 -> #2
    assert any(line.startswith("1 slices where the masks disagree") for line in lines)
    _, t = _derive("ctich", root, tmp_path / "none", exclude={})
    assert t["excluded"].empty and "070" in set(t["scan_labels"]["scan_id"])


def test_ctich_volume_without_a_mask_is_said_in_the_log(tmp_path):
    root = tmp_path / "ct-ich"
    base = write_ctich(root, {49: dict(bleed={3}), 50: dict()})
    (base / "masks" / "049.nii").unlink()
    lines, t = _derive("ctich", root, tmp_path)
    assert any(line.startswith("1 volumes without a usable mask") and line.endswith(": 049") for line in lines)
    assert set(t["scan_labels"]["scan_id"]) == {"049", "050"}       # still labelled from the CSV


def test_ctich_old_jpeg_layout_and_missing_csv_are_refused(tmp_path):
    (tmp_path / "old" / "Patients_CT" / "049").mkdir(parents=True)
    with pytest.raises(ConfigError, match="JPEG layout of CT-ICH <= 1.2.0"):
        adapter.resolve({"name": "ctich", "root": str(tmp_path / "old")})
    base = write_ctich(tmp_path / "new", {49: dict()})
    (base / "hemorrhage_diagnosis_raw_ct.csv").unlink()
    with pytest.raises(ConfigError, match="the slice labels not found.*hemorrhage_diagnosis_raw_ct.csv"):
        adapter.resolve({"name": "ctich", "root": str(tmp_path / "new")})


def test_bhsd_subtypes_from_mask_values_patients_from_names(tmp_path):
    root = tmp_path / "bhsd"
    write_bhsd(root, BHSD_LABELLED, BHSD_ANY, BHSD_NO)
    lines, t = _derive("bhsd", root, tmp_path)
    scans = dict(t["scan_labels"][["scan_id", "label"]].itertuples(index=False))
    assert len(scans) == 7 and scans[BHSD_ANY[0]] == "1" and scans[BHSD_NO[0]] == "0"
    info = dict(t["scan_info"][["scan_id", "subtypes"]].itertuples(index=False))
    assert info["ID_0237f3c9_ID_40015688b9"] == "SDH" and info["ID_2db7ee14_ID_1111111111"] == "EDH"
    patients = dict(t["patients"][["scan_id", "patient_id"]].itertuples(index=False))
    assert patients["ID_2db7ee14_ID_2222222222"] == "ID_2db7ee14" == patients["ID_2db7ee14_ID_1111111111"]
    assert "7 scans of 6 patients" in lines[0]
    # only label_192 volumes have slice truth
    assert set(t["slice_labels"]["sop_uid"].str.split("#").str[0]) == set(BHSD_LABELLED)


def test_bhsd_files_without_suffix_and_missing_ground_truths(tmp_path):
    (tmp_path / "a" / "label_192" / "images").mkdir(parents=True)
    with pytest.raises(ConfigError, match="the masks not found.*ground truths"):
        adapter.resolve({"name": "bhsd", "root": str(tmp_path / "a")})
    (tmp_path / "a" / "label_192" / "ground truths").mkdir()
    (tmp_path / "a" / "label_192" / "images" / "ID_1_ID_2").write_bytes(b"x")
    with pytest.raises(ConfigError, match="no .nii.gz suffix"):
        adapter.resolve({"name": "bhsd", "root": str(tmp_path / "a")})


def test_instance_labels_from_masks_and_hu_check(tmp_path):
    root = tmp_path / "instance"
    write_instance(root, INSTANCE_SCANS)
    _, t = _derive("instance", root, tmp_path)
    assert dict(t["scan_labels"][["scan_id", "label"]].itertuples(index=False)) == {
        "001": "1", "002": "1", "003": "1", "004": "0", "005": "0"}
    assert t["scan_info"].empty
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(ConfigError, match="train/data"):
        adapter.resolve({"name": "instance", "root": str(tmp_path / "nothing-here")})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ctich", "bhsd", "instance"])
def test_nifti_adapter_toy_snakemake_run(name, tmp_path):
    root = tmp_path / "download"
    if name == "ctich":
        write_ctich(root, CTICH_SCANS)
        expect = {"patients": 6, "scans": 6, "pathological": 3}
    elif name == "bhsd":
        write_bhsd(root, BHSD_LABELLED, BHSD_ANY, BHSD_NO)
        expect = {"patients": 6, "scans": 7, "pathological": 4}
    else:
        write_instance(root, INSTANCE_SCANS)
        expect = {"patients": 5, "scans": 5, "pathological": 3}
    toy_dataset_run(tmp_path / "run", {"name": name, "root": str(root)})
    cohort = pd.read_csv(tmp_path / "run" / "results" / "data" / "cohort.csv").set_index("scan_class")
    assert cohort.loc["all", "patients"] == expect["patients"] and cohort.loc["all", "scans"] == expect["scans"]
    assert cohort.loc["pathological", "scans"] == expect["pathological"]
    outputs = "".join(p.read_text(errors="ignore") for p in (tmp_path / "run").rglob("*")
                      if p.is_file() and p.suffix in (".csv", ".log", ".json", ".md"))
    assert "PRIVATE-DEMOGRAPHIC" not in outputs                  # CT-ICH demographics never reach an output
    if name == "ctich":
        rejected = pd.read_csv(tmp_path / "run" / "results" / "data" / "rejected.csv", dtype=str)
        assert rejected[rejected["item"] == "070"]["reason"].str.contains("chronic ICH").all()
    if name == "bhsd":
        m = splits.read_manifest(tmp_path / "run" / "results" / "splits" / "fold-0.csv")
        assert m[m["patient_id"] == "ID_2db7ee14"]["scan_id"].nunique() == 2
        assert (m.groupby("patient_id")["part"].nunique() == 1).all()


def test_instance_volume_that_is_not_hu_is_rejected_with_the_reason(tmp_path):
    """DATASETS.md leaves open whether INSTANCE images are raw HU: a volume clipped to a window is caught by the
    readers' HU judgement, not windowed as if it were HU."""
    import nibabel as nib

    root = tmp_path / "instance"
    write_instance(root, {1: dict(bleed={3}), 2: dict()})
    path = root / "train" / "data" / "002.nii.gz"
    img = nib.load(str(path))
    clipped = np.clip(np.asanyarray(img.dataobj), 0, 80).astype(np.int16)
    nib.save(nib.Nifti1Image(clipped, img.affine, img.header), str(path))
    r = adapter.resolve({"name": "instance", "root": str(root)})
    build_nifti_index(r.dataset["nifti_dir"], tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "r.csv",
                      masks_dir=r.dataset["nifti_masks_dir"], min_slices=4)
    table = preprocess_shard(tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "s", shard=0, n_shards=1,
                             windows=PAPER_WINDOWS, size=32)
    assert table["patient_id"].tolist() == ["001"]
    rej = pd.read_csv(tmp_path / "s" / "rejected.csv")
    assert rej["reason"].str.contains("convert the volume to HU first").any()


def test_cq500_adapter_maps_onto_the_dicom_keys(tmp_path, shared_data):
    root = tmp_path / "CQ500"
    (root / "CQ500CT0 CQ500CT0").mkdir(parents=True)
    with pytest.raises(ConfigError, match="reads.csv not found"):
        adapter.resolve({"name": "cq500", "root": str(root)})
    (root / "reads.csv").write_text("name,Category,R1:ICH\n")
    with pytest.raises(ConfigError, match="CTFSH cq500_labels.csv was not found"):
        adapter.resolve({"name": "cq500", "root": str(root), "labels": "data/synthetic/cq500_labels.csv"})
    r = adapter.resolve({"name": "cq500", "root": str(root), "label_source": "reads",
                         "slice_labels": "data/synthetic/slice_labels.csv"})
    d = r.dataset
    assert (d["source"], d["dicom_dir"], d["reads"], d["labels"], d["slice_labels"]) == (
        "dicom", str(root), str(root / "reads.csv"), None, None)
    (root / "cq500_labels.csv").write_text("name;is_pathl;diagnosis;TEST;notes\n")
    d = adapter.resolve({"name": "cq500", "root": str(root)}).dataset
    assert d["label_source"] == "ctfsh" and d["labels"] == str(root / "cq500_labels.csv")
    assert d["scan_id_format"] == "CQ500-CT-{n}" and not r.derived and r.scan_key == "patient"


def test_rsna_pixel_truth_from_hemseg_masks_by_patient_coordinates(rsna_indexed, tmp_path):
    from dataset_formats import write_hemseg_mask

    root, info, out, _ = rsna_indexed
    folder = tmp_path / "HemSeg-500" / "train" / "label"
    for s in RSNA_STUDIES[:1] + RSNA_STUDIES[4:6]:          # two studies with bleeds, one tilted 0 degrees
        write_hemseg_mask(folder, s)
    write_hemseg_mask(folder, dict(study=999, bleed={1}))   # a scan this copy of RSNA does not hold
    ds = {"name": "rsna", "root": str(root), "masks": [str(tmp_path / "HemSeg-500")]}
    r = adapter.resolve(ds)
    assert r.dataset["gt_masks_dir"] == "results/data/dataset/masks" and str(tmp_path / "HemSeg-500") in r.label_files
    lines = adapter.get("rsna").derive(ds, out / "index.csv", tmp_path / "d")
    assert any("4 NIfTI masks" in line and "3 matched" in line and "(1 not)" in line for line in lines)
    table = preprocess_shard(out / "index.csv", out / "series_candidates.csv", tmp_path / "shard", shard=0,
                             n_shards=1, windows=PAPER_WINDOWS, size=32, gt_dir=str(tmp_path / "d" / "masks"))
    with_gt = table[table["has_gt"].astype(bool)].set_index("series_uid")["gt_slices"].to_dict()
    want = {info["series"][s["study"]]: len(s["bleed"]) for s in RSNA_STUDIES[:1] + RSNA_STUDIES[4:6]}
    assert with_gt == want
    slices = splits.collect_slices([tmp_path / "shard"], scan_key="study")
    labels = pd.read_csv(tmp_path / "d" / "slice_labels.csv", dtype={"sop_uid": str}).set_index("sop_uid")
    known = slices[slices["slice_truth"] >= 0]
    assert (known["slice_truth"].to_numpy() == labels.loc[known["sop_uid"], "hemorrhage"].to_numpy()).all()
    with pytest.raises(ConfigError, match="dataset.masks: .* is not a folder"):
        adapter.resolve({**ds, "masks": str(tmp_path / "nope")})


def test_bhsd_scans_that_are_rsna_scans_are_found_by_name():
    rsna_scans = ["ID_40015688b9", "ID_1111111111", "ID_9999999999"]
    bhsd_scans = ["ID_0237f3c9_ID_40015688b9", "ID_2db7ee14_ID_1111111111", "ID_2db7ee14_ID_2222222222", "odd"]
    dup = adapter.duplicates(rsna_scans, "rsna", bhsd_scans, "bhsd")
    assert dup == {"ID_0237f3c9_ID_40015688b9": "ID_40015688b9", "ID_2db7ee14_ID_1111111111": "ID_1111111111"}
    assert adapter.duplicates(rsna_scans, "rsna", ["049"], "ctich") == {}


def test_an_rsna_study_whose_series_cannot_be_cached_is_named_by_its_study(tmp_path):
    """Where a scan is a study, a series left out at caching is recorded under its study (not the PatientID), so
    the split says the files held no usable series instead of calling the scan a missing download."""
    from ichbench.inputs import rejections

    got = write_rsna(tmp_path / "rsna", [dict(patient=1, study=1, n=8, mode="int16"),
                                         dict(patient=1, study=2, n=8, mode="int16")], corrupted=False)
    bad = tmp_path / "rsna" / "stage_2_train"
    for sop in got["sops"][2]:                       # study 2: values far from CT in HU
        ds = pydicom.dcmread(bad / f"{sop}.dcm")
        ds.RescaleIntercept = 20000
        ds.save_as(bad / f"{sop}.dcm")
    data = tmp_path / "data"
    data.mkdir()
    build_index(bad, data / "index.csv", data / "series.csv", data / "rejected_index.csv", min_slices=4,
                min_extent_mm=20, scan_key="study")
    preprocess_shard(data / "index.csv", data / "series.csv", data / "cache", shard=0, n_shards=1,
                     windows=PAPER_WINDOWS, size=32)
    rejected = pd.read_csv(data / "cache" / "rejected.csv", dtype=str, keep_default_na=False)
    study2 = pd.read_csv(data / "index.csv", dtype=str).query("sop_uid in @got['sops'][2]")["study_uid"].iloc[0]
    left = rejected[rejected["reason"].str.startswith("scan left out")]
    assert list(left["item"]) == [study2]
    said = rejections.explain_unlabelled_scans(
        [(study2, "listed in the label file but no usable series was cached")], rejected)
    assert said[0][1].startswith(rejections.NO_USABLE_SERIES)
