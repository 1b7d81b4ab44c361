"""Training throughput of every Table 1 row next to a bare PyTorch loop, and the paper recipe's projected time.

    ichbench bench --out results/bench.csv                        # 128 x 128, batch 64, the machine's device
    ichbench bench --size 64 --batch 16 --seconds 2 --out b.csv   # a small CPU run

For every registered row, on toy head slices already in memory on the device (`synthetic.toy.toy_head_slices`):
- `ours_img_s`: the row's own `training_step` (what `ichbench train` calls each step), images (input slices)
  per second;
- `bare_img_s`: a bare loop on the same network, batch, device and precision: zero_grad, the row's own
  `loss` under its autocast, backward, optimizer step; no scheduler, no logging, no `float(loss)`. For the
  self-supervised rows the bare loop trains on one synthetic batch made before timing, so it measures the
  network alone; `ours_vs_bare` = ours / bare (1 = no overhead);
- `ours_vs_bare_cpu` (CPU only): the same ratio from CPU seconds per step (`time.process_time`, all threads),
  bare / ours: less moved by other processes on the machine than the wall-clock rates;
- self-supervised rows: `bare_synth_img_s`, the fair bare loop of a row that must make its training batch:
  the bare step on a batch made afresh each step by the row's own batch maker (one-stage rows
  `segmentation_batch`: rotation/shift and the synthetic anomaly; two-stage rows `pairs`: jitter and the
  augmented copies), and `ours_vs_bare_synth` = ours / that;
- self-supervised rows: `reference_img_s`, the reference's way (MedIAnomaly): a DataLoader with
  `workers` worker processes, each making one synthetic anomaly per slice on the CPU with this package's
  CPU generator, feeding the bare step; `device_gen_img_s`, our training step with the device generator
  (`ichbench.anomalies.device`) swapped in for the CPU one through the method's `generator` attribute;
- `gen_cpu_img_s` / `gen_device_img_s`: the generator alone, CPU path (numpy/OpenCV, on CPU tensors) and
  device path (batched torch on the device);
- `job_images`, `job_hours`: one paper-recipe training job (slices x epochs images; two-stage rows: steps x
  batch) at the best of our measured rates for the row (`device_gen_img_s` where faster), and
  `table1_hours` (last row, `row` = "Table 1"): the sum over rows x folds, one job at a time;
- the arithmetic floor (`ichbench.bench.floor`), counted at the recipe's 128 x 128: `train_gflop_per_image`
  (the row's own networks, forward + backward), `frozen_gflop_per_image` (AE-PL's VGG),
  `score_gflop_per_image`, `recipe_eflop` (all folds, training and scoring), `floor_hours` at
  `peak_tflops` (the device's peak for the row's precision, `floor.DEVICE_PEAKS`, or `--peak-tflops`; on a
  CPU unknown unless given: `floor_note` says which), `vs_floor` = 5 x `job_hours` / `floor_hours` (only
  when the bench runs at the recipe's size);
  `achieved_tflops`, the best measured images/s x the FLOPs per image at the bench's size, and
  `achieved_vs_peak`.

Ours, bare and the fair bare loop are timed in turn (`paired_rates`: blocks of steps, ours / bare / ...,
the order reversed every other round, 5 rounds (2 for rows slower than `seconds` a step), the median block
per loop), so that all of them see the same load
of the machine; timing one after the other moved the ratio by +-20 % on a loaded machine.

The rates hold for the measured size and batch; the projection assumes the paper's 128 x 128 (pass
--size 128 for a projection that means it). Rows that cannot run (e.g. missing weights) get an `error`.
"""
from __future__ import annotations

import copy
import csv
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..anomalies import two_stage as an
from ..anomalies.device import DEVICE_GENERATORS, OnDevice
from ..methods import REGISTRY
from ..synthetic.toy import toy_head_slices
from . import floor

log = logging.getLogger(__name__)

