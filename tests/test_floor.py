"""The arithmetic floor (`ichbench.bench.floor`): the counter against hand-computed FLOPs, every row counted,
the recipe arithmetic and the device peaks."""
from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from ichbench.bench import floor
from ichbench.bench import throughput as bench
from ichbench.cli import main
from ichbench.methods import REGISTRY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def conv_flops(k: int, cin: int, cout: int, h: int, w: int) -> int:
    """A convolution's forward FLOPs: one multiply and one add per weight and output pixel."""
    return 2 * k * k * cin * cout * h * w


def test_the_counter_gives_a_conv_layers_analytic_figure():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 16, 16)
    fwd = 2 * conv_flops(3, 3, 8, 16, 16)                   # batch 2
    f, _ = floor.count(conv, x)
    assert (f.conv, f.matmul) == (fwd, 0)
    f, _ = floor.count(lambda: conv(x).sum().backward())     # + weight gradient, no input gradient
    assert f.conv == 2 * fwd
    x.requires_grad_(True)
    f, _ = floor.count(lambda: conv(x).sum().backward())     # + input gradient
    assert f.conv == 3 * fwd
    lin = nn.Linear(10, 4)
    f, _ = floor.count(lin, torch.randn(5, 10))
    assert (f.conv, f.matmul) == (0, 2 * 10 * 4 * 5)


