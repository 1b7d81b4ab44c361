"""How much of AnatPaste's blurred paste mask falls outside the pasted box (where `halo: black`, the reference's
rule, blends toward black): the mean share of the mask mass outside the box, per blur width, at 128 px.

    .venv/bin/python scripts/anatpaste_halo.py
"""
from __future__ import annotations

import datetime

import numpy as np
import torch

from ichbench.anomalies import two_stage as an


def main() -> int:
    torch.set_num_threads(1)
    size, n = 128, 400
    x = torch.full((n, 3, size, size), 0.5)           # flat: the patch equals what it covers, only the halo changes pixels
    brain = torch.ones(n, size, size, dtype=torch.bool)
    print(f"AnatPaste defaults, {n} draws per width, {size} px, {datetime.date.today()}")
    for radius in (7, 10, 14):
        s = radius / 224
        gen = an.AnatPaste(blur_min=s, blur_max=s, jitter=0.0, alpha_min=1.0, alpha_max=1.0)
        syn = gen(x, np.random.default_rng(0), brain_mask=brain)
        lab, outside = syn.label[:, 0], (syn.x != x).any(1)
        share = (lab * outside).sum((1, 2)) / lab.sum((1, 2))
        print(f"blur {radius} px at 224 (sigma {s * size:.2f} px): mask mass outside the box "
              f"{100 * float(share.mean()):.1f} % (median {100 * float(share.median()):.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
