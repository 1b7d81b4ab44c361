"""The bootstrap kernel `evaluation.weighted.Ranking` of another source tree against this one, alternating in one
process, with a check that both give the same AUC and sensitivities bit for bit (and how far AP moved).

Sizes: a fold of the 75 k and of the 750 k bench (15 k and 150 k slices, 500 / 5,000 patients), scores with
heavy ties (2 decimals) and without (7 decimals). Prints seconds per call (3 alternating pairs), the median
ratio old / new and whether every metric is identical.

    PYTHONPATH=src .venv/bin/python scripts/bench_ranking.py --old-src /work/main/src
"""
import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

from ichbench.bench.machine import machine
from ichbench.evaluation import weighted as new


def load_old(src: str):
    spec = importlib.util.spec_from_file_location("old_weighted", Path(src) / "ichbench/evaluation/weighted.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-src", required=True, help="src/ folder of the version compared against")
    a = ap.parse_args(argv)
    old = load_old(a.old_src)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    for n, patients, draws, decimals in ((15_000, 500, 1000, 2), (150_000, 5000, 100, 2), (150_000, 5000, 100, 7)):
        pidx = np.sort(rng.integers(0, patients, n))
        y = rng.random(n) < 0.4
        s = np.round(rng.normal(size=n) + y, decimals)
        counts = rng.poisson(1, (draws, patients)).astype(np.int32)
        t, res = {"old": [], "new": []}, {}
        for _ in range(3):
            for name, mod in (("old", old), ("new", new)):
                t0 = time.perf_counter()
                res[name] = mod.Ranking(y, s, pidx).metrics(counts, (0.90, 0.95))
                t[name].append(time.perf_counter() - t0)
        same = all(np.array_equal(res["old"][k], res["new"][k], equal_nan=True) for k in res["old"] if k != "AP")
        ap_rel = float(np.nanmax(np.abs(res["old"]["AP"] - res["new"]["AP"]) / np.abs(res["old"]["AP"])))
        ratio = np.median(np.array(t["old"]) / np.array(t["new"]))
        print(f"{n} units x {draws} draws, {decimals} decimals: old {' '.join(f'{v:.2f}' for v in t['old'])} s, "
              f"new {' '.join(f'{v:.2f}' for v in t['new'])} s, median ratio {ratio:.2f}x, "
              f"AUC and sensitivities identical {same}, "
              f"AP largest relative difference {ap_rel:.1e}; "
              f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
