"""Measure the slice store (issue 24 item 2): resident memory while training on stores larger than the memory
budget, and training images/s from the map against the in-memory path with the data in the page cache.

    .venv/bin/python scripts/bench_store.py --out /tmp/bench-store --sizes-gb 1.5,3 --budget-gb 0.5

1. Memory: for each size, a synthetic cache shard of that many GB of images (toy head slices in NPZs of 40
   slices, packed by `pack_shard`) and a manifest of all its slices; then, in a fresh process each, the
   training job's data path over all of them (`child`: open, digest, a shuffled epoch of gathered batches, the
   first --child-steps with a narrow AE's training step) with train.in_memory auto and --budget-gb, and the
   smallest store again in memory for comparison. Prints each process's peak resident memory (ru_maxrss).
2. Speed: in this process, on the smallest store (read once first, so it is in the page cache), the AE of
   config.yaml and the narrow one train `--steps` steps per run from the in-memory and from the streamed
   batches, alternating, `--pairs` pairs; prints the images/s of each and their ratio (median of the pairs).
Machine, date and load average are printed first (the machine may be shared: compare the ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SERIES = 40
SLICE_BYTES = 3 * 128 * 128
NARROW = {"width": 8, "hidden": 64, "latent_dim": 16}


def write_cache(folder: Path, gb: float) -> Path:
    """A packed synthetic shard of about `gb` GB of images; -> its manifest (every slice a normal training one)."""
    from ichbench.cache.pack import pack_shard
    from ichbench.synthetic.toy import toy_head_slices

    manifest = folder / "fold-0.csv"
    if manifest.exists():
        return manifest
    shard = folder / "shard-0"
    shard.mkdir(parents=True, exist_ok=True)
    x, head, brain = toy_head_slices(SERIES, 128, seed=0)
    base = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    n_series = max(1, int(round(gb * 2**30 / (SLICE_BYTES * SERIES))))
    series, rows = [], []
    for s in range(n_series):
        name = f"S{s:05d}"
        images = np.roll(base, int(rng.integers(-8, 9)), axis=-1)
        images = images ^ rng.integers(0, 4, images.shape, dtype=np.uint8)      # not all series alike
        np.savez(shard / f"{name}.npz", images=images, head_mask=head, brain_mask=brain,
                 gt_mask=np.zeros_like(brain), has_gt=np.bool_(False))
        series.append({"npz": f"{name}.npz", "n_slices": SERIES})
        rows.append(pd.DataFrame({"fold": 0, "part": "train", "patient_id": f"P{s}", "series_uid": name,
                                  "sop_uid": [f"{name}.{i}" for i in range(SERIES)], "slice_index": range(SERIES),
                                  "npz": str(shard / f"{name}.npz"), "scan_label": 0, "slice_truth": 0,
                                  "label": 0}))
    pd.DataFrame(series).to_csv(shard / "series.csv", index=False)
    pack_shard(shard)
    pd.concat(rows, ignore_index=True).to_csv(manifest, index=False)
    return manifest


def child(manifest: str, budget: float, in_memory: str, steps: int) -> None:
    """The training job's data path over every slice of the manifest, as `train` runs it: the fold opened
    (in memory or mapped, by `in_memory` and the budget), the data digest pass over all of it, then one shuffled
    epoch of batches of 64, every batch gathered and decoded, the narrow AE's training step on the first
    `steps` of them (an epoch of steps over 3 GB would take half an hour on 2 cores). Prints JSON: peak RSS,
    how the fold was read, the seconds of each part."""
    import torch

    from ichbench.cohort.splits import read_manifest
    from ichbench.training.data import DeviceBatches, open_slices
    from ichbench.training.train import _data_digest, build_method

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    rows = read_manifest(manifest)
    data = open_slices(rows, in_memory=in_memory, memory_budget_gb=budget)
    digest = _data_digest(data, rows)
    t1 = time.perf_counter()
    method = build_method("AE", {**NARROW, "batch_size": 64}, 3, 128, torch.device("cpu"))
    batches = DeviceBatches(data, torch.device("cpu"))
    g = torch.Generator()
    g.manual_seed(0)
    n = 0
    for k, batch in enumerate(batches.epoch(64, g, drop_last=True)):
        if k < steps:
            method.training_step(batch, k)
        else:
            batch["x"].sum()
        n += batch["x"].shape[0]
    print(json.dumps({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "slices": len(rows), "epoch_slices": n, "steps": min(steps, n // 64),
                      "in_memory": data.in_memory, "open_and_digest_s": round(t1 - t0, 1),
                      "epoch_s": round(time.perf_counter() - t1, 1), "digest": digest}))


def memory_part(a, caches: dict[float, Path]) -> list[dict]:
    results = []
    runs = [(gb, "auto", a.budget_gb) for gb in caches] + [(min(caches), "true", a.budget_gb)]
    for gb, mode, budget in runs:
        cmd = [sys.executable, __file__, "--child", str(caches[gb]), "--budget-gb", str(budget), "--mode", mode,
               "--child-steps", str(a.child_steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res = {"store_gb": gb, "in_memory_setting": mode, "budget_gb": budget,
               **json.loads(proc.stdout.strip().splitlines()[-1])}
        print(json.dumps(res), flush=True)
        results.append(res)
    return results


def speed_part(a, manifest: Path) -> list[dict]:
    import torch

    from ichbench.cohort.splits import read_manifest
    from ichbench.config import method_params
    from ichbench.training.data import DeviceBatches, open_slices
    from ichbench.training.train import build_method

    torch.set_num_threads(2)
    rows = read_manifest(manifest)
    rows = rows.iloc[: a.speed_slices]
    mem = DeviceBatches(open_slices(rows, in_memory=True), torch.device("cpu"))
    mapped_set = open_slices(rows, in_memory=False)
    for chunk in mapped_set.images.chunks():       # in the page cache (and dropped from this process's RSS)
        chunk.sum()
    streamed = DeviceBatches(mapped_set, torch.device("cpu"))
    out = []
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    for label, params in (("AE of config.yaml", {}), ("narrow AE", NARROW)):
        p = {**method_params(cfg, "AE"), **params, "batch_size": 32}
        method = build_method("AE", p, 3, 128, torch.device("cpu"))
        rates = {"memory": [], "store": []}
        for pair in range(a.pairs):
            for name, b in ((("memory", mem), ("store", streamed)) if pair % 2 == 0 else
                            (("store", streamed), ("memory", mem))):
                g = torch.Generator()
                g.manual_seed(pair)
                it = b.epoch(32, g, drop_last=True)
                method.training_step(next(it), 0)                  # warm-up step, not timed
                t0, n = time.perf_counter(), 0
                for step, batch in zip(range(a.steps), it):
                    method.training_step(batch, step)
                    n += batch["x"].shape[0]
                rates[name].append(n / (time.perf_counter() - t0))
        ratios = [s / m for s, m in zip(rates["store"], rates["memory"])]
        res = {"model": label, "steps_per_run": a.steps, "pairs": a.pairs,
               "memory_images_per_s": [round(r, 1) for r in rates["memory"]],
               "store_images_per_s": [round(r, 1) for r in rates["store"]],
               "median_ratio_store_over_memory": round(statistics.median(ratios), 3)}
        print(json.dumps(res), flush=True)
        out.append(res)
    # the data path alone: one batch of 32 gathered and decoded, no step
    for name, b in (("memory", mem), ("store", streamed)):
        g = torch.Generator()
        g.manual_seed(0)
        t0, n = time.perf_counter(), 0
        for batch in b.epoch(32, g, drop_last=True):
            n += 1
        res = {"data_path_only": name, "ms_per_batch_of_32": round(1000 * (time.perf_counter() - t0) / n, 3)}
        print(json.dumps(res), flush=True)
        out.append(res)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/bench-store", help="folder for the synthetic stores and models")
    ap.add_argument("--sizes-gb", default="1.5,3", help="store sizes (GB of images), comma-separated")
    ap.add_argument("--budget-gb", type=float, default=0.5, help="train.memory_budget_gb of the memory runs")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per speed run")
    ap.add_argument("--pairs", type=int, default=4, help="alternating memory/store pairs per model")
    ap.add_argument("--speed-slices", type=int, default=2000, help="slices of the speed runs' fold")
    ap.add_argument("--child-steps", type=int, default=100, help="AE steps of each memory run's epoch")
    ap.add_argument("--skip-memory", action="store_true", help="only the speed part")
    ap.add_argument("--skip-speed", action="store_true", help="only the memory part")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.budget_gb, a.mode, a.child_steps)
        return
    from ichbench.bench.machine import machine

    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                      "load_average": os.getloadavg()}, default=str), flush=True)
    sizes = [float(s) for s in a.sizes_gb.split(",")]
    caches = {gb: write_cache(Path(a.out) / f"store-{gb}GB", gb) for gb in sizes}
    if not a.skip_memory:
        memory_part(a, caches)
    if not a.skip_speed:
        speed_part(a, caches[min(sizes)])
    print(json.dumps({"load_average_end": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