def test_the_autoencoders_step_is_three_passes_less_the_first_layers_input_gradient():
    """AE at 32 px by hand: 4 strided convs, the dense bottleneck, 4 transposed convs (METHODS.md)."""
    s = 32
    convs = [conv_flops(4, 3, 16, s // 2, s // 2), conv_flops(4, 16, 32, s // 4, s // 4),
             conv_flops(4, 32, 64, s // 8, s // 8), conv_flops(4, 64, 64, s // 16, s // 16),
             # a transposed conv costs 2 k^2 cin cout per input pixel
             conv_flops(4, 64, 64, s // 16, s // 16), conv_flops(4, 64, 32, s // 8, s // 8),
             conv_flops(4, 32, 16, s // 4, s // 4), conv_flops(4, 16, 3, s // 2, s // 2)]
    feat = 64 * (s // 16) ** 2
    dense = 2 * (feat * 1024 + 1024 * 16 + 16 * 1024 + 1024 * feat)
    f = floor.count_row("AE", s)
    assert f.score.total == sum(convs) + dense               # scoring: one forward
    assert f.train.conv == 3 * sum(convs) - convs[0]
    assert f.train.matmul == 3 * dense
    assert f.frozen.total == 0 and f.synth.total == 0 and f.fit.total == 0


def test_ae_pl_counts_its_frozen_vgg_apart():
    """VGG-19 to relu4_2: a forward on x, one on the reconstruction and its input-gradient backward = 3 forwards."""
    s = 32
    layers = [(3, 64, s), (64, 64, s), (64, 128, s // 2), (128, 128, s // 2), (128, 256, s // 4)] + \
        [(256, 256, s // 4)] * 3 + [(256, 512, s // 8), (512, 512, s // 8)]
    vgg = sum(conv_flops(3, a, b, h, h) for a, b, h in layers)
    pl, ae = floor.count_row("AE-PL", s), floor.count_row("AE", s)
    assert pl.frozen.total == 3 * vgg
    assert pl.train == ae.train                               # the autoencoder itself, as the AE row's
    assert pl.score.total == ae.score.total + 2 * vgg


def test_the_unet_is_fully_convolutional_and_costs_72_gflop_at_128():
    """The DAE's FLOPs scale with the area (checked once at 32 -> 64 px), so 64 px gives the 128 px figure / 4."""
    f32, f64 = floor.count_row("DAE", 32), floor.count_row("DAE", 64)
    assert f64.train.total == 4 * f32.train.total
    assert 4 * f64.train.total / 1e9 == pytest.approx(72.2, abs=0.05)      # issue 24's 72 GFLOP per image


def test_every_registered_row_is_in_the_floor_table(tmp_path):
    out = tmp_path / "floor.csv"
    assert main(["floor", "--out", str(out), "--size", "32", "--peak-tflops", "2"]) == 0
    with open(out) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == floor.FLOOR_COLUMNS
        rows = list(reader)
    assert [r["row"] for r in rows] == list(REGISTRY) + ["Table 1"]
    *per_row, total = rows
    for r in per_row:
        assert float(r["train_gflop_per_image"]) > 0 and float(r["score_gflop_per_image"]) > 0, r["row"]
        assert (float(r["frozen_gflop_per_image"]) > 0) == (r["row"] == "AE-PL"), r["row"]
        assert (float(r["fit_gflop_per_image"]) > 0) == (r["row"] in bench.TWO_STAGE), r["row"]
        # one peak for every FLOP: hours = FLOPs / peak
        assert float(r["floor_hours"]) == pytest.approx(float(r["recipe_eflop"]) * 1e18 / 2e12 / 3600, rel=2e-3)
    # the Poisson rows' synthesis is matrix products, counted apart: their step's networks cost FPI's
    by = {r["row"]: r for r in per_row}
    for n in ("NSA", "NSA-Intensity", "FPI-Poisson"):
        assert float(by[n]["synth_gflop_per_image"]) > 0, n
        assert by[n]["train_gflop_per_image"] == by["FPI"]["train_gflop_per_image"], n
    assert float(by["FPI"]["synth_gflop_per_image"]) == 0
    # the two-stage rows' step runs the ResNet on the batch and on its augmented copy: 2 images per slice
    one, two = (next(r for r in per_row if r["row"] == n) for n in ("CutPaste", "CutPaste-2stage"))
    assert int(two["job_images"]) == 25_600 * 64 and int(one["job_images"]) == 19_000 * 250
    assert float(total["recipe_eflop"]) == pytest.approx(sum(float(r["recipe_eflop"]) for r in per_row), rel=2e-3)
    assert float(total["floor_hours"]) == pytest.approx(sum(float(r["floor_hours"]) for r in per_row), rel=2e-3)


def test_recipe_flops_add_folds_jobs_fit_and_scoring():
    f = floor.RowFlops("CutPaste-2stage", 128, train=floor.Flops(10.0, 1.0), frozen=floor.Flops(), synth=floor.Flops(5.0),
                       fit=floor.Flops(2.0), score=floor.Flops(3.0))
    got = floor.recipe_flops(f)
    assert got.total == 5 * (25_600 * 64 * 11.0 + 19_000 * 2.0) + 88_808 * 3.0      # synthesis left out
    assert got.matmul == 5 * 25_600 * 64 * 1.0


def test_device_peaks_and_floor_seconds():
    cpu = torch.device("cpu")
    peaks, why = floor.resolve_peaks(cpu, "fp32", None)
    assert peaks is None and "--peak-tflops" in why
    assert floor.resolve_peaks(cpu, "fp32", 3.0)[0] == (3.0, 3.0)
    with pytest.raises(ValueError, match="positive"):
        floor.resolve_peaks(cpu, "fp32", 0.0)
    # fp32: convolutions in TF32 (cuDNN's default), matrix products in FP32 (torch's default)
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert floor.resolve_peaks(cpu, "fp32", None, gpu="NVIDIA H200")[0] == (494.5, 67.0)
    assert floor.resolve_peaks(cpu, "bf16", None, gpu="NVIDIA H200")[0] == (989.5, 989.5)
    assert floor.resolve_peaks(cpu, "fp32", None, gpu="NVIDIA H200 NVL")[0] == (417.5, 60.0)
    peaks, why = floor.resolve_peaks(cpu, "fp32", None, gpu="Some GPU 9000")
    assert peaks is None and "Some GPU 9000" in why
    assert floor.floor_seconds(floor.Flops(494.5e12, 67e12), (494.5, 67.0)) == pytest.approx(2.0)
    assert floor.effective_peak(floor.Flops(494.5e12, 67e12), (494.5, 67.0)) == pytest.approx(561.5 / 2)


def test_bench_floor_columns_of_a_timed_row():
    """`add_floor` on a timed row: the recipe's FLOPs at the recipe size, achieved FLOP/s at the bench's."""
    recipe = {**floor.RECIPE, "size": 32}
    r = {"row": "AE", "size": 32, "precision": "fp32", "job_hours": 10.0, "best_img_s": 100.0}
    bench.add_floor(r, torch.device("cpu"), recipe, 1.0)
    f = floor.row_flops("AE", 32, "cpu")
    assert r["recipe_eflop"] == pytest.approx(floor.recipe_flops(f, recipe).total / 1e18)
    assert r["floor_hours"] == pytest.approx(r["recipe_eflop"] * 1e18 / 1e12 / 3600)
    assert r["vs_floor"] == pytest.approx(5 * 10.0 / r["floor_hours"])
    assert r["achieved_tflops"] == pytest.approx(100.0 * f.step.total / 1e12)
    assert r["achieved_vs_peak"] == pytest.approx(r["achieved_tflops"] / 1.0)
    cpu_row = {"row": "AE", "size": 32, "precision": "fp32", "job_hours": 10.0, "best_img_s": 100.0}
    bench.add_floor(cpu_row, torch.device("cpu"), recipe, None)          # a CPU's peak is unknown
    assert "floor_hours" not in cpu_row and "peak unknown" in cpu_row["floor_note"]
    assert cpu_row["achieved_tflops"] == pytest.approx(r["achieved_tflops"])


def test_floor_names_an_unknown_row(tmp_path, capsys):
    assert main(["floor", "--out", str(tmp_path / "f.csv"), "--size", "32", "NoSuchRow"]) == 1
    assert "unknown row(s) ['NoSuchRow']" in capsys.readouterr().err
