"""Bootstrap metrics of one ranking, previous vs current implementation, alternating in one process.

The previous one (cumulative counts at every distinct score, d140d74) is kept in tests/test_weighted.py;
the current one is `evaluation.weighted.Ranking`. Sizes: a fold of the 75 k and of the 750 k bench (15 k and
150 k slices, 500 / 5,000 patients), 1000 / 200 draws. Prints seconds per call (3 alternating pairs) and
the median ratio.

    PYTHONPATH=src .venv/bin/python scripts/bench_weighted.py
"""
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_weighted import _previous  # noqa: E402

from ichbench.bench.machine import machine  # noqa: E402
from ichbench.evaluation import stats  # noqa: E402

print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; load {os.getloadavg()[0]:.2f}")
for n, patients, draws in ((15_000, 500, 1000), (150_000, 5000, 200)):
    rng = np.random.default_rng(0)
    pidx = np.sort(rng.integers(0, patients, n))
    y = rng.random(n) < 0.4
    s = np.round(rng.normal(size=n) + y, 4)
    counts = rng.poisson(1, (draws, patients)).astype(np.int32)
    step = max(1, 4_000_000 // n)                     # the previous implementation's blocks of draws

    def previous(y, s, pidx, counts):
        return [_previous(y, s, pidx, counts[i:i + step]) for i in range(0, len(counts), step)]

    t = {"previous": [], "current": []}
    for _ in range(3):
        for name, f in (("previous", previous), ("current", stats._weighted)):
            t0 = time.perf_counter()
            f(y, s, pidx, counts)
            t[name].append(time.perf_counter() - t0)
    ratio = np.median(np.array(t["previous"]) / np.array(t["current"]))
    print(f"{n} units x {draws} draws: previous {' '.join(f'{v:.2f}' for v in t['previous'])} s, current "
          f"{' '.join(f'{v:.2f}' for v in t['current'])} s, median ratio {ratio:.1f}x; load {os.getloadavg()[0]:.2f}")
