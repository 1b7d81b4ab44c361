#!/usr/bin/env python
"""Overlap of the pipeline's HU-based head mask with the one-stage reference's object mask, on real CT.

Each series below the DICOM folder (default: ../shared/data/cq500/dicom, searched recursively) is indexed,
loaded and cached exactly as the pipeline does it (`dicom_index.index_folder`, `dicomio.load_series`,
`cache.preprocess.cache_series` with the config's windows and image size, into a temporary folder), so the
`head_mask` compared is the one the one-stage rows get (HU > -500 on the area-resized HU slice, largest
component, holes filled; `inputs.masks.head_mask`).

The reference's object mask (MedIAnomaly / Schlueter et al. `patch_ex`) is computed on the 8-bit image the
reference would read: the cached uint8 codes of the 3 windows as an (H, W, 3) image (what the one-stage code
hands to its generators, `anomalies.two_stage.to_uint8_hwc`), mask = mean over channels > 20 grey levels, then
`cv2.medianBlur(mask.astype(uint8), 7)`. The same on the brain window alone (one grey channel) is shown beside.

Per series: Dice and IoU per slice (mean, min, 5th percentile over slices where either mask has pixels), the
share of the reference's mask outside ours and of ours outside the reference's (pooled over the series'
pixels, and the per-slice mean), and the HU (at the cached size) of the pixels where they disagree.

    .venv/bin/python scripts/head_mask_overlap.py
    .venv/bin/python scripts/head_mask_overlap.py --dicom /data/CQ500 --config config.yaml

Exits 0 with a message when the DICOM folder is absent.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ichbench.bench.machine import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

THRESHOLD = 20          # grey levels (the reference's object threshold on the 8-bit image)
MEDIAN = 7              # the reference's median filter of the object mask


def reference_mask(grey_hwc: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> the reference's object mask (H, W) bool: mean over channels > 20, 7 x 7 median."""
    import cv2

    m = (grey_hwc.mean(axis=2) > THRESHOLD).astype(np.uint8)
    return cv2.medianBlur(m, MEDIAN) > 0


