#!/usr/bin/env python
"""Training throughput of the Table 1 rows on the CPU (or any device): slices per second of the
method's own `training_step` on random 3 x S x S batches.

    .venv/bin/python scripts/bench_methods.py                      # reconstruction rows, demo settings
    .venv/bin/python scripts/bench_methods.py --paper AE DAE       # code defaults (the paper's widths)
    .venv/bin/python scripts/bench_methods.py --size 128 --batch 32 --threads 2,1 --seconds 8

On a CPU shared with other jobs, 2 intra-op threads can be several times slower than 1 (threads wait
for each other at every small op); `--threads 2,1` prints both.

Demo settings = the code defaults overridden by DEMO below (the CPU demo entries recommended for
config.yaml `methods:`) and by `--set NAME.key=value`.
"""
from __future__ import annotations

import argparse
import time

import torch

from ichbench.methods import REGISTRY

#: narrow / cheap settings for the synthetic CPU demo (everything else: code defaults)
DEMO: dict[str, dict] = {
    "AE-PL": {"allow_random_vgg": True, "vgg_input_size": 32, "vgg_layer": "relu3_1"},
    "DAE": {"unet_width": 8},
}


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None, "none": None}.get(text.lower(), text)


def bench(name: str, params: dict, size: int, batch: int, seconds: float, device: torch.device) -> dict:
    cls = REGISTRY[name]
    torch.manual_seed(0)
    method = cls(params, in_channels=3, image_size=size, device=device)
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    head = ((yy ** 2 + xx ** 2) < 0.8).to(device).expand(batch, size, size).contiguous()
    b = {"x": x, "head_mask": head, "brain_mask": head}
    for i in range(2):                      # warm-up
        method.training_step(b, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - t0 < seconds:
        method.training_step(b, steps)
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    method.score(b)
    score_dt = time.perf_counter() - t1
    return {"method": name, "params_M": sum(p.numel() for p in method.model.parameters()) / 1e6,
            "train_sps": steps * batch / dt, "score_sps": batch / score_dt, "steps": steps,
            "overrides": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("methods", nargs="*", help="rows to time (default: every reconstruction row)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", default="2", help="torch intra-op threads; a comma list times each")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per method (at least 3 steps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--paper", action="store_true", help="code defaults, not the DEMO overrides")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.key=value")
    ap.add_argument("--slices", type=int, default=600, help="training slices per fold, for the epoch time")
    args = ap.parse_args()
    threads = [int(t) for t in str(args.threads).split(",")]
    names = args.methods or [n for n, c in REGISTRY.items() if c.group == "reconstruction"]
    extra: dict[str, dict] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        row, k = key.rsplit(".", 1)
        extra.setdefault(row, {})[k] = parse_value(value)
    dev = torch.device(args.device)
    print(f"# {args.size}x{args.size}x3, batch {args.batch}, device {dev}, torch {torch.__version__}, "
          f"{'paper (code defaults)' if args.paper else 'demo'} settings; s/epoch = {args.slices} slices")
    head = " | ".join(f"train sl/s ({t} thr) | s/epoch ({t} thr)" for t in threads)
    print(f"| method | params (M) | {head} | score sl/s ({threads[0]} thr) | overrides |")
    print("|---|---|" + "---|---|" * len(threads) + "---|---|")
    for name in names:
        params = {**({} if args.paper else DEMO.get(name, {})), **extra.get(name, {})}
        cells, first = [], None
        for t in threads:
            torch.set_num_threads(t)
            r = bench(name, params, args.size, args.batch, args.seconds, dev)
            first = first or r
            cells.append(f"{r['train_sps']:.1f} | {args.slices / r['train_sps']:.1f}")
        print(f"| {name} | {first['params_M']:.2f} | {' | '.join(cells)} | {first['score_sps']:.1f} | "
              f"{first['overrides'] or ''} |", flush=True)


if __name__ == "__main__":
    main()
