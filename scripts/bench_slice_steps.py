"""What each per-slice step of preprocessing costs beside the bare decode, in milliseconds of CPU a slice.

Issue 24 item 1: where `ichbench preprocess` spends more than `pydicom.dcmread` + the rescale on
uncompressed files. Reads at most `--slices` files of the largest series of a DICOM folder (default: the real
CQ500-CT-0 in ../shared/data; the pipeline's header index and series plan), decodes them once
(`dicomio.iter_hu`), then times each step of `cache/slices.SliceCacher.add`
on every slice, in this process, best of `--repeats` (CPU time, `time.process_time`), with the C heap settings
of every `ichbench` command (`training.heap`):

    bare decode   dcmread + pixel_array * RescaleSlope + RescaleIntercept (float32), the bench's baseline
    to_hu         the compiled stored -> HU conversion (inputs/sweep_jit.to_hu)
    hu_check      inputcheck.HuSample.add (the series' HU check, gathered slice by slice)
    window_resize the three windows and the HU at 128 px (inputs/sweep.window_resize, compiled)
    quantise      windowing.quantise (the uint8 codes)
    head_mask     masks.head_mask at 128 px (and its parts: labelling alone, the largest component, hole filling)
    brain_mask    masks.brain_mask at 128 px (given the head)
    head + brain compiled   both masks in one compiled pass (masks.head_and_brain(jit=True), sweep_jit.masks)
    window_resize with the HU sample, hu_check of that sample: the sweep taking hu[::4, ::4] on the way
                  (sweep.window_resize_sampled) and HuSample.add_sampled of it, as preprocess runs them
    packbits      np.packbits of the two masks (the spool's writes)

    PYTHONPATH=src .venv/bin/python scripts/bench_slice_steps.py [--dicom DIR] [--slices 300] [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def per_slice(fn, items, repeats: int) -> float:
    """Best CPU milliseconds per item of `fn` over `items`."""
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        for x in items:
            fn(x)
        best = min(best, time.process_time() - c0)
    return best / max(len(items), 1) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dicom", default=str(ROOT.parent / "shared/data/cq500/dicom"), help="a DICOM folder")
    ap.add_argument("--slices", type=int, default=300, help="at most this many files of its largest series")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("ICHBENCH_JIT", "1")
    sys.path.insert(0, str(ROOT / "src"))
    import cv2
    import pydicom

    from ichbench.bench.machine import machine
    from ichbench.inputs import dicom_index, dicomio, masks, sweep_jit
    from ichbench.inputs.inputcheck import HuSample
    from ichbench.inputs.sweep import window_resize, window_resize_sampled
    from ichbench.inputs.windowing import PAPER_WINDOWS, quantise
    from ichbench.training.heap import keep_freed_memory

    keep_freed_memory()          # the C heap settings every `ichbench` command runs with (cli.main)

    index, _ = dicom_index.index_folder(a.dicom)              # the pipeline's header index and series plan
    if index.empty:
        sys.exit(f"{a.dicom}: no usable CT image file")
    series = index["series_uid"].value_counts().idxmax()
    plan = dicomio.plan_series(index[index["series_uid"] == series])
    decoded = list(itertools.islice(dicomio.iter_hu(plan, reuse=False, jit=True), a.slices))
    if not decoded:
        sys.exit(f"{a.dicom}: no file of series {series} decodes")
    hus = [hu for _, hu in decoded]
    files = [plan.files["path"][i] for i in plan.decoded[:len(hus)]]
    raws = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in files:
            ds = pydicom.dcmread(p)
            raws.append((ds.pixel_array, float(ds.RescaleSlope), float(ds.RescaleIntercept)))

    def bare(p):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p)
            return ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)

    out = np.empty(hus[0].shape, np.float32)
    small = [window_resize(h, PAPER_WINDOWS, 128, jit=True) for h in hus]
    heads128 = [masks.head_mask(s[1]) for s in small]
    brains128 = [masks.brain_mask(s[1], h) for s, h in zip(small, heads128)]
    sample = HuSample()
    sampled = [window_resize_sampled(h, PAPER_WINDOWS, 128, sample.stride)[2] for h in hus]
    rows = [
        ("bare decode", per_slice(bare, files, a.repeats)),
        ("to_hu", per_slice(lambda r: sweep_jit.to_hu(r[0], r[1], r[2], out), raws, a.repeats)),
        ("hu_check", per_slice(sample.add, hus, a.repeats)),
        ("window_resize", per_slice(lambda h: window_resize(h, PAPER_WINDOWS, 128, jit=True), hus, a.repeats)),
        ("window_resize with the HU sample", per_slice(
            lambda h: window_resize_sampled(h, PAPER_WINDOWS, 128, sample.stride), hus, a.repeats)),
        ("hu_check of that sample", per_slice(lambda v: HuSample().add_sampled(v) if v is not None else None,
                                              sampled, a.repeats)),
        ("quantise", per_slice(lambda s: quantise(s[0]), small, a.repeats)),
        ("head_mask", per_slice(lambda s: masks.head_mask(s[1]), small, a.repeats)),
        ("  of it: labelling", per_slice(lambda s: cv2.connectedComponents(
            masks._u8(s[1] > masks.AIR_HU), connectivity=4, ltype=cv2.CV_32S), small, a.repeats)),
        ("  of it: largest component", per_slice(lambda s: masks._largest_component(s[1] > masks.AIR_HU), small,
                                                 a.repeats)),
        ("  of it: hole filling", per_slice(masks._fill_holes, heads128, a.repeats)),
        ("brain_mask", per_slice(lambda k: masks.brain_mask(small[k][1], heads128[k]), range(len(small)),
                                 a.repeats)),
        ("head + brain compiled", per_slice(lambda s: masks.head_and_brain(s[1], jit=True), small, a.repeats)),
        ("packbits", per_slice(lambda k: (np.packbits(heads128[k]), np.packbits(brains128[k])), range(len(small)),
                               a.repeats)),
    ]
    load = os.getloadavg()
    print(f"# bench_slice_steps  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  {machine()}  "
          f"load {load[0]:.2f}")
    print(f"# {len(files)} files of series {series} ({plan.rows} x {plan.cols}) in {a.dicom}")
    print("| step | CPU ms a slice |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")
    ms = dict(rows)
    steps = sum(ms[k] for k in ("to_hu", "hu_check", "window_resize", "quantise", "head_mask", "brain_mask",
                                 "packbits"))
    print(f"| the steps beside the decode, together (OpenCV masks) | {steps:.3f} |")
    compiled = steps - ms["head_mask"] - ms["brain_mask"] + ms["head + brain compiled"]
    print(f"| the same with the compiled masks | {compiled:.3f} |")
    fused = compiled - ms["window_resize"] - ms["hu_check"] + ms["window_resize with the HU sample"] \
        + ms["hu_check of that sample"]
    label = "the same with the HU sample from the sweep (preprocess from JIT_MIN_SLICES)"
    print(f"| {label} | {fused:.3f} |")


if __name__ == "__main__":
    main()
