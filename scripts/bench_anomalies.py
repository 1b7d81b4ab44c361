"""Throughput of the synthetic-anomaly generators against the training step they feed.

    .venv/bin/python scripts/bench_anomalies.py --size 128 --batch 64 --threads 2 [--device cpu]

Prints images/s of each generator (toy head slices, `ichbench.synthetic.toy.toy_head_slices`) and
of one training step (synthesis included) of the one-stage network (NSA's encoder-decoder) and of the
two-stage network (CutPaste 2-stage: batch + its augmented copy). Generation keeps up with training
where its images/s is well above the training step's. On a shared machine the wall-clock rate
depends on the load; "per CPU-s" (images per CPU second of this process, all threads) does not:
times the number of free cores it estimates the rate on an idle machine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ichbench.evaluation.anomaly_figure import GENERATORS
from ichbench.synthetic.toy import toy_head_slices
from ichbench.methods import get_method


def _rate(fn, n_images: int, repeats: int) -> tuple[float, float]:
    """-> (images per wall-clock second, images per CPU second of this process, all threads)."""
    fn()                                   # warm-up (allocations, thread pools, cuDNN)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    sync()
    n = n_images * repeats
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per generator")
    ap.add_argument("--train-repeats", type=int, default=1, help="timed training steps per network")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    imgs, heads, brains = toy_head_slices(a.batch, a.size, seed=0)
    batch = {"x": torch.from_numpy(imgs).to(dev), "head_mask": torch.from_numpy(heads).to(dev),
             "brain_mask": torch.from_numpy(brains).to(dev)}
    print(f"{a.batch} slices of {a.size}x{a.size} on {dev}, torch threads {torch.get_num_threads()}")
    print(f"{'generator':<22}{'images/s':>10}{'per CPU-s':>11}")
    for name, gen in GENERATORS:
        rng = np.random.default_rng(0)
        rate, cpu = _rate(lambda: gen(batch["x"], rng, head_mask=batch["head_mask"],
                                      brain_mask=batch["brain_mask"]), a.batch, a.repeats)
        print(f"{name:<22}{rate:>10.0f}{cpu:>11.0f}")
    print(f"{'training step':<22}{'images/s':>10}{'per CPU-s':>11}")
    for row in ("NSA", "CutPaste", "CutPaste-2stage"):
        torch.manual_seed(0)
        m = get_method(row)({"batch_size": a.batch}, 3, a.size, dev)
        m.configure_schedulers(10, 1)
        step = iter(range(10**9))
        rate, cpu = _rate(lambda: m.training_step(batch, next(step)), a.batch, a.train_repeats)
        print(f"{row:<22}{rate:>10.1f}{cpu:>11.1f}")


if __name__ == "__main__":
    main()
