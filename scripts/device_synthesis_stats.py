"""Statistics of the one-stage synthetic anomalies: the CPU generators against their device twins.

    .venv/bin/python scripts/device_synthesis_stats.py [--fold 0] [--slices 256] [--batch 64] [--seeds 4]
        [--same-seeds 1]

For each one-stage row (NSA, NSA-Intensity, FPI, FPI-Poisson, CutPaste) it builds the row's CPU generator
(`ichbench.anomalies.one_stage`, NumPy/OpenCV) and its device twin (`ichbench.anomalies.device`, run here on
CPU torch) with the row's hyper-parameters from config.yaml (`ichbench.config.method_params`), feeds both
the same cached training slices of one fold (a seeded sample of results/splits/fold-<k>.csv, part `train`)
in the same batches, with `--seeds` seeds each (numpy Generator for the CPU path, torch.Generator for the
device path: different random numbers, so only the distributions can agree), and prints per statistic the
mean over batches +- its standard error (every batch of every seed is one replicate), CPU then device, and
their difference in standard errors (z). Then it feeds both paths the same random numbers ("same draws").

Statistics (per slice unless said; "changed" = mean over channels of |x' - x| > 0, in grey levels of 0-255):
  labelled      share of slices with a non-empty label
  patches       patches applied per slice (CPU: `_one_patch` results, device: `_place`'s ok)
  no patch      share of slices without any applied patch
  box px        area of an applied patch box (pixels), per patch
  label px      label area (pixels, label > 0) of a labelled slice: mean, and the median over slices
  label value   mean label value where the label is > 0
  |dx| in lab   mean |x' - x| on labelled pixels
  chg off lab   share of changed pixels that carry no label
  lab off head  share of labelled pixels off the slice's head mask (the source object over the
                destination's air: what the destination-overlap check bounds)
  Poisson rows also: |dx| off lab (mean |x' - x| of changed pixels without label), sub-tol (share of
  changed pixels with |x' - x| <= tol) and p95 |dx| in lab (95th percentile of |x' - x| on labelled pixels).
  same draws    both paths fed the device's random numbers (`--same-seeds` seeds). Placement (CPU
                `_one_patch`, device `_place`): the share of active patches that one path applies and the
                other skips, or that both apply at different boxes (0 where the checks are the same).
                Synthesis (CPU `example`, device `__call__`): the share of labelled pixels (either path)
                that only one path labels, the mean |label difference| there, and over the pixels of either
                path's boxes the mean |x'_cpu - x'_dev| and the share differing by more than 1 grey level.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ichbench import config as cfgmod
from ichbench.anomalies import device as da
from ichbench.anomalies import one_stage as osa
from ichbench.methods import get_method
from ichbench.training.data import load_slices

ROWS = ["NSA", "NSA-Intensity", "FPI", "FPI-Poisson", "CutPaste"]
POISSON = {"NSA", "NSA-Intensity", "FPI-Poisson"}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def counting_cpu(gen: osa.PatchExample):
    """The CPU generator with a record of the applied patches (per image: count; per patch: box area)."""
    log = {"count": [], "box": []}
    local = threading.local()

    @dataclasses.dataclass(frozen=True)
    class Counting(osa.PatchExample):
        def _one_patch(self, *a, **kw):
            done = super()._one_patch(*a, **kw)
            if done is not None:
                y0, y1, x0, x1 = done[1]
                local.n += 1
                log["box"].append((y1 - y0) * (x1 - x0))
            return done

        def example(self, *a, **kw):
            local.n = 0
            out = super().example(*a, **kw)
            log["count"].append(local.n)
            return out

    return Counting(**{f.name: getattr(gen, f.name) for f in dataclasses.fields(gen)}), log


def counting_device(gen: da.DevicePatchExample):
    """The device generator with the same record (from `_place`'s ok, per patch k)."""
    log = {"count": [], "box": [], "_ok": []}

    @dataclasses.dataclass(frozen=True)
    class Counting(da.DevicePatchExample):
        def _place(self, *a, **kw):
            ok, s, (dy0, dx0, h, w) = super()._place(*a, **kw)
            log["_ok"].append(ok.clone())
            log["box"].extend((h * w)[ok].tolist())
            return ok, s, (dy0, dx0, h, w)

        def __call__(self, *a, **kw):
            log["_ok"].clear()
            out = super().__call__(*a, **kw)
            log["count"].extend(torch.stack(log["_ok"]).sum(0).tolist())
            return out

    return Counting(**{f.name: getattr(gen, f.name) for f in dataclasses.fields(gen)}), log


def generators(cfg: dict, name: str):
    """The row's CPU and device generators with its configured hyper-parameters (as training builds them)."""
    cls = get_method(name)
    method = cls.__new__(cls)                 # only the generator factories: no network is built
    method.params = cfgmod.method_params(cfg, name)
    return method.make_generator(), method.make_device_generator()


def batches(gen, kind: str, log: dict, x: torch.Tensor, head: torch.Tensor, batch: int, seed: int):
    """Yield (slices, head masks, (x', label, region)) batch by batch, the log holding that batch's patches."""
    for i in range(0, len(x), batch):
        xb, hb = x[i:i + batch], head[i:i + batch]
        rng = np.random.default_rng([seed, i]) if kind == "cpu" else torch.Generator().manual_seed(seed * 100003 + i)
        log["count"].clear()
        log["box"].clear()
        syn = gen(xb, rng, head_mask=hb)
        yield xb, hb, (syn.x, syn.label[:, 0].float(), syn.region)


def same_draws(cpu_gen, dev_gen, x, head, batch: int, seeds: int) -> dict[str, float]:
    """Both paths fed the same random numbers (the device's draws, the resize factor in float64 as numpy draws
    it): the placement alone (CPU `_one_patch`, device `_place`) and the whole synthesis (CPU `example` per
    image, device `__call__` with those draws)."""
    holder: dict = {}

    @dataclasses.dataclass(frozen=True)
    class Fixed(type(dev_gen)):
        def draw(self, *a, **kw):
            return holder["d"]

    fixed = Fixed(**{f.name: getattr(dev_gen, f.name) for f in dataclasses.fields(dev_gen)})
    imgs = np.round((x.numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    r = dict.fromkeys(("act", "acc", "box", "lab_union", "lab_xor", "lab_absdiff", "reg", "img_absdiff",
                       "img_gt1"), 0.0)
    for seed in range(seeds):
        for i in range(0, len(x), batch):
            hb = head[i:i + batch].bool()
            n, size = len(hb), tuple(hb.shape[1:])
            d = dev_gen.draw(torch.Generator().manual_seed(seed * 100003 + i), n, size, x.device)
            obj_hat = torch.fft.rfft2(hb.double()) if dev_gen.shift else None
            placed = [dev_gen._place(d, k, hb, da.integral(hb), obj_hat) for k in range(dev_gen.max_patches)]
            holder["d"] = d
            syn = fixed(x[i:i + batch], None, head_mask=hb)
            dev_x = np.round((syn.x.numpy() + 1) * 127.5).transpose(0, 2, 3, 1)
            dn = {k: (v.double() if k == "scale" else v).numpy() for k, v in d.items()}
            ob = hb.numpy()
            for b in range(n):
                s = b if cpu_gen.same else int(dn["src"][b])
                draw = {k: v[b] for k, v in dn.items()}
                for k, (ok, _, (dy0, dx0, h, w)) in enumerate(placed):
                    if not draw["active"][k]:
                        continue
                    r["act"] += 1
                    one = cpu_gen._one_patch(imgs[i + b], imgs[i + s], ob[b], ob[s], draw, k, float(draw["alpha"]))
                    if (one is not None) != bool(ok[b]):
                        r["acc"] += 1
                    elif one is not None and tuple(one[1]) != (int(dy0[b]), int(dy0[b] + h[b]), int(dx0[b]),
                                                               int(dx0[b] + w[b])):
                        r["box"] += 1
                out, lab, reg = cpu_gen.example(imgs[i + b], imgs[i + s], ob[b], ob[s], draw)
                dlab, dreg = syn.label[b, 0].numpy(), syn.region[b].numpy()
                union = (lab > 0) | (dlab > 0)
                r["lab_union"] += union.sum()
                r["lab_xor"] += ((lab > 0) != (dlab > 0)).sum()
                r["lab_absdiff"] += np.abs(lab - dlab)[union].sum()
                both = reg | dreg
                diff = np.abs(out.astype(np.float64) - dev_x[b]).mean(-1)[both]
                r["reg"] += both.sum()
                r["img_absdiff"] += diff.sum()
                r["img_gt1"] += (diff > 1).sum()
    return r


def print_same_draws(r: dict) -> None:
    act, reg, union = max(1, r["act"]), max(1, r["reg"]), max(1, r["lab_union"])
    print(f"  same draws, placement: {r['act']:.0f} active patches, kept by one path only {r['acc']:.0f} "
          f"({r['acc'] / act:.2%}), by both at different boxes {r['box']:.0f} ({r['box'] / act:.2%})")
    print(f"  same draws, synthesis: labelled pixels (either path) labelled by one only {r['lab_xor'] / union:.2%}, "
          f"mean |label diff| there {r['lab_absdiff'] / union:.4f}; box pixels (either path): mean |x'_cpu - "
          f"x'_dev| {r['img_absdiff'] / reg:.3f} grey levels, > 1 grey level {r['img_gt1'] / reg:.2%}")


def stats(x, head, out, log, tol: float, poisson: bool) -> dict[str, float]:
    x1, lab, _ = out
    diff = (x1.float() - x.float()).abs().mean(1) * 127.5           # grey levels
    changed = diff > 1e-3
    on = lab > 0
    per_slice = on.flatten(1).sum(1).float()
    labelled = per_slice > 0
    nan = float("nan")
    s = {"labelled": labelled.float().mean().item(),
         "patches": float(np.mean(log["count"])),
         "no patch": float(np.mean(np.asarray(log["count"]) == 0)),
         "box px": float(np.mean(log["box"])) if log["box"] else nan,
         "label px mean": per_slice[labelled].mean().item() if labelled.any() else nan,
         "label px median": per_slice[labelled].median().item() if labelled.any() else nan,
         "label value": lab[on].mean().item() if on.any() else nan,
         "|dx| in lab": diff[on].mean().item() if on.any() else nan,
         "chg off lab": (changed & ~on).sum().item() / max(1, changed.sum().item()),
         "lab off head": (on & ~head).sum().item() / max(1, on.sum().item())}
    if poisson:
        off = changed & ~on
        s["|dx| off lab"] = diff[off].mean().item() if off.any() else nan
        s["sub-tol"] = (changed & (diff <= tol)).sum().item() / max(1, changed.sum().item())
        s["p95 |dx| in lab"] = torch.quantile(diff[on], 0.95).item() if on.any() else nan
    return s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--slices", type=int, default=256, help="N train slices of the fold (seeded sample)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (the source image is another of the batch)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--same-seeds", type=int, default=1, help="seeds of the same-draws comparison")
    ap.add_argument("--rows", nargs="*", default=ROWS)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CPU path uses synth_workers)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    print("command:", " ".join(shlex.quote(v) for v in [sys.executable, *sys.argv]))
    print(f"machine: nproc {os.cpu_count()}, {_cpu_model()}; torch {torch.__version__}, {a.threads} thread(s)")
    print("date:", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    cfg = cfgmod.load(a.config)
    manifest = pd.read_csv(f"results/splits/fold-{a.fold}.csv")
    train = manifest[manifest["part"] == "train"]
    data = load_slices(train.sample(n=min(a.slices, len(train)), random_state=0))   # patients mixed, as in training
    x = torch.from_numpy(data.images).float() / 127.5 - 1.0       # the [-1, 1] slices on the 8-bit grid
    head = torch.from_numpy(data.masks["head_mask"])
    print(f"data: results/splits/fold-{a.fold}.csv train, {len(x)} slices {tuple(x.shape[1:])}, "
          f"batch {a.batch}, {a.seeds} seeds; mean +- s.e. over the batches of all seeds, "
          "z = (device - CPU) / s.e. of the difference")
    for name in a.rows:
        t0 = time.perf_counter()
        cpu_gen, dev_gen = generators(cfg, name)
        per = {"cpu": [], "device": []}
        for kind, gen in (("cpu", cpu_gen), ("device", dev_gen)):
            counted, log = (counting_cpu if kind == "cpu" else counting_device)(gen)
            for seed in range(a.seeds):
                for xb, hb, out in batches(counted, kind, log, x, head, a.batch, seed):
                    per[kind].append(stats(xb, hb, out, log, gen.tol, name in POISSON))
        print(f"\n{name}  ({time.perf_counter() - t0:.0f} s)")
        print(f"  {'statistic':<17}{'CPU':>20}{'device':>20}{'z':>7}")
        for key in per["cpu"][0]:
            c = np.array([p[key] for p in per["cpu"]])
            d = np.array([p[key] for p in per["device"]])
            se_c, se_d = (c.std(ddof=1) / np.sqrt(len(c)), d.std(ddof=1) / np.sqrt(len(d))) if len(c) > 1 else (0, 0)
            se = np.hypot(se_c, se_d)
            z = (d.mean() - c.mean()) / se if se > 0 else float("nan")
            fmt = (lambda m, e: f"{m:.1f} +- {e:.1f}") if abs(c.mean()) >= 10 else (lambda m, e: f"{m:.4f} +- {e:.4f}")
            print(f"  {key:<17}{fmt(c.mean(), se_c):>20}{fmt(d.mean(), se_d):>20}{z:>7.1f}")
        print_same_draws(same_draws(cpu_gen, dev_gen, x, head, a.batch, a.same_seeds))
        print(f"  ({time.perf_counter() - t0:.0f} s in all)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
