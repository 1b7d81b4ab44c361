"""`ichbench bench-scale` at a tiny size, both layouts: every stage measured, growth and projection, files in --out;
and the RSNA-layout synthetic writer's files (22 stripped elements, ID_ names, six label rows a slice)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pydicom
import pytest

from ichbench.bench import scale, scale_report
from ichbench.cli import main
from ichbench.errors import ConfigError
from ichbench.synthetic import SyntheticConfig
from ichbench.synthetic.rsna import generate_rsna

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # RSNA's ID_ UIDs

PIPELINE = ["index", "preprocess", "split", "train", "score", "aggregate"]
RSNA_ELEMENTS = {"SOPInstanceUID", "Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "StudyID",
                 "ImagePositionPatient", "ImageOrientationPatient", "SamplesPerPixel", "PhotometricInterpretation",
                 "Rows", "Columns", "PixelSpacing", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                 "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "PixelData"}


def _check_stage_rows(rows, stages, sizes):
    assert [(r["size"], r["stage"]) for r in rows] == [(n, s) for n in sizes for s in ["write", *stages]]
    for r in rows:
        assert r["items"] > 0 and r["wall_s"] > 0 and r["cpu_s"] > 0, r
        assert r["per_core_per_s"] == pytest.approx(r["items"] / r["cpu_s"])
        if r["stage"] != "write":                      # a child process: its own peak memory
            assert 50 < r["peak_rss_mib"] < 8000, r


def test_bench_scale_cq500_two_sizes(tmp_path, monkeypatch, capsys):
    """The data stages only (--until split: no torch start-up, to keep the test short); the RSNA test runs all."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["bench-scale", "--layout", "cq500", "--sizes", "195,130", "--slices-per-scan", "13",
                 "--image-size", "128", "--until", "split", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PROJECTION (not measured) to CQ500" in printed and "| preprocess |" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]        # nothing written outside --out
    # the cohorts and results are removed, the logs and the tables stay
    assert sorted(p.name for p in out.iterdir()) == ["bench-scale-cq500.csv", "bench-scale-cq500.json",
                                                    "bench-scale-cq500.md", "cq500-130", "cq500-195"]
    assert sorted(p.name for p in (out / "cq500-130").iterdir()) == ["logs"]
    got = json.loads((out / "bench-scale-cq500.json").read_text())
    data = PIPELINE[:3]
    _check_stage_rows(got["rows"], data, [130, 195])
    small = {r["stage"]: r for r in got["rows"] if r["size"] == 130}
    assert small["index"]["unit"] == "files" and small["index"]["items"] > 2 * small["preprocess"]["items"]
    assert [g["stage"] for g in got["growth"]] == ["write", *data]
    assert all(g["items_ratio"] > 1 and g["cpu_ratio"] > 0 for g in got["growth"])
    proj = got["projection"]
    assert [p["stage"] for p in proj] == [*data, "all (one after the other)"]
    assert proj[0]["items"] == 190_000 and proj[1]["items"] == 88_808
    assert all(p["cpu_h"] > 0 and p["wall_h_16_cores"] > 0 for p in proj)
    with open(out / "bench-scale-cq500.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 * 4 and tuple(table[0]) == scale_report.COLUMNS


def test_bench_scale_rsna_layout(tmp_path):
    rows = scale.run_size("rsna", 130, tmp_path, slices_per_scan=(13, 13), image_size=128, keep=True)
    _check_stage_rows(rows, ["index", "labels", *PIPELINE[1:]], [130])
    assert rows[-3]["items"] < rows[3]["items"]                         # train: fold 0's training part only
    root = tmp_path / "rsna-130"
    files = sorted((root / "cohort" / "stage_2_train").iterdir())
    assert len(files) == rows[0]["files"] == 130
    assert (root / "results" / "table1.csv").is_file()
    # the index saw one scan per study, no rejection: every written slice reaches the cohort
    with open(root / "results" / "data" / "cohort.csv", newline="") as fh:
        classes = {r["scan_class"]: int(r["slices"]) for r in csv.DictReader(fh)}
    assert classes["normal"] + classes["pathological"] == 130


def test_rsna_writer(tmp_path):
    got = generate_rsna(tmp_path, SyntheticConfig(n_normal=1, n_pathological=1, image_size=128, n_slices=(13, 13)))
    files = sorted((tmp_path / "stage_2_train").iterdir())
    assert got["n_files"] == got["n_slices"] == len(files) == 26
    ds = pydicom.dcmread(files[0])
    assert {e.keyword for e in ds} == RSNA_ELEMENTS                   # no names, dates, institution
    assert files[0].stem == ds.SOPInstanceUID and len(ds.SOPInstanceUID) == 12
    assert ds.SOPInstanceUID.startswith("ID_") and len(ds.PatientID) == 11 and len(ds.StudyInstanceUID) == 13
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() < -900 and hu.max() > 500                          # air and skull
    lines = (tmp_path / "stage_2_train.csv").read_text().splitlines()
    assert lines[0] == "ID,Label" and len(lines) == 1 + 6 * 26
    any_pos = {line.split(",")[0][:-4] for line in lines[1:] if line.endswith("_any,1")}
    assert 0 < len(any_pos) == got["n_hemorrhage_slices"] < 13       # only the pathological scan bleeds
    assert len({pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}) == 2


def test_options_are_checked():
    with pytest.raises(ConfigError, match="--sizes"):
        scale.parse_sizes("100,x")
    with pytest.raises(ConfigError, match="at least 130 slices"):
        scale.parse_sizes("100,1000", (13, 20))
    assert scale.parse_sizes("5000,2000,2000") == [2000, 5000]
    assert scale.parse_slices_per_scan("20") == (20, 20)
    with pytest.raises(ConfigError, match="--slices-per-scan"):
        scale.parse_slices_per_scan("8,10")
    with pytest.raises(ConfigError, match="--until"):
        scale.run_size("rsna", 1000, "unused", until="report")
    with pytest.raises(ConfigError, match="--layout"):
        scale.run_scale("nifti", [1000], "unused")


def _row(size, stage, items, cpu, files=None):
    return {"layout": "rsna", "size": size, "stage": stage, "items": items, "unit": "slices", "wall_s": cpu,
            "cpu_s": cpu, "peak_rss_mib": 100.0, "slices": size, "files": files or size,
            "per_core_per_s": items / cpu}


def test_growth_and_projection_arithmetic():
    # 2 s of start-up + 10 ms a slice: linear growth, and the fit recovers both parts
    rows = [_row(1000, "split", 1000, 12.0), _row(4000, "split", 4000, 42.0),
            _row(1000, "preprocess", 1000, 10.0), _row(4000, "preprocess", 4000, 10.0)]
    g = {x["stage"]: x for x in scale_report.growth(rows)}
    assert g["split"]["items_ratio"] == 4 and g["split"]["cpu_ratio"] == pytest.approx(3.5)
    assert g["split"]["cpu_growth"] == pytest.approx(0.875)
    p = {x["stage"]: x for x in scale_report.projection(rows)}
    assert p["split"]["fixed_cpu_s"] == pytest.approx(2.0) and p["split"]["marginal_per_core_per_s"] == 100
    assert p["split"]["cpu_h"] == pytest.approx((2 + 752_803 * 0.01) / 3600)
    assert p["split"]["wall_h_16_cores"] == p["split"]["cpu_h"]          # one process
    # no growth measured (noise): the largest size's per-core rate, spread over 16 cores
    assert math.isnan(p["preprocess"]["marginal_per_core_per_s"])
    assert p["preprocess"]["wall_h_16_cores"] == pytest.approx(752_803 / 400 / 3600 / 16)
    assert p["all (one after the other)"]["wall_h_16_cores"] == pytest.approx(
        p["split"]["wall_h_16_cores"] + p["preprocess"]["wall_h_16_cores"])
