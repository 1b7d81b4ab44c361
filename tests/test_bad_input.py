"""A corpus of broken inputs made from the synthetic data: each one is rejected with its reason in
rejected.csv, the run completes on the good ones, and no identifying header value leaks out."""
import copy
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from ichbench.inputs import series_select
from ichbench.cli import main

NEEDLES = [b"SYNTHETIC^PATIENT", b"Synthetic General Hospital", b"19600101", b"ACC0"]


def _series_files(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*.dcm")):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out.setdefault(ds.SeriesInstanceUID, []).append(p)
    return out


def _save(ds, path: Path) -> None:
    """Save under a fresh SOPInstanceUID."""
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=False)


def _copy_as_new_scan(files: list[Path], out: Path, patient_id: str, **changes) -> None:
    study, series = generate_uid(), generate_uid()
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, study, series
        for k, v in changes.items():
            setattr(ds, k, v)
        _save(ds, out / f"{i:03d}.dcm")


def _garbage_jpeg(ds, syntax="1.2.840.10008.1.2.4.70") -> None:
    """Encapsulated bytes that no codec can decode, under a compressed transfer syntax (default JPEG Lossless)."""
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(range(256)) * 8])
    ds["PixelData"].VR = "OB"


@pytest.fixture(scope="module")
def corpus(tiny_synthetic, tmp_path_factory):
    work = tmp_path_factory.mktemp("badinput")
    dicom = work / "dicom"
    shutil.copytree(tiny_synthetic / "dicom", dicom)
    series = _series_files(tiny_synthetic / "dicom")
    suid, files = sorted(series.items())[0]
    base = pydicom.dcmread(files[0])
    bad = dicom / "broken"
    expect: dict[str, str] = {}                                           # file name or scan -> reason substring

    def variant(name, change, reason):
        ds = copy.deepcopy(base)
        change(ds)
        _save(ds, bad / name)
        expect[name] = reason

    raw = files[0].read_bytes()
    bad.mkdir(parents=True)
    (bad / "truncated_header.dcm").write_bytes(raw[:700])
    expect["truncated_header.dcm"] = "truncated file"
    ds = copy.deepcopy(base)
    _save(ds, bad / "truncated_pixels.dcm")
    (bad / "truncated_pixels.dcm").write_bytes((bad / "truncated_pixels.dcm").read_bytes()[:-5000])
    expect["truncated_pixels.dcm"] = "truncated file"
    (bad / "notes.txt").write_text("not an image")
    expect["notes.txt"] = "not a DICOM file"
    (bad / "empty.dcm").write_bytes(b"")
    expect["empty.dcm"] = "empty file (0 bytes)"
    variant("no_patient_id.dcm", lambda d: delattr(d, "PatientID"), "missing patient_id")
    variant("no_position.dcm", lambda d: delattr(d, "ImagePositionPatient"), "missing ImageOrientationPatient")
    variant("mr.dcm", lambda d: setattr(d, "Modality", "MR"), "modality is MR, not CT")
    variant("localizer.dcm", lambda d: setattr(d, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "localizer")
    variant("no_pixels.dcm", lambda d: delattr(d, "PixelData"), "no pixel data")
    variant("no_rescale.dcm", lambda d: (delattr(d, "RescaleSlope"), delattr(d, "RescaleIntercept")),
            "missing RescaleSlope/RescaleIntercept")
    variant("mpeg2.dcm", lambda d: _garbage_jpeg(d, "1.2.840.10008.1.2.4.100"), "not supported by any pixel data decoder")
    variant("unknown_ts.dcm", lambda d: _garbage_jpeg(d, "1.2.3.4.5.6"), "unknown transfer syntax")
    variant("secondary_capture.dcm", lambda d: setattr(d, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"), "not a CT image")
    (dicom / "zz").mkdir()                                                # walked last: the copy is the second
    shutil.copy(files[1], dicom / "zz" / "duplicate.dcm")
    expect["duplicate.dcm"] = "duplicate SOPInstanceUID"

    # in the chosen series, but unusable when loaded: a slice of another size, a corrupt JPEG slice
    thick = float(base.SliceThickness)
    last = max(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2] for f in files)

    def odd_size(d):
        small = d.pixel_array[::2, ::2].copy()
        d.Rows, d.Columns = small.shape
        d.PixelData = small.tobytes()
        d.ImagePositionPatient = [d.ImagePositionPatient[0], d.ImagePositionPatient[1], last + 10 * thick]

    variant("mixed_size.dcm", odd_size, "image size 128x128 differs from the series' 256x256")

    def corrupt(d):
        _garbage_jpeg(d)
        d.ImagePositionPatient = [d.ImagePositionPatient[0], d.ImagePositionPatient[1], last + 20 * thick]

    variant("corrupt_jpeg.dcm", corrupt, "pixel data cannot be decoded")

    # scans: one with only a bone-kernel series, one whose every slice is corrupt, one absent from the labels
    others = [f for u, f in sorted(series.items()) if u != suid]
    _copy_as_new_scan(others[0], dicom / "bonescan", "BAD-BONE", ConvolutionKernel="BONE")
    expect["BAD-BONE"] = "no usable series"
    _copy_as_new_scan(others[1], dicom / "extra", "SYN-CT-EXTRA")
    expect["SYN-CT-EXTRA"] = "no label in the label file"
    for i, f in enumerate(others[2]):
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "BAD-CORRUPT", "1.2.3.9", "1.2.3.9.1"
        _garbage_jpeg(ds)
        _save(ds, dicom / "corrupt" / f"{i:03d}.dcm")
    expect["BAD-CORRUPT"] = "could not be loaded"

    labels = work / "labels.csv"
    labels.write_text((tiny_synthetic / "cq500_labels.csv").read_text().rstrip("\n") + "\nCT_999;1;IPH;0;\n"
                      "CT_998;0;HEALTHY;0;\n")
    expect["SYN-CT-999"] = "missing download"
    # a labelled scan whose files exist but are all localizers: not a missing download
    for i, f in enumerate(others[3]):
        ds = pydicom.dcmread(f)
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SYN-CT-998", "1.2.3.8", "1.2.3.8.1"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        _save(ds, dicom / "scouts" / f"{i:03d}.dcm")
    expect["SYN-CT-998"] = "its files were found, but they hold no usable series: no eligible series (1.2.3.8.1: all"

    # the run, through the CLI functions, collecting the log
    out = work / "results"
    logs = []
    handler = logging.Handler()
    handler.emit = lambda rec: logs.append(rec.getMessage())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        rcs = [
            main(["index", "--dicom-dir", str(dicom), "--out", str(out / "data")]),
            main(["preprocess", "--data", str(out / "data"), "--out", str(out / "data" / "cache" / "shard-0"),
                  "--size", "64"]),
            main(["split", "--shards", str(out / "data" / "cache" / "shard-0"), "--labels", str(labels),
                  "--scan-id-format", "SYN-CT-{n}", "--n-folds", "3", "--out", str(out / "splits"),
                  "--cohort", str(out / "data" / "cohort.csv"),
                  "--rejected-in", str(out / "data" / "rejected_index.csv"),
                  str(out / "data" / "cache" / "shard-0" / "rejected.csv"),
                  "--rejected-out", str(out / "data" / "rejected.csv"),
                  "--boxes-out", str(out / "data" / "boxes.csv")]),
        ]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return {"work": work, "out": out, "rcs": rcs, "expect": expect, "logs": logs, "good_series": suid,
            "n_good_files": len(files), "n_scouts": len(others[3])}


def test_run_completes_on_the_good_scans(corpus):
    assert corpus["rcs"] == [0, 0, 0]
    out = corpus["out"]
    cohort = pd.read_csv(out / "data" / "cohort.csv").set_index("scan_class")
    assert cohort.loc["normal", "patients"] == 3 and cohort.loc["pathological", "patients"] == 3
    assert (cohort["protocol"] == "paper").all()
    for k in range(3):
        m = pd.read_csv(out / "splits" / f"fold-{k}.csv", dtype={"patient_id": str})
        assert set(m["protocol"]) == {"paper"}
        assert not set(m["patient_id"]) & {"BAD-BONE", "BAD-CORRUPT", "SYN-CT-EXTRA"}


def test_every_broken_input_is_in_rejected_csv_with_its_reason(corpus):
    rej = pd.read_csv(corpus["out"] / "data" / "rejected.csv", dtype=str, keep_default_na=False)
    assert list(rej.columns) == ["stage", "item", "reason", "patient_id", "series_uid"]
    for name, reason in corpus["expect"].items():
        rows = rej[rej["item"].map(lambda s: s == name or Path(s).name == name)]
        assert len(rows), f"{name} is not in rejected.csv"
        assert rows["reason"].str.contains(reason, regex=False).any(), f"{name}: {rows['reason'].tolist()}"
    # files carry the scan their header names, where it can be read
    by_name = rej.assign(name=rej["item"].map(lambda s: Path(s).name)).set_index("name")
    assert by_name.loc["localizer.dcm", "patient_id"] == by_name.loc["mr.dcm", "patient_id"] != ""
    assert by_name.loc["empty.dcm", "patient_id"] == ""


def test_log_has_one_line_per_rejection_reason_with_a_count(corpus):
    skipped = [line for line in corpus["logs"] if line.startswith("skipped ")]
    assert len(skipped) == len(set(skipped))
    n = corpus["n_scouts"] + 1                      # localizer.dcm + the files of SYN-CT-998
    assert f"skipped {n} files: localizer / scout image (e.g. " in "\n".join(skipped)
    text = "\n".join(skipped)
    for reason in corpus["expect"].values():
        assert reason in text, reason
    assert not [line for line in corpus["logs"] if "scouts" in line and "localizer" in line and "e.g." not in line]


def test_scan_without_eligible_series_is_in_series_candidates_with_why(corpus):
    cand = pd.read_csv(corpus["out"] / "data" / "series_candidates.csv", dtype=str, keep_default_na=False)
    rows = cand[cand["patient_id"] == "SYN-CT-998"]
    assert len(rows) == 1 and rows["series_uid"].iloc[0] == "1.2.3.8.1"
    assert rows["eligible"].iloc[0] == "False" and rows["selected"].iloc[0] == "False"
    n = corpus["n_scouts"]
    assert n == 10 and rows["why_not"].iloc[0] == f"all {n} files rejected ({n} x localizer / scout image)"
    assert rows["choice"].iloc[0].startswith(f"no eligible series (1.2.3.8.1: all {n} files rejected")


def test_bad_slices_are_dropped_and_no_partial_npz(corpus):
    cache = corpus["out"] / "data" / "cache" / "shard-0"
    assert not list(cache.glob("*partial*"))
    table = pd.read_csv(cache / "series.csv", dtype={"series_uid": str, "patient_id": str})
    assert "BAD-CORRUPT" not in set(table["patient_id"])
    assert not (cache / "1.2.3.9.1.npz").exists()
    row = table[table["series_uid"] == corpus["good_series"]].iloc[0]
    assert row["n_slices"] == corpus["n_good_files"] and row["rejected_slices"] == 2
    for npz in cache.glob("*.npz"):
        with np.load(npz) as z:
            assert z["images"].shape[0] == len(z["sop_uids"])


def test_no_identifying_values_in_any_output_or_log(corpus):
    files = [p for p in corpus["out"].rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        blob = p.read_bytes()
        for n in NEEDLES:
            assert n not in blob, f"{n!r} in {p}"
    text = "\n".join(corpus["logs"]).encode()
    for n in NEEDLES:
        assert n not in text


def test_nothing_usable_is_a_nonzero_exit(corpus, tmp_path, capsys):
    only_bad = tmp_path / "bad"
    shutil.copytree(corpus["work"] / "dicom" / "broken", only_bad)
    for p in only_bad.iterdir():
        if p.name in ("mixed_size.dcm", "corrupt_jpeg.dcm"):
            p.unlink()
    rc = main(["index", "--dicom-dir", str(only_bad), "--out", str(tmp_path / "o")])
    assert rc == 1 and "no usable CT image" in capsys.readouterr().err
    labels = tmp_path / "absent.csv"
    labels.write_text("name;is_pathl;diagnosis;TEST;notes\nCT_998;0;HEALTHY;0;\nCT_999;1;IPH;0;\n")
    out = corpus["out"]
    rc = main(["split", "--shards", str(out / "data" / "cache" / "shard-0"), "--labels", str(labels),
               "--scan-id-format", "SYN-CT-{n}", "--n-folds", "3", "--out", str(tmp_path / "splits"),
               "--cohort", str(tmp_path / "cohort.csv"), "--rejected-out", str(tmp_path / "rejected.csv")])
    assert rc == 1 and "no scan has both a usable series and a label" in capsys.readouterr().err
    rej = pd.read_csv(tmp_path / "rejected.csv", dtype=str)
    assert {"SYN-CT-998", "SYN-CT-999"} <= set(rej["item"])


def test_series_override_and_bone_rules(corpus, tmp_path):
    data = corpus["out"] / "data"
    cand = pd.read_csv(data / "series_candidates.csv", dtype=str, keep_default_na=False)
    bone = cand[cand["patient_id"] == "BAD-BONE"].iloc[0]
    assert bone["why_not"] == "bone kernel"
    override = tmp_path / "override.csv"
    override.write_text(f"patient_id,series_uid\nBAD-BONE,{bone['series_uid']}\nSYN-CT-EXTRA,-\nNOBODY,1.2.3\n")
    rc = main(["index", "--dicom-dir", str(corpus["work"] / "dicom"), "--out", str(tmp_path / "o"),
               "--series-override", str(override)])
    assert rc == 0
    sel = pd.read_csv(tmp_path / "o" / "series_selected.csv", dtype=str, keep_default_na=False).set_index("patient_id")
    assert sel.loc["BAD-BONE", "series_uid"] == bone["series_uid"]
    assert sel.loc["BAD-BONE", "choice"].startswith("series_override")
    assert sel.loc["SYN-CT-EXTRA", "series_uid"] == "" and "excluded" in sel.loc["SYN-CT-EXTRA", "choice"]
    rej = pd.read_csv(tmp_path / "o" / "rejected_index.csv", dtype=str)
    assert "NOBODY" in set(rej["item"])


@pytest.mark.parametrize("kernel,description,bone", [
    ("STANDARD", "PLAIN THIN", False), ("STANDARD", "CT PLAIN THIN", False), ("BONE", "BONE THIN", True),
    ("BONEPLUS", "", True), ("STANDARD", "CT 5mm BONE", True), ("H30s", "", False), ("H70h", "", True),
    ("Hr38\\3", "", False), ("Br64\\3", "", True), ("J70h", "", True), ("FC23", "", False), ("FC30", "", True),
    ("UB", "STD BRAIN 5MM", False), ("D", "", True), ("LUNG", "", True), ("STD+", "", False),
    ("DETAIL", "Head 5mm", False), ("EDGE", "", True), ("SOFT", "", False), ("", "", False),
])
def test_bone_kernel_rules(kernel, description, bone):
    assert series_select.is_bone_kernel(kernel, description) is bone


def test_bone_patterns_extend_the_rules():
    assert series_select.is_bone_kernel("XYZ9", "") is False
    assert series_select.is_bone_kernel("XYZ9", "", extra_patterns=[r"^XYZ\d"]) is True
