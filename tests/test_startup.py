"""Job start-up: a train or score job imports neither scikit-learn, scipy.stats nor pydicom (about 3 CPU-seconds
per job, 180 jobs in the default run), and the numpy rank helper that replaces scipy's in the score job agrees
with scipy.stats.rankdata."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import rankdata

from ichbench.evaluation.localisation import average_ranks, pixel_auroc

HEAVY = ("sklearn", "scipy.stats", "pydicom")


@pytest.mark.parametrize("module", ["ichbench.training.score", "ichbench.training.train", "ichbench.cli"])
def test_a_job_module_does_not_import_the_heavy_libraries(module):
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} loads {out}"


def test_average_ranks_equal_scipys_rankdata():
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 7, 500, 20_000):
        for levels in (1, 2, 13, 10_000):
            v = rng.integers(0, levels, n).astype(np.float64) / 7.0
            assert np.array_equal(average_ranks(v), rankdata(v))
    v = rng.normal(size=50)
    v[4] = np.nan
    assert np.isnan(average_ranks(v)).all() and np.isnan(rankdata(v)).all()


def test_pixel_auroc_counts_ties_one_half():
    assert pixel_auroc(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(0.75)
    assert pixel_auroc(np.array([2.0]), np.array([0.0, 1.0])) == 1.0
