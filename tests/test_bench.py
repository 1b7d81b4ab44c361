"""`ichbench bench` at a tiny size: it runs end to end and writes the documented CSV."""
from __future__ import annotations

import csv

import pytest

from ichbench import bench
from ichbench.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_writes_the_csv(tmp_path):
    out = tmp_path / "bench.csv"
    assert main(["bench", "--out", str(out), "--size", "32", "--batch", "4", "--seconds", "0.05",
                 "--workers", "0", "--device", "cpu", "AE", "CutPaste"]) == 0
    with open(out) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.COLUMNS
        rows = list(reader)
    assert [r["row"] for r in rows] == ["AE", "CutPaste", "Table 1"]
    ae, cp, total = rows
    for r in (ae, cp):
        assert r["error"] == ""
        assert float(r["ours_img_s"]) > 0 and float(r["bare_img_s"]) > 0
        assert float(r["ours_vs_bare"]) == pytest.approx(float(r["ours_img_s"]) / float(r["bare_img_s"]), rel=1e-3)
    assert ae["reference_img_s"] == "" and ae["gen_cpu_img_s"] == ""          # no generator in a reconstruction row
    for key in ("reference_img_s", "gen_cpu_img_s", "gen_device_img_s", "device_gen_img_s"):
        assert float(cp[key]) > 0
    assert int(ae["job_images"]) == 19_000 * 250
    # the projection: 5 folds of each row's job, one job at a time
    assert float(total["table1_hours"]) == pytest.approx(5 * (float(ae["job_hours"]) + float(cp["job_hours"])),
                                                         rel=2e-3)


def test_bench_names_an_unknown_row(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "b.csv"), "--size", "32", "--batch", "2", "NoSuchRow"]) == 1
    assert "unknown row(s) ['NoSuchRow']" in capsys.readouterr().err
