"""The bootstrap metrics of `evaluation.weighted` against the previous implementation (cumulative counts at every
distinct score) and against sklearn on repeated units: AUC and sensitivities bit for bit, AP within rounding."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ichbench.evaluation import stats


def _previous(y, s, pidx, counts):
    """stats._weighted before the per-class gathers (d140d74): cumulative counts at each distinct score."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(s, float), kind="mergesort")
    y, pidx, ends = y[order], np.asarray(pidx)[order], stats._group_ends(np.asarray(s, float)[order])
    parts = [(pidx[i], np.searchsorted(i, ends, side="right")) for i in (np.nonzero(y)[0], np.nonzero(~y)[0])]
    dtype = np.float32 if len(y) * max(int(counts.max(initial=0)), 1) < 2 ** 24 else np.float64
    tp, fp = (np.where(k > 0, np.cumsum(counts[:, p], axis=1, dtype=dtype)[:, np.maximum(k - 1, 0)], dtype(0))
              if len(p) else np.zeros((len(counts), len(k)), dtype) for p, k in parts)
    return stats._metrics(tp, fp)


def _case(seed, n=400, patients=40, draws=30, decimals=1, max_count=3):
    rng = np.random.default_rng(seed)
    pidx = rng.integers(0, patients, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + y, decimals)
    return y, s, pidx, rng.integers(0, max_count, size=(draws, patients))


@pytest.mark.parametrize("decimals", [0, 1, 6])          # heavy ties, some ties, none
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_same_as_previous_implementation(decimals, dtype):
    y, s, pidx, counts = _case(decimals, decimals=decimals)
    counts = counts.astype(dtype)
    new, old = stats._weighted(y, s, pidx, counts), _previous(y, s, pidx, counts)
    for k in ("AUC", "sens@90spec", "sens@95spec"):
        np.testing.assert_array_equal(new[k], old[k])
    np.testing.assert_allclose(new["AP"], old["AP"], rtol=1e-12)


def test_equal_to_sklearn_on_repeated_units_and_nan_with_one_class():
    y, s, pidx, counts = _case(5, n=120, patients=12, draws=6, max_count=4)
    counts[0, np.unique(pidx[y == 1])] = 0                 # draw 0 leaves no positive unit
    got = stats._weighted(y, s, pidx, counts)
    assert np.isnan(got["AUC"][0]) and np.isnan(got["AP"][0]) and np.isnan(got["sens@95spec"][0])
    for d in range(1, len(counts)):
        w = counts[d, pidx]
        rep_y, rep_s = np.repeat(y, w), np.repeat(s, w)
        assert got["AUC"][d] == pytest.approx(100 * roc_auc_score(rep_y, rep_s), rel=1e-12)
        assert got["AP"][d] == pytest.approx(100 * average_precision_score(rep_y, rep_s), rel=1e-6)  # float32 precisions


def test_large_counts_take_the_float64_path():
    y, s, pidx, counts = _case(7, n=300, patients=20, draws=4)
    counts = counts * 70_000                                 # n x max count above 2^24
    new, old = stats._weighted(y, s, pidx, counts), _previous(y, s, pidx, counts)
    for k in ("AUC", "sens@90spec", "sens@95spec"):
        np.testing.assert_array_equal(new[k], old[k])
    np.testing.assert_allclose(new["AP"], old["AP"], rtol=1e-12)


def test_a_sensitivity_found_in_the_wrong_place_would_show():
    """The thresholds matter: on a ranking with a known answer the sensitivity is exact."""
    y = np.r_[np.ones(10), np.zeros(100)]
    s = np.r_[np.arange(10) + 100.0, np.arange(100.0)]       # 10 positives above every negative
    s[:3] = [93.5, 96.5, 98.5]                               # three positives among the top negatives
    got = stats._weighted(y, s, np.arange(110) % 11, np.ones((1, 11), int))
    # 5 false positives allowed at 95 % specificity (99 .. 95): 98.5 and 96.5 above them, 93.5 below
    assert got["sens@95spec"][0] == pytest.approx(90.0)
    assert got["sens@90spec"][0] == pytest.approx(100.0)


def _units(seed, n=300, folds=2):
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return pd.DataFrame({"fold": np.arange(n) % folds, "sop_uid": [f"S{i}" for i in range(n)], "y": y,
                         "score": np.round(rng.normal(size=n) + y, 1)})


def test_delong_pairs_equal_the_merged_pair_and_fall_back_on_other_units():
    from ichbench.evaluation.delong import DeLongPairs

    a, b = _units(1), _units(2)
    b["y"] = a["y"]
    pairs = DeLongPairs({"A": a, "B": b})
    assert pairs.paired_p("A", "B") == stats.delong_paired_p(a, b)          # the same numbers, bit for bit
    assert pairs.paired_p("B", "A") == stats.delong_paired_p(b, a)
    c = b.iloc[::-1].iloc[5:].reset_index(drop=True)                         # other order, fewer slices: the merge
    pairs = DeLongPairs({"A": a, "C": c})
    assert pairs.paired_p("A", "C") == stats.delong_paired_p(a, c)
    assert np.isfinite(pairs.paired_p("A", "C")[1])


def test_kernels_compile_where_no_cache_folder_can_be_written(monkeypatch):
    """numba refuses `cache=True` (RuntimeError) where it finds no folder to write: the kernel is compiled
    for the process instead, with the same values."""
    import numba

    from ichbench.evaluation import kernels

    real = numba.njit

    def njit(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function '_ranking_draws': no locator available")
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", njit)
    monkeypatch.setattr(kernels, "_COMPILED", {})
    y, s, pidx, counts = _case(11, decimals=1)
    new, old = stats._weighted(y, s, pidx, counts), _previous(y, s, pidx, counts)
    assert "_ranking_draws" in kernels._COMPILED
    for k in ("AUC", "sens@90spec", "sens@95spec"):
        np.testing.assert_array_equal(new[k], old[k])
    np.testing.assert_allclose(new["AP"], old["AP"], rtol=1e-12)


def test_draws_split_over_threads_give_the_same_values():
    """`kernels.set_threads`: the blocks of draws run on several threads, every value as on one; a stratum pass too."""
    from ichbench.evaluation import kernels

    y, s, pidx, counts = _case(5, n=3000, patients=200, draws=200, decimals=1)
    rng = np.random.default_rng(3)
    code = (np.arange(200)[rng.permutation(200)] * 2 + rng.integers(0, 2, 200)).astype(np.int32)
    member = rng.integers(-1, 3, 200).astype(np.int64)
    res = []
    try:
        for n in (1, 3):
            kernels.set_threads(n)
            out = np.empty((3, len(counts)))
            kernels.stratum_aucs(code, member, counts, 3, out, block=16)
            res.append((stats._weighted(y, s, pidx, counts), out))
    finally:
        kernels.set_threads(1)
    (one, s1), (three, s3) = res
    for k in one:
        np.testing.assert_array_equal(one[k], three[k])
    np.testing.assert_array_equal(s1, s3)
    assert kernels._POOL["n"] == 3