TWO_STAGE = ("CutPaste-2stage", "AnatPaste")
#: settings a row needs to run without files (AE-PL's VGG weights): timing is the same network
BENCH_OVERRIDES: dict[str, dict[str, Any]] = {"AE-PL": {"allow_random_vgg": True}}

COLUMNS = ["row", "group", "device", "size", "batch", "precision", "ours_img_s", "bare_img_s", "ours_vs_bare",
           "ours_vs_bare_cpu", "bare_synth_img_s", "ours_vs_bare_synth",
           "reference_img_s", "reference_workers", "ours_vs_reference", "device_gen_img_s", "gen_cpu_img_s",
           "gen_device_img_s", "gen_device_vs_cpu", "job_images", "job_hours", "table1_hours",
           # the arithmetic floor (`ichbench.bench.floor`): FLOPs per input slice at the recipe's 128 px,
           # the recipe's EFLOP, hours at the device's peak, measured FLOP/s at the bench's size
           "train_gflop_per_image", "frozen_gflop_per_image", "score_gflop_per_image", "recipe_eflop",
           "peak_tflops", "floor_hours", "vs_floor", "achieved_tflops", "achieved_vs_peak", "floor_note", "error"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def rate(fn: Callable[[], Any], images: int, dev: torch.device, seconds: float, min_calls: int = 2) -> float:
    """Images per second of fn (one warm-up call, then at least min_calls calls or `seconds`)."""
    fn()
    _sync(dev)
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    _sync(dev)
    return calls * images / (time.perf_counter() - t0)


def paired_rates(fns: dict[str, Callable[[], Any]], images: int, dev: torch.device, seconds: float,
                 rounds: int = 5) -> dict[str, tuple[float, float]]:
    """Several step functions timed in turn, so that each sees the same machine load: one timed warm-up call
    each, then up to `rounds` rounds (at least 2; fewer where a call takes longer than seconds / rounds) of
    one block of calls per function (a block ~ seconds / rounds), the order reversed every other round.
    -> name -> (images/s of the median block, median CPU seconds per call)."""
    per_call = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        per_call[name] = max(time.perf_counter() - t0, 1e-9)
    rounds = max(2, min(rounds, int(seconds / max(per_call.values()))))
    block = {name: max(1, int(seconds / rounds / t)) for name, t in per_call.items()}
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            fn, n = fns[name], block[name]
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            _sync(dev)
            walls[name].append((time.perf_counter() - w0) / n)
            cpus[name].append((time.process_time() - c0) / n)
    return {name: (images / statistics.median(walls[name]), statistics.median(cpus[name])) for name in fns}


def made_batch(method, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A self-supervised row's training batch made afresh, as its `training_step` makes it (one-stage rows:
    `segmentation_batch`, two-stage rows: `pairs`)."""
    if hasattr(method, "pairs"):
        return method.pairs(batch)
    return method.segmentation_batch(batch)


def bare_step(method, batch: dict[str, torch.Tensor]) -> None:
    """One optimisation step with nothing around the row's own loss (GANomaly: its two losses)."""
    method.model.train()
    if method.name == "GANomaly":
        opt_g, opt_d = method.optimizers
        disc = method.model.discriminator
        disc.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with method.autocast():
            loss_g, _, rec = method._generator_loss(batch["x"])
        loss_g.backward()
        opt_g.step()
        disc.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        with method.autocast():
            loss_d = method._discriminator_loss(batch["x"], rec.detach())
        loss_d.backward()
        opt_d.step()
        return
    opt = method.optimizers[0]
    opt.zero_grad(set_to_none=True)
    with method.autocast():
        loss, _ = method.loss(batch)
    loss.backward()
    opt.step()


def step_batch(method, batch: dict[str, torch.Tensor], syn: an.Synthesis) -> dict[str, torch.Tensor]:
    """The batch a self-supervised row's loss sees after synthesis (as its training_step builds it)."""
    if method.name in TWO_STAGE:
        x = batch["x"]
        y = torch.cat([torch.zeros(len(x), dtype=torch.long, device=x.device),
                       torch.ones(len(syn.x), dtype=torch.long, device=x.device)])
        return {"x": torch.cat([x, syn.x]), "y": y}
    return {"x": syn.x, "label": syn.label}


class _ReferenceSlices(torch.utils.data.Dataset):
    """The reference's data path: each item one slice with one synthetic anomaly made on the CPU
    (one-stage rows: the patch source another random slice, as `patch_ex` draws it)."""

    def __init__(self, images, heads, brains, generator, two_stage: bool, length: int):
        self.images, self.heads, self.brains = images, heads, brains
        self.generator, self.two_stage, self.length = generator, two_stage, length
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        n = len(self.images)
        j = i % n
        idx = [j] if self.two_stage else [j, (j + 1 + int(self.rng.integers(n - 1))) % n]
        x = torch.from_numpy(self.images[idx])
        syn = self.generator(x, self.rng, head_mask=torch.from_numpy(self.heads[idx]),
                             brain_mask=torch.from_numpy(self.brains[idx]))
        return torch.from_numpy(self.images[j]), syn.x[0], syn.label[0]


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng([worker_id, info.seed % 2**32])
    torch.set_num_threads(1)


def reference_rate(method, generator, arrays, batch_size: int, workers: int, dev: torch.device,
                   seconds: float) -> float:
    """Images/s of the reference-style loop: DataLoader (`generator`, the row's CPU generator, in `workers`
    processes) -> bare step."""
    images, heads, brains = arrays
    two = method.name in TWO_STAGE
    steps = max(3, int(seconds * 4))
    ds = _ReferenceSlices(images, heads, brains, generator, two, (steps + 1) * batch_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, drop_last=True,
                                         worker_init_fn=_worker_init if workers else None,
                                         pin_memory=dev.type == "cuda", persistent_workers=False)
    it = iter(loader)
    t0 = None
    n = 0
    for k, (x, sx, label) in enumerate(it):
        x, sx, label = x.to(dev, non_blocking=True), sx.to(dev, non_blocking=True), label.to(dev, non_blocking=True)
        syn = an.Synthesis(sx, label, torch.zeros(0))
        bare_step(method, step_batch(method, {"x": x}, syn))
        if k == 0:                      # the first batch waits for the workers to start
            _sync(dev)
            t0 = time.perf_counter()
            continue
        n += len(x)
        if time.perf_counter() - t0 > seconds and n >= 2 * batch_size:
            break
    _sync(dev)
    return n / (time.perf_counter() - t0)


def bench_row(name: str, arrays, batch: dict[str, torch.Tensor], size: int, dev: torch.device, seconds: float,
              workers: int, recipe: dict[str, int], precision: str | None = None) -> dict[str, Any]:
    cls = REGISTRY[name]
    out: dict[str, Any] = {"row": name, "group": cls.group, "device": str(dev), "size": size,
                           "batch": len(batch["x"])}
    torch.manual_seed(0)
    params = {"batch_size": len(batch["x"]), **BENCH_OVERRIDES.get(name, {})}
    if precision:
        params["precision"] = precision
    method = cls(params, in_channels=3, image_size=size, device=dev)
    out["precision"] = method.params["precision"]
    method.configure_schedulers(10_000, 1)
    b = len(batch["x"])
    steps = iter(range(10**9))
    state = copy.deepcopy(method.state_dict())
    selfsup = name in DEVICE_GENERATORS
    if selfsup:
        bare_batch = step_batch(method, batch, method.synthesise(batch))
    else:
        bare_batch = batch
    # the same memory format as the row's step (channels_last: auto is on for CUDA)
    bare_batch = {**bare_batch, "x": method.to_memory_format(bare_batch["x"])}
    fns = {"ours": lambda: method.training_step(batch, next(steps)), "bare": lambda: bare_step(method, bare_batch)}
    if selfsup:
        def bare_synth() -> None:
            made = made_batch(method, batch)
            bare_step(method, {**made, "x": method.to_memory_format(made["x"])})
        fns["bare_synth"] = bare_synth
    got = paired_rates(fns, b, dev, seconds)
    out["ours_img_s"], out["bare_img_s"] = got["ours"][0], got["bare"][0]
    out["ours_vs_bare"] = out["ours_img_s"] / out["bare_img_s"]
    if dev.type == "cpu":
        out["ours_vs_bare_cpu"] = got["bare"][1] / got["ours"][1]
    if selfsup:
        out["bare_synth_img_s"] = got["bare_synth"][0]
        out["ours_vs_bare_synth"] = out["ours_img_s"] / out["bare_synth_img_s"]
    best = out["ours_img_s"]
    if selfsup:
        # the row's own generators, from its hyper-parameters (whatever `synthesis` the step above used)
        cpu_gen, dev_gen = method.make_generator(), method.make_device_generator()
        x_cpu = {k: v.cpu() for k, v in batch.items()}
        rng = np.random.default_rng(0)
        out["gen_cpu_img_s"] = rate(lambda: cpu_gen(x_cpu["x"], rng, head_mask=x_cpu["head_mask"],
                                                    brain_mask=x_cpu["brain_mask"]), b, torch.device("cpu"), seconds)
        tg = torch.Generator(device=dev).manual_seed(0)
        out["gen_device_img_s"] = rate(lambda: dev_gen(batch["x"], tg, head_mask=batch["head_mask"],
                                                       brain_mask=batch["brain_mask"]), b, dev, seconds)
        out["gen_device_vs_cpu"] = out["gen_device_img_s"] / out["gen_cpu_img_s"]
        method.load_state_dict(state)
        own_generator = method.generator
        method.generator = OnDevice(dev_gen, dev, 0)        # what `synthesis: device` sets up
        out["device_gen_img_s"] = rate(lambda: method.training_step(batch, next(steps)), b, dev, seconds)
        method.generator = own_generator
        best = max(best, out["device_gen_img_s"])
        method.load_state_dict(state)
        out["reference_workers"] = workers
        out["reference_img_s"] = reference_rate(method, cpu_gen, arrays, b, workers, dev, seconds)
        out["ours_vs_reference"] = out["ours_img_s"] / out["reference_img_s"]
    if name in TWO_STAGE:
        out["job_images"] = recipe["two_stage_steps"] * recipe["two_stage_batch"]
    else:
        out["job_images"] = recipe["slices"] * recipe["epochs"]
    out["job_hours"] = out["job_images"] / best / 3600
    out["best_img_s"] = best
    return out


def add_floor(r: dict[str, Any], dev: torch.device, recipe: dict[str, int], peak_tflops: float | None) -> None:
    """The floor columns of one timed row: its FLOPs counted at the recipe's size (and at the bench's, for
    the achieved FLOP/s), the recipe's EFLOP and floor hours at the device's peak for the row's precision."""
    try:
        f = floor.row_flops(r["row"], recipe["size"], str(dev))
        peaks, source = floor.resolve_peaks(dev, r["precision"], peak_tflops)
        fr = floor.floor_row(f, r["precision"], peaks, source, recipe)
        at_size = f if r["size"] == recipe["size"] else floor.row_flops(r["row"], r["size"], str(dev))
    except Exception as e:  # noqa: BLE001 - a row's failed count must not lose its timings
        log.warning("bench %s: FLOPs not counted: %s", r["row"], e)
        r["floor_note"] = f"not counted: {type(e).__name__}: {e}".replace("\n", " ")[:300]
        return
    r.update({k: fr[k] for k in ("train_gflop_per_image", "frozen_gflop_per_image", "score_gflop_per_image",
                                 "recipe_eflop") if k in fr})
    r["floor_note"] = source
    r["achieved_tflops"] = r["best_img_s"] * at_size.step.total / 1e12
    if peaks is not None:
        r["peak_tflops"], r["floor_hours"] = fr["peak_tflops"], fr["floor_hours"]
        if r["size"] == recipe["size"]:          # the projection means the recipe only at its size
            r["vs_floor"] = recipe["folds"] * r["job_hours"] / r["floor_hours"]
        r["achieved_vs_peak"] = r["achieved_tflops"] / floor.effective_peak(at_size.step, peaks)


def run_bench(out_csv: str | os.PathLike, *, size: int = 128, batch: int = 64, seconds: float = 3.0,
              device: str = "auto", rows: list[str] | None = None, workers: int | None = None, folds: int = 5,
              slices: int = 19_000, epochs: int = 250, two_stage_steps: int = 25_600,
              two_stage_batch: int = 64, precision: str | None = None, peak_tflops: float | None = None,
              recipe_size: int = 128, scored_slices: int = 88_808) -> list[dict[str, Any]]:
    """Benchmark the rows (all registered by default) and write the CSV; returns its rows. `precision`
    (fp32 | bf16) replaces every row's own; `peak_tflops` the device's peak from `floor.DEVICE_PEAKS`."""
    from ..training.train import resolve_device

    dev = resolve_device(device)
    names = rows or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"bench: unknown row(s) {unknown}; registered: {', '.join(REGISTRY)}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    arrays = toy_head_slices(max(batch, 2), size, seed=0)
    batch_t = {"x": torch.from_numpy(arrays[0]).to(dev), "head_mask": torch.from_numpy(arrays[1]).to(dev),
               "brain_mask": torch.from_numpy(arrays[2]).to(dev)}
    if precision not in (None, "fp32", "bf16"):
        raise ValueError(f"bench: precision must be fp32 or bf16, not {precision!r}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise ValueError(f"bench: --peak-tflops must be a positive number of TFLOP/s, not {peak_tflops}")
    recipe = {"slices": slices, "epochs": epochs, "two_stage_steps": two_stage_steps,
              "two_stage_batch": two_stage_batch, "folds": folds, "scored_slices": scored_slices,
              "size": recipe_size}
    results = []
    for name in names:
        t0 = time.perf_counter()
        try:
            r = bench_row(name, arrays, batch_t, size, dev, seconds, workers, recipe, precision)
            add_floor(r, dev, recipe, peak_tflops)
            r.pop("best_img_s", None)
        except Exception as e:  # one row's failure (e.g. out of memory) must not lose the others
            log.warning("bench %s failed: %s", name, e)
            r = {"row": name, "group": REGISTRY[name].group, "device": str(dev), "size": size, "batch": batch,
                 "error": f"{type(e).__name__}: {e}".replace("\n", " ").strip()}
        log.info("bench %s: %s (%.1f s)", name, {k: (round(v, 3) if isinstance(v, float) else v)
                                                 for k, v in r.items() if k.endswith(("img_s", "hours", "bare", "_cpu", "_synth"))},
                 time.perf_counter() - t0)
        results.append(r)
    total = sum(folds * r["job_hours"] for r in results if "job_hours" in r)
    timed = [r for r in results if "job_hours" in r]
    last = {"row": "Table 1", "device": str(dev), "size": size, "batch": batch, "table1_hours": total,
            "recipe_eflop": sum(r.get("recipe_eflop", 0.0) for r in timed),
            "floor_note": "; ".join(sorted({r["floor_note"] for r in timed if r.get("floor_note")})),
            "error": "" if all("job_hours" in r for r in results) else "rows with errors are left out"}
    if timed and all("floor_hours" in r for r in timed):
        last["floor_hours"] = sum(r["floor_hours"] for r in timed)
        if size == recipe["size"]:
            last["vs_floor"] = total / last["floor_hours"]
        last["peak_tflops"] = last["recipe_eflop"] * 1e6 / (last["floor_hours"] * 3600)
    results.append(last)
    write_csv(out_csv, results, COLUMNS)
    return results


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write bench rows as a CSV (floats to 4 significant digits), making its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
