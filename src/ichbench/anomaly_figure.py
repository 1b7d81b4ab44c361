"""The synthetic-anomaly figure: each generator's output on a few training slices, with its label map.

    plot_synthetic_anomalies(images, head_masks, brain_masks, "results/figures/synthetic_anomalies.png", seed=0)

`images` are (N, C, S, S) slices in [-1, 1] (or the cache's uint8 codes), the masks (N, S, S) bool.
`toy_head_slices` makes head-like test slices (skull, brain, ventricles, noise) from HU through the
pipeline's own windowing and mask code, for tests, benchmarks and a figure without a slice cache.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import anomalies as an
from . import one_stage_anomalies as osa
from .masks import brain_mask, head_mask
from .windowing import PAPER_WINDOWS, apply_windows, dequantise, quantise

#: (column title, generator) in Table 1 order; each is called on the whole batch
GENERATORS = (
    ("NSA", osa.NSA(label="binary")),
    ("NSA-Intensity", osa.NSA(label="logistic")),
    ("FPI", osa.FPI()),
    ("FPI-Poisson", osa.FPI(poisson=True)),
    ("CutPaste", osa.CutPaste()),
    ("CutPaste (2 stage)", an.CutPasteAug()),
    ("AnatPaste", an.AnatPaste()),
)


def toy_head_slices(n: int, size: int = 128, seed: int = 0, noise_hu: float = 5.0):
    """n head-like axial slices: -> (images float32 (n, 3, S, S) in [-1, 1] on the cache's 8-bit grid,
    head masks, brain masks (n, S, S) bool), computed with the pipeline's windows and masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    hus = np.empty((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(-0.04, 0.04, 2)
        ay, ax = rng.uniform(0.36, 0.44), rng.uniform(0.30, 0.38)
        r = np.sqrt(((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2)
        hu = np.full((size, size), -1000.0, np.float32)
        hu[r < 1.0] = 40.0                                   # scalp
        hu[r < 0.95] = rng.uniform(700, 1200)                # skull
        inside = r < 0.86
        # grey/white matter texture: smooth noise of +-8 HU around 32 HU
        tex = rng.normal(0, 1, (size // 8, size // 8)).astype(np.float32)
        tex = torch.nn.functional.interpolate(torch.from_numpy(tex)[None, None], size=(size, size), mode="bicubic",
                                              align_corners=False)[0, 0].numpy()
        hu[inside] = 32.0 + 8.0 * tex[inside]
        for sx in (-1, 1):                                   # lateral ventricles (CSF)
            v = ((yy - cy + 0.03) / rng.uniform(0.07, 0.12)) ** 2 + ((xx - cx - sx * 0.06) / 0.035) ** 2 < 1
            hu[v & inside] = 5.0
        hus[i] = hu + rng.normal(0, noise_hu, (size, size)).astype(np.float32) * (hu > -900)
    images = dequantise(quantise(apply_windows(hus, PAPER_WINDOWS)))
    heads = np.stack([head_mask(h) for h in hus])
    brains = np.stack([brain_mask(h, m) for h, m in zip(hus, heads)])
    return images.astype(np.float32), heads, brains


def plot_synthetic_anomalies(images, head_masks, brain_masks, out_png, seed: int = 0, channel: int = 0) -> Path:
    """Figure: one pair of rows per slice (top: the generated image in window `channel`, the brain
    window by default; bottom: its label map, 0 black to 1 yellow), one column per generator, the
    first column the original slice with its head (red) and brain (blue) mask outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    x = torch.from_numpy(dequantise(images) if images.dtype == np.uint8 else images.astype(np.float32))
    head = torch.from_numpy(np.asarray(head_masks, dtype=bool))
    brain = torch.from_numpy(np.asarray(brain_masks, dtype=bool))
    n = x.shape[0]
    outputs = []
    for k, (_, gen) in enumerate(GENERATORS):
        rng = np.random.default_rng([seed, k])
        outputs.append(gen(x, rng, head_mask=head, brain_mask=brain))
    cols = 1 + len(GENERATORS)
    fig, axes = plt.subplots(2 * n, cols, figsize=(1.6 * cols, 3.3 * n), squeeze=False)
    for i in range(n):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(x[i, channel].numpy(), cmap="gray", vmin=-1, vmax=1)
        bottom[0].imshow(x[i, channel].numpy(), cmap="gray", vmin=-1, vmax=1)
        bottom[0].contour(head[i].numpy(), levels=[0.5], colors="r", linewidths=0.6)
        bottom[0].contour(brain[i].numpy(), levels=[0.5], colors="c", linewidths=0.6)
        for j, syn in enumerate(outputs, start=1):
            top[j].imshow(syn.x[i, channel].numpy(), cmap="gray", vmin=-1, vmax=1)
            bottom[j].imshow(syn.label[i, 0].numpy(), cmap="viridis", vmin=0, vmax=1)
        if i == 0:
            top[0].set_title("slice", fontsize=7)
            for j, (title, _) in enumerate(GENERATORS, start=1):
                top[j].set_title(title, fontsize=7)
        top[0].set_ylabel(f"slice {i}", fontsize=7)
        bottom[0].set_ylabel("label / masks", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out