def slice_overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two boolean masks; NaN where both are empty."""
    inter, sa, sb = np.logical_and(a, b).sum(), a.sum(), b.sum()
    union = sa + sb - inter
    if union == 0:
        return np.nan, np.nan
    return 2 * inter / (sa + sb), inter / union


def summarise(ours: np.ndarray, ref: np.ndarray, hu: np.ndarray | None) -> dict:
    """Masks (n, S, S) -> the overlap figures of one series."""
    keep = ours.any(axis=(1, 2)) | ref.any(axis=(1, 2))
    dice, iou = (np.array(v) for v in zip(*[slice_overlap(o, r) for o, r in zip(ours[keep], ref[keep])])) \
        if keep.any() else (np.array([np.nan]), np.array([np.nan]))
    ref_out = ref & ~ours
    ours_out = ours & ~ref
    per_ref = [ro.sum() / max(r.sum(), 1) for ro, r in zip(ref_out[keep], ref[keep]) if r.any()]
    per_ours = [oo.sum() / max(o.sum(), 1) for oo, o in zip(ours_out[keep], ours[keep]) if o.any()]
    out = {
        "slices": len(ours), "slices_used": int(keep.sum()), "used_idx": np.nonzero(keep)[0],
        "only_ref_slices": int((ref.any(axis=(1, 2)) & ~ours.any(axis=(1, 2))).sum()),
        "only_ours_slices": int((ours.any(axis=(1, 2)) & ~ref.any(axis=(1, 2))).sum()),
        "dice": dice, "iou": iou,
        "ref_outside_ours": ref_out.sum() / max(ref.sum(), 1),
        "ours_outside_ref": ours_out.sum() / max(ours.sum(), 1),
        "ref_outside_ours_slice_mean": float(np.mean(per_ref)) if per_ref else np.nan,
        "ours_outside_ref_slice_mean": float(np.mean(per_ours)) if per_ours else np.nan,
        "ours_px": int(ours.sum()), "ref_px": int(ref.sum()),
    }
    if hu is not None:
        for name, region in (("hu_ref_only", ref_out), ("hu_ours_only", ours_out)):
            v = hu[region]
            out[name] = np.percentile(v, [5, 50, 95]) if len(v) else None
    return out


def fmt_stats(v: np.ndarray) -> str:
    v = v[np.isfinite(v)]
    if not len(v):
        return "n/a"
    return f"{v.mean():.4f} / {v.min():.4f} / {np.percentile(v, 5):.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dicom", default=str(ROOT.parent / "shared" / "data" / "cq500" / "dicom"),
                    help="DICOM folder (searched recursively); default ../shared/data/cq500/dicom")
    ap.add_argument("--config", default=str(ROOT / "config.yaml"), help="windows and image size (preprocess)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the resizing")
    args = ap.parse_args()
    t_start = time.perf_counter()
    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}")
    print(f"cwd: {os.getcwd()}")
    print(f"machine: {machine()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    dicom_dir = Path(args.dicom)
    if not dicom_dir.is_dir():
        print(f"SKIPPED: DICOM folder {dicom_dir} does not exist (the shared CQ500 slices are not on this machine); "
              "nothing was measured.")
        return 0

    import torch

    from ichbench import config as cfgmod
    from ichbench.cache.preprocess import AIR_PAD_HU, cache_series
    from ichbench.inputs import dicom_index, dicomio
    from ichbench.inputs.inputcheck import hu_problem
    from ichbench.inputs.masks import masks_for_volume
    from ichbench.inputs.windowing import dequantise, resize, windows_from_config
    from ichbench.anomalies.two_stage import to_uint8_hwc

    torch.set_num_threads(args.threads)
    cfg = cfgmod.load(args.config)
    windows = windows_from_config(cfg["preprocess"]["windows"])
    size = int(cfg["preprocess"]["image_size"])
    print(f"config: {args.config}: image size {size}, windows "
          + ", ".join(f"{w.name} L{w.level:g}/W{w.width:g}" for w in windows))
    print(f"reference object mask: mean over channels of the uint8 image > {THRESHOLD}, cv2.medianBlur ksize {MEDIAN}")
    index, rejected = dicom_index.index_folder(dicom_dir)
    print(f"indexed {len(index)} CT images under {dicom_dir} ({len(rejected)} files rejected)")
    if index.empty:
        print("SKIPPED: no usable CT image.")
        return 0
    brain_c = next((i for i, w in enumerate(windows) if w.name == "brain"), 0)
    results = []
    with tempfile.TemporaryDirectory(prefix="head_mask_overlap-") as tmp:
        for (pid, suid), files in index.groupby(["patient_id", "series_uid"], sort=True):
            t0 = time.perf_counter()
            series = dicomio.load_series(files)
            problem = hu_problem(series.hu)
            npz = Path(tmp) / f"{suid}.npz"
            cache_series(series, npz, windows, size, not_hu=bool(problem))
            with np.load(npz, allow_pickle=False) as z:
                images, ours = z["images"], z["head_mask"]
                padding = tuple(int(v) for v in z["padding"])
            # the 8-bit HWC image the one-stage generators see (the cache codes, via the code's own converter)
            hwc = to_uint8_hwc(dequantise(torch.from_numpy(images)))
            assert np.array_equal(hwc, images.transpose(0, 2, 3, 1)), "uint8 round trip differs from the cache"
            ref3 = np.stack([reference_mask(im) for im in hwc])
            ref1 = np.stack([reference_mask(im[..., brain_c:brain_c + 1]) for im in hwc])
            # the HU at the cached size (as cache_series computes it), to say what the disagreement is made of
            top, bottom, left, right = padding
            hu = series.hu
            if any(padding):
                hu = np.pad(hu, ((0, 0), (top, bottom), (left, right)), constant_values=AIR_PAD_HU)
            hu_small = np.concatenate([resize(hu[s:s + 32, None], size)[:, 0] for s in range(0, len(hu), 32)])
            if not any(padding):
                assert np.array_equal(masks_for_volume(hu_small)[0], ours), "recomputed head mask differs"
            results.append({
                "patient_id": pid, "series_uid": suid, "n": len(images),
                "shape": series.hu.shape[1:], "spacing": series.pixel_spacing, "not_hu": problem,
                "ts": ", ".join(sorted(files["transfer_syntax"].astype(str).unique())),
                "rgb": summarise(ours, ref3, hu_small), "brain": summarise(ours, ref1, hu_small),
                "seconds": time.perf_counter() - t0,
            })

    print()
    for r in results:
        print(f"## {r['patient_id']} series {r['series_uid']}: {r['n']} slices {r['shape'][0]} x {r['shape'][1]}, "
              f"pixel {r['spacing'][0]:.3f} x {r['spacing'][1]:.3f} mm, transfer syntax {r['ts']}"
              + (f", NOT HU: {r['not_hu']}" if r["not_hu"] else "") + f" ({r['seconds']:.1f} s)")
        if r["n"] < int(cfg["preprocess"]["min_slices"]):
            print(f"   (fewer than preprocess.min_slices = {cfg['preprocess']['min_slices']} slices: the pipeline "
                  "would not select this series; its masks are computed all the same)")
    print()
    print(f"Masks at {size} x {size}. Dice / IoU: per slice over slices where either mask has pixels, "
          "`mean / min / 5th percentile`. ref out: share of the reference's mask outside ours; ours out: share of "
          "ours outside the reference's; pooled over the series' pixels (per-slice mean in brackets).")
    print()
    head = ("| series | reference input | slices used (of) | Dice mean / min / p5 | IoU mean / min / p5 "
            "| ref out (slice mean) | ours out (slice mean) | slices only ref / only ours | px ours / ref |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        for key, label in (("rgb", "3 windows, mean"), ("brain", "brain window only")):
            s = r[key]
            print(f"| {r['patient_id']} | {label} | {s['slices_used']} ({s['slices']}) | {fmt_stats(s['dice'])} | "
                  f"{fmt_stats(s['iou'])} | {100 * s['ref_outside_ours']:.2f} % "
                  f"({100 * s['ref_outside_ours_slice_mean']:.2f} %) | {100 * s['ours_outside_ref']:.2f} % "
                  f"({100 * s['ours_outside_ref_slice_mean']:.2f} %) | {s['only_ref_slices']} / "
                  f"{s['only_ours_slices']} | {s['ours_px']} / {s['ref_px']} |")
    print()
    print("HU (area-resized to the cached size) of the pixels where the masks disagree, 5th / 50th / 95th percentile:")
    for r in results:
        for key, label in (("rgb", "3 windows, mean"), ("brain", "brain window only")):
            s = r[key]
            cells = []
            for name, what in (("hu_ref_only", "reference only"), ("hu_ours_only", "ours only")):
                v = s.get(name)
                cells.append(f"{what}: " + ("none" if v is None else " / ".join(f"{x:.0f}" for x in v)))
            print(f"  {r['patient_id']} ({label}): " + "; ".join(cells))
    # worst slices of the largest series, for a look
    big = max(results, key=lambda r: r["n"])
    d = big["rgb"]["dice"]
    if np.isfinite(d).any():
        order = np.argsort(np.where(np.isfinite(d), d, np.inf))[:5]
        print()
        idx = big["rgb"]["used_idx"]
        print(f"{big['patient_id']}: the 5 slices of lowest Dice (3 windows): slice_index (0 = lowest position) "
              f"{', '.join(str(int(idx[i])) for i in order)} of {big['n']}, Dice "
              f"{', '.join(f'{d[i]:.3f}' for i in order)}")
    print()
    print(f"total seconds: {time.perf_counter() - t_start:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
