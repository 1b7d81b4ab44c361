"""`ichbench bench` at a tiny size: it runs end to end and writes the documented CSV."""
from __future__ import annotations

import csv

import pytest

from ichbench.bench import throughput as bench
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
        assert float(r["ours_vs_bare_cpu"]) > 0                               # CPU seconds, bare / ours
    assert ae["reference_img_s"] == "" and ae["gen_cpu_img_s"] == ""          # no generator in a reconstruction row
    assert ae["bare_synth_img_s"] == "" and float(cp["bare_synth_img_s"]) > 0  # the fair bare loop makes its batch
    assert float(cp["ours_vs_bare_synth"]) == pytest.approx(float(cp["ours_img_s"]) / float(cp["bare_synth_img_s"]),
                                                            rel=1e-3)
    for key in ("reference_img_s", "gen_cpu_img_s", "gen_device_img_s", "device_gen_img_s"):
        assert float(cp[key]) > 0
    assert int(ae["job_images"]) == 19_000 * 250
    # the projection: 5 folds of each row's job, one job at a time
    assert float(total["table1_hours"]) == pytest.approx(5 * (float(ae["job_hours"]) + float(cp["job_hours"])),
                                                         rel=2e-3)
    # the floor columns: FLOPs counted at the recipe's 128 px; a CPU's peak is unknown, so no floor hours
    assert float(ae["train_gflop_per_image"]) == pytest.approx(0.3336, abs=1e-4)
    assert float(cp["train_gflop_per_image"]) == pytest.approx(3.577, abs=1e-3)
    for r in (ae, cp):
        assert float(r["recipe_eflop"]) > 0 and float(r["achieved_tflops"]) > 0
        assert r["floor_hours"] == "" and "peak unknown" in r["floor_note"]
    assert float(total["recipe_eflop"]) == pytest.approx(float(ae["recipe_eflop"]) + float(cp["recipe_eflop"]),
                                                         rel=2e-3)


def test_bench_names_an_unknown_row(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "b.csv"), "--size", "32", "--batch", "2", "NoSuchRow"]) == 1
    assert "unknown row(s) ['NoSuchRow']" in capsys.readouterr().err


def test_concurrent_training_processes_on_one_device(tmp_path):
    """`--concurrent 1,2` at a tiny size on the CPU: one CSV row per level, rates > 0, speedup of 1 = 1."""
    out = tmp_path / "bench.csv"
    assert main(["bench", "--out", str(out), "--size", "32", "--batch", "4", "--device", "cpu",
                 "--concurrent", "1,2", "--concurrent-seconds", "0.2", "--concurrent-only"]) == 0
    assert not out.exists()                                   # --concurrent-only: no per-row table
    from ichbench.bench.concurrent import COLUMNS
    with open(tmp_path / "bench-concurrent.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert [int(r["processes"]) for r in rows] == [1, 2]
    for r in rows:
        assert r["error"] == "" and r["row"] == "AE" and r["device"] == "cpu" and r["threads"] == "1"
        assert float(r["img_s_total"]) > 0
        assert float(r["img_s_per_process"]) == pytest.approx(float(r["img_s_total"]) / int(r["processes"]),
                                                              rel=1e-3)
    assert float(rows[0]["speedup_vs_1"]) == 1.0
    assert float(rows[1]["speedup_vs_1"]) == pytest.approx(float(rows[1]["img_s_total"]) /
                                                           float(rows[0]["img_s_total"]), rel=2e-3)


@pytest.mark.parametrize("text", ["0", "1,x", ""])
def test_concurrent_levels_must_be_positive_counts(text):
    from ichbench.bench.concurrent import parse_levels
    with pytest.raises(ValueError, match="process counts"):
        parse_levels(text)


def test_concurrent_reports_a_failing_process(tmp_path):
    from ichbench.bench.concurrent import run_level
    r = run_level(1, row="NoSuchRow", device="cpu", size=32, batch=2, seconds=0.1, threads=1)
    assert r["img_s_total"] is None and "NoSuchRow" in r["error"]
