"""Localisation metrics of pixel anomaly maps against pixel truth (masks or BHX boxes), computed in the score job.

Per fold, over the test slices with pixel truth (slices of normal scans: every pixel normal; slices of
pathological series with ground truth (`has_gt`): the cached `gt_mask`, i.e. masks or rasterised boxes):

- `pixel_auroc`: ROC AUC over pixels. Every ground-truth pixel enters; of the other pixels a uniform
  random share `negative_rate` (seeded by `seed` and the fold) enters. Sampling within a class leaves
  the AUROC unbiased, so the sample only costs precision, not accuracy.
- `dice_best`: Dice of the thresholded maps pooled over all those pixels, at the single threshold that
  maximises it (an oracle threshold, as in the anomaly-detection literature; an upper bound on what a
  fixed threshold reaches). The sampled normal pixels count 1 / negative_rate times each.
- `max_in_truth`: share of the anomalous slices (ground truth present on the slice) whose map maximum
  lies inside the ground truth; with BHX boxes the share whose map maximum lies in a box.
- `dice_val`, `iou_val`: Dice and IoU on those test pixels at a threshold fixed before the test: the
  `pixel_specificity` quantile (e.g. 0.999) of the validation normal slices' map pixels (sampled at the
  same `negative_rate`, own seed); a pixel is anomalous when its value is above it. `pixel_threshold_val`
  is that threshold and `test_pixel_specificity_val` the specificity it gives on the test normal pixels.

Rows whose slice score is not the mean of their map (GANomaly: latent distance; two-stage rows: a
Gaussian on embeddings, with a Grad-CAM map) have no pixel scores: their metrics are n/a.
The score job writes the result as `fold-K.loc.json`; extra_tables.py collects them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

#: Rows whose slice score does not come from their pixel map (see the module docstring).
MAPLESS = ("GANomaly", "CutPaste-2stage", "AnatPaste")


def has_pixel_scores(method_name: str, method_cls=None) -> bool:
    """Whether a row's pixel map is the source of its slice score (a class may set `map_is_score`)."""
    flag = getattr(method_cls, "map_is_score", None) if method_cls is not None else None
    return bool(flag) if flag is not None else method_name not in MAPLESS


def has_gt_per_row(rows: pd.DataFrame) -> np.ndarray:
    """Whether each manifest row's cached series carries pixel ground truth (NPZ `has_gt`)."""
    out = np.zeros(len(rows), bool)
    for path, g in rows.reset_index(drop=True).groupby("npz", sort=False):
        with np.load(path, allow_pickle=False) as z:
            out[g.index.to_numpy()] = bool(z["has_gt"]) if "has_gt" in z else False
    return out


class PixelAccumulator:
    """Collects the map values of slices with pixel truth, batch by batch, for `result()`."""

    def __init__(self, negative_rate: float = 0.0625, seed: int = 0, fold: int = 0, pixel_specificity: float = 0.999):
        if not 0 < negative_rate <= 1:
            raise ValueError(f"pixel negative rate must be in (0, 1], got {negative_rate}")
        if not 0 < pixel_specificity < 1:
            raise ValueError(f"pixel specificity must be in (0, 1), got {pixel_specificity}")
        self.rate = float(negative_rate)
        self.rng = np.random.default_rng([int(seed), int(fold), 7919])
        self.val_rng = np.random.default_rng([int(seed), int(fold), 7927])
        self.pixel_specificity = float(pixel_specificity)
        self.val_neg: list = []          # sampled map pixels of validation normal slices
        self.pos: list = []              # torch tensors of map values, on the maps' device until `result()`
        self.neg: list = []
        self.n_slices = 0
        self.n_anomalous = 0
        self.n_neg_total = 0
        self.hits_found: list = []       # per-batch hit counts, on the maps' device until `result()`

    def add(self, maps, truth: np.ndarray) -> None:
        """maps (B, H, W): a NumPy array, or a torch tensor on any device (the score job's maps stay on theirs:
        only the sampled pixel values leave it, once, in `result()`); truth (B, H, W) bool on the host:
        slices whose pixel truth is known."""
        import torch

        truth = np.asarray(truth, bool)
        if not isinstance(maps, torch.Tensor):
            maps = torch.from_numpy(np.asarray(maps, np.float32))
        if tuple(maps.shape) != truth.shape:
            raise ValueError(f"anomaly maps are {tuple(maps.shape[1:])}, the ground truth {truth.shape[1:]}")
        maps = maps.detach().float()
        dev = maps.device
        self.n_slices += len(maps)
        t = torch.from_numpy(truth).to(dev)
        self.pos.append(maps[t])
        n_neg = int(truth.size - truth.sum())
        self.n_neg_total += n_neg
        if self.rate >= 1:
            self.neg.append(maps[~t])
        else:
            # one draw per normal pixel in C order: the sample depends on seed, fold and data, not on the device
            sample = np.zeros(truth.shape, bool)
            sample[~truth] = self.rng.random(n_neg) < self.rate
            self.neg.append(maps[torch.from_numpy(sample).to(dev)])
        anomalous = truth.reshape(len(truth), -1).any(axis=1)
        if anomalous.any():
            a = torch.from_numpy(np.nonzero(anomalous)[0]).to(dev)
            top = maps[a].reshape(len(a), -1).argmax(dim=1, keepdim=True)
            self.hits_found.append(t[a].reshape(len(a), -1).gather(1, top).sum())
            self.n_anomalous += int(anomalous.sum())

    def add_validation_normals(self, maps) -> None:
        """maps (B, H, W) of validation slices of normal scans: a seeded sample of their pixels (`negative_rate`)
        sets the fixed pixel threshold."""
        import torch

        if not isinstance(maps, torch.Tensor):
            maps = torch.from_numpy(np.asarray(maps, np.float32))
        maps = maps.detach().float().reshape(-1)
        if self.rate >= 1:
            self.val_neg.append(maps)
        else:
            keep = torch.from_numpy(self.val_rng.random(maps.numel()) < self.rate).to(maps.device)
            self.val_neg.append(maps[keep])

    def result(self) -> dict:
        hits = sum(int(h) for h in self.hits_found)
        pos = np.concatenate([p.cpu().numpy() for p in self.pos]) if self.pos else np.zeros(0, np.float32)
        neg = np.concatenate([n.cpu().numpy() for n in self.neg]) if self.neg else np.zeros(0, np.float32)
        out = {"available": True, "n_slices": self.n_slices, "n_anomalous_slices": self.n_anomalous,
               "n_truth_pixels": int(pos.size), "n_normal_pixels": int(self.n_neg_total),
               "n_normal_pixels_sampled": int(neg.size), "negative_rate": self.rate,
               "pixel_auroc": None, "dice_best": None, "dice_threshold": None,
               "max_in_truth": hits / self.n_anomalous if self.n_anomalous else None}
        if pos.size and neg.size:
            out["pixel_auroc"] = pixel_auroc(pos, neg)
            d, t = best_dice(pos, neg, 1.0 / self.rate)
            out["dice_best"], out["dice_threshold"] = d, t
        val = np.concatenate([v.cpu().numpy() for v in self.val_neg]) if self.val_neg else np.zeros(0, np.float32)
        out.update({"pixel_specificity_target": self.pixel_specificity, "n_val_normal_pixels_sampled": int(val.size),
                    "pixel_threshold_val": None, "dice_val": None, "iou_val": None, "test_pixel_specificity_val": None})
        if val.size and pos.size:
            thr = float(np.quantile(val.astype(np.float64), self.pixel_specificity, method="higher"))
            d, iou, spec = fixed_threshold_overlap(pos, neg, thr, 1.0 / self.rate)
            out.update({"pixel_threshold_val": thr, "dice_val": d, "iou_val": iou, "test_pixel_specificity_val": spec})
        return out


