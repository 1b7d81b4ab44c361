"""Figure of the synthetic anomalies: each self-supervised row's generator on a few training slices,
with its label map.

    .venv/bin/python scripts/plot_synthetic_anomalies.py --out results/figures/synthetic_anomalies.png \
        [--npz results/cache/<series>.npz ...] [--n 3] [--seed 0]

With --npz, the slices come from the preprocessing cache (the n slices with the most brain, spread
over the given series); without, from `toy_head_slices` (head-like slices made from HU).
"""
from __future__ import annotations

import argparse

import numpy as np

from ichbench.evaluation.anomaly_figure import plot_synthetic_anomalies
from ichbench.synthetic.toy import toy_head_slices


def slices_from_cache(paths: list[str], n: int):
    images, heads, brains = [], [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            images.append(z["images"])
            heads.append(z["head_mask"])
            brains.append(z["brain_mask"])
    images, heads, brains = (np.concatenate(a) for a in (images, heads, brains))
    # the slices with the most brain, spaced out so that they are not neighbours
    order = np.argsort(-brains.reshape(len(brains), -1).sum(1))
    pick = order[:: max(1, len(order) // (4 * n))][:n]
    pick = np.sort(pick)
    return images[pick], heads[pick], brains[pick]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/figures/synthetic_anomalies.png")
    ap.add_argument("--npz", nargs="*", default=[], help="slice cache files (preprocess output)")
    ap.add_argument("--n", type=int, default=3, help="number of slices")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128, help="toy slice size (without --npz)")
    a = ap.parse_args(argv)
    if a.npz:
        images, heads, brains = slices_from_cache(a.npz, a.n)
    else:
        images, heads, brains = toy_head_slices(a.n, a.size, seed=a.seed)
    out = plot_synthetic_anomalies(images, heads, brains, a.out, seed=a.seed)
    print(out)


if __name__ == "__main__":
    main()
