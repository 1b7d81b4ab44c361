"""What a row's training step costs beyond the bare loop, in CPU seconds (less moved by machine load than wall time).

    python scripts/step_overhead.py [--size 64 --batch 16 --pairs 8] [ROW ...]    # default: the one-stage rows and AE

Per row, in one process, alternating call by call: our `training_step`, the bench's bare step on a fixed
synthetic batch, and (one-stage rows) the row's `segmentation_batch` alone (rotation/shift + synthetic
anomaly); prints the medians of `time.process_time` per call and their ratios. `--foreach` instead compares the
AE step with the optimiser's `foreach` on (ours on a CPU) and off (torch's default there).
Figures: docs/performance.md, "Synthetic anomalies on the device, and `ichbench bench`".
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ichbench.bench import throughput as tp
from ichbench.methods import REGISTRY
from ichbench.synthetic.toy import toy_head_slices
from ichbench.training.heap import keep_freed_memory


def cpu_ms(fns: dict, pairs: int) -> dict[str, float]:
    for f in fns.values():
        f()
    got: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(pairs):
        for k, f in fns.items():
            c = time.process_time()
            f()
            got[k].append(time.process_time() - c)
    return {k: statistics.median(v) * 1000 for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="*", default=["AE", "CutPaste", "NSA", "NSA-Intensity", "FPI", "FPI-Poisson"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--foreach", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    x, head, brain = toy_head_slices(a.batch, a.size, seed=0)
    batch = {"x": torch.from_numpy(x), "head_mask": torch.from_numpy(head), "brain_mask": torch.from_numpy(brain)}
    dev = torch.device("cpu")
    if a.foreach:
        ms = {}
        for on in (True, False):
            torch.manual_seed(0)
            m = REGISTRY["AE"]({"batch_size": a.batch}, in_channels=3, image_size=a.size, device=dev)
            for g in m.optimizers[0].param_groups:
                g["foreach"] = on
            ms[on] = m
        t = cpu_ms({"foreach": lambda: ms[True].training_step(batch, 0),
                    "loop": lambda: ms[False].training_step(batch, 0)}, a.pairs)
        print(f"AE step CPU ms: foreach {t['foreach']:.1f}, loop {t['loop']:.1f}, ratio {t['foreach'] / t['loop']:.3f}")
        return
    for name in a.rows:
        torch.manual_seed(0)
        m = REGISTRY[name]({"batch_size": a.batch, **tp.BENCH_OVERRIDES.get(name, {})}, in_channels=3,
                           image_size=a.size, device=dev)
        m.configure_schedulers(10_000, 1)
        fixed = tp.step_batch(m, batch, m.synthesise(batch)) if name in tp.DEVICE_GENERATORS else batch
        fns = {"ours": lambda: m.training_step(batch, 0), "bare": lambda: tp.bare_step(m, fixed)}
        if hasattr(m, "segmentation_batch"):
            fns["making the batch"] = lambda: m.segmentation_batch(batch)
        t = cpu_ms(fns, a.pairs)
        extra = (f", making the batch {t['making the batch']:.1f} ({t['making the batch'] / t['ours']:.1%} of ours)"
                 if "making the batch" in t else "")
        print(f"{name}: CPU ms per step ours {t['ours']:.1f}, bare {t['bare']:.1f}, bare / ours "
              f"{t['bare'] / t['ours']:.3f}{extra}")


if __name__ == "__main__":
    main()
