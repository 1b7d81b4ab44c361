"""The synthetic-anomaly figure: each generator's output on a few training slices, with its label map.

    plot_synthetic_anomalies(images, head_masks, brain_masks, "results/figures/synthetic_anomalies.png", seed=0)

`images` are (N, C, S, S) slices in [-1, 1] (or the cache's uint8 codes), the masks (N, S, S) bool.
`ichbench.synthetic.toy.toy_head_slices` makes slices for it without a slice cache.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..anomalies import one_stage as osa
from ..anomalies import two_stage as an
from ..inputs.windowing import dequantise

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