def average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks of `v`, tied values sharing the mean of their ranks (scipy's rankdata, without importing
    scipy.stats, which costs each score job about 1.5 CPU-seconds)."""
    if np.isnan(v).any():
        return np.full(len(v), np.nan)                  # as rankdata: a NaN makes every rank NaN
    order = np.argsort(v, kind="mergesort")
    s = v[order]
    start = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    last = np.r_[first[1:], len(s)]                     # one past each tie group's end
    ranks = np.empty(len(v), np.float64)
    ranks[order] = ((first + 1 + last) / 2.0)[group]
    return ranks


def pixel_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of positive vs negative values (ties count one half), by ranks."""
    ranks = average_ranks(np.concatenate([pos, neg]).astype(np.float64))
    n1, n0 = len(pos), len(neg)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def best_dice(pos: np.ndarray, neg: np.ndarray, neg_weight: float = 1.0) -> tuple[float, float]:
    """Max over thresholds t of Dice(map >= t, truth), pooled; normal pixels weigh `neg_weight` each.
    -> (dice, t)."""
    v = np.concatenate([pos, neg]).astype(np.float64)
    w_pos = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w_neg = np.concatenate([np.zeros(len(pos)), np.full(len(neg), neg_weight)])
    order = np.argsort(-v, kind="stable")
    v, tp, fp = v[order], np.cumsum(w_pos[order]), np.cumsum(w_neg[order])
    last = np.r_[v[1:] != v[:-1], True]          # only thresholds between distinct values
    tp, fp, thr = tp[last], fp[last], v[last]
    dice = 2 * tp / (tp + fp + len(pos))
    k = int(np.argmax(dice))
    return float(dice[k]), float(thr[k])


def fixed_threshold_overlap(pos: np.ndarray, neg: np.ndarray, thr: float, neg_weight: float = 1.0):
    """-> (Dice, IoU, specificity on the normal pixels) of `map > thr` against the truth, pooled; normal pixels
    weigh `neg_weight` each (None where undefined)."""
    tp = float((pos > thr).sum())
    fn = float(len(pos)) - tp
    fp = float((neg > thr).sum()) * neg_weight
    spec = 1.0 - float((neg > thr).mean()) if len(neg) else None
    denom = 2 * tp + fp + fn
    return (2 * tp / denom if denom else None, tp / (tp + fp + fn) if denom else None, spec)


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def write(path: str | os.PathLike, result: dict, **keys) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**keys, **result}, indent=1, sort_keys=True) + "\n")


def brain_mean(maps, brain: np.ndarray):
    """(B, H, W) maps, (B, H, W) brain masks -> mean of each map over its brain mask (NaN where empty), in
    float64: a NumPy array for NumPy maps, a tensor on the maps' device for a torch tensor."""
    import torch

    host = not isinstance(maps, torch.Tensor)
    m = torch.from_numpy(np.asarray(maps)) if host else maps
    b = torch.from_numpy(np.asarray(brain, bool)).to(m.device)
    n = b.reshape(len(b), -1).sum(dim=1)
    s = (m.double() * b).reshape(len(b), -1).sum(dim=1)
    out = torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, float("nan")))
    return out.numpy() if host else out
