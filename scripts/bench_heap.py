"""CPU time of training steps with ichbench's heap settings (`ichbench.training.heap`) against the C library's defaults.

    .venv/bin/python scripts/bench_heap.py [--row AE] [--steps 24] [--pairs 3]

Runs the row's training step on toy head slices (batch 32, 3 x 128 x 128, one thread) in child processes,
alternating ICHBENCH_HEAP=default and the settings ichbench applies, and prints for each child the CPU
seconds of the steps (user + system, imports and set-up left out) and the page faults they caused; then the
median ratio over the pairs. Alternating pairs keep a shared machine's load changes out of the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def child(row: str, steps: int) -> None:
    import resource

    import torch

    from ichbench.synthetic.toy import toy_head_slices
    from ichbench.training.heap import keep_freed_memory
    from ichbench.methods import REGISTRY

    applied = keep_freed_memory()
    torch.set_num_threads(1)
    x, head, brain = toy_head_slices(32, 128, seed=0)
    batch = {"x": torch.from_numpy(x), "head_mask": torch.from_numpy(head), "brain_mask": torch.from_numpy(brain)}
    torch.manual_seed(0)
    method = REGISTRY[row]({"batch_size": 32}, in_channels=3, image_size=128, device=torch.device("cpu"))
    method.configure_schedulers(10_000, 1)
    for s in range(2):                    # warm-up: first-call allocations and lazy imports
        method.training_step(batch, s)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for s in range(steps):
        method.training_step(batch, s + 2)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"heap": "ichbench" if applied else "default",
                      "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                      "faults": r1.ru_minflt - r0.ru_minflt}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", default="AE")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.row, a.steps)
        return
    ratios = []
    print(f"{a.row}: {a.steps} training steps of batch 32 per child, one thread")
    print(f"{'heap':>9} {'user s':>7} {'sys s':>6} {'CPU s':>6} {'faults':>9}")
    for _ in range(a.pairs):
        cpu = {}
        for mode in ("default", "ichbench"):
            env = dict(os.environ, OMP_NUM_THREADS="1")
            env.pop("ICHBENCH_HEAP", None)
            if mode == "default":
                env["ICHBENCH_HEAP"] = "default"
            out = subprocess.run([sys.executable, __file__, "--child", "--row", a.row, "--steps", str(a.steps)],
                                 env=env, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            cpu[mode] = r["user"] + r["sys"]
            print(f"{r['heap']:>9} {r['user']:7.2f} {r['sys']:6.2f} {cpu[mode]:6.2f} {r['faults']:9d}")
        ratios.append(cpu["default"] / cpu["ichbench"])
    print(f"CPU time, C library defaults / ichbench settings: median {statistics.median(ratios):.2f} "
          f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
