"""What bf16 autocast changes against float32: the same rows, same initial weights and batches, a few steps.

    python scripts/precision_check.py --rows AE AE-U CutPaste-2stage --steps 20 --device cpu

Prints per row the last training loss in each precision, the relative difference of the slice scores of
held-out toy slices after training, their rank correlation, and seconds per step. A handful of steps on toy
slices, not a Table 1 figure: on a GPU run it with more steps (and on the synthetic set via recipe paper-bf16).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from ichbench.synthetic.toy import toy_head_slices
from ichbench.methods import get_method


def run(name: str, precision: str, batches: list[dict], held_out: dict, steps: int, device: torch.device, size: int):
    torch.manual_seed(0)
    extra = {"steps_per_epoch": None} if "steps_per_epoch" in get_method(name).full_defaults() else {}
    m = get_method(name)({"precision": precision, **extra}, in_channels=3, image_size=size, device=device)
    m.configure_schedulers(steps_per_epoch=len(batches), epochs=max(1, steps // len(batches)))
    t0 = time.perf_counter()
    losses = [m.training_step(batches[s % len(batches)], s)["loss"] for s in range(steps)]
    per_step = (time.perf_counter() - t0) / steps
    m.fit_end(lambda: iter(batches))
    scores = m.score(held_out)[0].double().cpu().numpy()
    return losses, scores, per_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=["AE", "AE-U", "CutPaste-2stage"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    x, head, brain = toy_head_slices(3 * a.batch, a.size, seed=0)
    t = {"x": torch.from_numpy(x).to(dev), "head_mask": torch.from_numpy(head).to(dev),
         "brain_mask": torch.from_numpy(brain).to(dev)}
    batches = [{k: v[i * a.batch:(i + 1) * a.batch] for k, v in t.items()} for i in range(2)]
    held_out = {k: v[2 * a.batch:] for k, v in t.items()}
    print(f"{'row':<18}{'loss fp32':>11}{'loss bf16':>11}{'score rel diff':>16}{'spearman':>10}{'s/step fp32':>13}{'bf16':>7}")
    for name in a.rows:
        l32, s32, t32 = run(name, "fp32", batches, held_out, a.steps, dev, a.size)
        l16, s16, t16 = run(name, "bf16", batches, held_out, a.steps, dev, a.size)
        rel = float(np.median(np.abs(s16 - s32) / np.maximum(np.abs(s32), 1e-12)))
        rho = float(spearmanr(s32, s16)[0])
        print(f"{name:<18}{l32[-1]:>11.5g}{l16[-1]:>11.5g}{rel:>16.3g}{rho:>10.3f}{t32:>13.2f}{t16:>7.2f}")


if __name__ == "__main__":
    main()
