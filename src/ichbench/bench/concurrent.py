"""Throughput of 1, 2, 4 ... AE training processes sharing one device (how many jobs per GPU pay).

    ichbench bench --concurrent 1,2,4 --concurrent-seconds 20 --out results/bench.csv
    # -> results/bench-concurrent.csv

For each level k, k processes are started (spawned: each its own CUDA context, as k Snakemake jobs
would be); each builds the AE row on toy head slices already on the device, warms up, waits for the
others at a barrier, then runs the bare training loop (zero_grad, the row's loss, backward, step; no
host read per step) for `seconds` and reports its images and seconds. Columns: `processes`,
`img_s_total` (the sum of the processes' rates: the device's aggregate training throughput),
`img_s_per_process`, `speedup_vs_1` (img_s_total over that of one process) and `threads` (torch
intra-op threads per process). On a CPU the processes share the cores (`threads` each); the numbers
only mean something for the machine they were measured on.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

COLUMNS = ["row", "device", "size", "batch", "processes", "threads", "img_s_total", "img_s_per_process",
           "speedup_vs_1", "error"]


def _worker(rank: int, row: str, device: str, size: int, batch: int, seconds: float, threads: int,
            barrier, results) -> None:
    """One training process: the bare loop of `row` for `seconds` after the barrier."""
    try:
        import torch

        from ..methods import get_method
        from ..synthetic.toy import toy_head_slices
        from ..training.train import resolve_device
        from .throughput import BENCH_OVERRIDES, bare_step

        if threads:
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        torch.manual_seed(rank)
        x, head, brain = toy_head_slices(batch, size, seed=rank)
        b = {"x": torch.from_numpy(x).to(dev), "head_mask": torch.from_numpy(head).to(dev),
             "brain_mask": torch.from_numpy(brain).to(dev)}
        cls = get_method(row)
        method = cls({"batch_size": batch, **BENCH_OVERRIDES.get(row, {})}, in_channels=x.shape[1],
                     image_size=size, device=dev)
        b = {"x": method.to_memory_format(b["x"]), **{k: b[k] for k in cls.needs}}
        for _ in range(2):                                   # warm-up (cuDNN autotuning, allocator)
            bare_step(method, b)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        barrier.wait(timeout=600)
        steps, t0 = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - t0 < seconds:
            bare_step(method, b)
            steps += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        results.put((rank, steps * batch, time.perf_counter() - t0, ""))
    except Exception as e:  # noqa: BLE001 - reported in the CSV, never a hang
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
        results.put((rank, 0, 0.0, f"{type(e).__name__}: {e}".replace("\n", " ")))


def run_level(processes: int, *, row: str = "AE", device: str = "auto", size: int = 128, batch: int = 64,
              seconds: float = 10.0, threads: int = 0) -> dict[str, Any]:
    """k processes training `row` at once on one device -> their aggregate images/s."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, row, device, size, batch, seconds, threads, barrier, results))
             for r in range(processes)]
    for p in procs:
        p.start()
    got = [results.get(timeout=900 + seconds) for _ in procs]
    for p in procs:
        p.join()
    errors = sorted({e for *_, e in got if e})
    rates = [img / s for _, img, s, e in got if not e and s > 0]
    total = sum(rates) if not errors else None
    return {"row": row, "size": size, "batch": batch, "processes": processes, "threads": threads or "",
            "img_s_total": total, "img_s_per_process": total / processes if total is not None else None,
            "error": "; ".join(errors)}


def run_concurrent(out_csv: str | os.PathLike, levels: list[int], *, row: str = "AE", device: str = "auto",
                   size: int = 128, batch: int = 64, seconds: float = 10.0,
                   threads: int | None = None) -> list[dict[str, Any]]:
    """Measure every level in `levels` (e.g. [1, 2, 4]) and write the CSV; returns its rows. `threads`:
    torch threads per process (default: 1 per process on a CPU, so k processes use k cores; as is on CUDA)."""
    from ..training.train import resolve_device
    from .throughput import write_csv

    _check_levels(levels, levels)
    dev = resolve_device(device)
    if threads is None:
        threads = 1 if dev.type == "cpu" else 0
    rows = []
    for k in levels:
        r = run_level(k, row=row, device=str(dev), size=size, batch=batch, seconds=seconds, threads=threads)
        r["device"] = str(dev)
        rows.append(r)
    base = next((r["img_s_total"] for r in rows if r["processes"] == 1 and r["img_s_total"]), None)
    for r in rows:
        r["speedup_vs_1"] = r["img_s_total"] / base if base and r["img_s_total"] is not None else None
    write_csv(out_csv, rows, COLUMNS)
    return rows


def parse_levels(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], with a clear message for anything else."""
    try:
        levels = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"bench --concurrent: expected process counts like 1,2,4, not {text!r}") from None
    return _check_levels(levels, text)


def _check_levels(levels: list[int], given: Any) -> list[int]:
    if not levels or any(k < 1 for k in levels):
        raise ValueError(f"bench --concurrent: expected positive process counts like 1,2,4, not {given!r}")
    return levels
