"""The arithmetic floor of the paper recipe: every row's FLOPs per image, counted, and the time they need at a
device's peak.

    ichbench floor --out results/floor.csv --gpu "NVIDIA H200"        # per-row FLOPs, recipe EFLOP, floor hours

Counting: `torch.utils.flop_counter.FlopCounterMode` around one call of the row's own `training_step` on two
toy head slices (so whatever the step runs is counted: GANomaly's generator and discriminator steps, the
two-stage rows' ResNet-18 on the batch and its augmented copy, the Constrained AE's second encoder pass),
divided by the slices the step was given. The counter counts matrix products and convolutions, forward and
backward (a backward computes only the gradients autograd needs: no input gradient for the first layer of a
network fed the data, no weight gradients for frozen weights). Three parts are kept apart:

- `train`: the row's own networks, forward and backward, with the arithmetic of its loss (AE-SSIM's
  Gaussian windows, 4 % of its step);
- `frozen`: networks the row holds beside `self.model` (AE-PL's VGG-19 up to relu4_2): the forward on x,
  the forward on the reconstruction and its input-gradient backward, attributed through the counter's module
  tracker;
- `synth`: the synthetic anomalies (the device generators' Poisson solver is matrix products), counted
  apart by a second counter around `synthesise` and left out of the floor.

The self-supervised rows count with `synthesis: device`, as on a GPU: the two-stage rows then keep the whole
augmented copy in the batch (the CPU path drops copies identical to their original). `fit` is the two-stage
rows' `fit_end` (one forward per training slice) and `score` a call of `score` (AE-Grad's and the two-stage
rows' scores include a backward), both per slice. FLOPs do not depend on the device, the precision or the
batch; they are counted in float32 on the device given (the CPU by default).

The floor of a row: its recipe FLOPs (folds x (job images x (train + frozen) + training slices x fit) + scored
slices x score) at the device's peak for its precision. With `precision: fp32` PyTorch runs convolutions on
the tensor cores in TF32 (`torch.backends.cudnn.allow_tf32`, on by default) and matrix products in full FP32
(`torch.backends.cuda.matmul.allow_tf32`, off by default), so the two parts are timed at the two peaks as
these flags stand; `bf16` autocast runs both at the BF16 peak. `peak_tflops` replaces the table by one
figure for every FLOP. A CPU's peak is unknown unless given.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..methods import REGISTRY
from ..synthetic.toy import toy_head_slices

#: the paper recipe as the bench uses it (`throughput.run_bench`'s defaults, METHODS.md): 5 folds of 19,000
#: training slices x 250 epochs; the two-stage rows 100 epochs of 256 steps at batch 64
RECIPE = {"folds": 5, "slices": 19_000, "epochs": 250, "two_stage_steps": 25_600, "two_stage_batch": 64,
          # every slice of the paper's CQ500 cohort is a test slice of one fold (validation scoring left out)
          "scored_slices": 88_808, "size": 128}

#: dense peaks (no 2:4 sparsity) in TFLOP/s: the vendor datasheets' figures, which NVIDIA states "with
#: sparsity" for the tensor-core formats, halved. Not fetched here (no vendor page in reach): H100/H200 SXM
#: figures cross-checked against https://glennklockwood.com/garden/processors/h100 (TF32 494.7, BF16 989.4,
#: FP32 66.9 dense; the H200 is the H100's GH100 with more memory). Matched by substring of the CUDA device
#: name, first match wins.
DEVICE_PEAKS: list[tuple[str, dict[str, float], str]] = [
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
     "NVIDIA H200 NVL datasheet: FP32 60, TF32 835*, BF16 1,671* (*sparse) TFLOPS; assumed, not fetched"),
    ("H200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
     "NVIDIA H200 SXM datasheet: FP32 67, TF32 989*, BF16 1,979* (*sparse) TFLOPS; assumed, not fetched"),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
     "NVIDIA H100 NVL datasheet: FP32 60, TF32 835*, BF16 1,671* (*sparse) TFLOPS; assumed, not fetched"),
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0},
     "NVIDIA H100 PCIe datasheet: FP32 51, TF32 756*, BF16 1,513* (*sparse) TFLOPS; assumed, not fetched"),
    ("H100", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
     "NVIDIA H100 SXM datasheet: FP32 67, TF32 989*, BF16 1,979* (*sparse) TFLOPS; assumed, not fetched"),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
     "NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312*), BF16 312 (624*) TFLOPS; assumed, not fetched"),
]


@dataclasses.dataclass(frozen=True)
class Flops:
    """FLOPs split by kind: convolutions (cuDNN: TF32 tensor cores under fp32) and matrix products."""

    conv: float = 0.0
    matmul: float = 0.0

    @property
    def total(self) -> float:
        return self.conv + self.matmul

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.conv + other.conv, self.matmul + other.matmul)

    def __sub__(self, other: "Flops") -> "Flops":
        return Flops(self.conv - other.conv, self.matmul - other.matmul)

    def scale(self, k: float) -> "Flops":
        return Flops(self.conv * k, self.matmul * k)

    @classmethod
    def from_ops(cls, counts: dict[Any, int]) -> "Flops":
        conv = sum(v for op, v in counts.items() if "conv" in str(op))
        return cls(float(conv), float(sum(counts.values()) - conv))


class _NoModules:
    """Stands in for FlopCounterMode's module tracker where no attribution is needed: the tracker's gradient
    hooks break `autograd.grad` with respect to a leaf input (AE-Grad's score, torch 2.14)."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def _counter(modules: bool = False) -> FlopCounterMode:
    """A FlopCounterMode that attributes FLOPs to modules only when asked to."""
    fc = FlopCounterMode(display=False)
    if not modules:
        fc.mod_tracker = _NoModules()
    return fc


def count(fn, *args, **kwargs) -> tuple[Flops, Any]:
    """(FLOPs of fn(*args, **kwargs), its result)."""
    with _counter() as fc:
        out = fn(*args, **kwargs)
    return Flops.from_ops(fc.get_flop_counts().get("Global", {})), out


def frozen_modules(method) -> dict[str, torch.nn.Module]:
    """The networks a row holds beside its trained `model` (AE-PL: `vgg`)."""
    inside = {id(m) for m in method.model.modules()}
    return {k: v for k, v in vars(method).items()
            if isinstance(v, torch.nn.Module) and k != "model" and id(v) not in inside}


@dataclasses.dataclass(frozen=True)
class RowFlops:
    """One row's FLOPs per slice at `size`: a training step's (`train`, `frozen`, `synth`), `fit_end`'s and
    `score`'s."""

    row: str
    size: int
    train: Flops
    frozen: Flops
    synth: Flops
    fit: Flops
    score: Flops

    @property
    def step(self) -> Flops:
        """What the floor counts of a training step: the networks, trained and frozen."""
        return self.train + self.frozen


def count_params(name: str) -> dict[str, Any]:
    """The hyper-parameters a row is counted with: its defaults (the paper's), float32, eager, NCHW, the
    device's synthetic anomalies, and the bench's settings for rows that need files (AE-PL's VGG weights,
    its feature statistics off): none of these changes a FLOP count."""
    from .throughput import BENCH_OVERRIDES

    params: dict[str, Any] = {"batch_size": 2, "precision": "fp32", "compile": False, "channels_last": "false",
                              **BENCH_OVERRIDES.get(name, {})}
    defaults = REGISTRY[name].full_defaults()
    if "synthesis" in defaults:
        params["synthesis"] = "device"
    if "feature_normalization" in defaults:     # AE-PL: an elementwise step, no file needed to count
        params["feature_normalization"] = False
    return params


def count_row(name: str, size: int = 128, device: str | torch.device = "cpu", batch: int = 2) -> RowFlops:
    """Count one registered row's FLOPs per slice (see the module's docstring). The torch RNG is left as it was."""
    dev = torch.device(device)
    imgs, heads, brains = toy_head_slices(batch, size, seed=0)
    data = {"x": torch.from_numpy(imgs).to(dev), "head_mask": torch.from_numpy(heads).to(dev),
            "brain_mask": torch.from_numpy(brains).to(dev)}
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        method = REGISTRY[name]({**count_params(name), "batch_size": batch}, in_channels=3, image_size=size,
                                device=dev)
        method.configure_schedulers(100, 1)
        frozen = frozen_modules(method)
        synth_calls: list[Flops] = []             # every call of the row's synthesis, counted apart
        if hasattr(method, "synthesise"):
            own = method.synthesise

            def synthesise(*a, **k):
                flops, out = count(own, *a, **k)
                synth_calls.append(flops)
                return out
            method.synthesise = synthesise
        with _counter(modules=bool(frozen)) as fc:
            tracked = getattr(getattr(fc, "mod_tracker", None), "_known_modules", None)
            if frozen and not hasattr(tracked, "__setitem__"):
                raise RuntimeError(f"torch {torch.__version__}: FlopCounterMode has no module tracker to tell "
                                   f"{name}'s frozen networks ({', '.join(frozen)}) from its own")
            for key, mod in frozen.items():         # name them, so their FLOPs are found under that name
                tracked[mod] = f"frozen.{key}"
            method.training_step(data, 0)
        counts = fc.get_flop_counts()
        total = Flops.from_ops(counts.get("Global", {}))
        frozen_f = Flops()
        for key in frozen:
            frozen_f = frozen_f + Flops.from_ops(counts.get(f"frozen.{key}", {}))
        synth = sum(synth_calls, Flops())
        fit, _ = count(method.fit_end, lambda: iter([data]))
        score, _ = count(method.score, data)
    per = 1.0 / batch
    return RowFlops(name, size, (total - frozen_f - synth).scale(per), frozen_f.scale(per), synth.scale(per),
                    fit.scale(per), score.scale(per))


@lru_cache(maxsize=None)
def row_flops(name: str, size: int = 128, device: str = "cpu") -> RowFlops:
    """`count_row`, once per process for each row, size and device type."""
    return count_row(name, size, device)


def job_images(name: str, recipe: dict[str, int] = RECIPE) -> int:
    """Input slices one paper-recipe training job passes through its step."""
    from .throughput import TWO_STAGE

    if name in TWO_STAGE:
        return recipe["two_stage_steps"] * recipe["two_stage_batch"]
    return recipe["slices"] * recipe["epochs"]


def recipe_flops(f: RowFlops, recipe: dict[str, int] = RECIPE) -> Flops:
    """The row's FLOPs over the whole recipe: folds x (training + fit_end on the training slices) + scoring."""
    job = f.step.scale(job_images(f.row, recipe)) + f.fit.scale(recipe["slices"])
    return job.scale(recipe["folds"]) + f.score.scale(recipe["scored_slices"])


def device_peaks(device_name: str) -> tuple[dict[str, float], str] | None:
    """(peaks TFLOP/s by fp32/tf32/bf16, source) for a CUDA device name, or None when not in the table."""
    for key, peaks, source in DEVICE_PEAKS:
        if key.lower() in device_name.lower():
            return peaks, source
    return None


def effective_peaks(peaks: dict[str, float], precision: str) -> tuple[float, float]:
    """(convolution peak, matrix-product peak) in TFLOP/s for a row's `precision`, as the TF32 flags stand."""
    if precision == "bf16":
        return peaks["bf16"], peaks["bf16"]
    conv = peaks["tf32"] if torch.backends.cudnn.allow_tf32 else peaks["fp32"]
    mm = peaks["tf32"] if torch.backends.cuda.matmul.allow_tf32 else peaks["fp32"]
    return conv, mm


def floor_seconds(flops: Flops, peaks: tuple[float, float]) -> float:
    """Seconds the FLOPs need at (convolution, matrix-product) peaks in TFLOP/s."""
    return flops.conv / (peaks[0] * 1e12) + flops.matmul / (peaks[1] * 1e12)


def resolve_peaks(device: torch.device, precision: str, peak_tflops: float | None,
                  gpu: str | None = None) -> tuple[tuple[float, float] | None, str]:
    """(convolution, matrix-product) peaks for a device and precision, and where they come from; (None, why)
    when unknown. `peak_tflops` (one figure for every FLOP) wins; `gpu` names a device of the table."""
    if peak_tflops is not None:
        if not peak_tflops > 0:
            raise ValueError(f"--peak-tflops must be a positive number of TFLOP/s, not {peak_tflops}")
        return (peak_tflops, peak_tflops), f"given: {peak_tflops:g} TFLOP/s"
    name = gpu or (torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    if name is None:
        return None, f"peak unknown for a {device.type} device: pass --peak-tflops"
    found = device_peaks(name)
    if found is None:
        known = ", ".join(k for k, _, _ in DEVICE_PEAKS)
        return None, f"peak unknown for {name!r} (table: {known}): pass --peak-tflops"
    peaks, source = found
    conv, mm = effective_peaks(peaks, precision)
    return (conv, mm), f"{name}, {precision}: conv {conv:g}, matmul {mm:g} TFLOP/s ({source})"


def effective_peak(flops: Flops, peaks: tuple[float, float]) -> float:
    """The single TFLOP/s figure at which these FLOPs take their floor time (conv and matmul peaks mixed)."""
    seconds = floor_seconds(flops, peaks)
    return flops.total / seconds / 1e12 if seconds > 0 else peaks[0]


#: the CSV of `ichbench floor` (GFLOP per input slice at `size`; EFLOP over the recipe)
FLOOR_COLUMNS = ["row", "group", "size", "precision", "train_gflop_per_image", "frozen_gflop_per_image",
                 "synth_gflop_per_image", "fit_gflop_per_image", "score_gflop_per_image", "matmul_share",
                 "job_images", "recipe_eflop", "peak_tflops", "floor_hours", "peak_source"]


def floor_row(f: RowFlops, precision: str, peaks: tuple[float, float] | None, source: str,
              recipe: dict[str, int] = RECIPE) -> dict[str, Any]:
    """One row of the floor table from its counted FLOPs."""
    total = recipe_flops(f, recipe)
    out: dict[str, Any] = {"row": f.row, "group": REGISTRY[f.row].group, "size": f.size, "precision": precision,
                           "train_gflop_per_image": f.train.total / 1e9, "frozen_gflop_per_image": f.frozen.total / 1e9,
                           "synth_gflop_per_image": f.synth.total / 1e9, "fit_gflop_per_image": f.fit.total / 1e9,
                           "score_gflop_per_image": f.score.total / 1e9,
                           "matmul_share": total.matmul / total.total if total.total else 0.0,
                           "job_images": job_images(f.row, recipe), "recipe_eflop": total.total / 1e18,
                           "peak_source": source}
    if peaks is not None:
        out["peak_tflops"] = effective_peak(total, peaks)
        out["floor_hours"] = floor_seconds(total, peaks) / 3600
    return out


def total_row(rows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """The `Table 1` line: recipe EFLOP and floor hours summed over the rows (one job at a time)."""
    out: dict[str, Any] = {"row": "Table 1", "size": size,
                           "recipe_eflop": sum(r.get("recipe_eflop", 0.0) for r in rows)}
    hours = [r.get("floor_hours") for r in rows]
    if hours and all(h is not None for h in hours):
        out["floor_hours"] = sum(hours)
        out["peak_tflops"] = out["recipe_eflop"] * 1e18 / (out["floor_hours"] * 3600) / 1e12
    sources = sorted({r["peak_source"] for r in rows if r.get("peak_source")})
    out["peak_source"] = "; ".join(sources)
    return out


def run_floor(out_csv, *, size: int = RECIPE["size"], device: str = "cpu", rows: list[str] | None = None,
              precision: str | None = None, gpu: str | None = None,
              peak_tflops: float | None = None) -> list[dict[str, Any]]:
    """Count every row (all registered by default), write the floor CSV and return its rows (the last one the
    Table 1 total). `precision`: fp32 or bf16 for every row (default: each row's own); `gpu`: a device name
    of `DEVICE_PEAKS` whose peaks to use (default: the counting device's, when it is a CUDA device)."""
    from .throughput import write_csv

    names = rows or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"floor: unknown row(s) {unknown}; registered: {', '.join(REGISTRY)}")
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"floor: precision must be fp32 or bf16, not {precision!r}")
    dev = torch.device(device)
    table = []
    for name in names:
        prec = precision or REGISTRY[name].full_defaults()["precision"]
        peaks, source = resolve_peaks(dev, prec, peak_tflops, gpu)
        table.append(floor_row(row_flops(name, size, str(dev)), prec, peaks, source))
    table.append(total_row(table, size))
    write_csv(out_csv, table, FLOOR_COLUMNS)
    return table
